"""The whole product in one command: base -> math, code and agent specialists -> one student -> report.

    python -m jobs.pipeline                                   # the embedded default (make run)
    python -m jobs.pipeline specialists.math.steps=60 +distill.distill.lr=3e-4
    python -m jobs.pipeline run_name=pipeline-20261123-120000 resume=true
    python -m jobs.pipeline base_model=smollm2-135m +overrides.rollout=vllm +overrides.trainer.num_ranks=2

Each stage is its own job (``jobs.train_specialist``, ``jobs.distill``) composed from that job's config plus
the stage's overrides, and run in this process on one Ray: stage configs are checked exactly as the jobs
check them. Every stage writes under ``<runs_root>/<run_name>/``: ``base/`` (W&B run of the SFT curve),
one directory per specialist, ``registry.json`` (the specialists, which distillation reads), ``distill/``,
and at the end ``report.md``, ``report.json`` and PNG plots. ``pipeline.json`` records finished stages, so
``resume=true`` skips them and continues the interrupted one from its last checkpoint.

Every stage's config is composed and checked (``check_inputs``) before the first stage starts; the stages'
jobs, and with them torch and Ray, are imported after that.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from distill.config import DistillRunConfig
from jobs import distill as distill_job
from jobs import train_specialist
from jobs.cli import config_error, job_main, override_value, resume_command
from jobs.common import (
    InputError,
    RunDirError,
    base_artifact_name,
    check_cluster,
    check_data_files,
    check_model_path,
    check_writable,
    prepare_run_dir,
)
from jobs.config import PipelineRunConfig
from jobs.make_base import base_curve, resolve_model_path
from rl.config import CONFIGS, ModelConfig, SpecialistRunConfig, to_typed, to_yaml
from rl.failures import Interrupted

StageConfig = TypeVar("StageConfig", SpecialistRunConfig, DistillRunConfig)

CONFIG_DIR = CONFIGS


def flatten(overrides: dict[str, Any], prefix: str = "") -> list[str]:
    """``{"steps": 30, "rollout": {"max_new_tokens": 64}}`` -> ``["steps=30", "rollout.max_new_tokens=64"]``."""
    out = []
    for key, value in overrides.items():
        if isinstance(value, dict):
            out += flatten(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}={override_value(value)}")
    return out


def shared_overrides(cfg: PipelineRunConfig, stage: str) -> list[str]:
    """What every stage takes from the pipeline: model, FP4, where it writes, W&B group, cluster, resume."""
    logger = dataclasses.replace(cfg.logger, group=cfg.logger.group or cfg.run_name)
    out = [f"model={cfg.base_model}", f"fp4={cfg.fp4}", f"runs_root={override_value(str(pipeline_dir(cfg)))}",
           f"run_name={stage}", f"resume={override_value(cfg.resume)}"]  # fmt: skip
    out += flatten({"logger": dataclasses.asdict(logger)})
    out += flatten({"cluster": {"address": cfg.cluster.address, "num_cpus": cfg.cluster.num_cpus}})
    return out + flatten(cfg.overrides)


def specialist_overrides(stage: str, overrides: dict[str, Any]) -> list[str]:
    """A specialist stage's overrides; the stage name picks ``configs/specialist/<stage>.yaml`` unless the stage
    names a group itself (``specialist: gsm8k``), so ``specialist: {num_eval_tasks: 50}`` nests under it."""
    group = [] if isinstance(overrides.get("specialist"), str) else [f"specialist={stage}"]
    return group + flatten(overrides)


def compose_stage(config_name: str, overrides: list[str], schema: type, stage: str = "") -> Any:
    """The stage's typed config, composed from ``configs/<config_name>.yaml`` as its own job would be; a bad
    override or value is one line naming the stage."""
    try:
        if GlobalHydra.instance().is_initialized():
            return to_typed(compose(config_name=config_name, overrides=overrides), schema)
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return to_typed(compose(config_name=config_name, overrides=overrides), schema)
    except (HydraException, OmegaConfBaseException) as err:
        raise InputError(f"pipeline stage {stage or config_name!r}: {config_error(err)}") from None
    except ValueError as err:  # a value out of range (the schema's check)
        raise InputError(f"pipeline stage {stage or config_name!r}: {err}") from None


def pipeline_dir(cfg: PipelineRunConfig) -> Path:
    return (Path(cfg.runs_root) / cfg.run_name).resolve()


def midway_checkpoint(run: StageConfig, given: dict[str, Any]) -> StageConfig:
    """A stage shorter than its checkpoint period would save only at its end, so an interrupted stage started
    again from step 0: unless the pipeline sets ``checkpoint_every`` for it, a stage also saves halfway."""
    if "checkpoint_every" in given or run.steps < 2 or run.checkpoint_every < run.steps:
        return run
    return dataclasses.replace(run, checkpoint_every=(run.steps + 1) // 2)


def stage_configs(cfg: PipelineRunConfig) -> tuple[dict[str, SpecialistRunConfig], DistillRunConfig]:
    """Every stage's config, composed and checked before the first stage starts."""
    if not cfg.specialists:
        raise ValueError("pipeline needs at least one entry under specialists (stage name -> overrides)")
    specialists: dict[str, SpecialistRunConfig] = {}
    for name, overrides in cfg.specialists.items():
        composed = shared_overrides(cfg, name) + specialist_overrides(name, overrides)
        spec = compose_stage("train_specialist", composed, SpecialistRunConfig, name)
        specialists[name] = midway_checkpoint(spec, {**cfg.overrides, **overrides})
    domains: dict[str, str] = {}
    for name, spec in specialists.items():
        if spec.specialist.domain in domains:
            raise ValueError(f"specialists {domains[spec.specialist.domain]!r} and {name!r} both train the "
                             f"{spec.specialist.domain} domain; distillation takes one teacher per domain")  # fmt: skip
        domains[spec.specialist.domain] = name
    teachers = {"distill": {"teachers": domains, "weights": {d: 1.0 for d in domains}}}
    overrides = shared_overrides(cfg, "distill") + flatten(teachers) + flatten(cfg.distill)
    distill = midway_checkpoint(compose_stage("distill", overrides, DistillRunConfig, "distill"),
                                {**cfg.overrides, **cfg.distill})  # fmt: skip
    distill.distill.teachers = (
        domains  # exactly the pipeline's specialists (the config group may list others)
    )
    distill.distill.weights = {d: distill.distill.weights.get(d, 1.0) for d in domains}
    return specialists, distill


class StageLog:
    """``pipeline.json``: which stages finished, when, in how long, with what summary."""

    def __init__(self, path: Path, resume: bool, resume_hint: str):
        self.path, self.resume_hint = path, resume_hint
        if path.exists() and not resume:
            raise RunDirError(f"{path.parent} already holds a pipeline; pass resume=true to continue it "
                              "or choose another run_name")  # fmt: skip
        self.state: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {"stages": {}}
        if not path.exists():  # from now on resume=true continues this pipeline, even one stopped in its base
            self.save()

    def save(self) -> None:
        from rl.tracking import write_json_atomic

        write_json_atomic(self.path, self.state)

    def done(self, stage: str) -> dict[str, Any] | None:
        return self.state["stages"].get(stage)

    def record(self, stage: str, seconds: float, summary: dict[str, Any]) -> None:
        self.state["stages"][stage] = {"seconds": round(seconds, 1), "summary": summary}
        self.save()


def run_stage(log: StageLog, stage: str, title: str, work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one stage unless ``pipeline.json`` says it finished; print a banner and its wall time."""
    if (done := log.done(stage)) is not None:
        print(f"== {title}: done in an earlier attempt ({done['seconds']:.0f}s), skipped", flush=True)
        return done["summary"]
    print(f"== {title}", flush=True)
    started = time.perf_counter()
    try:
        summary = work()
    except KeyboardInterrupt as err:  # the job's one line (jobs.cli.interrupted_line) names the stage
        raise Interrupted.within(err, title) from None
    except BaseException:
        print(f"== {title}: stopped. Finished stages are kept; continue with: {log.resume_hint}", flush=True)
        raise
    seconds = time.perf_counter() - started
    log.record(stage, seconds, summary)
    print(f"== {title}: finished in {seconds:.0f}s", flush=True)
    return summary


def base_stage(cfg: PipelineRunConfig, model: ModelConfig, group: str) -> dict[str, Any]:
    """Build (or reuse) the base and record it as its own W&B run (job type ``base``): the SFT curve when it
    was built by ``jobs.make_base``, and the model as an artifact the specialists use."""
    from rl.tracking import Tracker

    model_path = resolve_model_path(model)  # builds the embedded base on first use (progress printed)
    run_dir = pipeline_dir(cfg) / "base"
    prepare_run_dir(run_dir, resume=True, config={"model": dataclasses.asdict(model), "path": model_path})
    report_file = Path(model_path) / "base.json"
    built = json.loads(report_file.read_text()) if report_file.exists() else {}
    logger = dataclasses.replace(cfg.logger, group=group)
    tracker = Tracker(run_dir, logger, {"model": dataclasses.asdict(model), "path": model_path,
                                        "recipe": built.get("recipe")}, "base", job_type="base")  # fmt: skip
    for step, metrics in sorted(base_curve(built).items()):
        tracker.log(metrics, step=step)
    artifact = tracker.log_model(model_path, base_artifact_name(model.name), "base", {"model": model.name})
    summary = {"path": model_path, "sft_steps": built.get("sft_steps"), "sft_seconds": built.get("seconds"),
               "pass@1": built.get("pass@1"), "wandb_run_id": tracker.run_id, "wandb_artifact": artifact}  # fmt: skip
    tracker.finish(summary)
    return summary


def run(cfg: PipelineRunConfig) -> dict[str, Any]:
    """Every stage in order; returns the report (also written to ``report.json`` / ``report.md``)."""
    from jobs import report as report_mod
    from rl.cache import cache_dir

    started = time.perf_counter()
    specialists, distill = stage_configs(cfg)
    out = pipeline_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    hint = resume_command("jobs.pipeline", sys.argv[1:], run_name=cfg.run_name, runs_root=cfg.runs_root)
    log = StageLog(out / "pipeline.json", cfg.resume, hint)
    (out / "config.yaml").write_text(to_yaml(cfg))
    group = cfg.logger.group or cfg.run_name
    n = len(specialists) + 3
    print(f"pipeline {out}: base, {', '.join(specialists)} specialists, distillation, report "
          f"(W&B group {group}; cache {cache_dir()})", flush=True)  # fmt: skip
    summaries = {"base": run_stage(log, "base", f"stage 1/{n}: base {cfg.base_model}",
                                   lambda: base_stage(cfg, distill.model, group))}  # fmt: skip
    for i, (name, spec) in enumerate(specialists.items(), start=2):
        title = f"stage {i}/{n}: {spec.specialist.domain} specialist {name!r} ({spec.steps} RL steps)"
        summaries[name] = run_stage(log, name, title, lambda spec=spec: train_specialist.run(spec))
    summaries["distill"] = run_stage(log, "distill", f"stage {n - 1}/{n}: distillation ({distill.steps} steps)",
                                     lambda: distill_job.run(distill))  # fmt: skip
    seconds = {s: v["seconds"] for s, v in log.state["stages"].items()}
    result = run_stage(log, "report", f"stage {n}/{n}: report",
                       lambda: report_mod.write(out, cfg, specialists, summaries, seconds,
                                                time.perf_counter() - started, group))  # fmt: skip
    return result


def check_inputs(cfg: PipelineRunConfig) -> None:
    """Before the first stage: where it writes, every stage's config composed and checked as its job would
    check it (values, model, data files, options), the pipeline it resumes, the cluster it joins."""
    check_writable(Path(cfg.runs_root), "runs_root")
    specialists, distill = stage_configs(cfg)
    for stage, spec in specialists.items():
        try:
            check_model_path(spec.model)
            check_data_files(spec.specialist)
            train_specialist.check_backends(spec)
        except ValueError as err:
            raise InputError(f"pipeline stage {stage!r}: {err}") from None
    try:
        check_model_path(distill.model)
        distill_job.check_options(distill)
    except ValueError as err:
        raise InputError(f"pipeline stage 'distill': {err}") from None
    if cfg.resume and not (pipeline_dir(cfg) / "pipeline.json").exists():
        raise InputError(f"resume=true but there is no pipeline {pipeline_dir(cfg)} to continue; check run_name "
                         "and runs_root, or drop resume=true to start it")  # fmt: skip
    if not cfg.resume and (pipeline_dir(cfg) / "pipeline.json").exists():
        raise RunDirError(f"{pipeline_dir(cfg)} already holds a pipeline; pass resume=true to continue it "
                          "or choose another run_name")  # fmt: skip
    check_cluster(cfg.cluster)


@job_main("pipeline", PipelineRunConfig, check_inputs)
def main(cfg: PipelineRunConfig) -> None:
    report = run(cfg)
    print(report["table_md"])
    print(f"report: {report['report_md']}")


if __name__ == "__main__":
    main()
