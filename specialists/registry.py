"""The specialist registry: what each finished specialist job produced, looked up by name by distillation.

One JSON file (``<runs_root>/registry.json`` unless a run names another) maps a registry name (the specialist
run's ``run_name``) to an entry: the checkpoint directory (a loadable model with its tokenizer), the domain,
the FP4 format it was trained with (the teacher serves the same FP4 weights), the held-out figures, the
run's whole config and its W&B run and artifact. Writes go through a temporary file and a rename, so a
reader never sees half a registry; re-registering a name replaces its entry.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rl.tracking import write_json_atomic


class RegistryError(ValueError):
    """A registry name that is not there, or an entry whose checkpoint is gone."""


@dataclass(frozen=True)
class SpecialistEntry:
    name: str  # registry name (the specialist run's run_name)
    domain: str  # math | code | agent: the prompts it was trained on and the teacher it is in distillation
    checkpoint: str  # model directory (HF weights + tokenizer) of the final checkpoint
    fp4: str  # mxfp4 | nvfp4 | none: the format of its QAT, so its served weights are FP4 too
    base: str  # the model path it was trained from
    eval: dict[str, float] = field(default_factory=dict)  # held-out figures at the end (and *_start)
    config: dict[str, Any] = field(default_factory=dict)  # the run's resolved config
    run_dir: str = ""
    wandb_run_id: str | None = None
    wandb_artifact: str | None = None  # "<name>:<alias>" of the checkpoint artifact, when W&B was on
    created: float = 0.0  # unix time of registration


def registry_path(registry: str, runs_root: str) -> Path:
    return Path(registry) if registry else Path(runs_root) / "registry.json"


def load_registry(path: Path) -> dict[str, SpecialistEntry]:
    if not path.exists():
        return {}
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise RegistryError(f"specialist registry {path} is not valid JSON: {err}") from err
    return {name: SpecialistEntry(**entry) for name, entry in raw.items()}


def register(path: Path, entry: SpecialistEntry) -> None:
    """Add or replace ``entry`` under its name."""
    entries = load_registry(path)
    entries[entry.name] = (
        entry if entry.created else SpecialistEntry(**{**asdict(entry), "created": time.time()})
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, {name: asdict(e) for name, e in sorted(entries.items())})


def lookup(path: Path, name: str) -> SpecialistEntry:
    """The entry named ``name``, checked to still have its checkpoint on disk."""
    entries = load_registry(path)
    if name not in entries:
        known = (
            ", ".join(sorted(entries)) or "none (train a specialist first: python -m jobs.train_specialist)"
        )
        raise RegistryError(f"no specialist {name!r} in registry {path}; registered: {known}")
    entry = entries[name]
    if not (Path(entry.checkpoint) / "config.json").exists():
        raise RegistryError(
            f"registry entry {name!r} points at checkpoint {entry.checkpoint}, which no longer exists"
        )
    return entry
