"""The disk fills while a run writes metrics or a checkpoint: a clear error, nothing half-written left.

The full disk is the kernel's own ENOSPC: files are symlinks to ``/dev/full``, whose every write fails with
"No space left on device" (no privileges needed, unlike mounting a small tmpfs).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from rl.checkpoint import latest_checkpoint, save_checkpoint
from rl.config import LoggerConfig
from rl.tracking import DiskFullError, Tracker, truncate_metrics


def test_full_disk_while_logging_metrics_is_a_clear_error(tmp_path: Path) -> None:
    tracker = Tracker(tmp_path, LoggerConfig(mode="disabled"), {}, "r", "specialist")
    tracker.log({"reward/mean": 0.5}, 1)
    good = tracker.metrics_path.read_text()
    os.replace(tracker.metrics_path, tmp_path / "kept.jsonl")
    tracker.metrics_path.symlink_to("/dev/full")
    with pytest.raises(
        DiskFullError, match=r"disk full while writing .*metrics.jsonl at step 2; the line was rolled back"
    ):
        tracker.log({"reward/mean": 0.6}, 2)
    assert json.loads(good)["step"] == 1


def test_a_torn_metrics_line_is_dropped_on_resume(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "x": 1}\n{"step": 2, "x": 2}\n{"step": 3, "x"')  # a crash mid-write
    truncate_metrics(path, 2)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2]


def test_full_disk_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path: Path) -> None:
    def healthy(path: Path) -> None:
        (path / "model.safetensors").write_bytes(b"weights")

    def disk_full(path: Path) -> None:
        (path / "model.safetensors").symlink_to("/dev/full")
        (path / "model.safetensors").write_bytes(b"weights")  # ENOSPC from the kernel

    save_checkpoint(tmp_path, 1, healthy, {"data": 1}, keep=2)
    with pytest.raises(DiskFullError, match=r"checkpoint step_000002 .* `latest` still names step_000001"):
        save_checkpoint(tmp_path, 2, disk_full, {"data": 2}, keep=2)
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step_000001"
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step_000001"]
