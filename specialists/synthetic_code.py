"""Procedural code tasks for the embedded default: small Python functions with hidden tests, three levels.

Level 1: one arithmetic expression of one argument ("returns x plus 7"). Level 2: two arguments or a
comparison. Level 3: a list argument and a loop or comprehension. Each task names the function and its
arguments; the hidden tests are ``assert`` lines on seeded inputs, computed by a reference implementation,
so a solution passes only if it computes the right thing. Train and held-out splits are disjoint by a hash
of the prompt text (as in ``specialists/synthetic.py``).

Like real SFT data, only a share of the demonstrations (``fenced_share``) put the code in the ```python block
the prompt asks for; the others give the bare function, which the code reward cannot extract. RL against the
sandboxed tests has to learn the asked-for format and correct code.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rl.types import Task
from specialists.synthetic import LEVELS, check_generator_args, split_of

FENCE_INSTRUCTION = "Answer with the code in a ```python block."
_NAMES = ("f", "g", "calc", "solve", "step", "value", "result", "compute")


@dataclass(frozen=True)
class CodeProblem:
    """A task before it is a ``Task``: prompt, reference solution and the calls its tests make."""

    prompt: str
    solution: str  # the function's source, unfenced
    name: str
    calls: list[tuple[Any, ...]]
    reference: Callable[..., Any]
    level: int


@dataclass(frozen=True)
class CodeDemo:
    task: Task
    solution: str  # the SFT target (fenced or not)


def _one_arg(rng: random.Random, name: str) -> CodeProblem:
    k = rng.randint(1, 20)
    kind = rng.choice(("plus", "times", "minus"))
    op = {"plus": "+", "times": "*", "minus": "-"}[kind]
    ref = {"plus": lambda x: x + k, "times": lambda x: x * k, "minus": lambda x: x - k}[kind]
    prompt = f"Write a Python function {name}(x) that returns x {kind} {k}."
    calls = [(rng.randint(-20, 50),) for _ in range(3)]
    return CodeProblem(prompt, f"def {name}(x):\n    return x {op} {k}", name, calls, ref, 1)


def _two_args(rng: random.Random, name: str) -> CodeProblem:
    k = rng.randint(1, 20)
    kind = rng.choice(("larger", "smaller", "sum_plus", "greater"))
    if kind == "greater":
        prompt = f"Write a Python function {name}(x) that returns True if x is greater than {k}, else False."
        calls = [(rng.randint(k - 5, k + 5),) for _ in range(4)]
        return CodeProblem(prompt, f"def {name}(x):\n    return x > {k}", name, calls, lambda x: x > k, 2)
    calls = [(rng.randint(-20, 50), rng.randint(-20, 50)) for _ in range(3)]
    if kind == "sum_plus":
        prompt = f"Write a Python function {name}(a, b) that returns a plus b plus {k}."
        return CodeProblem(prompt, f"def {name}(a, b):\n    return a + b + {k}", name, calls,
                           lambda a, b: a + b + k, 2)  # fmt: skip
    fn = "max" if kind == "larger" else "min"
    prompt = f"Write a Python function {name}(a, b) that returns the {kind} of a and b."
    ref = max if kind == "larger" else min
    return CodeProblem(prompt, f"def {name}(a, b):\n    return {fn}(a, b)", name, calls, ref, 2)


def _list_arg(rng: random.Random, name: str) -> CodeProblem:
    k = rng.randint(1, 9)
    kind = rng.choice(("sum", "count", "add"))
    calls = [([rng.randint(0, 12) for _ in range(rng.randint(1, 5))],) for _ in range(3)]
    if kind == "sum":
        prompt = f"Write a Python function {name}(xs) that returns the sum of the numbers in xs."
        return CodeProblem(prompt, f"def {name}(xs):\n    return sum(xs)", name, calls, sum, 3)
    if kind == "count":
        prompt = (
            f"Write a Python function {name}(xs) that returns how many numbers in xs are greater than {k}."
        )
        body = f"def {name}(xs):\n    return len([v for v in xs if v > {k}])"
        return CodeProblem(prompt, body, name, calls, lambda xs: len([v for v in xs if v > k]), 3)
    prompt = f"Write a Python function {name}(xs) that returns the list xs with {k} added to each number."
    body = f"def {name}(xs):\n    return [v + {k} for v in xs]"
    return CodeProblem(prompt, body, name, calls, lambda xs: [v + k for v in xs], 3)


_BY_LEVEL = {1: _one_arg, 2: _two_args, 3: _list_arg}


def test_code(problem: CodeProblem) -> str:
    """The hidden tests: one ``assert name(args) == expected`` per call."""
    lines = []
    for args in problem.calls:
        expected = problem.reference(*args)
        lines.append(f"assert {problem.name}({', '.join(repr(a) for a in args)}) == {expected!r}")
    return "\n".join(lines)


def code_problems(
    n: int, split: str = "train", seed: int = 0, levels: tuple[int, ...] = LEVELS
) -> list[CodeProblem]:
    """``n`` seeded problems of ``split``, levels drawn uniformly from ``levels``."""
    check_generator_args("synthetic code", split, levels, 1.0)
    rng, out = random.Random(f"code/{split}/{seed}"), []
    while len(out) < n:
        problem = _BY_LEVEL[rng.choice(levels)](rng, rng.choice(_NAMES))
        if split_of(problem.prompt) == split:
            out.append(problem)
    return out


def to_task(problem: CodeProblem, uid: str, answer: Callable[[str], str]) -> Task:
    """``answer`` turns the test code into the code reward's answer spec (``rewards.code``)."""
    return Task(uid=uid, domain="code", prompt=f"{problem.prompt} {FENCE_INSTRUCTION}",
                answer=answer(test_code(problem)), source="synthetic", level=problem.level)  # fmt: skip


def fenced(code: str) -> str:
    return f"```python\n{code}\n```"


def code_demos(
    n: int, split: str, seed: int, answer: Callable[[str], str], fenced_share: float = 1.0,
    levels: tuple[int, ...] = LEVELS,
) -> list[CodeDemo]:  # fmt: skip
    """Tasks with their reference solutions as SFT targets; a ``fenced_share`` of them in a ```python block."""
    check_generator_args("synthetic code", split, levels, fenced_share)
    rng = random.Random(f"code-format/{seed}")
    demos = []
    for i, problem in enumerate(code_problems(n, split, seed, levels)):
        target = fenced(problem.solution) if rng.random() < fenced_share else problem.solution
        demos.append(CodeDemo(to_task(problem, f"synthetic-code/{split}/{i}", answer), target))
    return demos
