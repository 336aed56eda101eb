"""On-policy distillation: one student learns every registered specialist's domain from its own FP4 samples.

    python -m jobs.distill distill.teachers.math=math distill.teachers.code=code distill.teachers.agent=agent
    python -m jobs.distill distill.loss=sampled_token distill.lr=3e-4
    python -m jobs.distill run_name=distill-20261122-120000 resume=true

Teachers are registry names (``specialists/registry.py``; each finished ``jobs.train_specialist`` run
registers itself under its run_name). Before any work: every teacher exists and still has its checkpoint,
domains are known, tokenizers agree with the student's, prompt + response fits every context, the cluster
holds every role. Then: each teacher is evaluated on every domain (served as its own FP4 rollout), the student
is distilled, and base / teachers / student pass@1 go to ``summary.json``, W&B and a printed table.

Writes ``runs/<run_name>/``: config.yaml, metrics.jsonl, summary.json (with ``eval_table``), checkpoints/, wandb/.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from distill.controller import DistillController, DomainData, Prompts, recovery_table, teacher_evals
from distill.losses import OPD_LOSSES, LossOptions
from distill.routing import Route, build_routes, check_compatible, check_context
from distill.teacher import TeacherGroup
from jobs.common import forwarded_env, init_ray, prepare_run_dir, resolve_model_path, user_errors
from jobs.train_specialist import check_backends
from rl.batching import TaskStream
from rl.checkpoint import load_state
from rl.config import AlgorithmConfig, DistillRunConfig, register_configs, to_typed
from rl.controller import sampling_params
from rl.fp4.formats import get_format
from rl.models import load_tokenizer
from rl.placement import check_resources, role_needs
from rl.rollout.group import RolloutGroup
from rl.tracking import Tracker, truncate_metrics
from rl.trainer.group import TrainerGroup
from specialists.registry import SpecialistEntry, registry_path


def check_options(cfg: DistillRunConfig) -> None:
    if cfg.distill.loss not in OPD_LOSSES:
        raise ValueError(f"unknown distill.loss {cfg.distill.loss!r}; valid: {', '.join(OPD_LOSSES)}")
    if cfg.fp4 != "none":
        get_format(cfg.fp4)
    if cfg.trainer.backend != "torch":  # the OPD step reads the student's head outside the forward (ZeRO-3
        # partitions it) and has only been tested on the torch backend (one rank or DDP)
        raise ValueError(f"distillation runs on trainer.backend=torch (one rank or DDP over trainer.num_ranks); "
                         f"{cfg.trainer.backend!r} is not supported for it yet")  # fmt: skip
    if cfg.distill.samples_per_prompt < 1 or cfg.prompts_per_step < 1:
        raise ValueError("distill.samples_per_prompt and prompts_per_step must be >= 1")
    check_backends(cfg)


def domain_data(cfg: DistillRunConfig, routes: list[Route]) -> dict[str, DomainData]:
    return {r.domain: DomainData(TaskStream(r.specialist.train_tasks(r.tasks_cfg), seed=cfg.seed),
                                 r.specialist.eval_tasks(r.tasks_cfg)) for r in routes}  # fmt: skip


def served_teacher(
    cfg: DistillRunConfig, env: dict[str, str]
) -> Callable[[SpecialistEntry], tuple[Any, Any]]:
    """For the teachers' eval: a temporary rollout group serving one teacher in its own FP4 format."""

    def make(entry: SpecialistEntry) -> tuple[Any, Any]:
        group = RolloutGroup(entry.checkpoint, cfg.rollout, cfg.cluster, env, entry.fp4)
        return group.generate, group.shutdown

    return make


def start_workers(cfg: DistillRunConfig, student: str, routes: list[Route], env: dict[str, str]
                  ) -> tuple[TrainerGroup, RolloutGroup, TeacherGroup]:  # fmt: skip
    trainer_cfg = dataclasses.replace(cfg.trainer, lr=cfg.distill.lr)
    trainer = TrainerGroup(student, trainer_cfg, AlgorithmConfig(), cfg.cluster, cfg.steps, cfg.model.dtype,
                           cfg.seed, env, cfg.rollout.temperature, cfg.fp4)  # fmt: skip
    rollout = RolloutGroup(student, cfg.rollout, cfg.cluster, env, cfg.fp4)
    teachers = TeacherGroup({r.teacher.name: (r.teacher.checkpoint, r.teacher.fp4) for r in routes},
                            cfg.model.dtype, cfg.cluster, cfg.distill.teacher_cpus, env)  # fmt: skip
    d = cfg.distill
    trainer.set_teacher_heads(teachers.heads(), d.loss, LossOptions(d.beta, d.top_k, d.is_cap, d.vocab_chunk))
    return trainer, rollout, teachers


def run(cfg: DistillRunConfig) -> dict[str, Any]:
    """The whole job; returns the summary (also written to ``summary.json``)."""
    check_options(cfg)
    routes = build_routes(cfg.distill, registry_path(cfg.registry, cfg.runs_root))
    student = resolve_model_path(cfg.model)
    check_compatible(student, routes)
    tokenizer = load_tokenizer(student)
    data = domain_data(cfg, routes)
    for route in routes:
        check_context(student, tokenizer, route, list(data[route.domain].stream.tasks) + data[route.domain].eval_tasks,
                      cfg.rollout.max_new_tokens)  # fmt: skip
    run_dir = Path(cfg.runs_root) / cfg.run_name
    checkpoint = prepare_run_dir(run_dir, cfg.resume, cfg)
    init_ray(cfg.cluster)
    teacher_cpus = {"CPU": cfg.distill.teacher_cpus * len(routes)}
    check_resources({"rollout": role_needs(cfg.rollout.num_workers, cfg.cluster),
                     "trainer": role_needs(cfg.trainer.num_ranks, cfg.cluster), "teacher": teacher_cpus})  # fmt: skip
    env = forwarded_env()
    state = load_state(checkpoint) if checkpoint else {}
    history = state.get("history", {})
    prompts = Prompts(tokenizer)
    if "teachers" not in history:
        print(f"evaluating {len(routes)} teacher(s) on {len(routes)} domain(s)", flush=True)
        history["teachers"] = teacher_evals(routes, data, served_teacher(cfg, env), prompts,
                                            sampling_params(cfg.rollout, seed=0, temperature=0.0))  # fmt: skip
    trainer, rollout, teachers = start_workers(cfg, student, routes, env)
    tracker = Tracker(run_dir, cfg.logger, dataclasses.asdict(cfg), cfg.run_name, job_type="distill",
                      run_id=state.get("wandb_run_id"))  # fmt: skip
    controller = DistillController(cfg, run_dir, routes, data, tokenizer, rollout, trainer, teachers, tracker)
    controller.history = history
    if checkpoint:
        trainer.load(str(checkpoint))
        rollout.push_weights(trainer.export_weights())
        for domain, position in state["data"].items():
            data[domain].stream.seek(**position)
        truncate_metrics(run_dir / "metrics.jsonl", state["step"])
        controller.last_checkpoint = str(checkpoint)
        print(f"resuming {run_dir} from {checkpoint.name} (step {state['step']})", flush=True)
    try:
        summary = controller.run(state.get("step", 0))
    finally:
        trainer.shutdown()
        rollout.shutdown()
        teachers.shutdown()
    base = {k.removesuffix("_start"): v for k, v in summary.items() if k.endswith("_start")}
    table, recovered = recovery_table(base, history["teachers"], summary, routes)
    summary["eval_table"] = table
    summary |= {f"eval/{r.teacher.name}/{k.removeprefix('eval/')}": v
                for r in routes for k, v in history["teachers"][r.teacher.name].items()}  # fmt: skip
    summary |= {f"opd/recovered/{domain}": value for domain, value in recovered.items()}
    summary["wandb_artifact"] = record_lineage(cfg, tracker, routes, summary)
    tracker.finish(summary)
    return summary


def record_lineage(
    cfg: DistillRunConfig, tracker: Tracker, routes: list[Route], summary: dict[str, Any]
) -> str | None:
    """The student as a W&B model artifact whose inputs are its teachers' artifacts (the registry's)."""
    for route in routes:
        name = (route.teacher.wandb_artifact or f"specialist-{route.teacher.name}").split(":")[0]
        tracker.use_model(route.teacher.checkpoint, name, "specialist")
    evals = {k: v for k, v in summary.items() if k.startswith(("eval/", "opd/recovered/"))}
    teachers = {r.domain: r.teacher.name for r in routes}
    return tracker.log_model(summary["checkpoint"], f"student-{cfg.run_name}", "student",
                             {"teachers": teachers, "loss": cfg.distill.loss, **evals})  # fmt: skip


@hydra.main(config_path="../configs", config_name="distill", version_base="1.3")
def main(dcfg: DictConfig) -> None:
    with user_errors():
        summary = run(to_typed(dcfg, DistillRunConfig))
    print("held-out greedy pass@1 (base = the student before distillation):")
    print(summary["eval_table"])


register_configs()

if __name__ == "__main__":
    main()
