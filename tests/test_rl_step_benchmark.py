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
    run = subprocess.run([sys.executable, "-m", "benchmarks.rl_step", "--cpu", "--steps", "2", "--out", str(out)],
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    trl, *ours = result["rows"]
    assert [r["engine"] for r in result["rows"]] == [
        "TRL GRPOTrainer (float32, HF generate)", "ours (FP4 mxfp4, decode=dynamic)", "ours (FP4 none, decode=dynamic)"
    ]  # fmt: skip
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


def test_reward_and_bad_arguments() -> None:
    assert vowel_share("") == 0 and vowel_share("ab") == 0.5
    with pytest.raises(SystemExit):
        main(["--cpu", "--group", "1"])
