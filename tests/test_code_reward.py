"""rewards.code: code-block extraction, the answer spec, and the sandbox's reasons carried into Rewards."""

from __future__ import annotations

import json

import pytest

from rewards.code import (
    CODE_REASONS,
    extract_code,
    extract_first_code,
    make_answer,
    parse_answer,
    score_code,
    score_code_batch,
)
from rewards.sandbox import REASONS, Limits, SandboxPool
from rl.types import Reward

MBPP_ANSWER = make_answer("assert add(1, 2) == 3\nassert add(-1, 1) == 0")
HUMANEVAL_ANSWER = make_answer(
    "def check(candidate):\n    assert candidate([3, 1, 2]) == [1, 2, 3]\n", "sort_list"
)
GOOD = "Here you go:\n```python\ndef add(a, b):\n    return a + b\n```\n"


@pytest.fixture(scope="module")
def pool():
    with SandboxPool(workers=2) as pool:
        yield pool


# ---------------------------------------------------------------------------------------------- extract_code


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("```python\nx = 1\n```", "x = 1\n"),
        ("```py\nx = 1\n```", "x = 1\n"),
        ("```Python3\nx = 1\n```", "x = 1\n"),
        ("```\nx = 1\n```", "x = 1\n"),
        ("```python\nx = 1\n```\nthen\n```python\nx = 2\n```", "x = 2\n"),  # the last python block
        ("```python\nx = 1\n```\n```\nx = 2\n```", "x = 1\n"),  # a python block beats a later bare one
        ("```bash\nls\n```\n```\nx = 2\n```", "x = 2\n"),  # other languages are ignored
        ("```python\n```", ""),
    ],
)
def test_extract_code(text: str, expected: str):
    assert extract_code(text) == expected


@pytest.mark.parametrize("text", ["def f(): pass", "```python\ndef f(): pass", "```bash\nls\n```", ""])
def test_extract_code_none_without_a_closed_block(text: str):
    assert extract_code(text) is None


# ----------------------------------------------------------------------------------------------- answer spec


def test_answer_spec_round_trips():
    spec = parse_answer(make_answer("assert f(1) == 2", "f", "import math"))
    assert (spec.test, spec.entry_point, spec.setup) == ("assert f(1) == 2", "f", "import math")
    assert json.loads(MBPP_ANSWER) == {
        "test": "assert add(1, 2) == 3\nassert add(-1, 1) == 0",
        "entry_point": None,
        "setup": "",
    }


@pytest.mark.parametrize(
    ("answer", "match"),
    [
        ("not json", "not JSON"),
        ('{"test": "assert 1"}', "exactly the keys"),
        ('{"test": "", "entry_point": null, "setup": ""}', "'test' must be a non-empty string"),
        (
            '{"test": "assert 1", "entry_point": "a b", "setup": ""}',
            "'entry_point' must be null or an identifier",
        ),
        ('{"test": "assert 1", "entry_point": null, "setup": 3}', "'setup' must be a string"),
    ],
)
def test_malformed_answers_raise(answer: str, match: str):
    with pytest.raises(ValueError, match=match):
        parse_answer(answer)


# ------------------------------------------------------------------------------------------------ score_code


def test_correct_code_scores_one():
    assert score_code(GOOD, MBPP_ANSWER) == Reward(1.0, "passed")
    humaneval = "```python\ndef sort_list(xs):\n    return sorted(xs)\n```"
    assert score_code(humaneval, HUMANEVAL_ANSWER) == Reward(1.0, "passed")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("I think add is a + b.", "no_code_block"),
        ("```python\ndef add(a, b):\n    return a - b\n```", "wrong_answer"),
        ("```python\ndef add(a, b)\n    return a + b\n```", "syntax_error"),
        ("```python\ndef add(a, b):\n    return a + c\n```", "runtime_error"),
        ("```python\ndef add(a, b):\n    while True:\n        pass\n```", "timeout"),
        ("```python\nx = ' ' * 10 ** 10\n```", "memory"),
        ("```python\nwhile True:\n    print('spam' * 1000)\n```", "output_too_large"),
        ("```python\nimport os\nos._exit(0)\n```", "runtime_error"),
    ],
)
def test_failures_carry_the_sandbox_reason(text: str, reason: str):
    assert score_code(text, MBPP_ANSWER, Limits(timeout_s=1.0, cpu_s=1, memory_mb=256)) == Reward(0.0, reason)


def test_reasons_cover_the_sandbox():
    assert set(CODE_REASONS) == {"no_code_block", *REASONS}


def test_batch_scores_in_order_with_missing_blocks(pool: SandboxPool):
    items = [
        (GOOD, MBPP_ANSWER),
        ("no code", MBPP_ANSWER),
        ("```python\ndef add(a, b):\n    return 0\n```", MBPP_ANSWER),
        ("```python\ndef sort_list(xs):\n    return sorted(xs)\n```", HUMANEVAL_ANSWER),
        ("```python\ndef sort_list(xs):\n    return xs\n```", HUMANEVAL_ANSWER),
    ]
    rewards = score_code_batch(items, pool)
    assert rewards == [
        Reward(1.0, "passed"),
        Reward(0.0, "no_code_block"),
        Reward(0.0, "wrong_answer"),
        Reward(1.0, "passed"),
        Reward(0.0, "wrong_answer"),
    ]
    assert score_code_batch([], pool) == []


# ------------------------------------------------------------------------------- the lenient reading (eval only)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("```bash\nls\n```\n```python\nx = 2\n```", "ls\n"),  # the first block, whatever its tag
        ("```python\nx = 1\n```\nthen\n```python\nx = 2\n```", "x = 1\n"),
        ("```\nx = 1\n```", "x = 1\n"),
        ("def f(): pass", None),
        ("```python\ndef f(): pass", None),  # an unclosed fence is no block here either
    ],
)
def test_extract_first_code(text: str, expected: str | None):
    assert extract_first_code(text) == expected


def test_the_lenient_reading_runs_the_first_block_whatever_its_tag(pool: SandboxPool):
    # a solution in a ```python3-ish tag the reward ignores, followed by a usage example in a python block
    text = "```Python 3\ndef add(a, b):\n    return a + b\n```\nUse it:\n```python\nprint(add(1, 2))\n```"
    # the reward runs the last python block alone: add is undefined there
    assert score_code(text, MBPP_ANSWER) == Reward(0.0, "runtime_error")
    assert score_code(text, MBPP_ANSWER, extract=extract_first_code) == Reward(1.0, "passed")
    items = [(text, MBPP_ANSWER), ("no code", MBPP_ANSWER)]
    assert score_code_batch(items, pool, extract=extract_first_code) == [
        Reward(1.0, "passed"),
        Reward(0.0, "no_code_block"),
    ]
