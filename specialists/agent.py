"""The agent specialist: multi-turn tool use in the built-in lookup + calc environment, or function calling on
BFCL (``specialist=bfcl``: ``specialists/bfcl.py``, one turn, tools declared by the model's chat template).

Each rollout is an episode (``rl/rollout/multiturn.py``): the model calls tools as
``<tool>{"name": ..., "arg": ...}</tool>``, the environment's answers come back as ``<obs>...</obs>``
observation tokens (masked out of the loss), until a ``\\boxed{}`` final answer or ``specialist.max_turns``.
The reward is 1 for the right final answer (tools are needed: every episode has its own hidden store).
"""

from __future__ import annotations

from rl.config import BaseRecipe, SpecialistConfig
from rl.types import Reward, Rollout, Task
from specialists import bfcl
from specialists.agent_env import TOOL_STOP, LookupCalcEnv, agent_demos, agent_tasks, make_env, score_agent
from specialists.domains import Demo, Domain

DOMAIN = "agent"
SOURCES = ("synthetic", bfcl.SOURCE)


def _tasks(name: str, split: str, n: int, cfg: SpecialistConfig) -> list[Task]:
    if name not in SOURCES:
        raise ValueError(f"unknown agent task source {name!r}; valid: {', '.join(SOURCES)}")
    if name == bfcl.SOURCE:  # every category; specialist.levels are the synthetic generator's
        return bfcl.bfcl_tasks(n, split, cfg.data_seed)
    return agent_tasks(n, split, cfg.data_seed, tuple(cfg.levels), cfg.tool_prompt)


def train_tasks(cfg: SpecialistConfig) -> list[Task]:
    return _tasks(cfg.train_data, "train", cfg.num_train_tasks, cfg)


def eval_tasks(cfg: SpecialistConfig) -> list[Task]:
    return _tasks(cfg.eval_data, "heldout", cfg.num_eval_tasks, cfg)


def demos(recipe: BaseRecipe, n: int | None, split: str) -> list[Demo]:
    """SFT transcripts for ``jobs.make_base`` (model segments trained, observations not)."""
    made = agent_demos(n or recipe.num_agent_demos, split, recipe.seed, boxed_share=recipe.agent_boxed_share)
    return [Demo(d.task, tuple(d.segments)) for d in made]


def score(task: Task, rollout: Rollout) -> Reward:
    if task.source == bfcl.SOURCE:
        return bfcl.score_bfcl(task, rollout.text)
    return score_agent(task, rollout.text)


def episode(task: Task) -> bfcl.BFCLEnv | LookupCalcEnv:
    return bfcl.BFCLEnv(task) if task.source == bfcl.SOURCE else make_env(task)


SPECIALIST = Domain(
    DOMAIN, SOURCES, train_tasks, eval_tasks, score, demos, make_env=episode, tool_stop=TOOL_STOP
)
