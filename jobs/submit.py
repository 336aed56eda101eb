"""Submit a job to a Ray cluster, stream its logs, and resubmit it with ``resume=true`` when it fails.

    python -m jobs.submit --address http://head:8265 pipeline
    python -m jobs.submit --address http://head:8265 --retries 3 train_specialist specialist=code steps=200
    RAY_ADDRESS=http://head:8265 python -m jobs.submit distill distill.loss=sampled_token

The job runs as ``python -m jobs.<job> <overrides>`` on the cluster through the Ray Jobs API, with this
checkout as its working directory (``.venv``, ``runs`` and other outputs left out) and only the environment
variables jobs forward to their actors (``DISTILLERY_*``, ``WANDB_*``, ``HF_*``). ``run_name`` is fixed at
submission (``<job>-<time>`` unless given) and ``runs_root`` made absolute, so a resubmitted attempt finds the
failed attempt's checkpoints: on a multi-node cluster runs_root must be storage every node sees.

A failed attempt is resubmitted with ``resume=true`` up to ``--retries`` times, except when the job rejected
its input (exit 2: the same input would fail again). Exit status: 0 when an attempt succeeds, else the last
attempt's exit code (1 when Ray gives none).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from jobs.common import check_reachable, forwarded_env

ROOT = Path(__file__).resolve().parents[1]
JOBS = ("train_specialist", "distill", "pipeline", "make_base")
# never uploaded with the working dir: environments, outputs, caches, build products
EXCLUDES = [
    ".venv",
    "runs",
    "outputs",
    "multirun",
    ".git",
    "wandb",
    "*.whl",
    "**/__pycache__",
    ".pytest_cache",
]
BAD_INPUT_EXIT = 2  # jobs.cli.user_errors: bad config or data; a retry would fail the same way
FINAL = ("SUCCEEDED", "FAILED", "STOPPED")


@dataclass
class Attempt:
    submission_id: str
    status: str
    exit_code: int | None
    message: str


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m jobs.submit", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("job", help=f"which job: {', '.join(JOBS)}")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the job, e.g. steps=100")
    parser.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                        help="Ray dashboard address, http://<head>:8265 (default: $RAY_ADDRESS)")  # fmt: skip
    parser.add_argument(
        "--retries", type=int, default=2, help="resubmissions with resume=true after a failure"
    )
    parser.add_argument(
        "--no-wait", action="store_true", help="submit and print the id; do not stream or retry"
    )
    args = parser.parse_args(argv)
    args.job = args.job.removeprefix("jobs.")
    if args.job not in JOBS:
        parser.error(f"unknown job {args.job!r}; valid: {', '.join(JOBS)}")
    if not args.address:
        parser.error("no Ray cluster: pass --address http://<head>:8265 or set RAY_ADDRESS")
    if args.retries < 0:
        parser.error("--retries must be >= 0")
    return args


def fixed_overrides(job: str, overrides: list[str], now: float | None = None) -> list[str]:
    """The job's overrides with ``run_name`` pinned and ``runs_root`` absolute, so every attempt writes (and
    resumes) the same run directory. ``make_base`` has neither."""
    if job == "make_base":
        return list(overrides)
    keys = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
    out = list(overrides)
    if "run_name" not in keys:
        out.append(
            f"run_name={job.removeprefix('train_')}-{time.strftime('%Y%m%d-%H%M%S', time.localtime(now))}"
        )
    if "runs_root" not in keys:
        out.append(f"runs_root={Path('runs').resolve()}")
    else:
        out = [
            f"runs_root={Path(o.split('=', 1)[1]).resolve()}" if o.startswith("runs_root=") else o
            for o in out
        ]
    return out


def with_resume(overrides: list[str]) -> list[str]:
    return [o for o in overrides if not o.startswith(("resume=", "+resume="))] + ["resume=true"]


def entrypoint(job: str, overrides: list[str]) -> str:
    return shlex.join(["python", "-m", f"jobs.{job}", *overrides])


def runtime_env() -> dict:
    return {"working_dir": str(ROOT), "excludes": EXCLUDES, "env_vars": forwarded_env()}


def dashboard_reachable(address: str) -> None:
    """Fail in seconds, naming the address, when nothing answers there."""
    url = urlparse(address if "://" in address else f"http://{address}")
    check_reachable(f"{url.hostname}:{url.port or 8265}")


async def _stream(client, submission_id: str) -> None:
    async for lines in client.tail_job_logs(submission_id):
        print(lines, end="", flush=True)


def wait(client, submission_id: str, stream: bool = True) -> Attempt:
    """Stream the attempt's logs (when ``stream``) until it ends; its final status and exit code."""
    if stream:
        try:
            asyncio.run(_stream(client, submission_id))
        except Exception as err:  # the log stream can drop (head restart); the status below is what counts
            print(
                f"submit: log stream of {submission_id} ended early ({err}); polling its status", flush=True
            )
    while (info := client.get_job_info(submission_id)).status.value not in FINAL:
        time.sleep(2)
    return Attempt(submission_id, info.status.value, info.driver_exit_code, info.message or "")


def run_attempts(client, job: str, overrides: list[str], retries: int, stream: bool = True,
                 say=print) -> Attempt:  # fmt: skip
    """Submit ``job``; while it fails (not on bad input, not when stopped), resubmit with ``resume=true``, up to
    ``retries`` times. ``stream`` prints each attempt's logs as they come; else the logs stay in Ray."""
    attempts, result = 1 + retries, None
    for attempt in range(1, attempts + 1):
        command = entrypoint(job, overrides)
        submission_id = client.submit_job(entrypoint=command, runtime_env=runtime_env(),
                                          metadata={"job": job, "attempt": str(attempt)})  # fmt: skip
        say(f"submit: attempt {attempt}/{attempts} {submission_id}: {command}")
        result = wait(client, submission_id, stream)
        say(f"submit: attempt {attempt}/{attempts} {submission_id} {result.status} "
            f"(exit code {result.exit_code}) {result.message}".rstrip())  # fmt: skip
        if result.status == "SUCCEEDED":
            return result
        if result.status == "STOPPED" or result.exit_code == BAD_INPUT_EXIT:
            say("submit: not resubmitting (" + ("stopped" if result.status == "STOPPED" else
                "the job rejected its input; a retry would fail the same way") + ")")  # fmt: skip
            return result
        if attempt < attempts:
            overrides = with_resume(overrides)
            say("submit: resubmitting with resume=true")
    assert result is not None
    return result


def client_for(address: str):
    from ray.job_submission import JobSubmissionClient

    dashboard_reachable(address)
    return JobSubmissionClient(address)


def submit(args: argparse.Namespace) -> int:
    client = client_for(args.address)
    overrides = fixed_overrides(args.job, args.overrides)
    if args.no_wait:
        submission_id = client.submit_job(
            entrypoint=entrypoint(args.job, overrides), runtime_env=runtime_env()
        )
        print(f"submit: {submission_id} on {args.address}; follow it with `ray job logs -f {submission_id}`")
        return 0
    result = run_attempts(client, args.job, overrides, args.retries, say=lambda m: print(m, flush=True))
    return 0 if result.status == "SUCCEEDED" else (result.exit_code or 1)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        sys.exit(submit(args))
    except ConnectionError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
