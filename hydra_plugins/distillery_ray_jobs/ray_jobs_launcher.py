"""Hydra launcher ``ray_jobs``: every member of a sweep is its own Ray job on the cluster.

    python -m jobs.distill -m hydra/launcher=ray_jobs hydra.launcher.address=http://head:8265 \\
        distill.lr=1e-6,3e-6 distill.loss=reverse_kl,sampled_token

Each member's config is composed and checked here first (a typo fails before anything is submitted), then
the member is submitted as ``python -m <the job> <its overrides>`` through ``jobs.submit`` (same working dir,
environment and retry-with-resume rules), named ``<sweep>-<index>`` under an absolute ``runs_root``, with the
sweep's name as its W&B group. The launcher waits for every member and writes ``sweep.md`` and ``sweep.json``
into the sweep directory: one row per member with its overrides, status, final figures and W&B run id.

(No ``from __future__ import annotations`` here: Hydra executes plugin modules without registering them in
``sys.modules``, and dataclasses then cannot resolve string annotations.)
"""

import json
import os
import re
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

# final figures of a member: its headline pass@1 (per domain for distillation) and the recovered share
HEADLINE = re.compile(r"eval/(\w+/)?pass@1|eval/pass@1_start|opd/recovered/\w+|wandb_run_id")


@dataclass
class RayJobsLauncherConf:
    _target_: str = "hydra_plugins.distillery_ray_jobs.ray_jobs_launcher.RayJobsLauncher"
    address: str | None = None  # Ray dashboard, http://<head>:8265; None = $RAY_ADDRESS
    retries: int = 0  # resubmissions with resume=true of a failed member
    max_parallel: int = 0  # members running at once; 0 = all


ConfigStore.instance().store(
    group="hydra/launcher", name="ray_jobs", node=RayJobsLauncherConf, provider="distillery"
)


def job_module() -> str:
    """The job being swept, as ``python -m`` names it (``jobs.distill``)."""
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    name = spec.name if spec is not None else ""
    if not name.startswith("jobs."):
        raise ValueError("hydra/launcher=ray_jobs sweeps a job started as `python -m jobs.<job> -m ...`")
    return name.removeprefix("jobs.")


def headline(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in summary.items() if HEADLINE.fullmatch(k)}


def split_overrides(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """The overrides every member shares (said once, above the table) and each member's own (its row)."""
    shared = [o for o in rows[0]["overrides"] if all(o in r["overrides"] for r in rows)] if rows else []
    return shared, [[o for o in r["overrides"] if o not in shared] for r in rows]


def sweep_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: the overrides every member shares, then one row per member with what varies, its status,
    its headline figures and W&B run."""
    figures = sorted({k for r in rows for k in r["figures"] if k != "wandb_run_id"})
    shared, own = split_overrides(rows)
    lines = [f"Every member: {' '.join(shared)}\n" if shared else "",
             "| # | overrides | status | " + " | ".join(figures) + " | W&B run |",
             "|---" * (len(figures) + 4) + "|"]  # fmt: skip
    for r, varying in zip(rows, own, strict=True):
        cells = [f"{r['figures'][k]:.3f}" if isinstance(r["figures"].get(k), float) else "" for k in figures]
        lines.append(f"| {r['index']} | {' '.join(varying)} | {r['status']} | " + " | ".join(cells)
                     + f" | {r['figures'].get('wandb_run_id', '')} |")  # fmt: skip
    return "\n".join(line for line in lines if line)


class RayJobsLauncher(Launcher):
    def __init__(self, address: str | None = None, retries: int = 0, max_parallel: int = 0) -> None:
        self.address = address or os.environ.get("RAY_ADDRESS")
        self.retries, self.max_parallel = retries, max_parallel
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context

    def member(self, overrides: Sequence[str], index: int, sweep: str) -> "Member":
        """The member as submitted (run name, W&B group, absolute runs_root), its config checked here first."""
        assert self.config is not None and self.hydra_context is not None
        own = [o for o in filter_overrides(overrides) if o.split("=", 1)[0].lstrip("+~") != "run_name"]
        config = self.hydra_context.config_loader.load_sweep_config(self.config, own)  # fails on a typo, here
        runs_root, run_name = Path(str(config.runs_root)).resolve(), f"{sweep}-{index}"
        submitted = [*own, f"run_name={run_name}", f"runs_root={runs_root}", f"logger.group={sweep}"]
        return Member(index, list(overrides), own, submitted, config, runs_root / run_name)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from jobs.submit import client_for, run_attempts

        assert self.config is not None
        if not self.address:
            raise ValueError("hydra/launcher=ray_jobs needs a cluster: hydra.launcher.address=http://<head>:8265 "
                             "or RAY_ADDRESS")  # fmt: skip
        job = job_module()
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).resolve()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        sweep = sweep_dir.name
        members = [self.member(o, initial_job_idx + i, sweep) for i, o in enumerate(job_overrides)]
        client = client_for(self.address)
        print(f"sweep {sweep}: {len(members)} Ray jobs of jobs.{job} on {self.address}", flush=True)
        results: dict[int, Any] = {}
        gate = threading.Semaphore(self.max_parallel or len(members))
        lock = threading.Lock()

        def run_member(m: Member) -> None:
            def say(message: str) -> None:
                with lock:
                    print(f"[{m.run_dir.name}] {message}", flush=True)

            with gate:
                try:
                    results[m.index] = run_attempts(
                        client, job, m.submitted, self.retries, stream=False, say=say
                    )
                except Exception as err:  # a submission error fails this member, not the others
                    results[m.index] = err

        threads = [threading.Thread(target=run_member, args=(m,)) for m in members]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        rows = [row(m, results[m.index]) for m in members]
        returns = [job_return(m, r) for m, r in zip(members, rows, strict=True)]
        (sweep_dir / "sweep.json").write_text(json.dumps(rows, indent=2, default=str))
        table = sweep_table(rows)
        (sweep_dir / "sweep.md").write_text(f"# Sweep {sweep} (jobs.{job})\n\n{table}\n")
        print(f"{table}\nsweep table: {sweep_dir / 'sweep.md'}", flush=True)
        return returns


@dataclass
class Member:
    index: int
    overrides: list[str]  # as Hydra's sweeper gave them
    own: list[str]  # this member's sweep overrides (what the table shows)
    submitted: list[str]  # own + run name, absolute runs_root, W&B group
    config: DictConfig  # composed from own, checked before anything is submitted
    run_dir: Path


def row(m: Member, result: Any) -> dict[str, Any]:
    """The member's line of the sweep table: status, Ray job, final figures from its summary.json."""
    summary_file = m.run_dir / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.exists() else {}
    failed = isinstance(result, Exception)
    return {"index": m.index, "overrides": m.own, "run_name": m.run_dir.name, "run_dir": str(m.run_dir),
            "status": "ERROR" if failed else result.status,
            "exit_code": None if failed else result.exit_code,
            "ray_job": None if failed else result.submission_id,
            "error": str(result) if failed else None if result.status == "SUCCEEDED" else result.message,
            "figures": headline(summary)}  # fmt: skip


def job_return(m: Member, row: dict[str, Any]) -> JobReturn:
    """What Hydra's sweeper expects back; a failed member raises from it after the sweep table is written."""
    with open_dict(m.config):
        m.config.hydra.job.id = row["ray_job"]
    ret = JobReturn(overrides=m.overrides, cfg=m.config, hydra_cfg=m.config, working_dir=row["run_dir"],
                    task_name=str(m.config.hydra.job.name))  # fmt: skip
    if row["status"] == "SUCCEEDED":
        ret.status, ret.return_value = JobStatus.COMPLETED, row["figures"]
    else:
        ret.status = JobStatus.FAILED
        ret.return_value = RuntimeError(f"{row['run_name']}: Ray job {row['ray_job']} {row['status']} "
                                        f"(exit code {row['exit_code']}): {row['error']}")  # fmt: skip
    return ret
