"""The one table of specialists: a name -> the module whose ``SPECIALIST`` meets ``rl.episodes.Specialist``.

Adding a domain is a module with its tasks, reward (and environment) and one line here; the jobs, the
distillation routes and the base recipe look domains up through ``get_specialist``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rl.config import BaseRecipe, SpecialistConfig
from rl.types import Reward, Rollout, Task

SPECIALISTS = {"math": "specialists.math", "code": "specialists.code", "agent": "specialists.agent"}


@dataclass(frozen=True)
class Demo:
    """One SFT demonstration for the base: the task and its completion as segments (text, trained?) -- one
    trained segment for math and code; an agent transcript's observations are context, not target."""

    task: Task
    segments: tuple[tuple[str, bool], ...]


@dataclass(frozen=True)
class Reading:
    """A second way to read a domain's answers (``rl.episodes.Reading``): a specialist's lenient eval reading."""

    domain: str
    differs: Callable[[Rollout], bool]  # can it score this rollout differently from the reward?
    score: Callable[[Task, Rollout], Reward]
    score_batch: Callable[[list[Task], list[Rollout]], list[Reward]] | None = None


@dataclass(frozen=True)
class Domain:
    """A specialist (``rl.episodes.Specialist``) plus what the base recipe takes from it."""

    domain: str
    sources: tuple[str, ...]  # the task sources specialist.train_data / eval_data may name
    train_tasks: Callable[[SpecialistConfig], list[Task]]
    eval_tasks: Callable[[SpecialistConfig], list[Task]]
    score: Callable[[Task, Rollout], Reward]
    demos: Callable[[BaseRecipe, int | None, str], list[Demo]]  # (recipe, count or the recipe's, split)
    score_batch: Callable[[list[Task], list[Rollout]], list[Reward]] | None = None
    make_env: Callable[[Task], Any] | None = None
    tool_stop: str = ""
    lenient: Reading | None = None  # eval only (rl.episodes.Specialist.lenient)


def get_specialist(domain: str, key: str = "specialist.domain") -> Domain:
    """The specialist of ``domain``; an unknown name fails naming ``key`` and the valid ones."""
    if domain not in SPECIALISTS:
        raise ValueError(f"unknown {key} {domain!r}; valid: {', '.join(SPECIALISTS)}")
    return importlib.import_module(SPECIALISTS[domain]).SPECIALIST
