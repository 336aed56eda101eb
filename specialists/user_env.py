"""Your own environment, by name from a config: ``specialist.train_data=env specialist.eval_data=env
specialist.env=package.module:Class`` (README "Your own environment"; no change in ``specialists/``).

The class is built as ``Class(seed=<int>)`` and meets ``specialists.agent_env.Environment``: ``reset() -> str``
(the user message) and ``step(action) -> StepResult`` (the observation, done, the reward). A class attribute
``tools`` (a list of JSON function schemas) declares its tools through the chat template, and then observations
are bare results that the rollout driver writes as the template's tool messages; ``specialists.agent_env.read_call``
reads a turn's call in either format. The reward is the environment's own: the last ``StepResult.reward`` of the
episode, with its ``info["reason"]`` (``turn_limit`` when the driver's turn limit ended it).

Tasks are seeds: a seed's split (train or held-out) is a hash of the class path and the seed, so the two never
share an episode; the prompt is the seed's ``reset()``, so an environment must give the same episode for the same
seed.
"""

from __future__ import annotations

import importlib
import json
from typing import Any

from rl.types import Task
from specialists.synthetic import split_of

DOMAIN = "agent"
SOURCE = "env"


class EnvClassError(ValueError):
    """``specialist.env`` does not name an environment class."""


def env_class(path: str) -> Any:
    """The class ``path`` ("package.module:Class") names; ``EnvClassError`` saying what is wrong."""
    module, _, name = path.partition(":")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise EnvClassError(f"specialist.env={path}: cannot import {name} from {module} ({err})") from err
    if missing := [m for m in ("reset", "step") if not callable(getattr(cls, m, None))]:
        raise EnvClassError(f"specialist.env={path}: {name} has no {' or '.join(missing)} method (an environment "
                            "has reset() -> str and step(action) -> StepResult)")  # fmt: skip
    return cls


def env_tasks(path: str, n: int, split: str, seed: int = 0) -> list[Task]:
    """``n`` episodes of ``split`` (their prompts read from ``reset()``)."""
    cls = env_class(path)
    tools = json.dumps(cls.tools) if getattr(cls, "tools", None) else ""
    tasks, candidate = [], seed * 1_000_003
    while len(tasks) < n:
        if split_of(f"{path}/{candidate}") == split:
            prompt = cls(seed=candidate).reset()
            tasks.append(Task(uid=f"{SOURCE}/{split}/{candidate}", domain=DOMAIN, prompt=str(prompt),
                              answer=json.dumps({"env": path, "seed": candidate}), source=SOURCE, tools=tools))  # fmt: skip
        candidate += 1
    return tasks


def make_user_env(task: Task) -> Any:
    """The episode of ``task``, reset."""
    spec = json.loads(task.answer)
    env = env_class(spec["env"])(seed=int(spec["seed"]))
    env.reset()
    return env
