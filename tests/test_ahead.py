"""Sampling ahead of training (``algorithm.max_staleness``): the loop's schedule with in-process stand-ins for the
workers (each records what it did and when), so versions, staleness, overlap and checkpointed data positions
can be checked exactly; tests/test_job_e2e.py runs it with real actors."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from rl.ahead import SampleAhead, staleness
from rl.config import AlgorithmConfig, ConfigValueError
from rl.loop import Loop, LoopSettings, RunState


class Weights:
    """The rollout workers' side: which step's weights they hold."""

    def __init__(self, version: int = 0):
        self.version, self.fp4_mode, self.weight_sync = version, "none", "object_store"

    def push_weights(self, version: int) -> dict[str, float]:
        self.version = version
        return {}

    def peak_gpu_gib(self) -> float:
        return 0.0


class Trainer:
    def __init__(self, log: list[tuple[str, int, float]]):
        self.version, self.log, self.weight_sync = 0, log, "object_store"

    def export_weights(self) -> int:
        return self.version

    def save(self, path: str) -> None:
        Path(path, "weights.txt").write_text(str(self.version))

    def load(self, path: str) -> None:
        self.version = int(Path(path, "weights.txt").read_text())

    def peak_gpu_gib(self) -> float:
        return 0.0


class Step:
    """Samples record the weights the rollout side held while sampling; training advances the trainer."""

    summary_prefixes = ("train/",)

    def __init__(self, rollout: Weights, trainer: Trainer, log: list[tuple[str, int, float]], seconds: float):
        self.rollout, self.trainer, self.log, self.seconds = rollout, trainer, log, seconds
        self.position = 0  # the data stream: one item a step

    def sample(self, step: int) -> tuple[Any, dict[str, float]]:
        self.log.append(("sample start", step, time.perf_counter()))
        held = self.rollout.version
        time.sleep(self.seconds)
        assert self.rollout.version == held, "the weights changed while a batch was sampled"
        self.position += 1
        self.log.append(("sample end", step, time.perf_counter()))
        return {"step": step, "weights": held, "item": self.position}, {}

    def train(self, batch: Any, updated: Any) -> dict[str, float]:
        self.log.append(("train start", batch["step"], time.perf_counter()))
        time.sleep(self.seconds)
        self.trainer.version = batch["step"]
        self.log.append(("train end", batch["step"], time.perf_counter()))
        updated({"train/nonfinite": 0.0})
        return {"train/weights_sampled": float(batch["weights"]), "train/item": float(batch["item"])}

    def evaluate(self, step: int) -> dict[str, float]:
        return {"eval/pass@1": 0.0}

    def describe(self, metrics: dict[str, float]) -> tuple[str, str]:
        return "", ""

    def data_position(self) -> dict[str, Any]:
        return {"position": self.position}

    def seek(self, position: dict[str, Any]) -> None:
        self.position = position["position"]


class Tracker:
    run_id = "offline"

    def __init__(self) -> None:
        self.logged: dict[int, dict[str, float]] = {}

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.logged[step] = metrics


class Tokenizer:
    def save_pretrained(self, path: Path) -> None:
        Path(path, "tokenizer.txt").write_text("t")


def run_loop(run_dir: Path, k: int, steps: int, seconds: float = 0.0, resume: Path | None = None) -> tuple:
    log: list[tuple[str, int, float]] = []
    trainer = Trainer(log)
    state = RunState.load(resume) if resume else RunState()
    rollout = Weights(state.step)
    step_fn, tracker = Step(rollout, trainer, log, seconds), Tracker()
    settings = LoopSettings(steps, eval_every=0, checkpoint_every=1, keep_checkpoints=steps,
                            max_nonfinite_steps=0, max_staleness=k)  # fmt: skip
    loop = Loop(settings, run_dir, step_fn, trainer, rollout, tracker, Tokenizer(), state)  # type: ignore[arg-type]
    if resume:
        loop.resume(resume)
    loop.run()
    return tracker.logged, log


def test_staleness_counts_weight_versions_between_sampler_and_trainer() -> None:
    assert staleness(1, 0) == 0  # step 1 trains the start weights on their own samples
    assert staleness(5, 4) == 0 and staleness(5, 3) == 1 and staleness(5, 2) == 2


@pytest.mark.parametrize("k", [0, 1, 2])
def test_each_step_is_sampled_with_the_weights_of_step_minus_one_minus_k(tmp_path: Path, k: int) -> None:
    logged, _ = run_loop(tmp_path, k, steps=6)
    sampled_with = [logged[s]["train/weights_sampled"] for s in range(1, 7)]
    assert sampled_with == [max(s - 1 - k, 0) for s in range(1, 7)]
    if k:
        assert [logged[s]["async/staleness"] for s in range(1, 7)] == [min(s - 1, k) for s in range(1, 7)]
    else:
        assert "async/staleness" not in logged[1]  # the synchronous loop is unchanged
    assert [logged[s]["train/item"] for s in range(1, 7)] == [1, 2, 3, 4, 5, 6]  # the data in order, once


def test_step_t_plus_one_is_sampled_while_step_t_trains(tmp_path: Path) -> None:
    _, log = run_loop(tmp_path, 1, steps=4, seconds=0.2)
    when = {(what, step): t for what, step, t in log}
    for t in (1, 2, 3):
        assert when["sample start", t + 1] < when["train end", t]  # overlapped
        assert when["sample end", t + 1] <= when["train start", t + 1]
    _, log = run_loop(tmp_path / "sync", 0, steps=3, seconds=0.2)
    when = {(what, step): t for what, step, t in log}
    assert when["sample start", 2] > when["train end", 1]  # synchronous: nothing overlaps


def test_a_checkpoint_records_the_data_position_of_its_step_not_the_samplers(tmp_path: Path) -> None:
    """With k = 2 the sampler is two items ahead when step 3 is checkpointed; resuming from that checkpoint
    continues with item 4, sampled on step 3's weights (nothing sampled ahead survives a restart)."""
    run_loop(tmp_path / "straight", 2, steps=6)
    checkpoint = tmp_path / "straight" / "checkpoints" / "step_000003"
    assert RunState.load(checkpoint).data == {"position": 3}
    shutil.copytree(checkpoint, tmp_path / "resumed" / "checkpoints" / checkpoint.name)
    logged, _ = run_loop(
        tmp_path / "resumed", 2, steps=6, resume=tmp_path / "resumed" / "checkpoints" / checkpoint.name
    )
    assert [logged[s]["train/item"] for s in (4, 5, 6)] == [4, 5, 6]
    assert [logged[s]["train/weights_sampled"] for s in (4, 5, 6)] == [3, 3, 3]
    assert [logged[s]["async/staleness"] for s in (4, 5, 6)] == [0, 1, 2]


def test_a_failed_sample_is_raised_in_the_loops_thread() -> None:
    def sample(step: int) -> tuple[Any, dict[str, float]]:
        if step == 2:
            raise RuntimeError("rollout worker died")
        return step, {}

    ahead = SampleAhead(sample, dict)
    ahead.submit(1, 0)
    ahead.submit(2, 0)
    assert ahead.take(1).batch == 1
    ahead.wait_all()  # waits, does not raise
    with pytest.raises(RuntimeError, match="rollout worker died"):
        ahead.take(2)
    ahead.submit(3, 0)
    with pytest.raises(ValueError, match="submitted already"):
        ahead.submit(3, 0)
    ahead.close()
    assert all(t.name != "sample-ahead" or t.daemon for t in threading.enumerate())


def test_staleness_without_a_behaviour_correction_is_a_config_error() -> None:
    with pytest.raises(ConfigValueError, match=r"algorithm\.correction=tis"):
        AlgorithmConfig(max_staleness=1)
    with pytest.raises(ConfigValueError, match="max_staleness must be >= 0"):
        AlgorithmConfig(max_staleness=-1)
    assert AlgorithmConfig(max_staleness=2, correction="tis").max_staleness == 2


def test_the_benchmark_summarizes_each_run_and_tables_the_schedules_against_k0() -> None:
    from benchmarks.async_rl import main, summarize, table

    step = {"perf/rollout_idle": 0.5, "perf/trainer_idle": 0.25}
    lines = [{"step": 0}, {"step": 1, "perf/step_s": 9.0, **step}, {"step": 2, "perf/step_s": 2.0, **step},
             {"step": 3, "perf/step_s": 4.0, **step, "perf/rollout_idle": 0.0}]  # fmt: skip
    sync = summarize(lines, {"eval/pass@1_start": 0.1, "eval/pass@1": 0.5})
    assert sync["step_s"] == 3.0 and sync["staleness_max"] == 0.0 and sync["rollout_idle"] == 0.25
    lines = [m | {"async/staleness": float(min(m["step"] - 1, 1))} for m in lines[1:]]
    ahead = summarize([{"step": 0}, *lines], {"eval/pass@1_start": 0.1, "eval/pass@1": 0.6})
    assert ahead["staleness_mean"] == pytest.approx(2 / 3) and ahead["staleness_max"] == 1.0
    rows = table({"k=0 seed=0": sync, "k=1 seed=0": ahead | {"step_s": 1.5}}).splitlines()
    assert rows[2].startswith("| k=0 | 0.10 -> 0.50 | 3.00 | 1.00x | 0.00 / 0 |")
    assert rows[3].startswith("| k=1 | 0.10 -> 0.60 | 1.50 | 0.50x | 0.67 / 1 |")
    with pytest.raises(SystemExit):
        main(["--staleness", "1", "2"])  # no k = 0 to compare with
