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

torch, Ray and the workers are imported inside the functions that use them, so that ``check_inputs`` rejects
bad input within about a second of the start, before they load.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distill.config import DistillRunConfig
from jobs.cli import job_main
from jobs.common import (
    check_cluster,
    check_model_path,
    check_resume,
    check_writable,
    forwarded_env,
    init_ray,
    prepare_run_dir,
)
from jobs.make_base import resolve_model_path
from jobs.train_specialist import check_backends, check_memory
from rl.config import FP4, fp4_of, serving_dtype

if TYPE_CHECKING:
    from distill.routing import Route
    from distill.step import DomainData
    from distill.teacher import TeacherGroup
    from rl.episodes import Prompts
    from rl.rollout.group import RolloutGroup
    from rl.tracking import Tracker
    from rl.trainer.group import TrainerGroup
    from specialists.registry import SpecialistEntry


def check_options(cfg: DistillRunConfig) -> None:
    """What the schema cannot know: the backend distillation supports, and the packages (names and ranges
    are the schema's)."""
    if cfg.trainer.backend != "torch":  # the OPD step reads the student's head outside the forward (ZeRO-3
        # partitions it) and has only been tested on the torch backend (one rank or DDP)
        raise ValueError(f"distillation runs on trainer.backend=torch (one rank or DDP over trainer.num_ranks); "
                         f"{cfg.trainer.backend!r} is not supported for it yet")  # fmt: skip
    check_backends(cfg)


def check_inputs(cfg: DistillRunConfig) -> None:
    """What can be checked before any work, cheaply: options, where it writes, the student, every teacher
    (registered, checkpoint on disk), the checkpoint it resumes, the cluster it joins."""
    from specialists.registry import lookup, registry_path

    check_options(cfg)
    check_writable(Path(cfg.runs_root), "runs_root")
    check_model_path(cfg.model)
    if not cfg.distill.teachers:
        raise ValueError(
            "distill.teachers is empty: name a teacher per domain, e.g. distill.teachers.math=<name>"
        )
    for name in cfg.distill.teachers.values():
        lookup(registry_path(cfg.registry, cfg.runs_root), name)
    check_resume(Path(cfg.runs_root) / cfg.run_name, cfg.resume)
    check_cluster(cfg.cluster)


def domain_data(cfg: DistillRunConfig, routes: list[Route]) -> dict[str, DomainData]:
    from distill.step import DomainData
    from rl.batching import TaskStream

    return {r.domain: DomainData(TaskStream(r.specialist.train_tasks(r.tasks_cfg), seed=cfg.seed),
                                 r.specialist.eval_tasks(r.tasks_cfg)) for r in routes}  # fmt: skip


def served_teacher(
    cfg: DistillRunConfig, env: dict[str, str]
) -> Callable[[SpecialistEntry], tuple[Any, Any]]:
    """For the teachers' eval: a temporary rollout group serving one teacher in its own FP4 format."""

    from rl.rollout.group import RolloutGroup

    def make(entry: SpecialistEntry) -> tuple[Any, Any]:
        group = RolloutGroup(entry.checkpoint, cfg.rollout, cfg.cluster, env, fp4_of(entry.fp4),
                             dtype=serving_dtype(cfg.model, cfg.rollout))  # fmt: skip
        return group.generate, group.shutdown

    return make


def evaluate_teachers(cfg: DistillRunConfig, routes: list[Route], data: dict[str, DomainData],
                      env: dict[str, str], prompts: Prompts) -> dict[str, dict[str, float]]:  # fmt: skip
    """Every teacher greedy on every domain, each served as its own FP4 rollout: side by side on GPUs, in turn
    on CPU cores."""
    from distill.step import teacher_evals
    from rl.episodes import sampling_params

    parallel = bool(cfg.cluster.actor_gpus)
    print(f"evaluating {len({r.teacher.name for r in routes})} teacher(s) on {len(routes)} domain(s)"
          + (", side by side" if parallel else ""), flush=True)  # fmt: skip
    return teacher_evals(routes, data, served_teacher(cfg, env), prompts,
                         sampling_params(cfg.rollout, seed=0, temperature=0.0), parallel)  # fmt: skip


def resource_needs(cfg: DistillRunConfig, routes: list[Route]) -> dict[str, dict[str, float]]:
    """What each role reserves: one TeacherWorker per distinct teacher, each with ``distill.teacher_cpus`` and
    (on GPUs) the actors' GPU fraction, beside the rollout workers and trainer ranks."""
    from rl.placement import role_needs

    n_teachers = len({route.teacher.name for route in routes})
    teachers = {
        "CPU": cfg.distill.teacher_cpus * n_teachers,
        "GPU": (cfg.cluster.actor_gpus or 0) * n_teachers,
    }
    return {"rollout": role_needs(cfg.rollout.num_workers, cfg.cluster),
            "trainer": role_needs(cfg.trainer.num_ranks, cfg.cluster),
            "teacher": {k: v for k, v in teachers.items() if v > 0}}  # fmt: skip


def start_workers(cfg: DistillRunConfig, student: str, routes: list[Route], env: dict[str, str]
                  ) -> tuple[TrainerGroup, RolloutGroup, TeacherGroup]:  # fmt: skip
    from distill.objective import OPDObjective
    from distill.teacher import TeacherGroup
    from rl.rollout.group import RolloutGroup
    from rl.trainer.group import TrainerGroup
    from rl.trainer.spec import TrainerSpec

    teachers = TeacherGroup({r.teacher.name: (r.teacher.checkpoint, fp4_of(r.teacher.fp4)) for r in routes},
                            cfg.model.dtype, cfg.cluster, cfg.distill.teacher_cpus, env)  # fmt: skip
    objective = OPDObjective.of(cfg.distill, teachers.heads())
    trainer_cfg, fp4 = dataclasses.replace(cfg.trainer, lr=cfg.distill.lr), fp4_of(cfg.fp4)
    spec = TrainerSpec(
        student, trainer_cfg, cfg.steps, cfg.model.dtype, cfg.seed, cfg.rollout.temperature, fp4
    )
    trainer = TrainerGroup(spec, objective, cfg.cluster, env)
    rollout = RolloutGroup(
        student, cfg.rollout, cfg.cluster, env, fp4, dtype=serving_dtype(cfg.model, cfg.rollout)
    )
    trainer.connect_weights(cfg.cluster.weight_sync, rollout.device_uuids())
    return trainer, rollout, teachers


def run(cfg: DistillRunConfig) -> dict[str, Any]:
    """The whole job; returns the summary (also written to ``summary.json``)."""
    from distill.routing import build_routes, check_compatible, check_context
    from distill.step import OPDStep, recovery_table
    from rl.episodes import Prompts
    from rl.loop import Loop, LoopSettings, RunState
    from rl.models import load_tokenizer
    from rl.placement import check_resources, share_gpus
    from rl.tracking import Tracker
    from specialists.registry import registry_path

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
    actors = cfg.rollout.num_workers + cfg.trainer.num_ranks + len({route.teacher.name for route in routes})
    cfg = dataclasses.replace(cfg, cluster=share_gpus(cfg.cluster, actors))
    check_resources(resource_needs(cfg, routes))
    teacher_formats: dict[str, tuple[str, FP4 | None]] = {
        r.teacher.name: (r.teacher.checkpoint, fp4_of(r.teacher.fp4)) for r in routes
    }
    check_memory(cfg, student, cfg.prompts_per_step, cfg.rollout.max_new_tokens, teacher_formats)
    env = forwarded_env()
    state = RunState.load(checkpoint) if checkpoint else RunState()
    prompts = Prompts(tokenizer)
    if not state.teachers:
        state.teachers = evaluate_teachers(cfg, routes, data, env, prompts)
    trainer, rollout, teachers = start_workers(cfg, student, routes, env)
    tracker = Tracker(run_dir, cfg.logger, dataclasses.asdict(cfg), cfg.run_name, job_type="distill",
                      run_id=state.wandb_run_id)  # fmt: skip
    step = OPDStep(cfg, routes, data, tokenizer, rollout, trainer, teachers, tracker)
    loop = Loop(LoopSettings.of(cfg), run_dir, step, trainer, rollout, tracker, tokenizer, state,
                roles={"teacher": teachers})  # fmt: skip
    if checkpoint:
        loop.resume(checkpoint)
    try:
        summary = loop.run()
    finally:
        trainer.shutdown()
        rollout.shutdown()
        teachers.shutdown()
    base = {k.removesuffix("_start"): v for k, v in summary.items() if k.endswith("_start")}
    table, recovered = recovery_table(base, state.teachers, summary, routes)
    summary["eval_table"] = table
    summary |= {f"eval/{r.teacher.name}/{k.removeprefix('eval/')}": v
                for r in routes for k, v in state.teachers[r.teacher.name].items()}  # fmt: skip
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


@job_main("distill", DistillRunConfig, check_inputs)
def main(cfg: DistillRunConfig) -> None:
    summary = run(cfg)
    print("held-out greedy pass@1 (base = the student before distillation):")
    print(summary["eval_table"])


if __name__ == "__main__":
    main()
