"""Real math datasets (GSM8K, MATH-500, MATH) from local JSONL files as ``Task`` lists.

Files load through ``datasets`` (the ``json`` builder reads local files, no hub access). We first read
the file line by line ourselves, because ``datasets`` reports a bad row opaquely: every bad-input
error is a ``DatasetError`` naming the file and, for a bad row, its 1-based line and the field.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import datasets

from rewards.math import extract_boxed
from rl.types import Task
from specialists.synthetic import BOXED_INSTRUCTION

__all__ = [
    "BOXED_INSTRUCTION",
    "LOADERS",
    "DatasetError",
    "load_gsm8k",
    "load_math",
    "load_math500",
    "load_math_tasks",
]

_LEVEL_RE = re.compile(r"(?:Level\s*)?(\d+|\?)")


class DatasetError(ValueError):
    """A dataset file that is missing or malformed (plain message args, so it pickles across Ray)."""


def _read_lines(path: Path, source: str, required: tuple[str, ...]) -> list[int]:
    """1-based line numbers of the non-blank lines, each checked to be a JSON object with ``required``."""
    if not path.is_file():
        raise DatasetError(f"{source} file {path}: not found")
    line_numbers = []
    with path.open("rb") as f:  # bytes split only on newlines (str.splitlines also splits on U+2028)
        for n, raw in enumerate(f, start=1):
            if raw.strip():
                _check_row(raw, required, f"{source} file {path} line {n}")
                line_numbers.append(n)
    if not line_numbers:
        raise DatasetError(f"{source} file {path}: no rows")
    return line_numbers


def _check_row(raw: bytes, required: tuple[str, ...], where: str) -> None:
    try:
        row = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise DatasetError(f"{where}: not valid UTF-8 ({e.reason})") from e
    except json.JSONDecodeError as e:
        raise DatasetError(f"{where}: not valid JSON ({e.msg})") from e
    if not isinstance(row, dict):
        raise DatasetError(f"{where}: expected a JSON object, got {type(row).__name__}")
    for name in required:
        _field(row, name, where)


def load_json_rows(path: Path, source: str, expected: int) -> Any:
    """A JSON / JSONL file through ``datasets``, which must read the ``expected`` rows our own check counted."""
    try:
        dataset = datasets.load_dataset("json", data_files=str(path), split="train")
    except Exception as e:  # pyarrow's errors name neither the file nor the line
        raise DatasetError(
            f"{source} file {path}: datasets could not load it: {type(e).__name__}: {e}"
        ) from e
    if len(dataset) != expected:
        raise DatasetError(f"{source} file {path}: datasets read {len(dataset)} rows, expected {expected}")
    return dataset


def _load_rows(
    path: str | Path, source: str, required: tuple[str, ...], limit: int | None
) -> list[tuple[str, dict[str, Any]]]:
    """("<source> file <path> line <n>", row) for the first ``limit`` rows, rows loaded by ``datasets``."""
    if limit is not None and limit < 0:
        raise DatasetError(f"limit must be >= 0 or None, got {limit}")
    path = Path(path)
    line_numbers = _read_lines(path, source, required)
    dataset = load_json_rows(path, source, len(line_numbers))
    end = len(line_numbers) if limit is None else min(limit, len(line_numbers))
    return [(f"{source} file {path} line {line_numbers[i]}", dataset[i]) for i in range(end)]


def _field(row: dict[str, Any], name: str, where: str) -> str:
    value = row.get(name)
    if value is None or str(value).strip() == "":
        raise DatasetError(f"{where}: missing field {name!r}")
    return str(value)


def _gsm8k_answer(solution: str, where: str) -> str:
    """The number after ``####``, commas removed ("1,234" -> "1234")."""
    if "####" not in solution:
        raise DatasetError(f"{where}: field 'answer' has no '####' final answer")
    answer = solution.rsplit("####", 1)[1].strip().replace(",", "")
    if not answer:
        raise DatasetError(f"{where}: nothing after '####' in field 'answer'")
    return answer


def load_gsm8k(path: str | Path, limit: int | None = None) -> list[Task]:
    """GSM8K JSONL rows ``{"question", "answer"}``; the reference is what follows ``####``."""
    stem = Path(path).stem
    return [
        Task(
            uid=f"gsm8k/{stem}/{i}",
            domain="math",
            prompt=f"{_field(row, 'question', where)}\n{BOXED_INSTRUCTION}",
            answer=_gsm8k_answer(_field(row, "answer", where), where),
            source="gsm8k",
        )
        for i, (where, row) in enumerate(_load_rows(path, "gsm8k", ("question", "answer"), limit))
    ]


def _number_text(value: float) -> str:
    """A JSON number as a reference answer: ``27.0`` -> ``27``, ``1e-05`` -> ``0.00001``, ``2.5`` -> ``2.5``.

    ``datasets`` (pyarrow) reads a column holding ints and floats as floats, so ``27`` arrives as ``27.0``;
    ``str`` would also write small floats in exponent form, which math-verify reads as ``1 \\cdot e - 5``.
    """
    text = format(Decimal(repr(value)), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def _competition_answer(row: dict[str, Any], where: str) -> str:
    """The row's ``answer`` (a number written as a grader would), else the last boxed answer of its ``solution``."""
    value = row.get("answer")
    if isinstance(value, float) and math.isfinite(value):
        return _number_text(value)
    if value is not None:
        return _field(row, "answer", where)
    if row.get("solution") is None:
        raise DatasetError(f"{where}: missing field 'answer' (and no 'solution' to take it from)")
    boxed = extract_boxed(str(row["solution"]))
    if not boxed or not boxed.strip():
        raise DatasetError(f"{where}: field 'solution' has no \\boxed{{}} answer")
    return boxed


def _level(row: dict[str, Any], where: str) -> int:
    """``3`` or ``"Level 3"`` -> 3; absent or ``"Level ?"`` -> 0 (unknown)."""
    value = row.get("level")
    if value is None:
        return 0
    match = _LEVEL_RE.fullmatch(str(value).strip())
    if match is None:
        raise DatasetError(f"{where}: field 'level' is {value!r}, expected an int or 'Level <n>'")
    return 0 if match.group(1) == "?" else int(match.group(1))


def _load_competition(path: str | Path, limit: int | None, source: str) -> list[Task]:
    """MATH-style JSONL rows ``{"problem", "answer" or "solution", "level"?}``."""
    stem = Path(path).stem
    return [
        Task(
            uid=f"{source}/{stem}/{i}",
            domain="math",
            prompt=f"{_field(row, 'problem', where)}\n{BOXED_INSTRUCTION}",
            answer=_competition_answer(row, where),
            source=source,
            level=_level(row, where),
        )
        for i, (where, row) in enumerate(_load_rows(path, source, ("problem",), limit))
    ]


def load_math500(path: str | Path, limit: int | None = None) -> list[Task]:
    """MATH-500 JSONL (``problem``, ``answer``, int ``level``)."""
    return _load_competition(path, limit, "math500")


def load_math(path: str | Path, limit: int | None = None) -> list[Task]:
    """The MATH test set JSONL (``problem``, ``solution`` with a boxed answer, ``level`` "Level n")."""
    return _load_competition(path, limit, "math")


LOADERS: dict[str, Callable[[str | Path, int | None], list[Task]]] = {
    "gsm8k": load_gsm8k,
    "math500": load_math500,
    "math": load_math,
}


def load_math_tasks(name: str, path: str | Path, limit: int | None = None) -> list[Task]:
    """Load the dataset ``name`` (a key of ``LOADERS``) from ``path``."""
    if name not in LOADERS:
        raise DatasetError(f"unknown math dataset {name!r}; valid: {', '.join(sorted(LOADERS))}")
    return LOADERS[name](path, limit)
