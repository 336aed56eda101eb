"""Code reward: the completion's last fenced code block, run against the task's hidden tests in the sandbox.

``Task.answer`` of a code task is a JSON object (build it with ``make_answer``)::

    {"test": "<python>", "entry_point": "<name>" | null, "setup": "<python>"}

* ``test``: MBPP style, top-level ``assert`` statements that call the program's functions by name; or
  HumanEval style, code that defines ``check(candidate)``, which the harness calls with ``entry_point``.
* ``entry_point``: the program's function under test. HumanEval style needs it; MBPP style may give it (the
  tests then see it even where it shadows a built-in, e.g. a function named ``sum``) or leave it null.
* ``setup``: code run after the program and before the tests, with the program's names in scope (MBPP's
  ``test_setup_code``, sanitized MBPP's ``test_imports``); ``""`` if none.

The program is the extracted code block alone (no prompt is prepended), so prompts ask for the complete code.
Scoring needs bwrap: without it ``score_code`` / ``SandboxPool`` raise ``SandboxUnavailable`` (saying why), unless
the user opted in to the ``rlimits+audit`` fallback, which is not a security boundary
(``DISTILLERY_SANDBOX_ISOLATION=rlimits+audit``; ``rewards/sandbox.py`` states the threat model).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass

from rewards.sandbox import DEFAULT_LIMITS, REASONS, Limits, SandboxJob, SandboxPool, run_tests
from rewards.types import Reward

# Every Reward.reason of a code task is one of these.
CODE_REASONS = ("no_code_block", *REASONS)
_FENCE_RE = re.compile(r"```([^\n`]*)\n(.*?)```", re.DOTALL)
_PYTHON_TAGS = frozenset(["python", "python3", "py", "py3"])


@dataclass(frozen=True)
class CodeAnswer:
    """A parsed ``Task.answer`` of a code task."""

    test: str
    entry_point: str | None
    setup: str


def make_answer(test: str, entry_point: str | None = None, setup: str = "") -> str:
    """The ``Task.answer`` JSON for these tests."""
    return json.dumps({"test": test, "entry_point": entry_point, "setup": setup})


def parse_answer(answer: str) -> CodeAnswer:
    """``Task.answer`` -> CodeAnswer; ValueError naming what is wrong (a malformed task, not a bad completion)."""
    try:
        spec = json.loads(answer)
    except json.JSONDecodeError as e:
        raise ValueError(f"code answer is not JSON ({e.msg}): {answer[:80]!r}") from e
    if not isinstance(spec, dict) or set(spec) != {"test", "entry_point", "setup"}:
        raise ValueError(f"code answer must have exactly the keys test, entry_point, setup: {answer[:80]!r}")
    test, entry_point, setup = spec["test"], spec["entry_point"], spec["setup"]
    if not isinstance(test, str) or not test.strip():
        raise ValueError("code answer: 'test' must be a non-empty string")
    if not (entry_point is None or (isinstance(entry_point, str) and entry_point.isidentifier())):
        raise ValueError(f"code answer: 'entry_point' must be null or an identifier, got {entry_point!r}")
    if not isinstance(setup, str):
        raise ValueError("code answer: 'setup' must be a string")
    return CodeAnswer(test, entry_point, setup)


def extract_code(text: str) -> str | None:
    """The last ```python (or ```py) fenced block; else the last untagged ``` block; else None.

    Blocks tagged with another language are ignored, and an unclosed fence (a truncated completion) is no block.
    """
    python, untagged = None, None
    for match in _FENCE_RE.finditer(text):
        tag = match.group(1).strip().lower()
        if tag in _PYTHON_TAGS:
            python = match.group(2)
        elif not tag:
            untagged = match.group(2)
    return python if python is not None else untagged


def extract_first_code(text: str) -> str | None:
    """The first fenced block, whatever its language tag: the lenient reading of a completion (eval only)."""
    match = _FENCE_RE.search(text)
    return match.group(2) if match else None


def answer_job(program: str, answer: str, limits: Limits = DEFAULT_LIMITS) -> SandboxJob:
    """The sandbox job that checks ``program`` against a code task's answer."""
    spec = parse_answer(answer)
    return SandboxJob(program, spec.test, spec.entry_point, spec.setup, limits)


def score_code(
    text: str,
    answer: str,
    limits: Limits = DEFAULT_LIMITS,
    extract: Callable[[str], str | None] = extract_code,
) -> Reward:
    """1.0 if the completion's code passes every test, else 0.0 with the sandbox's reason (or no_code_block)."""
    program = extract(text)
    if program is None:
        return Reward(0.0, "no_code_block")
    job = answer_job(program, answer, limits)
    result = run_tests(job.program, job.test_code, job.entry_point, job.limits, setup=job.setup)
    return Reward(float(result.passed), result.reason)


def score_code_batch(
    items: list[tuple[str, str]],
    pool: SandboxPool,
    limits: Limits = DEFAULT_LIMITS,
    extract: Callable[[str], str | None] = extract_code,
) -> list[Reward]:
    """``score_code`` over (completion, answer) pairs, the sandboxes run in ``pool``; rewards in input order.
    ``extract``: which code of a completion runs (the reward's ``extract_code``; ``extract_first_code`` to read
    completions leniently)."""
    programs = [extract(text) for text, _ in items]
    jobs = [
        answer_job(p, answer, limits) for p, (_, answer) in zip(programs, items, strict=True) if p is not None
    ]
    results = iter(pool.map(jobs))
    return [
        Reward(0.0, "no_code_block") if p is None else Reward(float((r := next(results)).passed), r.reason)
        for p in programs
    ]
