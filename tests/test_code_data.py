"""specialists.code_data: MBPP, sanitized MBPP and HumanEval-format files, and the canonical-solution check."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from rewards.code import parse_answer
from rewards.sandbox import Limits, SandboxPool
from specialists.code_data import (
    CODE_INSTRUCTION,
    DatasetError,
    check_references,
    load_code_examples,
    load_code_tasks,
    load_humaneval,
    load_humaneval_examples,
    load_mbpp,
    load_mbpp_examples,
    load_mbpp_sanitized,
    load_mbpp_sanitized_examples,
)

MBPP = Path("/work/shared/data/mbpp/mbpp.jsonl")
SANITIZED = Path("/work/shared/data/mbpp/sanitized-mbpp.json")
# The canonical check runs references as they are; task 123's takes ~3 s of CPU, more than the default limit.
REFERENCE_LIMITS = Limits(timeout_s=30.0, cpu_s=30)

HUMANEVAL_ROWS = [
    {
        "task_id": "Toy/0",
        "prompt": 'from typing import List\n\n\ndef running_max(xs: List[int]) -> List[int]:\n    """Running maximum."""\n',
        "canonical_solution": "    out, best = [], None\n    for x in xs:\n        best = x if best is None else max(best, x)\n        out.append(best)\n    return out\n",
        "test": "METADATA = {}\n\n\ndef check(candidate):\n    assert candidate([]) == []\n    assert candidate([1, 3, 2, 5]) == [1, 3, 3, 5]\n",
        "entry_point": "running_max",
    },
    {
        "task_id": "Toy/1",
        "prompt": 'def mean(xs):\n    """Arithmetic mean of a non-empty list."""\n',
        "canonical_solution": "    return sum(xs) / len(xs)\n",
        "test": "def check(candidate):\n    assert abs(candidate([1, 2]) - 1.5) < 1e-9\n    assert candidate([4]) == 4.0\n",
        "entry_point": "mean",
    },
    {
        "task_id": "Toy/2",
        "prompt": 'def is_palindrome(s: str) -> bool:\n    """True if s reads the same both ways."""\n',
        "canonical_solution": "    return s == s[::-1]\n",
        "test": "def check(candidate):\n    assert candidate('abba')\n    assert not candidate('ab')\n",
        "entry_point": "is_palindrome",
    },
]


@pytest.fixture(scope="module")
def pool():
    with SandboxPool(workers=4) as pool:  # runs mostly wait on the kernel: 2 per core is faster here
        yield pool


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------- real files


def test_mbpp_test_split():
    tasks = load_mbpp(MBPP)
    assert len(tasks) == 500
    assert [t.uid for t in tasks[:2]] == ["mbpp/test/11", "mbpp/test/12"] and tasks[-1].uid == "mbpp/test/510"
    first = tasks[0]
    assert (first.domain, first.source, first.level) == ("code", "mbpp", 0)
    assert first.prompt.startswith(
        "Write a python function to remove first and last occurrence of a given character"
    )
    assert 'Your code should pass this test:\nassert remove_Occ("hello","l") == "heo"\n' in first.prompt
    assert first.prompt.endswith(CODE_INSTRUCTION)
    spec = parse_answer(first.answer)
    assert spec.test.count("assert ") == 3 and (spec.entry_point, spec.setup) == ("remove_Occ", "")
    by_uid = {t.uid: t for t in tasks}
    assert parse_answer(by_uid["mbpp/test/126"].answer).entry_point == "sum"  # shadows a built-in on purpose


def test_mbpp_splits_and_limit():
    sizes = {split: len(load_mbpp(MBPP, split)) for split in ("prompt", "validation", "train", "all")}
    assert sizes == {"prompt": 10, "validation": 90, "train": 374, "all": 974}
    assert load_mbpp(MBPP, "train", limit=3) == load_mbpp(MBPP, "train")[:3]
    assert load_mbpp(MBPP, "train")[0].uid == "mbpp/train/601"
    assert load_code_tasks("mbpp", MBPP, "validation", limit=0) == []


def test_mbpp_setup_code_is_kept():
    spec = parse_answer(next(t for t in load_mbpp(MBPP, "all") if t.uid == "mbpp/all/367").answer)
    assert spec.setup.startswith("root = Node(1)")


def test_sanitized_mbpp():
    tasks = load_mbpp_sanitized(SANITIZED)
    assert len(tasks) == 257 and {t.source for t in tasks} == {"mbpp_sanitized"}
    assert all(t.uid.startswith("mbpp_sanitized/test/") for t in tasks)
    assert len(load_mbpp_sanitized(SANITIZED, "all")) == 427
    with_imports = [t for t in tasks if parse_answer(t.answer).setup]
    assert with_imports and all("import" in parse_answer(t.answer).setup for t in with_imports)


def test_humaneval_format(tmp_path: Path):
    path = _jsonl(tmp_path / "toy.jsonl", HUMANEVAL_ROWS)
    examples = load_humaneval_examples(path)
    assert [e.task.uid for e in examples] == ["humaneval/toy/0", "humaneval/toy/1", "humaneval/toy/2"]
    first = examples[0]
    assert first.task.source == "humaneval" and "def running_max(xs: List[int])" in first.task.prompt
    assert parse_answer(first.task.answer).entry_point == "running_max"
    assert first.solution == HUMANEVAL_ROWS[0]["prompt"] + HUMANEVAL_ROWS[0]["canonical_solution"]
    assert load_humaneval(path, limit=1) == [first.task]
    assert load_code_tasks("humaneval", path) == [e.task for e in examples]


def test_tasks_pickle():
    task = load_mbpp(MBPP, limit=1)[0]
    assert pickle.loads(pickle.dumps(task)) == task


# ------------------------------------------------------------------------------------- the canonical check


def test_every_mbpp_test_split_reference_passes(pool: SandboxPool):
    # All 500 reference solutions of the test split (task ids 11-510) pass their own hidden tests.
    examples = load_mbpp_examples(MBPP, "test")
    assert check_references(examples, pool, REFERENCE_LIMITS) == {}


def test_every_sanitized_mbpp_test_split_reference_passes(pool: SandboxPool):
    assert check_references(load_mbpp_sanitized_examples(SANITIZED, "test"), pool, REFERENCE_LIMITS) == {}


def test_humaneval_references_pass_and_a_wrong_one_is_reported(tmp_path: Path, pool: SandboxPool):
    rows = [*HUMANEVAL_ROWS, {**HUMANEVAL_ROWS[1], "canonical_solution": "    return sum(xs)\n"}]
    failures = check_references(load_code_examples("humaneval", _jsonl(tmp_path / "toy.jsonl", rows)), pool)
    assert list(failures) == ["humaneval/toy/3"] and failures["humaneval/toy/3"].reason == "wrong_answer"


# ---------------------------------------------------------------------------------------------- bad inputs


def test_missing_file_and_unknown_names(tmp_path: Path):
    with pytest.raises(DatasetError, match="not found"):
        load_mbpp(tmp_path / "nope.jsonl")
    with pytest.raises(DatasetError, match="unknown MBPP split 'dev'"):
        load_mbpp(MBPP, "dev")
    with pytest.raises(DatasetError, match="unknown code dataset 'apps'"):
        load_code_tasks("apps", MBPP)
    with pytest.raises(DatasetError, match="limit must be >= 0"):
        load_mbpp(MBPP, limit=-1)


def _mbpp_row(**overrides) -> dict:
    row = {"text": "Add.", "code": "def add(a, b):\n    return a + b", "task_id": 11, "test_setup_code": ""}
    row["test_list"] = ["assert add(1, 2) == 3"]
    row["challenge_test_list"] = []
    return {**row, **overrides}


@pytest.mark.parametrize(
    ("row", "match"),
    [
        (
            _mbpp_row(test_list="assert add(1, 2) == 3"),
            "line 2: field 'test_list' must be a non-empty list of strings",
        ),
        (_mbpp_row(test_list=["assert add(1,"]), "line 2: field 'test_list' is not valid Python"),
        (_mbpp_row(task_id="eleven"), "line 2: field 'task_id' must be an integer"),
        (_mbpp_row(text=""), "line 2: missing field 'text'"),
        (_mbpp_row(test_setup_code=5), "line 2: field 'test_setup_code' must be a string"),
    ],
)
def test_bad_mbpp_rows_name_file_line_and_field(tmp_path: Path, row: dict, match: str):
    path = _jsonl(tmp_path / "mbpp.jsonl", [_mbpp_row(task_id=12), row])
    with pytest.raises(DatasetError, match=match):
        load_mbpp(path)


def test_bad_json_line(tmp_path: Path):
    path = tmp_path / "mbpp.jsonl"
    path.write_text(json.dumps(_mbpp_row()) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"mbpp\.jsonl line 2: not valid JSON"):
        load_mbpp(path)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ('{"a": 1}', "expected a non-empty JSON array"),
        ("[1]", "row 0: expected a JSON object"),
        (
            json.dumps([{"prompt": "p", "code": "c", "task_id": 11, "test_list": []}]),
            "row 0: field 'test_list'",
        ),
        ("[{", "not a valid JSON file"),
    ],
)
def test_bad_sanitized_files(tmp_path: Path, content: str, match: str):
    path = tmp_path / "sanitized.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DatasetError, match=match):
        load_mbpp_sanitized(path)


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ({"entry_point": "not an identifier"}, "field 'entry_point' must be a Python identifier"),
        ({"test": "assert True"}, "field 'test' must define check"),
        ({"test": "def check(candidate):\n    assert ("}, "field 'test' is not valid Python"),
        ({"canonical_solution": 7}, "field 'canonical_solution' must be a string"),
        ({"prompt": ""}, "missing field 'prompt'"),
    ],
)
def test_bad_humaneval_rows(tmp_path: Path, override: dict, match: str):
    path = _jsonl(tmp_path / "he.jsonl", [HUMANEVAL_ROWS[0], {**HUMANEVAL_ROWS[1], **override}])
    with pytest.raises(DatasetError, match=rf"he\.jsonl line 2: {match}"):
        load_humaneval(path)
