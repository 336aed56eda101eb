"""A specialist's RL step (GRPO family), driven by ``rl.loop.Loop``: sample ``prompts_per_step`` groups (refilling
all-equal groups with DAPO's dynamic sampling), score them, advantages per group, ``num_minibatches`` optimizer
steps; and the held-out eval.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch

from rewards.guard import check_error_rate, is_reward_error
from rewards.math import reason_kind
from rl.algorithms.advantages import get_advantage_fn
from rl.algorithms.sampling import zero_variance_groups
from rl.batching import TaskStream, build_train_batch
from rl.config import SpecialistRunConfig
from rl.episodes import (
    Prompts,
    Specialist,
    lenient_pass_at_1,
    pass_at_1_by_level,
    rollout_seed,
    sampling_params,
    specialist_rollouts,
    specialist_scores,
    turn_metrics,
)
from rl.models import token_id
from rl.rollout.group import RolloutGroup
from rl.tracking import Tracker
from rl.trainer.group import TrainerGroup
from rl.types import Reward, Rollout, SamplingParams, Task


@dataclass
class Group:
    """One prompt's ``group_size`` completions and their rewards."""

    task: Task
    rollouts: list[Rollout]
    rewards: list[Reward]


def response_budget(cfg: SpecialistRunConfig, specialist: Specialist) -> int:
    """Most response tokens one rollout can have: one generation, or every turn plus its observations."""
    turns = cfg.specialist.max_turns if specialist.make_env is not None else 1
    return cfg.rollout.max_new_tokens * turns


class GRPOStep:
    """One specialist's RL step: what ``rl.loop.Loop`` samples, trains and evaluates."""

    summary_prefixes: tuple[str, ...] = ("mismatch/", "reward/", "train/")

    def __init__(
        self,
        cfg: SpecialistRunConfig,
        specialist: Specialist,
        tokenizer: Any,
        rollout: RolloutGroup,
        trainer: TrainerGroup,
        tracker: Tracker,
        stream: TaskStream,
        eval_tasks: list[Task],
    ):
        self.cfg, self.specialist, self.tokenizer = cfg, specialist, tokenizer
        self.rollout, self.trainer, self.tracker = rollout, trainer, tracker
        self.stream, self.eval_tasks = stream, eval_tasks
        self.advantage_fn = get_advantage_fn(cfg.algorithm.advantage)
        self.prompts = Prompts(tokenizer)
        self.multi_turn = specialist.make_env is not None  # agent specialists: episodes with an environment
        self.max_response_tokens = response_budget(cfg, specialist)

    def data_position(self) -> dict[str, Any]:
        return self.stream.position()

    def seek(self, position: dict[str, Any]) -> None:
        self.stream.seek(**position)

    def describe(self, metrics: dict[str, float]) -> tuple[str, str]:
        evals = ""
        if "eval/pass@1" in metrics:  # with its task count: the report's table may use another held-out set
            n = f" ({metrics['eval/n']:.0f} held-out tasks)" if "eval/n" in metrics else ""
            evals = f"eval/pass@1 {metrics['eval/pass@1']:.3f}{n}"
        return f"reward {metrics['reward/mean']:.3f} {loss_text(metrics)}", evals

    def sampling(self, seed: int, temperature: float | None = None) -> SamplingParams:
        return sampling_params(self.cfg.rollout, seed, temperature)

    def sample(self, step: int) -> tuple[list[Group], dict[str, float]]:
        """``prompts_per_step`` groups; with dynamic sampling, all-equal-reward groups are replaced (DAPO)."""
        algo, wanted, g = self.cfg.algorithm, self.cfg.prompts_per_step, self.cfg.algorithm.group_size
        kept: list[Group] = []
        sampled: list[Group] = []
        started, rounds = time.perf_counter(), 0
        while len(kept) < wanted and rounds <= (algo.max_refill_rounds if algo.dynamic_sampling else 0):
            tasks = self.stream.take(wanted - len(kept))
            expanded = [t for t in tasks for _ in range(g)]
            params = replace(self.sampling(rollout_seed(self.cfg.seed, step, rounds)), record_routing=True)
            rollouts = self.generate(expanded, params)  # MoE: with their experts, for the trainer
            rewards = self.score(expanded, rollouts)
            check_error_rate(rewards, self.cfg.specialist.max_reward_error_rate, f"step {step}")
            groups = [
                Group(t, rollouts[i * g : (i + 1) * g], rewards[i * g : (i + 1) * g])
                for i, t in enumerate(tasks)
            ]
            sampled += groups
            keep = zero_variance_groups(self._rewards([grp.rewards for grp in groups]))
            kept += [
                grp for grp, k in zip(groups, keep.tolist(), strict=True) if k or not algo.dynamic_sampling
            ]
            rounds += 1
        elapsed = time.perf_counter() - started
        return kept[:wanted], self._sample_metrics(sampled, kept, rounds, elapsed)

    def generate(self, tasks: list[Task], params: SamplingParams) -> list[Rollout]:
        """One completion per task: a single generation, or an episode for a multi-turn specialist."""
        prompts = [self.prompts(t) for t in tasks]
        return specialist_rollouts(self.specialist, self.rollout.generate, self.tokenizer, tasks, prompts, params,
                                   self.cfg.specialist.max_turns, self.max_response_tokens)  # fmt: skip

    def score(self, tasks: list[Task], rollouts: list[Rollout]) -> list[Reward]:
        return specialist_scores(self.specialist, tasks, rollouts, self.cfg.specialist.reward_timeout_s)

    @staticmethod
    def _rewards(rewards: list[list[Reward]]) -> torch.Tensor:
        return torch.tensor([[r.score for r in group] for group in rewards], dtype=torch.float32)

    def _sample_metrics(
        self, sampled: list[Group], kept: list[Group], rounds: int, elapsed: float
    ) -> dict[str, float]:
        rollouts = [r for grp in sampled for r in grp.rollouts]
        rewards = [rw for grp in sampled for rw in grp.rewards]
        tokens = sum(len(r.response_ids) for r in rollouts)
        reasons = Counter(reason_kind(rw.reason) for rw in rewards)
        return {
            "reward/mean": sum(rw.score for rw in rewards) / len(rewards),
            "reward/error_rate": sum(is_reward_error(rw) for rw in rewards) / len(rewards),
            **{f"reward/reason/{k}": v / len(rewards) for k, v in reasons.items()},
            "rollout/response_len": tokens / len(rollouts),
            "rollout/truncated_frac": sum(r.finish_reason == "length" for r in rollouts) / len(rollouts),
            "rollout/kept_groups": float(len(kept[: self.cfg.prompts_per_step])),
            "rollout/kept_groups_frac": len(kept) / len(sampled),
            "rollout/sampling_rounds": float(rounds),
            "rollout/worker_restarts": float(self.rollout.restarts),  # cumulative, this process
            "perf/rollout_s": elapsed,
            "perf/rollout_tokens_per_s": tokens / max(elapsed, 1e-9),
            **(turn_metrics(rollouts) if self.multi_turn else {}),
        }

    def train(self, groups: list[Group], updated: Callable[[dict[str, float]], None]) -> dict[str, float]:
        """Advantages per group, then ``num_minibatches`` optimizer steps over the packed batch."""
        if not groups:  # every group was all-equal even after refills: nothing to learn from this step
            return {"train/skipped_empty": 1.0}
        started = time.perf_counter()
        advantages_NG, metrics = self.advantage_fn(self._rewards([grp.rewards for grp in groups]))
        rollouts = [r for grp in groups for r in grp.rollouts]
        batch = build_train_batch(rollouts, advantages_NG.flatten().tolist(), token_id(self.tokenizer, "pad"))
        n_mb = self.cfg.trainer.num_minibatches
        if n_mb > 1:  # later mini-batches are off-policy: fix pi_old before the first update
            batch = replace(
                batch, old_logprobs_BT=self.trainer.forward_logprobs(batch, self.cfg.algorithm.routing_replay)
            )
        rows_per_mb = -(-batch.num_sequences // n_mb)
        for start in range(0, batch.num_sequences, rows_per_mb):
            mb = batch.select(slice(start, start + rows_per_mb))
            metrics |= self.trainer.train_step(mb, self.max_response_tokens)
            updated(metrics)
        metrics["perf/train_s"] = time.perf_counter() - started
        return metrics

    def evaluate(self, step: int) -> dict[str, float]:
        """Held-out greedy pass@1 and sampled mean@k, per level where tasks have levels."""
        started = time.perf_counter()
        greedy = self.generate(self.eval_tasks, self.sampling(seed=step, temperature=0.0))
        scores = [r.score for r in self.score(self.eval_tasks, greedy)]
        metrics = {
            "eval/pass@1": sum(scores) / len(scores),
            "eval/n": float(len(scores)),
            "eval/response_len": sum(len(r.response_ids) for r in greedy) / len(greedy),
        }
        timeout_s = self.cfg.specialist.reward_timeout_s
        if (
            lenient := lenient_pass_at_1(self.specialist, self.eval_tasks, greedy, scores, timeout_s)
        ) is not None:
            metrics["eval/pass@1_lenient"] = lenient
        if (k := self.cfg.eval_samples) > 0:
            expanded = [t for t in self.eval_tasks for _ in range(k)]
            sampled = self.generate(expanded, self.sampling(seed=10_000 + step))
            sampled_scores = [r.score for r in self.score(expanded, sampled)]
            metrics[f"eval/mean@{k}"] = sum(sampled_scores) / len(sampled_scores)
        if self.multi_turn:
            metrics |= {f"eval/{k}": v for k, v in turn_metrics(greedy).items()}
        metrics |= pass_at_1_by_level(self.eval_tasks, scores, "eval/pass@1")
        metrics["perf/eval_s"] = time.perf_counter() - started
        rows = [
            {"prompt": t.prompt, "response": r.text, "answer": t.answer, "score": s}
            for t, r, s in list(zip(self.eval_tasks, greedy, scores, strict=True))[
                : self.cfg.logger.sample_rows
            ]
        ]
        self.tracker.log_samples(rows, step)
        return metrics


def loss_text(metrics: dict[str, float]) -> str:
    """The step's loss, or why there was none: every group scored the same, so no advantage to learn from."""
    if "train/loss" in metrics:
        return f"loss {metrics['train/loss']:.4f}"
    return "no update (every group scored alike)" if metrics.get("train/skipped_empty") else "loss -"
