"""The code specialist: tasks (synthetic functions, MBPP, HumanEval-format JSONL) and a sandboxed test reward.

A completion scores 1 when the last ```python block in it passes the task's hidden tests in the sandbox
(``rewards/sandbox.py``); otherwise 0 with the reason (no code block, syntax error, wrong answer, timeout, ...).
Rollouts of a step are scored together on a pool of sandboxes (``score_batch``); the pool needs bwrap, or the
opted-in ``rlimits+audit`` fallback (``DISTILLERY_SANDBOX_ISOLATION``), and refuses to start otherwise.
"""

from __future__ import annotations

from functools import cache

from rewards.code import extract_code, extract_first_code, make_answer, score_code, score_code_batch
from rewards.sandbox import SandboxPool
from rl.config import BaseRecipe, SpecialistConfig
from rl.types import Reward, Rollout, Task
from specialists.code_data import DatasetError, load_code_tasks
from specialists.domains import Demo, Domain, Reading
from specialists.synthetic_code import code_demos, code_problems, to_task

DOMAIN = "code"
SOURCES = ("synthetic", "mbpp", "mbpp_sanitized", "humaneval")


def synthetic_tasks(n: int, split: str, seed: int, levels: tuple[int, ...]) -> list[Task]:
    problems = code_problems(n, split, seed, levels)
    return [to_task(p, f"synthetic-code/{split}/{i}", make_answer) for i, p in enumerate(problems)]


def demos(recipe: BaseRecipe, n: int | None, split: str) -> list[Demo]:
    """SFT demonstrations for ``jobs.make_base`` (a ``recipe.code_fenced_share`` of them in a ```python block)."""
    made = code_demos(n or recipe.num_code_demos, split, recipe.seed, make_answer, recipe.code_fenced_share)
    return [Demo(d.task, ((d.solution, True),)) for d in made]


def _load(name: str, path: str, split: str, n: int, cfg: SpecialistConfig) -> list[Task]:
    if name not in SOURCES:
        raise DatasetError(f"unknown code dataset {name!r}; valid: {', '.join(SOURCES)}")
    if name == "synthetic":
        return synthetic_tasks(n, split, cfg.data_seed, tuple(cfg.levels))
    if not path:
        raise DatasetError(f"code dataset {name!r} needs a file path (specialist.train_path / eval_path)")
    # MBPP's own splits: train = task ids 601-974, test = 11-510; a HumanEval-format file is its own split
    return load_code_tasks(name, path, split="test" if split == "heldout" else "train", limit=n or None)


def train_tasks(cfg: SpecialistConfig) -> list[Task]:
    return _load(cfg.train_data, cfg.train_path, "train", cfg.num_train_tasks, cfg)


def eval_tasks(cfg: SpecialistConfig) -> list[Task]:
    return _load(cfg.eval_data, cfg.eval_path, "heldout", cfg.num_eval_tasks, cfg)


@cache
def pool() -> SandboxPool:
    """One pool of sandbox runners per process, shared by every step."""
    return SandboxPool()


def score(task: Task, rollout: Rollout) -> Reward:
    return score_code(rollout.text, task.answer)


def score_batch(tasks: list[Task], rollouts: list[Rollout]) -> list[Reward]:
    """Every rollout of a step, in order, run in parallel sandboxes."""
    return score_code_batch([(r.text, t.answer) for t, r in zip(tasks, rollouts, strict=True)], pool())


def lenient_score(task: Task, rollout: Rollout) -> Reward:
    """Eval only: the completion's first code block, whatever its language tag."""
    return score_code(rollout.text, task.answer, extract=extract_first_code)


def another_block_first(rollout: Rollout) -> bool:
    """Only a completion whose first block is not the one the reward runs is read differently."""
    return extract_first_code(rollout.text) != extract_code(rollout.text)


def lenient_score_batch(tasks: list[Task], rollouts: list[Rollout]) -> list[Reward]:
    items = [(r.text, t.answer) for t, r in zip(tasks, rollouts, strict=True)]
    return score_code_batch(items, pool(), extract=extract_first_code)


SPECIALIST = Domain(DOMAIN, SOURCES, train_tasks, eval_tasks, score, demos, score_batch=score_batch,
                    lenient=Reading(DOMAIN, another_block_first, lenient_score, lenient_score_batch))  # fmt: skip
