"""The schemas of the jobs that drive the others (``jobs.make_base``, ``jobs.pipeline``), and the one call that
stores every schema in Hydra's ConfigStore. No torch here either.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore

import distill.config
import rl.config
from rl.config import (
    CONFIGS,
    BaseRecipe,
    ClusterConfig,
    LoggerConfig,
    fp4_format,
)
from rl.config_rules import (
    check_fields,
    non_empty,
    one_of,
    run_name,
)


@dataclass
class MakeBaseConfig:
    recipe: BaseRecipe = field(default_factory=BaseRecipe)
    output: str = ""  # where to write the base; "" = the cache directory keyed by the recipe hash
    force: bool = False  # rebuild even if a base for this recipe is cached
    verbose: bool = (
        False  # the whole console: library progress bars, W&B info lines (or DISTILLERY_VERBOSE=1)
    )


@dataclass
class PipelineRunConfig:
    """``python -m jobs.pipeline``: base -> specialists (registered) -> one distilled student -> report.

    Each stage is the stage's own job (``jobs.train_specialist``, ``jobs.distill``) composed from its config
    with the overrides below, run in this process, in ``<runs_root>/<run_name>/<stage>/``.
    """

    # configs/model/ entry of every stage: the specialists' base and the student (not ``model``: Hydra reads
    # ``model=...`` as a choice of the configs/model/ group, which this config does not select)
    base_model: str = "tiny-all"
    # stage name -> overrides of jobs.train_specialist's config, nested (rollout: {max_new_tokens: 64} is
    # rollout.max_new_tokens=64); the stage name picks the specialist group unless ``specialist: <group>`` is set
    specialists: dict[str, dict[str, Any]] = field(default_factory=dict)
    # overrides of jobs.distill's config; the teachers are the specialists above, each for its domain
    distill: dict[str, Any] = field(default_factory=dict)
    # overrides for every stage, nested the same way, e.g. +overrides.rollout=vllm +overrides.model.path=/my/base
    overrides: dict[str, Any] = field(default_factory=dict)
    # every stage's W&B runs; the group is run_name unless set
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)  # address / num_cpus go to every stage
    fp4: str = "mxfp4"  # every stage's FP4 format: mxfp4 | nvfp4 | none
    run_name: str = "pipeline"  # the pipeline's directory under runs_root (and its W&B group)
    runs_root: str = "runs"
    resume: bool = False  # skip finished stages, continue the interrupted one from its checkpoint
    verbose: bool = (
        False  # the whole console: library progress bars, W&B info lines (or DISTILLERY_VERBOSE=1)
    )

    def __post_init__(self) -> None:
        models = sorted(p.stem for p in (CONFIGS / "model").glob("*.yaml"))
        check_fields("", self, {"base_model": one_of(tuple(models)), "fp4": fp4_format(), "run_name": run_name(),
                                "runs_root": non_empty()})  # fmt: skip


def register_configs() -> None:
    """Store every schema (rl's, distillation's, these) in Hydra's ConfigStore (idempotent)."""
    rl.config.register_configs()
    distill.config.register_configs()
    store = ConfigStore.instance()
    store.store(name="_make_base_schema", node=MakeBaseConfig)
    store.store(name="_pipeline_run_schema", node=PipelineRunConfig)
