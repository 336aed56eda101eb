"""Sample -> domain -> teacher: the routes of a distillation run, and the checks made before any work starts.

A route is one domain with its teacher (a registry entry), the teacher's loss weight, and the prompts: the
same specialist module and data config the teacher was trained with (from its registry entry), so the student
practises on the teacher's own task distribution and is evaluated on the teacher's held-out set.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill.config import DistillConfig
from rl.config import SpecialistConfig
from rl.episodes import Specialist
from rl.models import load_tokenizer, model_context
from rl.sft import longest_prompt
from rl.types import Task
from specialists.domains import SPECIALISTS, get_specialist
from specialists.registry import SpecialistEntry, lookup


class CompatibilityError(ValueError):
    """A teacher cannot teach this student (tokenizer or context)."""


@dataclass(frozen=True)
class Route:
    domain: str
    teacher: SpecialistEntry
    weight: float  # w_e of reference §1.2
    specialist: Specialist  # specialists/<domain>.py's SPECIALIST: tasks, reward, environment
    tasks_cfg: SpecialistConfig  # the teacher run's data config (eval size from distill.num_eval_tasks)
    max_turns: int  # model turns per episode (1 for single-turn domains)

    @property
    def multi_turn(self) -> bool:
        return self.specialist.make_env is not None


def build_routes(cfg: DistillConfig, registry: Path) -> list[Route]:
    """One route per ``cfg.teachers`` entry, looked up in ``registry``; bad names fail here, by name."""
    if not cfg.teachers:
        raise ValueError(
            "distill.teachers is empty: name a teacher per domain, e.g. distill.teachers.math=<name>"
        )
    if unknown := sorted(set(cfg.teachers) - set(SPECIALISTS)):
        raise ValueError(
            f"unknown domain(s) {', '.join(unknown)} in distill.teachers; valid: {', '.join(SPECIALISTS)}"
        )
    if stray := sorted(set(cfg.weights) - set(SPECIALISTS)):
        raise ValueError(
            f"unknown domain(s) {', '.join(stray)} in distill.weights; valid: {', '.join(SPECIALISTS)}"
        )
    routes = []
    for domain, name in cfg.teachers.items():
        entry = lookup(registry, name)
        if entry.domain != domain:
            raise ValueError(f"teacher {name!r} is a {entry.domain} specialist, not {domain}")
        # the teacher's own prompt source (its run's specialist config); an entry registered by hand without
        # one gets the domain's defaults
        spec = SpecialistConfig(**entry.config.get("specialist", {"domain": entry.domain}))
        spec = dataclasses.replace(spec, num_eval_tasks=cfg.num_eval_tasks)
        module = get_specialist(domain)
        turns = cfg.max_turns if module.make_env is not None else 1
        routes.append(Route(domain, entry, cfg.weights.get(domain, 1.0), module, spec, turns))
    return routes


def tokenizer_fingerprint(tokenizer: Any) -> dict[str, Any]:
    """What must agree between student and teacher for the teacher's distribution to mean the same tokens."""
    return {
        "vocab": tokenizer.get_vocab(),
        "special tokens": sorted(tokenizer.all_special_tokens),
        "EOS": tokenizer.eos_token,
        "chat template": tokenizer.chat_template,
    }


def check_compatible(student_path: str, routes: list[Route]) -> None:
    """Every teacher's tokenizer equals the student's (vocabulary, special tokens, EOS, chat template)."""
    student = tokenizer_fingerprint(load_tokenizer(student_path))
    for route in routes:
        teacher = tokenizer_fingerprint(load_tokenizer(route.teacher.checkpoint))
        differ = [key for key in student if student[key] != teacher[key]]
        if differ:
            raise CompatibilityError(
                f"teacher {route.teacher.name!r} ({route.domain}) has a different tokenizer from the student "
                f"{student_path}: {', '.join(differ)} differ"
            )


def check_context(
    student_path: str, tokenizer: Any, route: Route, tasks: list[Task], max_new_tokens: int
) -> None:
    """Prompt plus the whole response budget fits the student's and the teacher's context."""
    longest, prompt_tokens = longest_prompt(tokenizer, tasks)
    need = prompt_tokens + max_new_tokens * route.max_turns
    for who, path in (
        ("student", student_path),
        (f"teacher {route.teacher.name!r}", route.teacher.checkpoint),
    ):
        if need > (context := model_context(path)):
            raise CompatibilityError(
                f"{route.domain} prompt {longest.uid} needs {need} tokens with its response budget, more than "
                f"the {who}'s context of {context}"
            )
