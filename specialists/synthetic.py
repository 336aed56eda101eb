"""Procedural tasks for the embedded default: seeded, levelled, with worked demonstrations.

Math: arithmetic word problems at three levels (1: one small addition or subtraction, 2: two-digit
numbers in a story, 3: two steps). Every task has a reference answer for the reward and a short worked
solution that ``jobs.make_base`` uses as an SFT demonstration. Train and held-out splits are disjoint by
construction: a task's split is a hash of its text, so no prompt appears in both.

Like real SFT data, which mixes answer conventions (GSM8K's ``#### 42``, "The answer is 42"), only a
share of the demonstrations (``boxed_share``) ends in the ``\\boxed{}`` the prompt asks for; the others end
"The answer is N." The base therefore follows the instruction only some of the time, and RL against the
verifier has to learn both the rewarded format and correct arithmetic.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass

from rl.types import Task

BOXED_INSTRUCTION = "Put the final answer in \\boxed{}."
SPLITS = ("train", "heldout")
LEVELS = (1, 2, 3)
HELDOUT_PERCENT = 20  # share of the task space that belongs to the held-out split

_NAMES = ("Ann", "Ben", "Cara", "Dev", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jade")
_ITEMS = ("apples", "books", "coins", "shells", "stamps", "pens", "cards", "marbles")


@dataclass(frozen=True)
class Demo:
    """A task with a worked solution (the SFT target)."""

    task: Task
    solution: str


def _op_line(a: int, op: str, b: int) -> tuple[str, int]:
    value = a + b if op == "+" else a - b
    return f"{a} {op} {b} = {value}", value


def _level1(rng: random.Random) -> tuple[str, list[tuple[int, str, int]]]:
    a, b = rng.randint(1, 20), rng.randint(1, 20)
    op = rng.choice("+-")
    if op == "-" and b > a:
        a, b = b, a
    return f"What is {a} {op} {b}?", [(a, op, b)]


def _level2(rng: random.Random) -> tuple[str, list[tuple[int, str, int]]]:
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    if rng.random() < 0.5:
        return f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have now?", [
            (a, "+", b)
        ]
    a, b = max(a, b), min(a, b)
    return f"{name} has {a} {item} and gives away {b}. How many {item} are left?", [(a, "-", b)]


def _level3(rng: random.Random) -> tuple[str, list[tuple[int, str, int]]]:
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    a, b = rng.randint(10, 60), rng.randint(10, 60)
    c = rng.randint(1, a + b - 1)
    text = (
        f"{name} has {a} {item}, finds {b} more, then loses {c}. How many {item} does {name} have in the end?"
    )
    return text, [(a, "+", b), (a + b, "-", c)]


_GENERATORS: dict[int, Callable[[random.Random], tuple[str, list[tuple[int, str, int]]]]] = {
    1: _level1,
    2: _level2,
    3: _level3,
}


def split_of(text: str) -> str:
    """The split a problem text belongs to: a stable hash, so train and held-out never overlap."""
    return "heldout" if _bucket(text, "split") < HELDOUT_PERCENT else "train"


def _bucket(text: str, salt: str) -> int:
    return int(hashlib.sha256(f"{salt}/{text}".encode()).hexdigest()[:8], 16) % 100


def make_demo(rng: random.Random, level: int, index: int, split: str, boxed_share: float = 1.0) -> Demo:
    """Draw one problem of ``level`` that belongs to ``split`` (redraws until the hash agrees).

    Whether the solution ends boxed is a hash of the problem text, so it never changes which tasks are drawn.
    """
    while True:
        text, steps = _GENERATORS[level](rng)
        if split_of(text) == split:
            break
    lines, value = [], 0
    for a, op, b in steps:
        line, value = _op_line(a, op, b)
        lines.append(line)
    task = Task(
        uid=f"synthetic/{split}/{index}",
        domain="math",
        prompt=f"{text}\n{BOXED_INSTRUCTION}",
        answer=str(value),
        source="synthetic",
        level=level,
    )
    boxed = _bucket(text, "format") < round(boxed_share * 100)
    final = f"\\boxed{{{value}}}" if boxed else f"The answer is {value}."
    return Demo(task=task, solution="\n".join([*lines, final]))


def check_generator_args(what: str, split: str, levels: tuple[int, ...], share: float) -> None:
    """The arguments every procedural generator takes: a split, levels among 1-3, a format share in [0, 1]."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    unknown = set(levels) - set(LEVELS)
    if unknown or not levels:
        raise ValueError(f"unknown {what} levels {sorted(unknown)}; valid: {list(LEVELS)}")
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"the format share must be in [0, 1], got {share}")


def math_demos(
    n: int, split: str = "train", seed: int = 0, levels: tuple[int, ...] = LEVELS, boxed_share: float = 1.0
) -> list[Demo]:
    """``n`` seeded math problems with worked solutions, levels drawn uniformly from ``levels``;
    a ``boxed_share`` of the solutions end in ``\\boxed{}``, the rest in "The answer is N." """
    check_generator_args("synthetic math", split, levels, boxed_share)
    rng = random.Random(f"{split}/{seed}")
    return [make_demo(rng, rng.choice(levels), i, split, boxed_share) for i in range(n)]


def math_tasks(n: int, split: str = "train", seed: int = 0, levels: tuple[int, ...] = LEVELS) -> list[Task]:
    """``n`` seeded math tasks (no solutions) for RL and evaluation."""
    return [demo.task for demo in math_demos(n, split, seed, levels)]
