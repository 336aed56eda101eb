"""The schemas of on-policy distillation (``python -m jobs.distill``), registered in Hydra's ConfigStore beside
rl's (``register_configs``). Like ``rl.config``, nothing here imports torch: a config is checked before anything
heavy loads.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore

from rl.config import (
    CHOICES,
    ClusterConfig,
    LoggerConfig,
    ModelConfig,
    RolloutConfig,
    TrainerConfig,
    fp4_format,
)
from rl.config_rules import (
    ConfigValueError,
    above,
    at_least,
    check_fields,
    each,
    non_empty,
    one_of,
    run_name,
    within,
)

# distill.losses.OPD_LOSSES, which imports torch (tests/test_configs.py keeps the two equal)
LOSSES = ("reverse_kl", "sampled_token", "gkd_jsd", "topk_forward_kl")


@dataclass
class LossOptions:
    """The knobs of the losses besides the default one (``distill.*``: ``DistillConfig`` is a ``LossOptions``)."""

    beta: float = 0.5  # gkd_jsd: 0 = forward KL(q||p), 1 = reverse KL(p||q), in between the generalized JSD
    top_k: int = 64  # topk_forward_kl: teacher tokens kept (the rest is one tail bucket)
    is_cap: float = 2.0  # sampled_token: cap of the importance weight pi/mu
    vocab_chunk: int = 0  # reverse_kl: vocabulary columns per chunk; 0 = sized from the token count
    token_chunk: int = 1024  # the other losses: positions per checkpointed chunk


@dataclass
class DistillConfig(LossOptions):
    """On-policy distillation: which teachers, which objective (its knobs are the ``LossOptions`` it extends),
    how the domains are mixed."""

    teachers: dict[str, str] = field(default_factory=dict)  # domain -> registry name of its teacher
    weights: dict[str, float] = field(default_factory=dict)  # domain -> loss weight w_e (missing = 1.0)
    # reverse_kl (full vocabulary, fused) | sampled_token | gkd_jsd | topk_forward_kl
    loss: str = "reverse_kl"
    lr: float = 1e-4  # student AdamW peak LR (trainer.lr is not used by distillation)
    samples_per_prompt: int = 2  # student completions per prompt
    num_eval_tasks: int = 100  # held-out tasks per domain for every model's eval
    max_turns: int = 4  # agent-domain episodes: model turns
    teacher_cpus: float = 0.25  # Ray CPUs per teacher actor (teachers run between the other roles' calls)

    def __post_init__(self) -> None:
        domains = CHOICES["specialist.domain"]
        for key, mapping in (("distill.teachers", self.teachers), ("distill.weights", self.weights)):
            if unknown := sorted(set(mapping) - set(domains)):
                raise ConfigValueError(
                    f"unknown domain(s) {', '.join(unknown)} in {key}; valid: {', '.join(domains)}"
                )
        check_fields("distill", self, {
            "weights": lambda key, w: each(at_least(0))(key, list(w.values())), "loss": one_of(LOSSES),
            "lr": above(0), "samples_per_prompt": at_least(1), "beta": within(0, 1), "top_k": at_least(1),
            "is_cap": above(0), "vocab_chunk": at_least(0), "token_chunk": at_least(1), "num_eval_tasks": at_least(0), "max_turns": at_least(1),
            "teacher_cpus": at_least(0),
        })  # fmt: skip


@dataclass
class DistillRunConfig:
    """``python -m jobs.distill``: one student learns every teacher's domain from its own samples."""

    model: ModelConfig = field(default_factory=ModelConfig)  # the student (usually the teachers' base)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    fp4: str = "mxfp4"  # the student's FP4: QAT in the trainer + packed FP4 rollouts: mxfp4 | nvfp4 | none
    run_name: str = "distill"  # run directory name under runs_root
    runs_root: str = "runs"  # parent of run directories
    registry: str = ""  # where teachers are looked up; "" = <runs_root>/registry.json
    steps: int = 60  # distillation steps (one optimizer step each)
    prompts_per_step: int = 24  # prompts per step, split evenly over the teachers' domains
    eval_every: int = 20  # eval period in steps; 0 = only at start and end
    checkpoint_every: int = 20  # checkpoint period in steps; the last step is always saved
    keep_checkpoints: int = 2  # newest checkpoints kept on disk
    seed: int = 0  # sampling and data-order seed
    resume: bool = False  # continue from the run directory's latest checkpoint
    verbose: bool = (
        False  # the whole console: library progress bars, W&B info lines (or DISTILLERY_VERBOSE=1)
    )

    def __post_init__(self) -> None:
        check_fields("", self, {
            "fp4": fp4_format(), "run_name": run_name(), "runs_root": non_empty(), "steps": at_least(1),
            "prompts_per_step": at_least(1), "eval_every": at_least(0), "checkpoint_every": at_least(1),
            "keep_checkpoints": at_least(1), "seed": at_least(0),
        })  # fmt: skip


def register_configs() -> None:
    """Store the distillation schemas in Hydra's ConfigStore (idempotent)."""
    store = ConfigStore.instance()
    store.store(group="distill", name="_schema", node=DistillConfig)
    store.store(name="_distill_run_schema", node=DistillRunConfig)
