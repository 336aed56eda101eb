"""Code datasets as ``Task`` lists (domain "code"), each with its reference solution for the canonical check.

* MBPP (``mbpp.jsonl``: text, code, task_id, test_list, test_setup_code) with the paper's splits by task id
  (``MBPP_SPLITS``); the prompt is the task text plus the first of its three tests, which shows the function's
  name and call signature (all three tests are graded); the answer's entry_point is the function the tests
  call that the reference defines.
* Sanitized MBPP (``sanitized-mbpp.json``, a JSON array: prompt, code, task_id, test_list, test_imports), the
  hand-verified subset, same splits.
* Any HumanEval-format JSONL (prompt, test, entry_point; optional canonical_solution, task_id); the prompt shows
  the signature and docstring, and the reference solution is ``prompt + canonical_solution``.

``Task.answer`` is the JSON spec of ``rewards.code``. Files load through ``datasets`` (local files, no hub);
every bad input is a ``DatasetError`` naming the file and the line (or array row) and field.
"""

from __future__ import annotations

import ast
import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rewards.code import answer_job, make_answer
from rewards.sandbox import DEFAULT_LIMITS, Limits, SandboxPool, SandboxResult
from rl.types import Task
from specialists.math_data import DatasetError, _load_rows, load_json_rows

__all__ = [
    "CODE_INSTRUCTION",
    "LOADERS",
    "MBPP_SPLITS",
    "CodeExample",
    "DatasetError",
    "check_references",
    "load_code_examples",
    "load_code_tasks",
    "load_humaneval",
    "load_mbpp",
    "load_mbpp_sanitized",
]

CODE_INSTRUCTION = "Answer with the complete Python code, imports included, in one ```python code block."
# Austin et al. 2021 (MBPP README): inclusive task-id ranges.
MBPP_SPLITS = {
    "prompt": (1, 10),
    "test": (11, 510),
    "validation": (511, 600),
    "train": (601, 974),
    "all": (1, 974),
}


@dataclass(frozen=True)
class CodeExample:
    """A code task and its dataset's reference solution (None where the file has none)."""

    task: Task
    solution: str | None


def _string(row: dict[str, Any], name: str, where: str, *, allow_empty: bool = False) -> str:
    value = row.get(name)
    if value is None and allow_empty:
        return ""
    if not isinstance(value, str) or (not allow_empty and not value.strip()):
        raise DatasetError(f"{where}: field {name!r} must be a {'' if allow_empty else 'non-empty '}string")
    return value


def _strings(row: dict[str, Any], name: str, where: str, *, allow_empty: bool = False) -> list[str]:
    value = row.get(name)
    if value is None and allow_empty:
        return []
    if (
        not isinstance(value, list)
        or not all(isinstance(v, str) for v in value)
        or not (value or allow_empty)
    ):
        raise DatasetError(
            f"{where}: field {name!r} must be a {'' if allow_empty else 'non-empty '}list of strings"
        )
    return value


def _task_id(row: dict[str, Any], where: str) -> int:
    value = row.get("task_id")
    if not isinstance(value, int) or isinstance(value, bool):
        raise DatasetError(f"{where}: field 'task_id' must be an integer, got {value!r}")
    return value


def _parse(code: str) -> ast.Module:
    with warnings.catch_warnings():  # dataset code has invalid escapes ("\d" in non-raw strings)
        warnings.simplefilter("ignore", (SyntaxWarning, DeprecationWarning))
        return ast.parse(code)


def _parses(code: str, name: str, where: str) -> str:
    try:
        _parse(code)
    except SyntaxError as e:
        raise DatasetError(f"{where}: field {name!r} is not valid Python ({e.msg}, line {e.lineno})") from e
    return code


def _split_range(split: str) -> tuple[int, int]:
    if split not in MBPP_SPLITS:
        raise DatasetError(f"unknown MBPP split {split!r}; valid: {', '.join(MBPP_SPLITS)}")
    return MBPP_SPLITS[split]


def _check_limit(limit: int | None) -> None:
    if limit is not None and limit < 0:
        raise DatasetError(f"limit must be >= 0 or None, got {limit}")


def _entry_point(code: str, tests: list[str]) -> str | None:
    """The first name the tests call that the reference solution defines at top level (None if none)."""
    try:
        body = _parse(code).body
    except SyntaxError:
        return None  # the canonical check reports it
    defined = {s.name for s in body if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    for test in tests:
        for node in ast.walk(_parse(test)):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in defined:
                return node.func.id
    return None


def _mbpp_example(source: str, split: str, task_id: int, text: str, tests: list[str], setup: str, code: str):
    prompt = f"{text.strip()}\nYour code should pass this test:\n{tests[0]}\n{CODE_INSTRUCTION}"
    answer = make_answer("\n".join(tests), _entry_point(code, tests), setup)
    task = Task(uid=f"{source}/{split}/{task_id}", domain="code", prompt=prompt, answer=answer, source=source)
    return CodeExample(task, code)


def load_mbpp_examples(path: str | Path, split: str = "test", limit: int | None = None) -> list[CodeExample]:
    """MBPP JSONL rows whose task_id is in ``split`` (see ``MBPP_SPLITS``), in file order."""
    low, high = _split_range(split)
    _check_limit(limit)
    examples = []
    for where, row in _load_rows(path, "mbpp", ("text", "code", "task_id", "test_list"), None):
        task_id = _task_id(row, where)
        if not low <= task_id <= high:
            continue
        tests = [_parses(t, "test_list", where) for t in _strings(row, "test_list", where)]
        setup = _parses(_string(row, "test_setup_code", where, allow_empty=True), "test_setup_code", where)
        text, code = _string(row, "text", where), _string(row, "code", where)
        examples.append(_mbpp_example("mbpp", split, task_id, text, tests, setup, code))
    return examples[:limit]


def _read_json_array(path: Path, source: str) -> list[dict[str, Any]]:
    """The file's rows, each checked to be an object (the errors name the row, as the file is one JSON array)."""
    if not path.is_file():
        raise DatasetError(f"{source} file {path}: not found")
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"{source} file {path}: not a valid JSON file ({e})") from e
    if not isinstance(rows, list) or not rows:
        raise DatasetError(f"{source} file {path}: expected a non-empty JSON array of objects")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DatasetError(
                f"{source} file {path} row {i}: expected a JSON object, got {type(row).__name__}"
            )
    return rows


def load_mbpp_sanitized_examples(
    path: str | Path, split: str = "test", limit: int | None = None
) -> list[CodeExample]:
    """Sanitized MBPP (a JSON array) rows whose task_id is in ``split``; ``test_imports`` become the setup."""
    low, high = _split_range(split)
    _check_limit(limit)
    path = Path(path)
    checked = _read_json_array(path, "mbpp_sanitized")
    rows = load_json_rows(path, "mbpp_sanitized", len(checked))
    examples = []
    for i in range(len(rows)):
        row, where = rows[i], f"mbpp_sanitized file {path} row {i}"
        task_id = _task_id(row, where)
        if not low <= task_id <= high:
            continue
        tests = [_parses(t, "test_list", where) for t in _strings(row, "test_list", where)]
        setup = _parses(
            "\n".join(_strings(row, "test_imports", where, allow_empty=True)), "test_imports", where
        )
        text, code = _string(row, "prompt", where), _string(row, "code", where)
        examples.append(_mbpp_example("mbpp_sanitized", split, task_id, text, tests, setup, code))
    return examples[:limit]


def load_humaneval_examples(path: str | Path, limit: int | None = None) -> list[CodeExample]:
    """HumanEval-format JSONL rows ``{"prompt", "test", "entry_point", "canonical_solution"?, "task_id"?}``."""
    stem = Path(path).stem
    examples = []
    for i, (where, row) in enumerate(_load_rows(path, "humaneval", ("prompt", "test", "entry_point"), limit)):
        prompt, test = _string(row, "prompt", where), _parses(_string(row, "test", where), "test", where)
        entry_point = _string(row, "entry_point", where)
        if not entry_point.isidentifier():
            raise DatasetError(
                f"{where}: field 'entry_point' must be a Python identifier, got {entry_point!r}"
            )
        if "def check(" not in test:
            raise DatasetError(f"{where}: field 'test' must define check(candidate)")
        body = row.get("canonical_solution")
        if body is not None and not isinstance(body, str):
            raise DatasetError(f"{where}: field 'canonical_solution' must be a string")
        text = f"Complete this Python function:\n```python\n{prompt.rstrip()}\n```\n{CODE_INSTRUCTION}"
        task = Task(f"humaneval/{stem}/{i}", "code", text, make_answer(test, entry_point, ""), "humaneval")
        examples.append(CodeExample(task, None if body is None else prompt + body))
    return examples


def load_mbpp(path: str | Path, split: str = "test", limit: int | None = None) -> list[Task]:
    """MBPP tasks of ``split``."""
    return [e.task for e in load_mbpp_examples(path, split, limit)]


def load_mbpp_sanitized(path: str | Path, split: str = "test", limit: int | None = None) -> list[Task]:
    """Sanitized MBPP tasks of ``split``."""
    return [e.task for e in load_mbpp_sanitized_examples(path, split, limit)]


def load_humaneval(path: str | Path, limit: int | None = None) -> list[Task]:
    """HumanEval-format tasks (the file is the split)."""
    return [e.task for e in load_humaneval_examples(path, limit)]


LOADERS: dict[str, Callable[[str | Path, str, int | None], list[CodeExample]]] = {
    "mbpp": load_mbpp_examples,
    "mbpp_sanitized": load_mbpp_sanitized_examples,
    "humaneval": lambda path, split, limit: load_humaneval_examples(path, limit),
}


def load_code_examples(
    name: str, path: str | Path, split: str = "test", limit: int | None = None
) -> list[CodeExample]:
    """The dataset ``name`` (a key of ``LOADERS``) from ``path``; ``split`` applies to the MBPP files."""
    if name not in LOADERS:
        raise DatasetError(f"unknown code dataset {name!r}; valid: {', '.join(sorted(LOADERS))}")
    return LOADERS[name](path, split, limit)


def load_code_tasks(name: str, path: str | Path, split: str = "test", limit: int | None = None) -> list[Task]:
    """``load_code_examples`` without the solutions."""
    return [e.task for e in load_code_examples(name, path, split, limit)]


def check_references(
    examples: list[CodeExample], pool: SandboxPool, limits: Limits = DEFAULT_LIMITS
) -> dict[str, SandboxResult]:
    """The canonical check: uid -> result for every reference solution that does NOT pass its own tests."""
    with_solution = [e for e in examples if e.solution is not None]
    jobs = [answer_job(e.solution, e.task.answer, limits) for e in with_solution if e.solution is not None]
    results = pool.map(jobs)
    return {e.task.uid: r for e, r in zip(with_solution, results, strict=True) if not r.passed}
