"""Every config in configs/ composes into its typed schema; unknown keys are errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError

from rl.config import (
    DistillRunConfig,
    MakeBaseConfig,
    PipelineRunConfig,
    SpecialistRunConfig,
    register_configs,
    to_typed,
    to_yaml,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
GROUPS = sorted(p.name for p in CONFIGS.iterdir() if p.is_dir())
OPTIONS = [(g, f.stem) for g in GROUPS for f in sorted((CONFIGS / g).rglob("*.yaml"))]


def _compose(name: str, overrides: list[str] | None = None):
    register_configs()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name=name, overrides=overrides or [])


def test_every_group_has_options() -> None:
    assert set(GROUPS) >= {"model", "rollout", "trainer", "algorithm", "specialist", "logger", "cluster"}
    assert len(OPTIONS) >= len(GROUPS)


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_each_option_composes_into_the_schema(group: str, option: str) -> None:
    top, schema = (
        ("distill", DistillRunConfig) if group == "distill" else ("train_specialist", SpecialistRunConfig)
    )
    cfg = to_typed(_compose(top, [f"{group}={option}"]), schema)
    assert isinstance(cfg, schema)
    assert "${" not in to_yaml(cfg)  # everything resolved, as the run directory records it


def test_distill_composes_with_teachers_by_domain() -> None:
    cfg = to_typed(_compose("distill", ["distill.lr=3e-6", "distill.loss=gkd_jsd", "distill.weights.code=0.5",
                                        "trainer=deepspeed", "rollout=vllm"]), DistillRunConfig)  # fmt: skip
    assert cfg.distill.teachers == {"math": "math", "code": "code", "agent": "agent"}
    assert cfg.distill.lr == pytest.approx(3e-6) and cfg.distill.weights["code"] == 0.5
    assert cfg.model.path == "embedded:tiny-all" and cfg.run_name.startswith("distill-")


def test_defaults_and_overrides_land_typed() -> None:
    cfg = to_typed(
        _compose("train_specialist", ["algorithm=dr_grpo", "trainer.lr=3e-5"]), SpecialistRunConfig
    )
    assert cfg.algorithm.advantage == "dr_grpo" and cfg.algorithm.aggregation == "seq_mean_token_sum"
    assert cfg.trainer.lr == pytest.approx(3e-5)
    assert cfg.model.path == "embedded:tiny" and cfg.logger.mode == "offline"
    assert cfg.run_name.startswith("math-")


def test_pipeline_composes_with_a_stage_per_specialist() -> None:
    cfg = to_typed(_compose("pipeline", ["specialists.math.steps=5", "+overrides.seed=3",
                                         "hydra/launcher=ray_jobs"]), PipelineRunConfig)  # fmt: skip
    assert sorted(cfg.specialists) == ["agent", "code", "math"] and cfg.specialists["math"]["steps"] == 5
    assert cfg.overrides == {"seed": 3} and cfg.model == "tiny-all" and cfg.run_name.startswith("pipeline-")
    assert cfg.specialists["code"]["rollout"] == {"max_new_tokens": 64}


def test_make_base_composes() -> None:
    cfg = to_typed(_compose("make_base", ["recipe.max_steps=5"]), MakeBaseConfig)
    assert cfg.recipe.max_steps == 5


def test_unknown_override_key_is_named() -> None:
    with pytest.raises(ConfigCompositionException, match=r"traner_lr|not in struct|Could not override"):
        _compose("train_specialist", ["trainer.traner_lr=1"])
    with pytest.raises(ConfigCompositionException) as err:
        _compose("train_specialist", ["trainer.traner_lr=1"])
    assert "traner_lr" in str(err.value) + str(err.value.__cause__)


def test_unknown_key_in_a_yaml_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "typo.yaml").write_text("defaults: [_schema]\nname: x\ndtyp: float32\n")
    register_configs()
    with (
        initialize_config_dir(config_dir=str(tmp_path), version_base="1.3"),
        pytest.raises((ConfigCompositionException, ConfigKeyError)) as err,
    ):
        compose(config_name="model/typo")
    assert "dtyp" in str(err.value) + str(err.value.__cause__)


def test_wrong_value_type_is_an_error() -> None:
    with pytest.raises(ConfigCompositionException) as err:
        _compose("train_specialist", ["steps=many"])
    assert "steps" in str(err.value) + str(err.value.__cause__)
