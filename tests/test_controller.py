"""The GRPO step's DAPO dynamic sampling through real rollout workers on Ray."""

from __future__ import annotations

import zlib
from pathlib import Path

from rl.batching import TaskStream
from rl.config import ClusterConfig, LoggerConfig, RolloutConfig, SpecialistRunConfig
from rl.grpo_step import GRPOStep, loss_text
from rl.models import load_tokenizer
from rl.rollout.group import RolloutGroup
from rl.tracking import Tracker
from rl.types import Reward, Rollout, Task
from specialists.domains import Domain


def parity(task: Task, rollout: Rollout) -> Reward:
    """Scores by the parity of a hash of the completion; tasks named 'easy-*' always score 1.

    'easy' groups have zero reward variance, so dynamic sampling must drop them and refill.
    """
    if task.uid.startswith("easy"):
        return Reward(1.0, "correct")
    return Reward(float(zlib.crc32(str(rollout.response_ids).encode()) % 2), "parity")


# a specialist with this reward (tasks are given to the controller directly; no demos: no base is built)
ParitySpecialist = Domain("math", ("synthetic",), lambda cfg: [], lambda cfg: [], parity, lambda *a: [])


def test_dynamic_sampling_drops_uniform_groups_and_refills(
    tiny_base: Path, tmp_path: Path, ray_local
) -> None:
    cfg = SpecialistRunConfig(prompts_per_step=3)
    cfg.rollout = RolloutConfig(max_new_tokens=8, temperature=2.0)  # diverse completions from a tiny model
    cfg.algorithm.group_size, cfg.algorithm.max_refill_rounds = 6, 10
    tasks = [Task(f"{'easy' if i % 2 == 0 else 'hard'}-{i}", "math", f"What is {i} + 1?", str(i + 1), "t")
             for i in range(40)]  # fmt: skip
    rollout = RolloutGroup(
        str(tiny_base), cfg.rollout, ClusterConfig(actor_cpus=0.5, torch_threads=1), {}, dtype="float32"
    )
    tracker = Tracker(tmp_path, LoggerConfig(mode="disabled"), {}, "t", job_type="specialist")
    stream = TaskStream(tasks, seed=0)
    grpo = GRPOStep(
        cfg, ParitySpecialist, load_tokenizer(str(tiny_base)), rollout,
        None, tracker, stream, [],  # type: ignore[arg-type]  # sampling needs no trainer
    )  # fmt: skip
    groups, metrics = grpo.sample(step=1)
    cfg.algorithm.max_refill_rounds = 0  # no refills: the uniform groups are dropped, not replaced
    short, short_metrics = grpo.sample(step=2)
    rollout.shutdown()
    assert short_metrics["rollout/sampling_rounds"] == 1 and len(short) < 3
    assert len(groups) == 3 and all(g.task.uid.startswith("hard") for g in groups)
    assert all(len({r.score for r in g.rewards}) == 2 for g in groups)
    assert metrics["rollout/sampling_rounds"] >= 2 and metrics["rollout/kept_groups_frac"] < 1
    assert stream.position()["index"] > 3  # refills drew new prompts
    assert all(len(g.rollouts) == 6 for g in groups)


def test_a_step_with_no_update_says_why_instead_of_a_nan_loss() -> None:
    assert loss_text({"train/loss": 0.25}) == "loss 0.2500"
    assert loss_text({"train/skipped_empty": 1.0}) == "no update (every group scored alike)"
    assert loss_text({}) == "loss -"
