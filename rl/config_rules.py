"""The rules config fields are checked by (``check_fields``): each takes the key and the value and says what is wrong
with the value, or None. The schemas that use them are in ``rl/config.py``, ``distill/config.py``, ``jobs/config.py``."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

Rule = Callable[[str, Any], "str | None"]  # (key, value) -> what is wrong with the value, or None


class ConfigValueError(ValueError):
    """A config value outside its range, or a name that is not registered; the message names the key."""


def check_fields(prefix: str, obj: Any, rules: dict[str, Rule]) -> None:
    """Apply each field's rule; the first problem raises, naming ``<prefix>.<field>``."""
    for name, rule in rules.items():
        problem = rule(f"{prefix}.{name}" if prefix else name, getattr(obj, name))
        if problem is not None:
            raise ConfigValueError(problem)


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def at_least(low: float) -> Rule:
    return lambda key, v: None if is_number(v) and v >= low else f"{key} must be >= {low}, got {v!r}"


def above(low: float) -> Rule:
    return lambda key, v: None if is_number(v) and v > low else f"{key} must be > {low}, got {v!r}"


def within(low: float, high: float) -> Rule:
    """``low <= value <= high``."""
    return lambda key, v: (
        None if is_number(v) and low <= v <= high else f"{key} must be in [{low}, {high}], got {v!r}"
    )


def finite() -> Rule:
    return lambda key, v: None if is_number(v) else f"{key} must be a finite number, got {v!r}"


def optional(rule: Rule) -> Rule:
    """None is allowed (it means "the default"), anything else must pass ``rule``."""
    return lambda key, v: None if v is None else rule(key, v)


def one_of(choices: tuple[Any, ...]) -> Rule:
    return lambda key, v: (
        None if v in choices else f"unknown {key} {v!r}; valid: {', '.join(map(str, choices))}"
    )


def each(rule: Rule, count: int | None = None) -> Rule:
    """Every element passes ``rule`` (named ``key[i]``), and there are ``count`` of them when given."""

    def check(key: str, values: Any) -> str | None:
        if count is not None and len(values) != count:
            return f"{key} must have {count} values, got {len(values)}: {list(values)!r}"
        return next((p for i, v in enumerate(values) if (p := rule(f"{key}[{i}]", v)) is not None), None)

    return check


def non_empty() -> Rule:
    return lambda key, v: None if v else f"{key} must not be empty"


def subset_of(choices: tuple[Any, ...]) -> Rule:
    """A non-empty collection without repeats, each element one of ``choices``."""

    def check(key: str, values: Any) -> str | None:
        unknown = [v for v in values if v not in choices]
        if unknown or not values or len(set(values)) != len(values):
            return f"{key} must be distinct values among {', '.join(map(str, choices))}, got {list(values)!r}"
        return None

    return check


def run_name() -> Rule:
    """A directory under runs_root: not empty, not absolute, no ``..`` (it must not escape runs_root)."""

    def check(key: str, v: str) -> str | None:
        if not v or v.startswith("/") or ".." in Path(v).parts:
            return (
                f"{key} must be a directory name under runs_root (not empty, not absolute, no ..), got {v!r}"
            )
        return None

    return check
