"""Jobs on a real `ray start --head` cluster: `ray job submit` by hand, and `python -m jobs.submit` with a
forced failure that is retried with resume=true and finishes, and bad input that is not retried."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, RayHead
from tests.test_job_e2e import TINY

pytestmark = pytest.mark.slow

QUICK = [*TINY, "steps=3"]  # the e2e job settings: checkpoint every step, a train step every step


def test_ray_job_submit_runs_the_specialist_job(tiny_base: Path, tmp_path: Path, ray_head: RayHead) -> None:
    job = ["python", "-m", "jobs.train_specialist", f"model.path={tiny_base}", f"runs_root={tmp_path / 'runs'}",
           "run_name=submitted", *TINY, "steps=2"]  # fmt: skip
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", ray_head.address,
         "--working-dir", ".", "--", *job],
        cwd=ROOT, env=ray_head.env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "succeeded" in proc.stdout
    summary = json.loads((tmp_path / "runs" / "submitted" / "summary.json").read_text())
    assert summary["steps"] == 2 and "eval/pass@1" in summary


def submit(head: RayHead, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs.submit", "--address", head.address, *args],
                          cwd=ROOT, env=env or head.env, capture_output=True, text=True, timeout=900)  # fmt: skip


def test_submit_retries_a_failed_job_with_resume_and_it_finishes(
    tiny_base: Path, tmp_path: Path, ray_head: RayHead
) -> None:
    # a real fault: the trainer rank SIGKILLs itself at its 3rd step, once (rl/faults.py); the job exits 3
    env = ray_head.env | {"DISTILLERY_FAULT_KILL": f"trainer:3:{tmp_path / 'killed'}", "WANDB_SILENT": "true"}
    proc = submit(ray_head, "--retries", "1", "train_specialist", f"model.path={tiny_base}",
                  f"runs_root={tmp_path / 'runs'}", "run_name=retried", *QUICK, env=env)  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert (tmp_path / "killed").exists()
    assert "attempt 1/2" in out and "FAILED (exit code 3)" in out and "resubmitting with resume=true" in out
    assert "attempt 2/2" in out and "SUCCEEDED" in out
    assert "resuming" in out and "from step_000002" in out  # the second attempt continued, not restarted
    run_dir = tmp_path / "runs" / "retried"
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    trained = [s for s in steps if s > 0]
    assert trained == [1, 2, 3]  # nothing lost, nothing repeated
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 3


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("specialist.domain=nonexistent", "unknown specialist.domain 'nonexistent'"),
        # Hydra's own composition error: exit 2 like any bad input (Hydra alone exits 1, which was retried)
        ("algorithm=grpoo", "unknown algorithm=grpoo (Could not find 'algorithm/grpoo'); available options"),
    ],
)
def test_submit_does_not_retry_bad_input_and_names_the_problem(
    tmp_path: Path, ray_head: RayHead, override: str, message: str
) -> None:
    proc = submit(ray_head, "--retries", "2", "train_specialist", override, f"runs_root={tmp_path / 'runs'}")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-4000:]
    assert "attempt 1/3" in out and "attempt 2/3" not in out
    assert "not resubmitting" in out
    assert message in out  # the job's one line, streamed back
    assert not (tmp_path / "runs").exists()  # rejected before it made anything


def test_submit_without_a_cluster_is_one_clear_line(tmp_path: Path) -> None:
    env = {k: v for k, v in __import__("os").environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, "-m", "jobs.submit", "pipeline"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 2 and "no Ray cluster: pass --address" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "jobs.submit", "--address", "http://127.0.0.1:9", "pipeline"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 2 and "does not answer" in proc.stderr and "127.0.0.1:9" in proc.stderr
