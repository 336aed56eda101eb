"""Every config in configs/ composes into its typed schema; unknown keys are errors that name the key."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError

from distill.config import DistillRunConfig
from jobs.config import MakeBaseConfig, PipelineRunConfig, register_configs
from rl.config import SpecialistRunConfig, to_typed, to_yaml
from tests.conftest import ROOT

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
    if group == "experiment":  # a whole pipeline's settings (@package _global_), appended with +experiment=
        cfg = to_typed(_compose("pipeline", [f"+experiment={option}"]), PipelineRunConfig)
        assert isinstance(cfg, PipelineRunConfig) and "${" not in to_yaml(cfg)
        return
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
    assert (
        cfg.overrides == {"seed": 3} and cfg.base_model == "tiny-all" and cfg.run_name.startswith("pipeline-")
    )
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


# ---- values: ranges and registered names, checked by the schemas themselves ----


def test_the_names_the_schemas_accept_are_the_registries_names() -> None:
    """rl.config.CHOICES mirrors registries that import torch (so a config is checked before torch loads)."""
    from distill.config import LOSSES
    from distill.losses import OPD_LOSSES
    from jobs import common
    from rl import models
    from rl.algorithms.advantages import ADVANTAGES
    from rl.algorithms.aggregation import AGGREGATIONS
    from rl.algorithms.kl import KL_ESTIMATORS
    from rl.algorithms.mismatch import CORRECTIONS
    from rl.algorithms.policy_loss import POLICY_LOSSES
    from rl.config import CHOICES, DATA_SOURCES
    from rl.fp4.formats import FORMATS
    from rl.rollout.hf import DECODE_MODES
    from rl.rollout.worker import ENGINES
    from rl.tracking import WANDB_MODES
    from rl.trainer.backends import BACKENDS
    from specialists import agent, agent_env, code, math, synthetic
    from specialists.domains import SPECIALISTS

    registries = {
        "model.dtype": models.DTYPES, "rollout.dtype": ("", *models.DTYPES), "rollout.engine": ENGINES,
        "rollout.decode": DECODE_MODES,
        "trainer.backend": BACKENDS, "algorithm.advantage": ADVANTAGES, "algorithm.policy_loss": POLICY_LOSSES,
        "algorithm.aggregation": AGGREGATIONS, "algorithm.kl_estimator": KL_ESTIMATORS,
        "algorithm.correction": CORRECTIONS, "specialist.domain": SPECIALISTS, "specialist.levels": synthetic.LEVELS,
        "specialist.tool_prompt": agent_env.TOOL_PROMPTS, "logger.mode": WANDB_MODES, "fp4": FORMATS,
    }  # fmt: skip
    assert sorted(LOSSES) == sorted(OPD_LOSSES)
    for key, registry in registries.items():
        assert sorted(CHOICES[key]) == sorted(registry), key
    assert {d: set(s) for d, s in DATA_SOURCES.items()} == {
        "math": set(math.SOURCES), "code": set(code.SOURCES), "agent": set(agent.SOURCES)
    }  # fmt: skip
    # the entry points and the loaders check a model directory with one function (rl/model_files.py, no torch)
    assert common.check_model_dir is models.check_model_dir


def test_the_zero_stages_and_lr_schedules_are_the_backends() -> None:
    from rl.config import CHOICES, TrainerConfig
    from rl.trainer.deepspeed_backend import ZERO_STAGES
    from rl.trainer.torch_backend import lr_lambda

    assert CHOICES["trainer.zero_stage"] == ZERO_STAGES
    for schedule in CHOICES["trainer.lr_schedule"]:
        lr_lambda(TrainerConfig(lr_schedule=schedule), 10)  # each one is known to the trainer


@pytest.mark.parametrize(
    ("schema", "values", "message"),
    [
        ("SpecialistRunConfig", {"steps": 0}, "steps must be >= 1, got 0"),
        ("SpecialistRunConfig", {"checkpoint_every": 0}, "checkpoint_every must be >= 1, got 0"),
        ("SpecialistRunConfig", {"run_name": "/abs"}, "run_name must be a directory name under runs_root"),
        ("TrainerConfig", {"lr": 0.0}, "trainer.lr must be > 0, got 0.0"),
        ("TrainerConfig", {"lr": float("inf")}, "trainer.lr must be > 0, got inf"),
        ("TrainerConfig", {"betas": [0.9, 1.0]}, "trainer.betas[1] must be in [0, 0.9999], got 1.0"),
        ("TrainerConfig", {"zero_stage": 0}, "trainer.zero_stage must be one of (1, 2, 3), got 0"),
        ("RolloutConfig", {"top_p": 0.0}, "rollout.top_p must be in (0, 1]"),
        ("RolloutConfig", {"temperature": -0.1}, "rollout.temperature must be >= 0, got -0.1"),
        ("AlgorithmConfig", {"geo_low": 2.0, "geo_high": 1.0}, "algorithm.geo_high must be >= 2.0, got 1.0"),
        ("AlgorithmConfig", {"kl_estimator": "k4"}, "unknown algorithm.kl_estimator 'k4'; valid: k1, k2, k3, k3_ratio"),
        ("SpecialistConfig", {"domain": "code", "train_data": "gsm8k"},
         "unknown specialist.train_data 'gsm8k'; valid: synthetic, mbpp, mbpp_sanitized, humaneval"),
        ("SpecialistConfig", {"levels": [1, 1]}, "specialist.levels must be distinct values among 1, 2, 3"),
        ("ClusterConfig", {"num_cpus": 0}, "cluster.num_cpus must be >= 1, got 0"),
        ("DistillConfig", {"weights": {"math": -1.0}}, "distill.weights[0] must be >= 0, got -1.0"),
        ("DistillConfig", {"beta": 1.5}, "distill.beta must be in [0, 1], got 1.5"),
        ("BaseRecipe", {"micro_batches": 65}, "recipe.micro_batches must be in [1, 64], got 65"),
        ("BaseRecipe", {"vocab_size": 100}, "recipe.vocab_size must be >= 259, got 100"),
        ("BaseRecipe", {"domains": []}, "recipe.domains must be distinct values among math, code, agent, got []"),
        ("PipelineRunConfig", {"base_model": "tiny-alll"}, "unknown base_model 'tiny-alll'; valid: qwen2.5-coder-0.5b, smollm2-135m, tiny, tiny-all"),
    ],
)  # fmt: skip
def test_values_out_of_range_name_the_key_and_the_range(schema: str, values: dict, message: str) -> None:
    import distill.config
    import jobs.config
    import rl.config

    module = next(m for m in (rl.config, distill.config, jobs.config) if hasattr(m, schema))
    with pytest.raises(rl.config.ConfigValueError) as err:
        getattr(module, schema)(**values)
    assert message in str(err.value)


def test_the_edges_of_each_range_are_accepted() -> None:
    from rl.config import AlgorithmConfig, ClusterConfig, RolloutConfig, SpecialistConfig, TrainerConfig

    RolloutConfig(top_p=1.0, temperature=0.0, top_k=0, max_new_tokens=1)
    TrainerConfig(lr=1e-12, min_lr_ratio=0.0, betas=[0.0, 0.9999], grad_clip=-1.0, max_nonfinite_steps=0)
    AlgorithmConfig(group_size=2, kl_coef=0.0, geo_low=1.0, geo_high=1.0)
    SpecialistConfig(num_train_tasks=0, num_eval_tasks=0, max_reward_error_rate=1.0, levels=[3])
    ClusterConfig(num_cpus=None, actor_cpus=0.0)


# ---- the entry points' composition: Hydra's errors as one line ----


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["algorithm=grpoo"], "unknown algorithm=grpoo (Could not find 'algorithm/grpoo'); available options in "
                              "'algorithm': cispo, dr_grpo, grpo, grpo_kl, gspo, rloo"),
        (["trainer.lrr=1"], "Could not override 'trainer.lrr': no such key (did you mean 'lr'?"),
        (["+rollout.beam=4"], "unknown config key(s) rollout.beam (SpecialistRunConfig has no such field)"),
        (["steps=many"], "steps: Value 'many' of type 'str' could not be converted to Integer"),
        (["steps=???"], "missing value for steps: set steps=<value>"),
        (["steps=[1"], "cannot parse the command line:"),
        (["specialist.train_path=${oc.env:DISTILLERY_NO_SUCH_VAR}"],
         "specialist.train_path: KeyError raised while resolving interpolation"),
        (["trainer.num_ranks=0"], "trainer.num_ranks must be >= 1, got 0"),
    ],
)  # fmt: skip
def test_composition_errors_are_one_line_naming_the_key(overrides: list[str], message: str) -> None:
    from jobs.cli import compose_checked
    from jobs.common import InputError

    with pytest.raises(ValueError) as err:
        compose_checked("train_specialist", SpecialistRunConfig, overrides)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert isinstance(err.value, InputError) or "must be" in str(err.value)


def test_composition_gives_the_typed_config_and_its_run_directory(tmp_path: Path) -> None:
    from jobs.cli import compose_checked

    cfg, run_dir = compose_checked("train_specialist", SpecialistRunConfig,
                                   [f"runs_root={tmp_path}", "run_name=x", "steps=3"])  # fmt: skip
    assert isinstance(cfg, SpecialistRunConfig) and cfg.steps == 3
    assert run_dir == tmp_path / "x" and not run_dir.exists()  # named, not made


@dataclasses.dataclass
class _Documented:
    """A schema written as rl/config.py's are."""

    steps: int = 3  # RL steps
    # the rollout workers' weights: "" = model.dtype
    dtype: str = ""
    train_data: str = "synthetic"  # math: synthetic | gsm8k
    bare: int = 0

    def method(self) -> None:
        x: int = 1  # not a field
        del x


def test_help_descriptions_come_from_the_schema_comments() -> None:
    from jobs.help import field_comments

    assert field_comments(_Documented) == {"steps": "RL steps", "dtype": 'the rollout workers\' weights: "" = model.dtype',
                                           "train_data": "math: synthetic | gsm8k", "bare": ""}  # fmt: skip


@pytest.mark.parametrize(("job", "expected"), [
    ("distill", "distill.loss=reverse_kl"), ("train_specialist", "specialist.tool_prompt=short"),
    ("pipeline", "base_model=tiny-all"), ("make_base", "recipe.num_demos=20000")])  # fmt: skip
def test_every_job_has_help_from_its_schema(job: str, expected: str) -> None:
    proc = subprocess.run([sys.executable, "-m", f"jobs.{job}", "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith(f"usage: python -m jobs.{job} ") and "config groups (group=option):" in out
    assert "  model: qwen2.5-coder-0.5b, smollm2-135m, tiny, tiny-all" in out and "_schema" not in out
    line = next(x for x in out.splitlines() if x.strip().startswith(expected))
    assert len(line.split()) > 1, line  # a description beside the default
    assert "powered by Hydra" not in out and "--hydra-help" in out


def test_verbose_undoes_the_quieting_and_leaves_a_users_own_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from jobs import cli

    # set, then deleted, so that monkeypatch restores them afterwards (a bare delenv of an unset variable records
    # nothing, and DISTILLERY_VERBOSE=1 leaked into the job tests after this one)
    for key in ("DISTILLERY_VERBOSE", *cli.QUIET_ENV):
        monkeypatch.setenv(key, "0")
        monkeypatch.delenv(key)
    monkeypatch.setenv("WANDB_SILENT", "false")  # the user's own choice
    monkeypatch.setattr(cli, "_quieted", set())
    cli.quiet_libraries()
    assert cli.os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1" and cli.os.environ["WANDB_SILENT"] == "false"
    cli.quiet_libraries(verbose=True)  # verbose=true read from the config
    assert "HF_HUB_DISABLE_PROGRESS_BARS" not in cli.os.environ and cli.os.environ["WANDB_SILENT"] == "false"
    assert cli.os.environ["DISTILLERY_VERBOSE"] == "1"  # the pipeline's stages, in this process, stay verbose
    cli.quiet_libraries()
    assert "HF_HUB_DISABLE_PROGRESS_BARS" not in cli.os.environ


@pytest.mark.parametrize("schema", [SpecialistRunConfig, DistillRunConfig, PipelineRunConfig, MakeBaseConfig])
def test_every_job_takes_verbose(schema: type) -> None:
    assert {f.name for f in dataclasses.fields(schema)} >= {"verbose"}
