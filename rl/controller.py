"""The RL loop of one specialist: sample -> score -> advantages -> train -> push weights -> eval -> checkpoint.

Runs in the job's driver. Each step waits on the rollout workers (generation), scores on the driver,
waits on every trainer rank (one optimizer step per mini-batch), then on the rollout workers again
(weight load) before the next step samples, so every rollout comes from the newest weights
(synchronous, on-policy). Rollout seeds derive from ``(seed, step)``, so a resumed run samples what an
uninterrupted one would have.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from rewards.guard import check_error_rate, is_reward_error
from rewards.math import reason_kind
from rl.algorithms.advantages import get_advantage_fn
from rl.algorithms.sampling import zero_variance_groups
from rl.batching import TaskStream, build_train_batch
from rl.checkpoint import save_checkpoint
from rl.config import RolloutConfig, SpecialistRunConfig
from rl.episodes import Specialist, specialist_rollouts, specialist_scores, turn_metrics
from rl.failures import named_actor_failures
from rl.memory import gpu_memory
from rl.models import token_id
from rl.rollout.group import RolloutGroup
from rl.sft import chat_prompt_ids
from rl.tracking import Tracker
from rl.trainer.group import TrainerGroup
from rl.types import Reward, Rollout, SamplingParams, Task

SUMMARY_PREFIXES = ("mismatch/", "reward/", "train/")  # last-step figures copied into summary.json


class NonFiniteLossError(RuntimeError):
    """Too many consecutive optimizer steps had a non-finite loss or gradient."""


@dataclass
class Group:
    """One prompt's ``group_size`` completions and their rewards."""

    task: Task
    rollouts: list[Rollout]
    rewards: list[Reward]


class NonFiniteGuard:
    """Counts consecutive skipped (non-finite) steps and stops the run past ``limit``."""

    def __init__(self, limit: int):
        self.limit, self.in_a_row = limit, 0

    def update(self, nonfinite: bool, step: int, last_checkpoint: str | None) -> None:
        self.in_a_row = self.in_a_row + 1 if nonfinite else 0
        if self.in_a_row > self.limit:
            raise NonFiniteLossError(
                f"{self.in_a_row} non-finite losses in a row (last at step {step}), more than "
                f"trainer.max_nonfinite_steps={self.limit}; stopping. Last good checkpoint: {last_checkpoint}"
            )


def sampling_params(r: RolloutConfig, seed: int, temperature: float | None = None) -> SamplingParams:
    """The rollout config's sampling at ``seed``; ``temperature=0.0`` for greedy eval."""
    temp = r.temperature if temperature is None else temperature
    return SamplingParams(r.max_new_tokens, temp, r.top_p, r.top_k, tuple(r.stop), seed)


def response_budget(cfg: SpecialistRunConfig, specialist: Specialist) -> int:
    """Most response tokens one rollout can have: one generation, or every turn plus its observations."""
    turns = cfg.specialist.max_turns if specialist.make_env is not None else 1
    return cfg.rollout.max_new_tokens * turns


class SpecialistController:
    """Owns the loop state (data position, eval history); the workers own the model."""

    def __init__(
        self,
        cfg: SpecialistRunConfig,
        run_dir: Path,
        specialist: Specialist,
        tokenizer: Any,
        rollout: RolloutGroup,
        trainer: TrainerGroup,
        tracker: Tracker,
        stream: TaskStream,
        eval_tasks: list[Task],
    ):
        self.cfg, self.run_dir, self.specialist, self.tokenizer = cfg, run_dir, specialist, tokenizer
        self.rollout, self.trainer, self.tracker = rollout, trainer, tracker
        self.stream, self.eval_tasks = stream, eval_tasks
        self.advantage_fn = get_advantage_fn(cfg.algorithm.advantage)
        self.guard = NonFiniteGuard(cfg.trainer.max_nonfinite_steps)
        self.history: dict[str, Any] = {}
        self.last_checkpoint: str | None = None
        self.step = 0  # the step running (0: the start eval)
        self._prompt_cache: dict[str, list[int]] = {}
        self._clock: tuple[float, int] | None = None  # (time, step) of the first step this process ran
        self.multi_turn = specialist.make_env is not None  # agent specialists: episodes with an environment
        self.max_response_tokens = response_budget(cfg, specialist)

    def run(self, start_step: int = 0) -> dict[str, Any]:
        """Steps ``start_step + 1 .. cfg.steps``; returns the run summary."""
        with named_actor_failures(lambda: self.step, lambda: self.last_checkpoint):
            if start_step == 0:
                self.history["eval_start"] = self.evaluate(0)
                self.tracker.log(self.history["eval_start"], 0)
            for step in range(start_step + 1, self.cfg.steps + 1):
                self.step = step
                started = time.perf_counter()
                groups, metrics = self.sample_groups(step)
                metrics |= self.train(groups, step)
                metrics |= self.sync_weights()
                metrics["perf/step_s"] = time.perf_counter() - started
                if step == self.cfg.steps or (self.cfg.eval_every and step % self.cfg.eval_every == 0):
                    metrics |= self.evaluate(step)
                    self.history["eval_last"] = {k: v for k, v in metrics.items() if k.startswith("eval/")}
                self.tracker.log(metrics, step)
                self.history["last_step"] = {
                    k: v for k, v in metrics.items() if k.startswith(SUMMARY_PREFIXES)
                }
                self._progress(step, metrics)
                if step == self.cfg.steps or step % self.cfg.checkpoint_every == 0:
                    self.checkpoint(step)
        return self.summary()

    def prompt_ids(self, task: Task) -> list[int]:
        if task.uid not in self._prompt_cache:
            self._prompt_cache[task.uid] = chat_prompt_ids(self.tokenizer, task.prompt)
        return self._prompt_cache[task.uid]

    def sampling(self, seed: int, temperature: float | None = None) -> SamplingParams:
        return sampling_params(self.cfg.rollout, seed, temperature)

    def sample_groups(self, step: int) -> tuple[list[Group], dict[str, float]]:
        """``prompts_per_step`` groups; with dynamic sampling, all-equal-reward groups are replaced (DAPO)."""
        algo, wanted, g = self.cfg.algorithm, self.cfg.prompts_per_step, self.cfg.algorithm.group_size
        kept: list[Group] = []
        sampled: list[Group] = []
        started, rounds = time.perf_counter(), 0
        while len(kept) < wanted and rounds <= (algo.max_refill_rounds if algo.dynamic_sampling else 0):
            tasks = self.stream.take(wanted - len(kept))
            expanded = [t for t in tasks for _ in range(g)]
            rollouts = self.generate(expanded, self.sampling(self.cfg.seed * 100_003 + step * 101 + rounds))
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
        prompts = [self.prompt_ids(t) for t in tasks]
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

    def train(self, groups: list[Group], step: int) -> dict[str, float]:
        """Advantages per group, then ``num_minibatches`` optimizer steps over the packed batch."""
        if not groups:  # every group was all-equal even after refills: nothing to learn from this step
            return {"train/skipped_empty": 1.0}
        started = time.perf_counter()
        advantages_NG, metrics = self.advantage_fn(self._rewards([grp.rewards for grp in groups]))
        rollouts = [r for grp in groups for r in grp.rollouts]
        batch = build_train_batch(rollouts, advantages_NG.flatten().tolist(), token_id(self.tokenizer, "pad"))
        n_mb = self.cfg.trainer.num_minibatches
        if n_mb > 1:  # later mini-batches are off-policy: fix pi_old before the first update
            batch = replace(batch, old_logprobs_BT=self.trainer.forward_logprobs(batch))
        rows_per_mb = -(-batch.num_sequences // n_mb)
        for start in range(0, batch.num_sequences, rows_per_mb):
            mb = batch.select(slice(start, start + rows_per_mb))
            metrics |= self.trainer.train_step(mb, self.max_response_tokens)
            self.guard.update(bool(metrics["train/nonfinite"]), step, self.last_checkpoint)
        metrics["perf/train_s"] = time.perf_counter() - started
        return metrics

    def sync_weights(self) -> dict[str, float]:
        return self.rollout.push_weights(self.trainer.export_weights())

    def evaluate(self, step: int) -> dict[str, float]:
        """Held-out greedy pass@1 and sampled mean@k, per level where tasks have levels."""
        started = time.perf_counter()
        greedy = self.generate(self.eval_tasks, self.sampling(seed=step, temperature=0.0))
        scores = [r.score for r in self.score(self.eval_tasks, greedy)]
        metrics = {
            "eval/pass@1": sum(scores) / len(scores),
            "eval/response_len": sum(len(r.response_ids) for r in greedy) / len(greedy),
        }
        if (k := self.cfg.eval_samples) > 0:
            expanded = [t for t in self.eval_tasks for _ in range(k)]
            sampled = self.generate(expanded, self.sampling(seed=10_000 + step))
            sampled_scores = [r.score for r in self.score(expanded, sampled)]
            metrics[f"eval/mean@{k}"] = sum(sampled_scores) / len(sampled_scores)
        if self.multi_turn:
            metrics |= {f"eval/{k}": v for k, v in turn_metrics(greedy).items()}
        for level in sorted({t.level for t in self.eval_tasks if t.level}):
            level_scores = [s for t, s in zip(self.eval_tasks, scores, strict=True) if t.level == level]
            metrics[f"eval/pass@1/level_{level}"] = sum(level_scores) / len(level_scores)
        metrics["perf/eval_s"] = time.perf_counter() - started
        rows = [
            {"prompt": t.prompt, "response": r.text, "answer": t.answer, "score": s}
            for t, r, s in list(zip(self.eval_tasks, greedy, scores, strict=True))[
                : self.cfg.logger.sample_rows
            ]
        ]
        self.tracker.log_samples(rows, step)
        return metrics

    def checkpoint(self, step: int) -> None:
        state = {"data": self.stream.position(), "wandb_run_id": self.tracker.run_id, "history": self.history}
        path = save_checkpoint(self.run_dir, step, self._write_model, state, self.cfg.keep_checkpoints)
        self.last_checkpoint = str(path)

    def _write_model(self, path: Path) -> None:
        """Trainer state and the tokenizer: a checkpoint directory loads as a model (e.g. a distillation teacher)."""
        self.trainer.save(str(path))
        self.tokenizer.save_pretrained(path)

    def summary(self) -> dict[str, Any]:
        start, last = self.history.get("eval_start", {}), self.history.get("eval_last", {})
        summary: dict[str, Any] = {
            "steps": self.cfg.steps,
            "checkpoint": self.last_checkpoint,
            "rollout/fp4_mode": self.rollout.fp4_mode,  # packed | simulated | none
            "rollout/weight_sync": self.trainer.weight_sync,  # object_store | cuda_ipc
        }
        summary |= {f"{k}_start": v for k, v in start.items() if not k.startswith("perf/")}
        summary |= {k: v for k, v in last.items()}
        summary |= self.history.get("last_step", {})
        if "eval/pass@1" in start and "eval/pass@1" in last:
            summary["eval/pass@1_gain"] = last["eval/pass@1"] - start["eval/pass@1"]
        return summary | gpu_memory({"trainer": self.trainer, "rollout": self.rollout})

    def _progress(self, step: int, metrics: dict[str, float]) -> None:
        """One terminal line per step: reward, loss, step time, ETA (and eval when it ran)."""
        if self._clock is None:
            self._clock = (time.perf_counter() - metrics["perf/step_s"], step - 1)
        started, first = self._clock
        eta = (time.perf_counter() - started) / (step - first) * (self.cfg.steps - step)
        evals = f" eval/pass@1 {metrics['eval/pass@1']:.3f}" if "eval/pass@1" in metrics else ""
        print(
            f"step {step}/{self.cfg.steps} reward {metrics['reward/mean']:.3f} {loss_text(metrics)} "
            f"{metrics['perf/step_s']:.1f}s/step eta {eta:.0f}s{evals}",
            flush=True,
        )


def loss_text(metrics: dict[str, float]) -> str:
    """The step's loss, or why there was none: every group scored the same, so no advantage to learn from."""
    if "train/loss" in metrics:
        return f"loss {metrics['train/loss']:.4f}"
    return "no update (every group scored alike)" if metrics.get("train/skipped_empty") else "loss -"
