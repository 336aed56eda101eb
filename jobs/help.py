"""``python -m jobs.<job> --help``: the job's config groups and options, and every setting with its default and
what it does, taken from the typed schemas (each field's comment in ``rl/config.py``, ``distill/config.py``,
``jobs/config.py``), so the help is never written twice. Hydra's own help stays at ``--hydra-help``."""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import re
import sys
import typing
from typing import Any

from rl.config import CONFIGS

FIELD = re.compile(r"^    (\w+): [^=]+?(?:=.*)?$")  # a field line of a dataclass body (4-space indent)


def field_comments(schema: type) -> dict[str, str]:
    """Each field's description: the comment on its line (or on the lines continuing it), else the comment lines
    right above it."""
    out: dict[str, str] = {}
    above: list[str] = []
    current = ""
    for line in inspect.getsource(schema).splitlines()[1:]:
        stripped = line.strip()
        if match := FIELD.match(line.split("  #")[0].rstrip()):
            current = match.group(1)
            comment = line.split("  # ", 1)[1].strip() if "  # " in line else ""
            out[current] = comment or " ".join(above)
            above = []
        elif stripped.startswith("# "):
            above.append(stripped[2:])
        elif current and "  # " in line and not out[current]:  # a field's value continued on the next lines
            out[current] = line.split("  # ", 1)[1].strip()
        elif stripped.startswith(("def ", "@")):
            break
        else:
            above = [] if not stripped else above
    return out


def settings(schema: type, defaults: Any, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, description) of every setting under ``schema``, nested dataclasses flattened."""
    hints = typing.get_type_hints(schema)
    comments: dict[str, str] = {}
    for cls in reversed(schema.__mro__):  # a base dataclass's fields are documented in its own source
        if dataclasses.is_dataclass(cls):
            comments |= {k: v for k, v in field_comments(cls).items() if v or k not in comments}
    rows: list[tuple[str, str, str]] = []
    for f in dataclasses.fields(schema):
        key, kind = f"{prefix}{f.name}", hints[f.name]
        value = defaults.get(f.name) if defaults is not None else None
        if dataclasses.is_dataclass(kind):
            rows += settings(typing.cast(type, kind), value, f"{key}.")
        else:
            rows.append((key, shown(value), comments.get(f.name, "")))
    return rows


def shown(value: Any) -> str:
    """A default as the command line writes it: '' for an empty string, JSON for null, booleans and containers."""
    from omegaconf import OmegaConf

    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value)
    if value == "":
        return "''"
    return json.dumps(value) if value is None or isinstance(value, bool | list | dict) else str(value)


def groups() -> dict[str, list[str]]:
    """Each config group (a ``configs/`` folder) and its options, the schemas (``_schema``) left out."""
    return {d.name: sorted(p.stem for p in d.glob("*.yaml") if not p.stem.startswith("_"))
            for d in sorted(CONFIGS.iterdir()) if d.is_dir()}  # fmt: skip


def job_help(job: str, schema: type, defaults: Any, doc: str) -> str:
    """The help text of ``python -m jobs.<job>``: usage, what the job does, groups, settings (``defaults``: the
    job's composed config without overrides)."""
    lines = [f"usage: python -m jobs.{job} [group=option ...] [key=value ...]   (-m key=a,b: a sweep)", ""]
    lines += [(doc or "").strip().split("\n\n")[0], ""]
    lines += ["config groups (group=option):"]
    lines += [f"  {name}: {', '.join(options)}" for name, options in groups().items() if options]
    lines += ["", "settings (key=default  what it does):"]
    rows = settings(schema, defaults)
    width = min(44, max(len(f"{k}={v}") for k, v, _ in rows))
    for key, value, text in rows:
        lines.append(f"  {f'{key}={value}':<{width}}  {text}".rstrip())
    lines += ["", "Hydra's own help: --hydra-help; the composed config: --cfg job; README.md has the rest."]
    return "\n".join(lines)


def print_help(config_name: str, schema: type, defaults: Any) -> None:
    """``jobs.<config_name>``'s help (each job's config has the job's name), its summary from ``__main__``."""
    module = sys.modules.get("__main__")
    try:
        print(job_help(config_name, schema, defaults, getattr(module, "__doc__", "") or ""), flush=True)
    except BrokenPipeError:  # `--help | head`: the reader left; no traceback (Python's documented recipe)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
