"""The math specialist: its tasks (synthetic, GSM8K, MATH-500, MATH) and its reward (math-verify on \\boxed{})."""

from __future__ import annotations

from rewards.math import extract_boxed, score_math, score_math_lenient
from rl.config import BaseRecipe, SpecialistConfig
from rl.types import Reward, Rollout, Task
from specialists import synthetic
from specialists.domains import Demo, Domain, Reading
from specialists.math_data import DatasetError, load_math_tasks

DOMAIN = "math"
SOURCES = ("synthetic", "gsm8k", "math500", "math")


def _load(name: str, path: str, split: str, n: int, cfg: SpecialistConfig) -> list[Task]:
    if name not in SOURCES:
        raise DatasetError(f"unknown math dataset {name!r}; valid: {', '.join(SOURCES)}")
    if name == "synthetic":
        return synthetic.math_tasks(n, split, cfg.data_seed, tuple(cfg.levels))
    if not path:
        raise DatasetError(f"math dataset {name!r} needs a file path (specialist.train_path / eval_path)")
    return load_math_tasks(name, path, limit=n or None)


def train_tasks(cfg: SpecialistConfig) -> list[Task]:
    """The RL prompts."""
    return _load(cfg.train_data, cfg.train_path, "train", cfg.num_train_tasks, cfg)


def eval_tasks(cfg: SpecialistConfig) -> list[Task]:
    """The held-out prompts (synthetic: a split disjoint from train by construction)."""
    return _load(cfg.eval_data, cfg.eval_path, "heldout", cfg.num_eval_tasks, cfg)


def score(task: Task, rollout: Rollout) -> Reward:
    """1 for an equivalent ``\\boxed{}`` answer, else 0 with the reason."""
    return score_math(rollout.text, task.answer)


def lenient_score(task: Task, rollout: Rollout) -> Reward:
    """Eval only: the boxed answer, else the last number in the response."""
    return score_math_lenient(rollout.text, task.answer)


def unboxed(rollout: Rollout) -> bool:
    """Only a response with nothing boxed is read differently (its last number); a boxed one is the reward's."""
    return extract_boxed(rollout.text) is None


def demos(recipe: BaseRecipe, n: int | None, split: str) -> list[Demo]:
    """SFT demonstrations for ``jobs.make_base`` (a ``recipe.boxed_share`` of them answer in ``\\boxed{}``)."""
    made = synthetic.math_demos(n or recipe.num_demos, split, recipe.seed, boxed_share=recipe.boxed_share)
    return [Demo(d.task, ((d.solution, True),)) for d in made]


SPECIALIST = Domain(
    DOMAIN, SOURCES, train_tasks, eval_tasks, score, demos, lenient=Reading(DOMAIN, unboxed, lenient_score)
)
