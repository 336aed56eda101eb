"""The job's process SIGKILLed while writing a checkpoint (rl/faults.py, role ``checkpoint``): the previous
checkpoint stays ``latest`` and intact, and ``resume=true`` continues from it with no step lost or repeated."""

from __future__ import annotations

from pathlib import Path

import pytest

from rl.checkpoint import latest_checkpoint, load_state
from tests.test_job_e2e import metrics, run_job

pytestmark = pytest.mark.slow


def test_a_job_killed_while_writing_a_checkpoint_resumes_from_the_previous_one(
    tiny_base: Path, tmp_path: Path, job_env: dict[str, str]
) -> None:
    common = [f"model.path={tiny_base}", f"runs_root={tmp_path}", "run_name=ck", "steps=3"]
    env = {**job_env, "DISTILLERY_FAULT_KILL": f"checkpoint:2:{tmp_path / 'killed'}"}
    proc = run_job(env, *common, check=False)
    assert proc.returncode == -9 and (tmp_path / "killed").exists()  # killed for real, mid-write
    run_dir = tmp_path / "ck"
    assert [p.name for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".tmp-")] == [
        ".tmp-step_000002"
    ]  # the half-written one was never renamed
    latest = latest_checkpoint(run_dir)
    assert latest is not None and latest.name == "step_000001" and load_state(latest)["step"] == 1
    proc = run_job(job_env, *common, "resume=true")
    assert "resuming" in proc.stdout and "from step_000001" in proc.stdout
    assert [m["step"] for m in metrics(run_dir)] == [0, 1, 2, 3]  # steps 2 and 3 redone once
    assert not list((run_dir / "checkpoints").glob(".tmp-*"))
