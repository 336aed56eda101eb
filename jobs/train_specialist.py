"""RL of one specialist with GRPO-family algorithms on Ray rollout and trainer workers.

    python -m jobs.train_specialist specialist=math
    python -m jobs.train_specialist specialist=gsm8k model=smollm2-135m algorithm=dr_grpo trainer.num_ranks=2
    python -m jobs.train_specialist run_name=math-20261122-120000 resume=true
    python -m jobs.train_specialist specialist=math rollout=vllm trainer=deepspeed trainer.zero_stage=3

Writes ``runs/<run_name>/``: config.yaml, metrics.jsonl, summary.json, checkpoints/, wandb/.

torch, Ray and the workers are imported inside the functions that use them, so that ``check_inputs`` rejects
bad input within about a second of the start, before they load.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distill.config import DistillRunConfig
from jobs.cli import job_main
from jobs.common import (
    base_artifact_name,
    check_cluster,
    check_data_files,
    check_model_path,
    check_resume,
    check_writable,
    forwarded_env,
    init_ray,
    prepare_run_dir,
)
from jobs.make_base import resolve_model_path
from rl.config import FP4, ModelConfig, SpecialistRunConfig, fp4_of, serving_dtype

if TYPE_CHECKING:
    from rl.rollout.group import RolloutGroup
    from rl.tracking import Tracker
    from rl.trainer.group import TrainerGroup


def check_context(tokenizer: Any, tasks: list, response_tokens: int, context: int) -> None:
    """Every prompt plus the longest response (all turns, for agents) must fit the model's context."""
    from rl.sft import longest_prompt

    longest, prompt_tokens = longest_prompt(tokenizer, tasks)
    need = prompt_tokens + response_tokens
    if need > context:
        raise ValueError(
            f"prompt {longest.uid} needs {need} tokens with a response budget of {response_tokens} "
            f"(rollout.max_new_tokens, times specialist.max_turns for agents), more than the model's "
            f"context of {context}"
        )


def is_moe(model: ModelConfig) -> bool:
    """The embedded MoE base, or a local model directory whose config.json has routed experts."""
    config = Path(model.path) / "config.json"
    if model.path == "embedded:tiny-moe":
        return True
    if not config.is_file():
        return False
    raw = json.loads(config.read_text())  # the key differs by transformers version and family
    return any(raw.get(k) for k in ("num_experts", "num_local_experts", "n_routed_experts"))


def check_backends(cfg: SpecialistRunConfig | DistillRunConfig) -> None:
    """The packages the engine and backend need, and the DeepSpeed options -- before any actor starts.
    (Their names are checked by the schema.)"""
    packages = {"vllm": cfg.rollout.engine == "vllm", "deepspeed": cfg.trainer.backend == "deepspeed"}
    for package in [p for p, needed in packages.items() if needed and importlib.util.find_spec(p) is None]:
        raise ValueError(
            f"{package} is not installed; `make` installs it (pip install -e '.[cpu]' on CPU, '.[gpu]' on GPU)"
        )
    if cfg.rollout.engine == "vllm" and cfg.fp4 != "none" and is_moe(cfg.model):
        raise ValueError(f"rollout=vllm does not serve FP4 MoE experts (model {cfg.model.name!r}); the packed "
                         "experts are the hf engine's: use rollout=hf, or fp4=none")  # fmt: skip
    if cfg.trainer.backend == "deepspeed":
        from rl.trainer.deepspeed_backend import deepspeed_config

        deepspeed_config(cfg.trainer, cfg.model.dtype, cfg.trainer.num_ranks)


def check_routing_replay(cfg: SpecialistRunConfig) -> None:
    """``algorithm.routing_replay`` needs an MoE whose router replay can rebuild, and an engine that records."""
    if not cfg.algorithm.routing_replay:
        return
    if not is_moe(cfg.model):
        raise ValueError(
            f"algorithm.routing_replay=true needs an MoE model; model {cfg.model.name!r} is dense"
        )
    if cfg.rollout.engine != "hf":
        raise ValueError("algorithm.routing_replay=true: rollout=vllm does not return the experts it routed each "
                         "token to; use rollout=hf")  # fmt: skip
    from rl.moe import REPLAYABLE_MODEL_TYPES

    config = Path(cfg.model.path) / "config.json"
    model_type = json.loads(config.read_text()).get("model_type") if config.is_file() else "qwen3_moe"
    if model_type not in REPLAYABLE_MODEL_TYPES:
        raise ValueError(f"algorithm.routing_replay=true: model_type {model_type!r} has a router replay cannot "
                         f"rebuild; supported: {', '.join(REPLAYABLE_MODEL_TYPES)}")  # fmt: skip


def check_inputs(cfg: SpecialistRunConfig) -> None:
    """What can be checked before any work, cheaply: where it writes, what it reads, the checkpoint it
    resumes, the cluster it joins (the config's values were checked by its schema)."""
    check_writable(Path(cfg.runs_root), "runs_root")
    if cfg.registry:
        check_writable(Path(cfg.registry), "registry")
    check_model_path(cfg.model)
    check_backends(cfg)
    check_routing_replay(cfg)
    check_data_files(cfg.specialist)
    check_resume(Path(cfg.runs_root) / cfg.run_name, cfg.resume)
    check_cluster(cfg.cluster)


def check_memory(cfg: SpecialistRunConfig | DistillRunConfig, model_path: str, sequences: int, tokens: int,
                 teachers: dict[str, tuple[str, FP4 | None]] | None = None) -> None:  # fmt: skip
    """Each actor's least GPU memory against its share of this machine's GPU, before any actor starts
    (``rl.memory``; no GPU here or CPU actors: nothing to check). ``sequences`` per step, ``tokens`` of
    response each; ``teachers``: name -> (checkpoint, FP4 format)."""
    from rl.memory import ModelShape, check_gpu_memory, local_gpu, rollout_needs, trainer_needs

    gpu = local_gpu()
    if gpu is None or not cfg.cluster.actor_gpus:
        return
    fp4 = fp4_of(cfg.fp4)
    shape, dtype, served = (
        ModelShape.of(model_path, fp4),
        cfg.model.dtype,
        serving_dtype(cfg.model, cfg.rollout),
    )
    batch = min(cfg.rollout.max_batch_size, -(-sequences // cfg.rollout.num_workers))
    reference = isinstance(cfg, SpecialistRunConfig) and cfg.algorithm.kl_coef > 0
    needs = {"trainer rank": trainer_needs(shape, dtype, reference),
             "rollout worker": rollout_needs(shape, served, fp4, batch, tokens)}  # fmt: skip
    for name, (checkpoint, fmt) in (teachers or {}).items():
        needs[f"teacher {name}"] = {
            "weights": rollout_needs(ModelShape.of(checkpoint, fmt), dtype, fmt, 0, 0)["weights"]
        }
    check_gpu_memory(needs, cfg.cluster.actor_gpus, *gpu)


def start_workers(cfg: SpecialistRunConfig, model_path: str) -> tuple[TrainerGroup, RolloutGroup]:
    """Check the cluster can hold every role, then start the trainer ranks and rollout workers."""
    from rl.algorithms.objective import PolicyObjective
    from rl.placement import check_resources, role_needs
    from rl.rollout.group import RolloutGroup
    from rl.trainer.group import TrainerGroup
    from rl.trainer.spec import TrainerSpec

    check_resources(
        {
            "rollout": role_needs(cfg.rollout.num_workers, cfg.cluster),
            "trainer": role_needs(cfg.trainer.num_ranks, cfg.cluster),
        }
    )
    env, fp4 = forwarded_env(), fp4_of(cfg.fp4)
    spec = TrainerSpec(
        model_path, cfg.trainer, cfg.steps, cfg.model.dtype, cfg.seed, cfg.rollout.temperature, fp4
    )
    trainer = TrainerGroup(spec, PolicyObjective(cfg.algorithm), cfg.cluster, env)
    rollout = RolloutGroup(
        model_path, cfg.rollout, cfg.cluster, env, fp4, dtype=serving_dtype(cfg.model, cfg.rollout)
    )
    trainer.connect_weights(cfg.cluster.weight_sync, rollout.device_uuids())
    return trainer, rollout


def run(cfg: SpecialistRunConfig) -> dict[str, Any]:
    """The whole job; returns the summary (also written to ``summary.json``)."""
    from rl.batching import TaskStream
    from rl.grpo_step import GRPOStep, response_budget
    from rl.loop import Loop, LoopSettings, RunState
    from rl.models import load_tokenizer, model_context
    from rl.placement import share_gpus, split_threads
    from rl.tracking import Tracker
    from specialists.domains import get_specialist

    check_backends(cfg)
    specialist = get_specialist(cfg.specialist.domain)
    train_tasks, eval_tasks = specialist.train_tasks(cfg.specialist), specialist.eval_tasks(cfg.specialist)
    model_path = resolve_model_path(cfg.model)
    tokenizer = load_tokenizer(model_path)
    budget = response_budget(cfg, specialist)
    check_context(tokenizer, train_tasks + eval_tasks, budget, model_context(model_path))
    run_dir = (
        Path(cfg.runs_root) / cfg.run_name
    )  # written only once the data, model and context are known good
    checkpoint = prepare_run_dir(run_dir, cfg.resume, cfg)
    init_ray(cfg.cluster)
    cluster = share_gpus(cfg.cluster, cfg.rollout.num_workers + cfg.trainer.num_ranks)
    if cfg.algorithm.max_staleness:  # the rollout workers sample while the trainer ranks train
        why = f" (algorithm.max_staleness={cfg.algorithm.max_staleness})"
        cluster = split_threads(cluster, cfg.rollout.num_workers + cfg.trainer.num_ranks, why=why)
    cfg = dataclasses.replace(cfg, cluster=cluster)
    check_memory(cfg, model_path, cfg.prompts_per_step * cfg.algorithm.group_size, budget)
    trainer, rollout = start_workers(cfg, model_path)
    stream = TaskStream(train_tasks, seed=cfg.specialist.data_seed)
    state = RunState.load(checkpoint) if checkpoint else RunState()
    tracker = Tracker(run_dir, cfg.logger, dataclasses.asdict(cfg), cfg.run_name, job_type="specialist",
                      run_id=state.wandb_run_id)  # fmt: skip
    step = GRPOStep(cfg, specialist, tokenizer, rollout, trainer, tracker, stream, eval_tasks)
    loop = Loop(LoopSettings.of(cfg), run_dir, step, trainer, rollout, tracker, tokenizer, state)
    if checkpoint:
        loop.resume(checkpoint)
    print(f"run {run_dir}: {len(train_tasks)} train / {len(eval_tasks)} eval tasks", flush=True)
    try:
        summary = loop.run()
    finally:
        trainer.shutdown()
        rollout.shutdown()
    summary["registry"] = record_specialist(cfg, model_path, summary, tracker)
    tracker.finish(summary)
    return summary


def record_specialist(cfg: SpecialistRunConfig, base: str, summary: dict[str, Any], tracker: Tracker) -> str:
    """The finished run's final checkpoint in the registry (and as a W&B artifact, named in ``summary``) under
    ``run_name``."""
    from specialists.registry import SpecialistEntry, register, registry_path

    evals = {k: v for k, v in summary.items() if k.startswith("eval/")}
    tracker.use_model(base, base_artifact_name(cfg.model.name), "base")
    artifact = tracker.log_model(summary["checkpoint"], f"specialist-{cfg.run_name}", "specialist",
                                 {"domain": cfg.specialist.domain, **evals})  # fmt: skip
    path = registry_path(cfg.registry, cfg.runs_root)
    register(path, SpecialistEntry(
        name=cfg.run_name, domain=cfg.specialist.domain, checkpoint=str(Path(summary["checkpoint"]).resolve()),
        fp4=cfg.fp4, base=base, eval=evals, config=dataclasses.asdict(cfg),
        run_dir=str((Path(cfg.runs_root) / cfg.run_name).resolve()), wandb_run_id=tracker.run_id,
        wandb_artifact=artifact,
    ))  # fmt: skip
    print(f"registered specialist {cfg.run_name!r} ({cfg.specialist.domain}) in {path}", flush=True)
    summary["wandb_artifact"] = artifact
    return str(path)


@job_main("train_specialist", SpecialistRunConfig, check_inputs)
def main(cfg: SpecialistRunConfig) -> None:
    summary = run(cfg)
    start, end = summary.get("eval/pass@1_start"), summary.get("eval/pass@1")
    print(
        f"held-out pass@1: base {start:.3f} -> specialist {end:.3f}"
        if start is not None and end is not None
        else f"summary: {summary}"
    )


if __name__ == "__main__":
    main()
