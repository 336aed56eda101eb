"""What RL, distillation and the base recipe do with a specialist: its episodes (one generation, or a multi-turn
episode with its environment) and its rewards (guarded: never raising, a failure scored 0 with the reason).

``Specialist`` is the contract a domain meets (``specialists/domains.py`` holds the table of them): tasks, a
per-sample reward, optionally a batch reward (programs run together in a sandbox pool) and an environment.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from typing import Any, Protocol

from rewards.guard import guarded_scores
from rl.chat_tools import tool_result_text
from rl.config import RolloutConfig, SpecialistConfig
from rl.rollout.multiturn import EnvLike, Generate, Render, multi_turn_rollouts
from rl.sft import chat_prompt_ids
from rl.types import Reward, Rollout, SamplingParams, Task


class Scoring(Protocol):
    """How a domain's samples are scored: one at a time, and optionally a whole batch at once."""

    @property
    def domain(self) -> str: ...
    @property
    def score(self) -> Callable[[Task, Rollout], Reward]: ...
    @property
    def score_batch(self) -> Callable[[list[Task], list[Rollout]], list[Reward]] | None:
        """All of a step's samples at once (programs run together in a sandbox pool), or None."""
        ...


class Reading(Scoring, Protocol):
    """A second way to read a domain's answers (eval only), and which rollouts it can read differently."""

    @property
    def differs(self) -> Callable[[Rollout], bool]:
        """Whether this reading can score the rollout differently from the reward; where not, the reward's
        verdict stands and nothing is scored twice."""
        ...


class Specialist(Scoring, Protocol):
    """One domain: its prompts, its reward and, for agents, its environment (read-only members)."""

    @property
    def train_tasks(self) -> Callable[[SpecialistConfig], list[Task]]: ...
    @property
    def eval_tasks(self) -> Callable[[SpecialistConfig], list[Task]]: ...
    @property
    def make_env(self) -> Callable[[Task], EnvLike] | None:
        """Multi-turn: one environment per episode, or None."""
        ...

    @property
    def tool_stop(self) -> str:
        """Where a model turn ends to call a tool (multi-turn only)."""
        ...

    @property
    def lenient(self) -> Reading | None:
        """Eval only, never a reward: a lenient reading of the answers (math: the last number where nothing is
        boxed; code: the first code block, any language), so a gain in the answer's form is told apart from a
        gain in skill. None where the reward has no stricter form than the task itself."""
        ...


class Prompts:
    """Chat-formatted prompt ids, encoded once per task."""

    def __init__(self, tokenizer: Any):
        self.tokenizer, self._cache = tokenizer, {}

    def __call__(self, task: Task) -> list[int]:
        if task.uid not in self._cache:
            self._cache[task.uid] = chat_prompt_ids(self.tokenizer, task.prompt, task.tools, task.system)
        return self._cache[task.uid]


def sampling_params(r: RolloutConfig, seed: int, temperature: float | None = None) -> SamplingParams:
    """The rollout config's sampling at ``seed``; ``temperature=0.0`` for greedy eval."""
    temp = r.temperature if temperature is None else temperature
    return SamplingParams(r.max_new_tokens, temp, r.top_p, r.top_k, tuple(r.stop), seed)


def pass_at_1_by_level(tasks: list[Task], scores: list[float], key: str) -> dict[str, float]:
    """``<key>/level_<n>``: the mean score over each difficulty level's tasks (tasks without a level: none)."""
    out = {}
    for level in sorted({t.level for t in tasks if t.level}):
        at = [s for t, s in zip(tasks, scores, strict=True) if t.level == level]
        out[f"{key}/level_{level}"] = sum(at) / len(at)
    return out


def rollout_seed(seed: int, step: int, part: int) -> int:
    """The sampling seed of a step's ``part`` (a refill round, or a domain): a function of the run's seed and
    the step only, so a resumed run samples what an uninterrupted one would have."""
    return seed * 100_003 + step * 101 + part


def specialist_rollouts(
    specialist: Specialist,
    generate: Generate,
    tokenizer: Any,
    tasks: list[Task],
    prompts: list[list[int]],
    params: SamplingParams,
    max_turns: int,
    max_response_tokens: int,
) -> list[Rollout]:
    """One completion per task with any engine's ``generate``: a single generation, or, for a specialist with
    an environment (``make_env``), a multi-turn episode: in the chat template's format where the tasks declare
    their tools (``Task.tools``) or the environment answers as the user (``observation_render``), else in the
    compact format (``specialist.tool_stop``)."""
    if specialist.make_env is None:
        return generate(prompts, params)
    envs = [specialist.make_env(t) for t in tasks]
    renders = [observation_render(tokenizer, t, env) for t, env in zip(tasks, envs, strict=True)]
    return multi_turn_rollouts(generate, tokenizer, prompts, envs, params, max_turns, specialist.tool_stop,
                               max_response_tokens, renders)  # fmt: skip


def observation_render(tokenizer: Any, task: Task, env: Any) -> Render | None:
    """How an episode's observations are written: as the chat template's message of the environment's
    ``observation_role`` (``tool`` unless the environment answers as the ``user``, as verifiers' do) where the
    task declares tools or the environment answers as the user; None: as the environment wrote them (compact)."""
    role = getattr(env, "observation_role", "tool")
    if not task.tools and role == "tool":
        return None
    return functools.partial(tool_result_text, tokenizer, role=role)


def env_score(task: Task, rollout: Rollout) -> Reward:
    """The reward of an environment scored by its own episode: its last answer's reward and reason
    (``Rollout.env_reward``); a sample that never met its environment scores 0."""
    if rollout.env_reward is None:
        return Reward(0.0, "no_episode")
    if not math.isfinite(rollout.env_reward):  # one NaN would poison the group's advantages
        return Reward(0.0, "reward_error: non-finite environment reward")
    return Reward(rollout.env_reward, rollout.env_reason)


def specialist_scores(
    specialist: Scoring,
    tasks: list[Task],
    rollouts: list[Rollout],
    timeout_s: float = SpecialistConfig.reward_timeout_s,
) -> list[Reward]:
    """Rewards in order, never raising: a reward that raises or hangs gives 0 with a ``reward_error`` reason
    (``rewards.guard``). Specialists that run programs score a whole batch at once (``score_batch``, whose
    sandbox bounds every program); if that raises, the batch is scored sample by sample, guarded."""
    if specialist.score_batch is not None and not os.environ.get("DISTILLERY_FAULT_REWARD"):
        try:
            return specialist.score_batch(tasks, rollouts)
        except Exception as err:  # retried per sample below, so each failure is recorded where it happened
            print(f"warning: the {specialist.domain} specialist's score_batch raised {type(err).__name__}: {err}; scoring the "
                  "batch sample by sample", flush=True)  # fmt: skip
    return guarded_scores(specialist.score, tasks, rollouts, timeout_s)


def lenient_pass_at_1(
    specialist: Specialist, tasks: list[Task], rollouts: list[Rollout], strict: list[float], timeout_s: float
) -> float | None:
    """Pass@1 of ``rollouts`` under the specialist's lenient reading (guarded like the reward), or None.
    ``strict``: the reward's scores of the same rollouts, kept wherever the reading cannot differ."""
    reading = specialist.lenient
    if reading is None:
        return None
    redo = [i for i, rollout in enumerate(rollouts) if reading.differs(rollout)]
    rescored = specialist_scores(reading, [tasks[i] for i in redo], [rollouts[i] for i in redo], timeout_s)
    scores = list(strict)
    for i, reward in zip(redo, rescored, strict=True):
        scores[i] = reward.score
    return sum(scores) / len(scores)


def turn_metrics(rollouts: list[Rollout]) -> dict[str, float]:
    """Multi-turn figures: turns per episode, tool calls per episode, share of tool calls that errored."""
    calls = sum(r.tool_calls for r in rollouts)
    return {
        "rollout/turns_mean": sum(r.turns for r in rollouts) / len(rollouts),
        "rollout/tool_calls_mean": calls / len(rollouts),
        "reward/tool_error_rate": sum(r.tool_errors for r in rollouts) / max(calls, 1),
        "rollout/turn_limit_frac": sum(r.finish_reason == "turn_limit" for r in rollouts) / len(rollouts),
    }
