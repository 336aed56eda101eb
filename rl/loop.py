"""The one loop of every training stage: eval at 0, then each step sample -> train -> sync -> eval -> log ->
checkpoint, with progress, resume and the run summary. What a step samples and trains is a ``Step`` object:
``GRPOStep`` (``rl/grpo_step.py``: a specialist's RL) or ``OPDStep`` (``distill/step.py``: on-policy distillation).

Runs in the job's driver. Each step waits on the rollout workers (generation), scores on the driver, waits on
every trainer rank (its optimizer steps), then on the rollout workers again (weight load) before the next step
samples, so every rollout comes from the newest weights (synchronous, on-policy). Rollout seeds derive from
``(seed, step)`` (``rl.episodes.rollout_seed``), so a resumed run samples what an uninterrupted one would have.
With ``max_staleness = k > 0`` step ``t + k`` is sampled on a background thread while step ``t`` trains
(``rl.ahead``: the versions stay deterministic; the loss corrects for them, ``algorithm.correction``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

from rl.ahead import SampleAhead, staleness
from rl.checkpoint import load_state, save_checkpoint
from rl.failures import named_actor_failures
from rl.memory import gpu_memory
from rl.tracking import Tracker, truncate_metrics


class NonFiniteLossError(RuntimeError):
    """Too many consecutive optimizer steps had a non-finite loss or gradient."""


class CheckpointStateError(ValueError):
    """A checkpoint's ``controller_state.json`` is not one this version can resume from."""


@dataclass
class RunState:
    """What a checkpoint carries besides the weights (``controller_state.json``)."""

    step: int = 0  # the last finished step
    data: dict[str, Any] = field(default_factory=dict)  # the step's data stream position(s)
    wandb_run_id: str | None = None
    eval_start: dict[str, float] = field(default_factory=dict)  # the eval at step 0
    eval_last: dict[str, float] = field(default_factory=dict)  # the latest eval
    last_step: dict[str, float] = field(default_factory=dict)  # the latest step's summary figures
    teachers: dict[str, dict[str, float]] = field(default_factory=dict)  # distillation: each teacher's eval

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any], where: str = "controller_state.json") -> RunState:
        """Read a saved state; the layout before ``RunState`` (eval history nested under ``history``) loads too."""
        raw = dict(raw)
        raw |= raw.pop("history", None) or {}
        known = {f.name for f in fields(cls)}
        if "step" not in raw or not isinstance(raw["step"], int) or set(raw) - known:
            extra = ", ".join(sorted(set(raw) - known)) or "none"
            raise CheckpointStateError(
                f"{where} is not a run state this version can resume (needs an integer 'step'; unknown keys: "
                f"{extra}); start a new run_name, or resume it with the version that wrote it"
            )
        return cls(**raw)

    @classmethod
    def load(cls, checkpoint: Path) -> RunState:
        return cls.from_json(load_state(checkpoint), str(checkpoint / "controller_state.json"))


class NonFiniteGuard:
    """Counts consecutive skipped (non-finite) optimizer steps and stops the run past ``limit``."""

    def __init__(self, limit: int):
        self.limit, self.in_a_row = limit, 0

    def update(self, nonfinite: bool, step: int, last_checkpoint: str | None) -> None:
        self.in_a_row = self.in_a_row + 1 if nonfinite else 0
        if self.in_a_row > self.limit:
            raise NonFiniteLossError(
                f"{self.in_a_row} non-finite losses in a row (last at step {step}), more than "
                f"trainer.max_nonfinite_steps={self.limit}; stopping. Last good checkpoint: {last_checkpoint}"
            )


class Step(Protocol):
    """One stage's step as the loop drives it."""

    summary_prefixes: tuple[str, ...]  # the last step's metrics the summary keeps

    def sample(self, step: int, /) -> tuple[Any, dict[str, float]]:
        """The step's training data (rollouts, scored) and its metrics."""
        ...

    def train(self, batch: Any, updated: Callable[[dict[str, float]], None], /) -> dict[str, float]:
        """Optimizer step(s) on ``batch``; ``updated(metrics)`` after each (the loop's non-finite guard)."""
        ...

    def evaluate(self, step: int, /) -> dict[str, float]: ...

    def describe(self, metrics: dict[str, float], /) -> tuple[str, str]:
        """The progress line's parts: what the step did (reward and loss, or each KL), and the eval ("" if none)."""
        ...

    def data_position(self) -> dict[str, Any]: ...

    def seek(self, position: dict[str, Any], /) -> None: ...


def eta_seconds(step_times: list[float], remaining: int, window: int = 5) -> float:
    """Seconds left: ``remaining`` steps at the mean of the last ``window`` step times, leaving out the first
    step (compilation, CUDA-graph capture, warm-up) once there are others, so a slow start does not inflate it."""
    recent = (step_times[1:] if len(step_times) > 1 else step_times)[-window:]
    return sum(recent) / len(recent) * remaining if recent else 0.0


@dataclass(frozen=True)
class LoopSettings:
    """The loop's share of a run config (``SpecialistRunConfig`` and ``DistillRunConfig`` both have it)."""

    steps: int
    eval_every: int
    checkpoint_every: int
    keep_checkpoints: int
    max_nonfinite_steps: int
    max_staleness: int = 0  # steps sampled ahead of training (``algorithm.max_staleness``; distillation: 0)

    @classmethod
    def of(cls, cfg: Any) -> LoopSettings:
        ahead = getattr(getattr(cfg, "algorithm", None), "max_staleness", 0)
        return cls(cfg.steps, cfg.eval_every, cfg.checkpoint_every, cfg.keep_checkpoints,
                   cfg.trainer.max_nonfinite_steps, ahead)  # fmt: skip


class Loop:
    """Owns the run state (data positions, eval history, checkpoints); the workers own the models."""

    def __init__(self, settings: LoopSettings, run_dir: Path, step: Step, trainer: Any, rollout: Any,
                 tracker: Tracker, tokenizer: Any, state: RunState, roles: dict[str, Any] | None = None):  # fmt: skip
        self.cfg, self.run_dir, self.step_fn = settings, run_dir, step
        self.trainer, self.rollout, self.tracker, self.tokenizer = trainer, rollout, tracker, tokenizer
        self.state = state
        # whose GPU memory the summary reports
        self.roles = {"trainer": trainer, "rollout": rollout} | (roles or {})
        self.guard = NonFiniteGuard(settings.max_nonfinite_steps)
        self.last_checkpoint: str | None = None
        self.step = 0  # the step running (0: the start eval)
        self.version = state.step  # the step whose weights the rollout workers hold
        self._step_times: list[float] = []  # seconds of each step this process ran (for the ETA)
        self._ahead: SampleAhead | None = None
        # sampling ahead: the data stream's position after the step last taken (the stream itself is further on)
        self._position: dict[str, Any] | None = None

    def resume(self, checkpoint: Path) -> None:
        """Load ``checkpoint`` into the workers and the data stream(s); cut the metrics and samples back to its
        step."""
        self.trainer.load(str(checkpoint))
        self.rollout.push_weights(self.trainer.export_weights())
        self.step_fn.seek(self.state.data)
        for log in ("metrics.jsonl", "samples.jsonl"):
            truncate_metrics(self.run_dir / log, self.state.step)
        self.last_checkpoint, self.version = str(checkpoint), self.state.step
        print(f"resuming {self.run_dir} from {checkpoint.name} (step {self.state.step})", flush=True)

    def run(self) -> dict[str, Any]:
        """Steps ``state.step + 1 .. steps``; returns the run summary."""
        with named_actor_failures(lambda: self.step, lambda: self.last_checkpoint):
            if self.state.step == 0:
                self.state.eval_start = self.step_fn.evaluate(0)
                self.tracker.log(self.state.eval_start, 0)
            if self.cfg.max_staleness:
                self._ahead = SampleAhead(self.step_fn.sample, self.step_fn.data_position)
            try:
                for step in range(self.state.step + 1, self.cfg.steps + 1):
                    self.step = step
                    metrics = self.one_step(step)
                    self.tracker.log(metrics, step)
                    self.state.last_step = {
                        k: v for k, v in metrics.items() if k.startswith(self.step_fn.summary_prefixes)
                    }
                    self._progress(step, metrics)
                    if step == self.cfg.steps or step % self.cfg.checkpoint_every == 0:
                        self.checkpoint(step)
            finally:
                if self._ahead is not None:
                    self._ahead.close()
        return self.summary()

    def one_step(self, step: int) -> dict[str, float]:
        started = time.perf_counter()
        batch, metrics, sample_s = self.sample(step)
        train_started = time.perf_counter()
        metrics |= self.step_fn.train(batch, lambda m: self.guard.update(bool(m["train/nonfinite"]), step,
                                                                         self.last_checkpoint))  # fmt: skip
        train_s = time.perf_counter() - train_started
        if self._ahead is not None:  # what samples on the current weights finishes before they change
            metrics["async/wait_s"] = self._ahead.wait_all()
            sample_s = self._ahead.drain_busy()
        metrics |= self.rollout.push_weights(self.trainer.export_weights())
        self.version = step
        metrics["perf/step_s"] = step_s = time.perf_counter() - started
        # the share of the step each side had nothing to do (sampling includes the driver's reward scoring)
        metrics["perf/rollout_idle"] = max(0.0, 1 - sample_s / step_s)
        metrics["perf/trainer_idle"] = max(0.0, 1 - train_s / step_s)
        if step == self.cfg.steps or (self.cfg.eval_every and step % self.cfg.eval_every == 0):
            metrics |= self.step_fn.evaluate(step)
            self.state.eval_last = {k: v for k, v in metrics.items() if k.startswith("eval/")}
        return metrics

    def sample(self, step: int) -> tuple[Any, dict[str, float], float]:
        """The step's batch, its metrics and the seconds spent sampling it: sampled now (synchronous), or taken
        from the sampler after submitting the steps up to ``step + max_staleness`` on the current weights."""
        if self._ahead is None:
            started = time.perf_counter()
            batch, metrics = self.step_fn.sample(step)
            return batch, metrics, time.perf_counter() - started
        for ahead in range(step, min(step + self.cfg.max_staleness, self.cfg.steps) + 1):
            if not self._ahead.submitted(ahead):
                self._ahead.submit(ahead, self.version)
        sampled = self._ahead.take(step)
        self._position = sampled.position
        stale = staleness(step, sampled.version)
        assert 0 <= stale <= self.cfg.max_staleness, (step, sampled.version)  # by the submission rule
        return sampled.batch, sampled.metrics | {"async/staleness": float(stale)}, 0.0

    def checkpoint(self, step: int) -> None:
        position = self._position if self._position is not None else self.step_fn.data_position()
        self.state.step, self.state.data = step, position
        self.state.wandb_run_id = self.tracker.run_id
        state = self.state.to_json()
        del state["step"]  # save_checkpoint adds it
        path = save_checkpoint(self.run_dir, step, self._write_model, state, self.cfg.keep_checkpoints)
        self.last_checkpoint = str(path)

    def _write_model(self, path: Path) -> None:
        """Trainer state and the tokenizer: a checkpoint directory loads as a model (e.g. a distillation teacher)."""
        self.trainer.save(str(path))
        self.tokenizer.save_pretrained(path)

    def summary(self) -> dict[str, Any]:
        start, last = self.state.eval_start, self.state.eval_last
        summary: dict[str, Any] = {
            "steps": self.cfg.steps,
            "checkpoint": self.last_checkpoint,
            "rollout/fp4_mode": self.rollout.fp4_mode,  # packed | simulated | none
            "rollout/weight_sync": self.trainer.weight_sync,  # object_store | cuda_ipc
        }
        summary |= {f"{k}_start": v for k, v in start.items() if not k.startswith("perf/")}
        summary |= last | self.state.last_step
        if "eval/pass@1" in start and "eval/pass@1" in last:
            summary["eval/pass@1_gain"] = last["eval/pass@1"] - start["eval/pass@1"]
        return summary | gpu_memory(self.roles)

    def _progress(self, step: int, metrics: dict[str, float]) -> None:
        """One terminal line per step: the time of day, what the step did, step time, ETA (and eval when it ran)."""
        self._step_times.append(metrics["perf/step_s"])
        eta = eta_seconds(self._step_times, self.cfg.steps - step)
        what, evals = self.step_fn.describe(metrics)
        print(f"{time.strftime('%H:%M:%S')} step {step}/{self.cfg.steps} {what} {metrics['perf/step_s']:.1f}s/step "
              f"eta {eta:.0f}s" + (f" {evals}" if evals else ""), flush=True)  # fmt: skip
