"""The agent specialist: multi-turn tool use in the built-in lookup + calc environment.

Each rollout is an episode (``rl/rollout/multiturn.py``): the model calls tools as
``<tool>{"name": ..., "arg": ...}</tool>``, the environment's answers come back as ``<obs>...</obs>``
observation tokens (masked out of the loss), until a ``\\boxed{}`` final answer or ``specialist.max_turns``.
The reward is 1 for the right final answer (tools are needed: every episode has its own hidden store).
"""

from __future__ import annotations

from rl.config import SpecialistConfig
from rl.types import Reward, Rollout, Task
from specialists.agent_env import TOOL_STOP, agent_demos, agent_tasks, make_env, score_agent

DOMAIN = "agent"
SOURCES = ("synthetic",)
__all__ = ["DOMAIN", "TOOL_STOP", "demos", "eval_tasks", "make_env", "score", "train_tasks"]


def _tasks(name: str, split: str, n: int, cfg: SpecialistConfig) -> list[Task]:
    if name not in SOURCES:
        raise ValueError(f"unknown agent task source {name!r}; valid: {', '.join(SOURCES)}")
    return agent_tasks(n, split, cfg.data_seed, tuple(cfg.levels))


def train_tasks(cfg: SpecialistConfig) -> list[Task]:
    return _tasks(cfg.train_data, "train", cfg.num_train_tasks, cfg)


def eval_tasks(cfg: SpecialistConfig) -> list[Task]:
    return _tasks(cfg.eval_data, "heldout", cfg.num_eval_tasks, cfg)


def demos(n: int, split: str, seed: int, boxed_share: float) -> list:
    """SFT transcripts for ``jobs.make_base`` (model segments trained, observations not)."""
    return agent_demos(n, split, seed, boxed_share=boxed_share)


def score(task: Task, rollout: Rollout) -> Reward:
    return score_agent(task, rollout.text)
