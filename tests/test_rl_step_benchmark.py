"""The RL-step benchmark (ours vs TRL's GRPOTrainer) runs end to end in its CPU mode, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.rl_step import PHASES, main, vowel_share


def test_cpu_mode_runs_both_engines_alternating_and_reports_the_ratio(tmp_path: Path) -> None:
    out = tmp_path / "rl_step.json"
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.rl_step",
        "--cpu",
        "--steps",
        "2",
        "--variants",
        "mxfp4",
        "--job",
        "auto",
        "--out",
        str(out),
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    trl, *ours = result["rows"]
    assert [r["engine"] for r in result["rows"]] == [
        "TRL GRPOTrainer (float32, HF generate)", "ours (FP4 mxfp4, decode=dynamic)",
        "job (FP4 mxfp4, Ray actors, weights by object_store)",
    ]  # fmt: skip
    # the job rows against the plain rows of the same FP4 setting: the step ratio and what Ray adds per phase
    overhead = result["ray_overhead"]
    assert [(o["job"].split(",")[0], o["plain"].split(",")[0]) for o in overhead] == [
        ("job (FP4 mxfp4", "ours (FP4 mxfp4")
    ]  # fmt: skip
    assert all(o["step_ratio"] > 0 and set(o["added_s"]) == set(PHASES) for o in overhead)
    for row in result["rows"]:
        assert row["completions"] == 4 and row["new_tokens"] == 8 and len(row["step_times_s"]) == 2
        assert row["gen_tokens_per_s"] == pytest.approx(32 / row["step_s"])
    for row in ours:  # the phases cover the step (the log-prob phase includes rewards and batch building)
        assert set(row["phase_share"]) == set(PHASES) and sum(row["phase_share"].values()) == pytest.approx(
            1.0
        )
    assert trl["phase_share"] == {} and "| TRL GRPOTrainer (float32, HF generate) | 4 x 8 |" in run.stdout
    assert run.stdout.count("x |") == 3 and "1.00x" in run.stdout  # the table, TRL as the reference
    assert [line.startswith("step ") for line in run.stdout.splitlines()].count(True) == 3  # alternated


def test_reward_and_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert vowel_share("") == 0 and vowel_share("ab") == 0.5
    with pytest.raises(SystemExit):
        main(["--cpu", "--group", "1"])
    with pytest.raises(SystemExit):
        main(["--cpu", "--job", "auto,nccl"])
    assert "--job nccl: valid weight paths are auto, object_store, cuda_ipc" in capsys.readouterr().err
