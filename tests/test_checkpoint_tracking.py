"""Atomic checkpoints (a crash mid-write leaves `latest` intact) and W&B offline files read back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rl.checkpoint import latest_checkpoint, load_state, save_checkpoint
from rl.config import LoggerConfig
from rl.loop import CheckpointStateError, NonFiniteGuard, NonFiniteLossError, RunState
from rl.tracking import Tracker, truncate_metrics
from tests.conftest import wandb_records


def _writer(marker: str):
    return lambda path: (path / "weights.txt").write_text(marker)


def test_checkpoints_are_atomic_and_pruned(tmp_path: Path) -> None:
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, _writer(f"w{step}"), {"data": {"epoch": 0, "index": step}}, keep=2)
    latest = latest_checkpoint(tmp_path)
    assert latest is not None and latest.name == "step_000003"
    assert load_state(latest) == {"data": {"epoch": 0, "index": 3}, "step": 3}
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*")) == ["step_000002", "step_000003"]


def test_a_crash_while_writing_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, 1, _writer("good"), {}, keep=2)

    def crash(path: Path) -> None:
        (path / "weights.txt").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, 2, crash, {}, keep=2)
    latest = latest_checkpoint(tmp_path)
    assert latest is not None and latest.name == "step_000001"
    assert (latest / "weights.txt").read_text() == "good"
    assert not (tmp_path / "checkpoints" / "step_000002").exists()


def test_no_checkpoint_and_a_dangling_pointer(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path) is None
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "latest").write_text("step_000009")
    with pytest.raises(FileNotFoundError, match="step_000009"):
        latest_checkpoint(tmp_path)


def test_truncate_metrics_drops_steps_after_the_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "x": s}) + "\n" for s in range(6)))
    truncate_metrics(path, 3)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [0, 1, 2, 3]


def test_nonfinite_guard_stops_after_the_limit() -> None:
    guard = NonFiniteGuard(limit=2)
    for nonfinite in (True, True, False, True, True):
        guard.update(nonfinite, 1, "ckpt")
    with pytest.raises(
        NonFiniteLossError, match=r"3 non-finite losses in a row .* Last good checkpoint: ckpt"
    ):
        guard.update(True, 6, "ckpt")


def test_run_state_round_trips_and_reads_the_layout_before_it(tmp_path: Path) -> None:
    state = RunState(step=0, data={"math": {"epoch": 1, "index": 4}}, wandb_run_id="abc",
                     eval_start={"eval/pass@1": 0.25}, teachers={"math": {"eval/math/pass@1": 0.5}})  # fmt: skip
    saved = {k: v for k, v in state.to_json().items() if k != "step"}
    path = save_checkpoint(tmp_path, 7, _writer("w"), saved, keep=1)
    assert RunState.load(path) == RunState(**(state.to_json() | {"step": 7}))
    old = {"data": {"epoch": 0, "index": 3}, "wandb_run_id": None, "step": 3,  # eval history nested, as before
           "history": {"eval_start": {"eval/pass@1": 0.1}, "last_step": {"train/loss": 0.5}}}  # fmt: skip
    assert RunState.from_json(old) == RunState(3, {"epoch": 0, "index": 3}, None, {"eval/pass@1": 0.1}, {},
                                               {"train/loss": 0.5})  # fmt: skip
    for bad in ({}, {"step": "3"}, {"step": 3, "optimizer_shards": 2}):
        with pytest.raises(CheckpointStateError, match="not a run state this version can resume"):
            RunState.from_json(bad)


def wandb_history(run_dir: Path) -> list[dict]:
    """History records of the run's offline .wandb file."""
    return [r["history"]["item"] for r in wandb_records(run_dir) if r.get("type") == "history"]


def test_offline_wandb_run_matches_metrics_jsonl(tmp_path: Path) -> None:
    tracker = Tracker(tmp_path, LoggerConfig(mode="offline"), {"lr": 0.1}, "t", job_type="specialist")
    tracker.log({"train/loss": 0.5, "reward/mean": 0.25}, step=1)
    tracker.log({"train/loss": 0.25, "reward/mean": float("nan")}, step=2)
    tracker.log_samples([{"prompt": "p", "response": "r", "score": 1.0}], step=2)
    tracker.finish({"eval/pass@1": 0.75})
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines[0] == {"step": 1, "train/loss": 0.5, "reward/mean": 0.25}
    assert lines[1]["reward/mean"] == "nan"
    history = wandb_history(tmp_path)
    by_step = {h["_step"]: h for h in history if "train/loss" in h}
    assert by_step[1]["train/loss"] == 0.5 and by_step[2]["train/loss"] == 0.25
    assert any(h.get("samples._type") == "table-file" for h in history)
    assert json.loads((tmp_path / "summary.json").read_text()) == {
        "eval/pass@1": 0.75,
        "wandb_run_id": tracker.run_id,
    }


def test_disabled_mode_still_writes_metrics_and_unknown_mode_is_an_error(tmp_path: Path) -> None:
    tracker = Tracker(tmp_path, LoggerConfig(mode="disabled"), {}, "t", job_type="specialist")
    tracker.log({"train/loss": 1.0}, step=1)
    tracker.log_samples([{"prompt": "p", "response": "r", "score": 0.0}], step=1)
    tracker.finish({})
    assert json.loads((tmp_path / "samples.jsonl").read_text()) == {"step": 1, "prompt": "p", "response": "r",
                                                                    "score": 0.0}  # fmt: skip
    assert not (tmp_path / "wandb").exists() or not list((tmp_path / "wandb").glob("offline-run-*"))
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 1
    with pytest.raises(ValueError, match=r"unknown logger\.mode 'cloud'"):
        Tracker(tmp_path, LoggerConfig(mode="cloud"), {}, "t", job_type="specialist")


def test_eta_leaves_out_the_slow_first_step_and_follows_recent_steps() -> None:
    from rl.loop import eta_seconds

    assert eta_seconds([30.0], 4) == 120.0  # one step: all there is
    assert eta_seconds([30.0, 2.0, 4.0], 10) == 30.0  # the compiling first step left out: mean(2, 4) x 10
    assert (
        eta_seconds([9.0, 9.0, 9.0, 9.0, 9.0, 9.0, 1.0, 1.0, 1.0, 1.0, 1.0], 2) == 2.0
    )  # the last five only
    assert eta_seconds([5.0, 3.0], 0) == 0.0 and eta_seconds([], 3) == 0.0


def test_wandb_run_names_carry_their_group() -> None:
    from rl.tracking import display_name

    assert (
        display_name("qwen", "math") == "qwen/math"
    )  # a pipeline's stage, unlike every other pipeline's math
    assert display_name(None, "math") == "math" and display_name("", "math") == "math"
    assert display_name("sweep-1", "sweep-1-0") == "sweep-1-0"  # a sweep member already says its sweep
