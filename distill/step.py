"""The on-policy distillation step, driven by ``rl.loop.Loop``: student samples -> teachers prefill -> fused
reverse KL (the loop then pushes the weights); and the eval of every domain.

Each step: the student's FP4 rollout workers sample completions of a mix of every
domain's prompts (multi-turn episodes where the domain has an environment); each domain's rollouts go, as one
part per trainer rank, to that domain's teacher, which returns last-layer hidden states straight to the rank
(Ray hands the object over; the controller never holds them); the ranks take one optimizer step over all
parts, grouped by teacher so one teacher head is on the device at a time; the new weights go to the rollout
workers before the next step samples. The student's rewards on its own samples are logged too
(``reward/<domain>``): they cost nothing and show the distillation working before the eval does.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import ray

from distill.config import DistillRunConfig
from distill.objective import merge_opd_metrics
from distill.routing import Route
from distill.teacher import TeacherGroup
from rewards.guard import check_error_rate
from rl.batching import TaskStream, build_train_batch
from rl.episodes import (
    Prompts,
    lenient_pass_at_1,
    pass_at_1_by_level,
    rollout_seed,
    sampling_params,
    specialist_rollouts,
    specialist_scores,
    turn_metrics,
)
from rl.models import token_id
from rl.rollout.multiturn import Generate
from rl.tracking import Tracker
from rl.trainer.group import TrainerGroup
from rl.types import DistillPart, Rollout, SamplingParams, Task, TrainBatch


@dataclass
class DomainData:
    """A route's prompt stream and held-out tasks."""

    stream: TaskStream
    eval_tasks: list[Task]


def rollouts_for(route: Route, generate: Generate, prompts: Prompts, tasks: list[Task], params: SamplingParams
                 ) -> list[Rollout]:  # fmt: skip
    return specialist_rollouts(route.specialist, generate, prompts.tokenizer, tasks, [prompts(t) for t in tasks],
                               params, route.max_turns, params.max_new_tokens * route.max_turns)  # fmt: skip


def evaluate_domains(
    routes: list[Route],
    data: dict[str, DomainData],
    generate: Generate,
    prompts: Prompts,
    params: SamplingParams,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Greedy held-out pass@1 on every domain (and per level) of one model; a few sample rows per domain."""
    metrics: dict[str, float] = {}
    rows: list[dict[str, Any]] = []
    for route in routes:
        tasks = data[route.domain].eval_tasks
        rollouts = rollouts_for(route, generate, prompts, tasks, params)
        scores = [
            r.score
            for r in specialist_scores(route.specialist, tasks, rollouts, route.tasks_cfg.reward_timeout_s)
        ]
        metrics[f"eval/{route.domain}/pass@1"] = sum(scores) / len(scores)
        metrics[f"eval/{route.domain}/n"] = float(len(scores))
        timeout_s = route.tasks_cfg.reward_timeout_s
        if (lenient := lenient_pass_at_1(route.specialist, tasks, rollouts, scores, timeout_s)) is not None:
            metrics[f"eval/{route.domain}/pass@1_lenient"] = lenient
        metrics |= pass_at_1_by_level(tasks, scores, f"eval/{route.domain}/pass@1")
        rows += [{"domain": route.domain, "prompt": t.prompt, "response": r.text, "score": s}
                 for t, r, s in list(zip(tasks, rollouts, scores, strict=True))[:3]]  # fmt: skip
    return metrics, rows


class OPDStep:
    """One on-policy distillation step over every route: what ``rl.loop.Loop`` samples, trains and evaluates."""

    summary_prefixes: tuple[str, ...] = ("opd/", "train/")

    def __init__(self, cfg: DistillRunConfig, routes: list[Route], data: dict[str, DomainData], tokenizer: Any,
                 rollout: Any, trainer: TrainerGroup, teachers: TeacherGroup, tracker: Tracker):  # fmt: skip
        self.cfg, self.routes, self.data = cfg, routes, data
        self.prompts, self.pad_id = Prompts(tokenizer), token_id(tokenizer, "pad")
        self.rollout, self.trainer, self.teachers, self.tracker = rollout, trainer, teachers, tracker

    def data_position(self) -> dict[str, Any]:
        return {d: v.stream.position() for d, v in self.data.items()}

    def seek(self, position: dict[str, Any]) -> None:
        for domain, at in position.items():
            self.data[domain].stream.seek(**at)

    def describe(self, metrics: dict[str, float]) -> tuple[str, str]:
        kls = " ".join(
            f"kl/{r.domain} {metrics.get(f'opd/kl/{r.teacher.name}', float('nan')):.3f}" for r in self.routes
        )
        shown = [r.domain for r in self.routes if f"eval/{r.domain}/pass@1" in metrics]
        evals = " ".join(
            f"{d} {metrics[f'eval/{d}/pass@1']:.3f} (n={metrics.get(f'eval/{d}/n', 0):.0f})" for d in shown
        )
        return kls, f"eval/pass@1 {evals}" if evals else ""

    def sampling(self, seed: int, temperature: float | None = None) -> SamplingParams:
        return sampling_params(self.cfg.rollout, seed, temperature)

    def sample(self, step: int) -> tuple[dict[str, TrainBatch], dict[str, float]]:
        """Each domain's share of the step's prompts, ``samples_per_prompt`` student completions each."""
        started, metrics, batches = time.perf_counter(), {}, {}
        share = -(-self.cfg.prompts_per_step // len(self.routes))
        for i, route in enumerate(self.routes):
            tasks = [
                t
                for t in self.data[route.domain].stream.take(share)
                for _ in range(self.cfg.distill.samples_per_prompt)
            ]
            rollouts = rollouts_for(route, self.rollout.generate, self.prompts, tasks,
                                    self.sampling(rollout_seed(self.cfg.seed, step, i)))  # fmt: skip
            rewards = specialist_scores(route.specialist, tasks, rollouts, route.tasks_cfg.reward_timeout_s)
            check_error_rate(rewards, route.tasks_cfg.max_reward_error_rate, f"step {step}, {route.domain}")
            metrics[f"reward/{route.domain}"] = sum(r.score for r in rewards) / len(rewards)
            metrics[f"rollout/{route.domain}/response_len"] = sum(
                len(r.response_ids) for r in rollouts
            ) / len(rollouts)
            if route.multi_turn:
                metrics |= {
                    k.replace("/", f"/{route.domain}/", 1): v for k, v in turn_metrics(rollouts).items()
                }
            batches[route.domain] = build_train_batch(rollouts, [0.0] * len(rollouts), self.pad_id)
        metrics["rollout/worker_restarts"] = float(self.rollout.restarts)  # cumulative, this process
        metrics["perf/rollout_s"] = time.perf_counter() - started
        return batches, metrics

    def train(
        self, batches: dict[str, TrainBatch], updated: Callable[[dict[str, float]], None]
    ) -> dict[str, float]:
        """Teacher prefill per rank shard, then one optimizer step over every teacher's parts."""
        started = time.perf_counter()
        ranks = len(self.trainer.ranks)
        parts: list[list[DistillPart]] = [[] for _ in range(ranks)]
        hidden: list[list[ray.ObjectRef]] = [[] for _ in range(ranks)]
        seconds: dict[str, float] = {}
        for route in self.routes:
            name, shards = route.teacher.name, self.trainer.shards(batches[route.domain])
            refs, seconds[name] = self.teachers.prefill(name, shards)
            for rank, (shard, ref) in enumerate(zip(shards, refs, strict=True)):
                parts[rank].append(DistillPart(name, shard, route.weight))
                hidden[rank].append(ref)
        total = sum(b.num_tokens for b in batches.values())
        work = [(rank_parts, total, *refs) for rank_parts, refs in zip(parts, hidden, strict=True)]
        metrics = merge_opd_metrics(self.trainer.step(work), total)
        updated(metrics)
        metrics |= {f"opd/teacher_s/{name}": s for name, s in seconds.items()}
        metrics["opd/teacher_restarts"] = float(self.teachers.restarts)
        metrics["perf/train_s"] = time.perf_counter() - started
        return metrics

    def evaluate(self, step: int) -> dict[str, float]:
        started = time.perf_counter()
        metrics, rows = evaluate_domains(self.routes, self.data, self.rollout.generate, self.prompts,
                                         self.sampling(seed=step, temperature=0.0))  # fmt: skip
        self.tracker.log_samples(rows[: self.cfg.logger.sample_rows], step)
        metrics["perf/eval_s"] = time.perf_counter() - started
        return metrics


def recovery_table(base: dict[str, float], teachers: dict[str, dict[str, float]], student: dict[str, float],
                   routes: list[Route]) -> tuple[str, dict[str, float]]:  # fmt: skip
    """Markdown table of greedy pass@1 per domain for base, each teacher and the student, with the share of
    each teacher's gain over the base on its own domain that the student recovered (where there is a gain)."""
    names = [r.teacher.name for r in routes]
    lines = ["| domain | base | " + " | ".join(names) + " | student | recovered |",
             "|---" * (len(names) + 4) + "|"]  # fmt: skip
    recovered: dict[str, float] = {}
    for route in routes:
        key = f"eval/{route.domain}/pass@1"
        gain = teachers[route.teacher.name][key] - base[key]
        share = "n/a (the teacher is not ahead of the base)"
        if gain > 0:
            recovered[route.domain] = (student[key] - base[key]) / gain
            share = f"{recovered[route.domain]:.0%}"
        cells = [f"{teachers[n][key]:.3f}" for n in names]
        lines.append(
            f"| {route.domain} | {base[key]:.3f} | "
            + " | ".join(cells)
            + f" | {student[key]:.3f} | {share} |"
        )
    return "\n".join(lines), recovered


def teacher_evals(routes: list[Route], data: dict[str, DomainData], make_generate: Any, prompts: Prompts,
                  params: SamplingParams, parallel: bool = False) -> dict[str, dict[str, float]]:  # fmt: skip
    """Every teacher on every domain, each served as its own FP4 rollout (``make_generate(entry)`` yields a
    generate function and a closer); one line per teacher as it finishes. ``parallel``: every teacher at once,
    each in a thread with its own tokenizer (on one GPU, three small decoders starting, compiling and decoding
    side by side take less time than in turn)."""
    teachers = {route.teacher.name: route for route in routes}

    def evaluate(route: Route, prompts: Prompts) -> dict[str, float]:
        started = time.perf_counter()
        generate, close = make_generate(route.teacher)
        try:
            metrics = evaluate_domains(routes, data, generate, prompts, params)[0]
        finally:
            close()
        scores = ", ".join(f"{r.domain} {metrics[f'eval/{r.domain}/pass@1']:.3f}" for r in routes)
        print(f"teacher {route.teacher.name!r}: {scores} ({time.perf_counter() - started:.0f}s)", flush=True)
        return metrics

    if not parallel or len(teachers) < 2:
        return {name: evaluate(route, prompts) for name, route in teachers.items()}
    with ThreadPoolExecutor(len(teachers), thread_name_prefix="teacher-eval") as pool:
        futures = {name: pool.submit(evaluate, route, Prompts(copy.deepcopy(prompts.tokenizer)))
                   for name, route in teachers.items()}  # fmt: skip
        return {name: future.result() for name, future in futures.items()}
