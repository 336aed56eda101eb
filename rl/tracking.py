"""One W&B run per job (online / offline / disabled) mirrored line by line into ``metrics.jsonl``.

Metric names are prefixed by role (``rollout/``, ``train/``, ``reward/``, ``eval/``, ``perf/``); the JSONL
file gets exactly the keys W&B gets, one object per step, so a run is readable without W&B.
On resume the file is cut back to the checkpoint's step, so no step appears twice.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
from pathlib import Path
from typing import Any

import wandb

from rl.config import LoggerConfig

WANDB_MODES = ("offline", "online", "disabled")


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON beside ``path`` then rename over it, so readers never see half a file."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class DiskFullError(RuntimeError):
    """No space left while writing a run's files; what was half-written has been rolled back."""


def no_space(err: BaseException) -> bool:
    """Whether ``err`` (or a worker's error wrapping it) is ENOSPC."""
    return getattr(err, "errno", None) == errno.ENOSPC or "No space left on device" in str(err)


def _jsonable(value: float) -> float | str:
    return value if math.isfinite(value) else str(value)


def _step_of(line: str) -> float:
    """A metrics line's step; a torn line (a crash mid-write) counts as after every checkpoint (dropped)."""
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError):
        return math.inf


def truncate_metrics(path: Path, last_step: int) -> None:
    """Drop lines logged after ``last_step`` (they belong to steps a resumed run will redo)."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line and _step_of(line) <= last_step]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)


def model_artifact(path: str, name: str, kind: str, metadata: dict[str, Any]) -> wandb.Artifact:
    artifact = wandb.Artifact(name, type=kind, metadata=metadata)
    artifact.add_reference(Path(path).resolve().as_uri())
    return artifact


def display_name(group: str | None, name: str) -> str:
    """The W&B run's name: ``<group>/<name>`` (a pipeline's ``math`` stage is ``qwen/math``, not one more
    ``math`` beside every other pipeline's), or the bare name where there is no group or it already says it."""
    return f"{group}/{name}" if group and not name.startswith(group) else name


class Tracker:
    """The run's metrics sink: W&B (per ``cfg.mode``) plus ``metrics.jsonl``, ``samples.jsonl`` and ``summary.json``."""

    def __init__(
        self,
        run_dir: Path,
        cfg: LoggerConfig,
        config: dict[str, Any],
        name: str,
        job_type: str,
        run_id: str | None = None,
    ):
        if cfg.mode not in WANDB_MODES:
            raise ValueError(f"unknown logger.mode {cfg.mode!r}; valid: {', '.join(WANDB_MODES)}")
        self.run_dir = run_dir
        self.run = wandb.init(
            mode=cfg.mode,  # type: ignore[arg-type]
            dir=str(run_dir),
            project=cfg.project,
            entity=cfg.entity,
            group=cfg.group,
            name=display_name(cfg.group, name),
            job_type=job_type,
            id=run_id,
            resume="allow" if run_id else None,
            config=config,
            settings=wandb.Settings(console="off", x_disable_stats=True, silent=True),
        )
        self.run_id = self.run.id
        self.metrics_path = run_dir / "metrics.jsonl"

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Record one step's metrics in W&B and as one line of ``metrics.jsonl``."""
        line = {"step": step, **{k: _jsonable(float(v)) for k, v in metrics.items()}}
        size = self.metrics_path.stat().st_size if self.metrics_path.exists() else 0
        try:
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(line, sort_keys=True) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as err:
            with contextlib.suppress(OSError):  # no half line left behind for a resume to trip on
                os.truncate(self.metrics_path, size)
            if no_space(err):
                raise DiskFullError(
                    f"disk full while writing {self.metrics_path} at step {step}; the line was rolled back and "
                    "the last checkpoint is intact: free space and rerun with resume=true"
                ) from None
            raise
        self.run.log(metrics, step=step)

    def log_samples(self, rows: list[dict[str, Any]], step: int) -> None:
        """A table of generations (one row per sample) under ``samples``, and the same rows appended to
        ``samples.jsonl`` (one line per row, with its step), readable whatever the logger mode."""
        if not rows:
            return
        with open(self.run_dir / "samples.jsonl", "a") as f:
            f.writelines(json.dumps({"step": step, **row}, default=str) + "\n" for row in rows)
        columns = list(rows[0])
        table = wandb.Table(columns=["step", *columns], data=[[step, *(r[c] for c in columns)] for r in rows])
        self.run.log({"samples": table}, step=step)

    def log_media(self, tables: dict[str, tuple[list[Any], list[Any]]], images: dict[str, Path]) -> None:
        """Tables (``key -> (columns, rows)``) and images (``key -> PNG path``) in one W&B log call."""
        logged: dict[str, Any] = {
            key: wandb.Table(columns=columns, data=rows) for key, (columns, rows) in tables.items()
        }
        logged |= {key: wandb.Image(str(path)) for key, path in images.items()}
        self.run.log(logged)

    def log_model(self, path: str, name: str, kind: str, metadata: dict[str, Any]) -> str | None:
        """Record the model directory ``path`` as this run's output artifact (by reference: nothing is copied);
        returns ``"<name>:latest"``, or None with W&B disabled."""
        if self.run.disabled:
            return None
        self.run.log_artifact(model_artifact(path, name, kind, metadata))
        return f"{name}:latest"

    def use_model(self, path: str, name: str, kind: str) -> None:
        """Record the model directory ``path`` (logged by another run as ``name``) as this run's input: the
        lineage edge W&B draws from that run's artifact to this run.

        W&B refuses ``use_artifact`` offline. The same artifact (same reference, so the same digest and
        version) is logged here as a draft marked use-after-commit, which is what ``use_artifact`` does online
        with a draft; ``wandb sync`` replays it, so an offline run syncs with its inputs.
        """
        if self.run.disabled:
            return
        artifact = model_artifact(path, name, kind, {})
        if self.run.offline:
            self.run._log_artifact(artifact, is_user_created=True, use_after_commit=True)
        else:
            self.run.use_artifact(artifact)

    def finish(self, summary: dict[str, Any]) -> None:
        """Write ``summary.json`` (with the W&B run id, when W&B is on, also added to ``summary`` itself: what a
        job returns is what it wrote), set the W&B summary, close the run."""
        if not self.run.disabled:
            summary["wandb_run_id"] = self.run_id
        write_json_atomic(self.run_dir / "summary.json", summary)
        for key, value in summary.items():
            self.run.summary[key] = value
        self.run.finish()
