"""Atomic checkpoints: written aside, renamed into place, then the ``latest`` pointer is swapped.

A checkpoint directory ``step_000040/`` holds what the trainer saves (HF weights, optimizer, scheduler,
RNG) and the controller's ``controller_state.json`` (step, data position, W&B run id, eval history).
A crash at any point leaves the previous ``latest`` intact: partial writes live only under ``.tmp-*``.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rl.faults import maybe_kill
from rl.tracking import DiskFullError, no_space, write_json_atomic

STATE_FILE = "controller_state.json"
POINTER = "latest"


def checkpoint_root(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def save_checkpoint(
    run_dir: Path, step: int, write_trainer: Callable[[Path], None], state: dict[str, Any], keep: int
) -> Path:
    """Write checkpoint ``step`` atomically and keep the newest ``keep`` (older ones are deleted)."""
    root = checkpoint_root(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:06d}"
    tmp = root / f".tmp-step_{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        write_trainer(tmp)
        maybe_kill(
            "checkpoint"
        )  # fault tests: the job's process dies with the weights written, nothing renamed
        write_json_atomic(tmp / STATE_FILE, {**state, "step": step})
    except Exception as err:
        shutil.rmtree(tmp, ignore_errors=True)  # the partial copy goes; `latest` was never touched
        if no_space(err):
            previous = (root / POINTER).read_text().strip() if (root / POINTER).exists() else "none"
            raise DiskFullError(
                f"disk full while writing checkpoint {final.name} under {root}; the partial copy was removed and "
                f"`latest` still names {previous}: free space and rerun with resume=true"
            ) from None
        raise
    if final.exists():  # a resumed run redoing this step
        shutil.rmtree(final)
    os.rename(tmp, final)
    pointer_tmp = root / f".{POINTER}.tmp"
    pointer_tmp.write_text(final.name)
    os.replace(pointer_tmp, root / POINTER)
    _prune(root, keep)
    return final


def _prune(root: Path, keep: int) -> None:
    steps = sorted(p for p in root.glob("step_*") if p.is_dir())
    for old in steps[: max(0, len(steps) - max(keep, 1))]:
        shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint ``latest`` points at, or None when the run has none."""
    pointer = checkpoint_root(run_dir) / POINTER
    if not pointer.exists():
        return None
    path = checkpoint_root(run_dir) / pointer.read_text().strip()
    if not (path / STATE_FILE).exists():
        raise FileNotFoundError(f"checkpoint pointer {pointer} names {path}, which is missing or incomplete")
    return path


def load_state(checkpoint: Path) -> dict[str, Any]:
    return json.loads((checkpoint / STATE_FILE).read_text())
