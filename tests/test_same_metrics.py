"""benchmarks.same_metrics: two runs' numbers compared without their wall-clock keys."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.same_metrics import main


def _run(root: Path, lines: list[dict]) -> Path:
    (root / "math").mkdir(parents=True)
    (root / "math" / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return root


def test_runs_that_differ_only_in_time_are_the_same_and_a_changed_number_is_named(
    tmp_path: Path, capsys
) -> None:
    before = _run(
        tmp_path / "a", [{"step": 1, "train/loss": 0.5, "perf/step_s": 1.0, "opd/teacher_s/math": 0.1}]
    )
    timed = _run(
        tmp_path / "b", [{"step": 1, "train/loss": 0.5, "perf/step_s": 2.0, "opd/teacher_s/math": 0.3}]
    )
    changed = _run(tmp_path / "c", [{"step": 1, "train/loss": 0.25, "perf/step_s": 1.0}])
    assert main([str(before), str(timed)]) == 0
    assert main([str(before), str(changed)]) == 1
    assert "line 1 train/loss: 0.5 -> 0.25" in capsys.readouterr().out
    assert main([str(before), str(tmp_path / "c" / "math")]) == 2
