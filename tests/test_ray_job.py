"""`ray job submit --working-dir . -- python -m jobs.train_specialist ...` against a local `ray start --head`."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_http(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError:  # it answers (Ray 2.60 asks for its auth token, which the CLI sends)
            return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"{url} did not answer within {timeout_s:.0f}s")


def test_ray_job_submit_runs_the_specialist_job(
    tiny_base: Path, tmp_path: Path, job_env: dict[str, str]
) -> None:
    bin_dir = Path(sys.executable).parent
    # Ray 2.60 clusters require a token; head and CLI share one, as users would on a real cluster.
    job_env = {**job_env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    gcs_port, dashboard_port = _free_port(), _free_port()
    ray_tmp = tempfile.mkdtemp(
        prefix="ray", dir="/tmp"
    )  # short: Ray's unix sockets live here (~107 chars max)
    head = subprocess.Popen(
        [str(bin_dir / "ray"), "start", "--head", "--block", f"--port={gcs_port}", "--num-cpus=2",
         "--include-dashboard=true", f"--dashboard-port={dashboard_port}", "--disable-usage-stats",
         # the agents' default ports would clash with another Ray on this machine (the session's local Ray)
         f"--dashboard-agent-listen-port={_free_port()}", f"--dashboard-agent-grpc-port={_free_port()}",
         f"--metrics-export-port={_free_port()}", f"--runtime-env-agent-port={_free_port()}",
         f"--temp-dir={ray_tmp}"],
        env=job_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    address = f"http://127.0.0.1:{dashboard_port}"
    try:
        _wait_http(f"{address}/api/version", timeout_s=120)
        job = [
            "python", "-m", "jobs.train_specialist", f"model.path={tiny_base}", f"runs_root={tmp_path / 'runs'}",
            "run_name=submitted", "steps=2", "prompts_per_step=4", "algorithm.group_size=4", "eval_every=0",
            "specialist.num_eval_tasks=8", "eval_samples=2", "rollout.max_new_tokens=24", "cluster.actor_cpus=0.5",
        ]  # fmt: skip
        for _attempt in range(6):  # the job agent can come up after the dashboard answers
            proc = subprocess.run(
                [str(bin_dir / "ray"), "job", "submit", "--address", address, "--working-dir", ".", "--", *job],
                cwd=ROOT, env=job_env, capture_output=True, text=True, timeout=600,
            )  # fmt: skip
            if "No available agent to submit job" not in proc.stdout + proc.stderr:
                break
            time.sleep(10)
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
        assert "succeeded" in proc.stdout
        summary = json.loads((tmp_path / "runs" / "submitted" / "summary.json").read_text())
        assert summary["steps"] == 2 and "eval/pass@1" in summary
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(ray_tmp, ignore_errors=True)
