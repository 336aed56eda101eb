"""The agent specialist: multi-turn tool use in the built-in lookup + calc environment, function calling on
BFCL (``specialist=bfcl``: ``specialists/bfcl.py``, one turn), TextWorld games (``specialist=textworld``:
``specialists/text_games.py``), an environment of your own (``specialist.env``: ``specialists/user_env.py``) or
one written for verifiers (``specialist.train_data=verifiers``: ``specialists/verifiers_env.py``).

Each rollout is an episode (``rl/rollout/multiturn.py``). In the compact format (the embedded base's) the model
calls tools as ``<tool>{"name": ..., "arg": ...}</tool>`` and the environment's answers come back as
``<obs>...</obs>`` observation tokens (masked out of the loss); with ``specialist.tool_format=template`` the tools
are declared by the chat template and called and answered in its format. The built-in task's reward is 1 for the
right final answer (tools are needed: every episode has its own hidden store); TextWorld's, your own
environment's and a verifiers environment's (its rubric's) is the environment's own verdict on the episode
(``rl.episodes.env_score``).
"""

from __future__ import annotations

from typing import Any

from rl.config import BaseRecipe, SpecialistConfig
from rl.episodes import env_score
from rl.types import Reward, Rollout, Task
from specialists import bfcl, text_games, user_env, verifiers_env
from specialists.agent_env import TOOL_STOP, agent_demos, agent_tasks, make_env, score_agent
from specialists.domains import Demo, Domain

DOMAIN = "agent"
SOURCES = ("synthetic", bfcl.SOURCE, text_games.SOURCE, user_env.SOURCE, verifiers_env.SOURCE)


def _tasks(name: str, split: str, n: int, cfg: SpecialistConfig) -> list[Task]:
    if name not in SOURCES:
        raise ValueError(f"unknown agent task source {name!r}; valid: {', '.join(SOURCES)}")
    if name == bfcl.SOURCE:  # every category; specialist.levels are the synthetic generator's
        return bfcl.bfcl_tasks(n, split, cfg.data_seed)
    template = cfg.tool_format == "template"
    if name == text_games.SOURCE:
        return text_games.textworld_tasks(
            n, split, cfg.data_seed, tuple(cfg.levels), template, cfg.dense_reward
        )
    if name == user_env.SOURCE:
        return user_env.env_tasks(cfg.env, n, split, cfg.data_seed)
    if name == verifiers_env.SOURCE:
        return verifiers_env.verifiers_tasks(cfg.env, cfg.env_args, n, split)
    return agent_tasks(n, split, cfg.data_seed, tuple(cfg.levels), cfg.tool_prompt, template)


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
    if task.source == "synthetic" and not task.tools:  # the compact transcript is replayed
        return score_agent(task, rollout.text)
    return env_score(task, rollout)


def episode(task: Task) -> Any:
    if task.source == bfcl.SOURCE:
        return bfcl.BFCLEnv(task)
    if task.source == text_games.SOURCE:
        return text_games.TextWorldEnv(task)
    if task.source == user_env.SOURCE:
        return user_env.make_user_env(task)
    if task.source == verifiers_env.SOURCE:
        return verifiers_env.make_verifiers_env(task)
    return make_env(task)


SPECIALIST = Domain(
    DOMAIN, SOURCES, train_tasks, eval_tasks, score, demos, make_env=episode, tool_stop=TOOL_STOP
)
