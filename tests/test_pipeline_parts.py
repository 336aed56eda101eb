"""The pipeline's and the launchers' pure parts: stage overrides, stage configs, submit overrides, the report
table, length-bucketed SFT batches."""

from __future__ import annotations

import random

import pytest

from jobs.pipeline import flatten, override_value, specialist_overrides, stage_configs
from jobs.report import pass_at_1, table_md
from jobs.submit import fixed_overrides, with_resume
from rl.config import PipelineRunConfig, SpecialistConfig, SpecialistRunConfig
from rl.sft import batch_order


def test_overrides_flatten_to_hydra_syntax() -> None:
    assert flatten({"steps": 30, "rollout": {"max_new_tokens": 64, "stop": ["a b", "c"]}, "x": None}) == [
        "steps=30", "rollout.max_new_tokens=64", "rollout.stop=['a b',c]", "x=null"]  # fmt: skip
    assert override_value(True) == "true" and override_value("/tmp/a-b/c.d") == "/tmp/a-b/c.d"
    assert override_value("it's") == "'it\\'s'"
    assert specialist_overrides("code", {"steps": 2}) == ["specialist=code", "steps=2"]
    assert specialist_overrides("g", {"specialist": "gsm8k"}) == [
        "specialist=gsm8k"
    ]  # names its group itself
    assert specialist_overrides("math", {"specialist": {"num_eval_tasks": 5}}) == [
        "specialist=math", "specialist.num_eval_tasks=5"]  # fmt: skip


def test_stage_configs_are_each_jobs_own_config_with_the_pipelines_settings(tmp_path) -> None:
    cfg = PipelineRunConfig(specialists={"math": {"steps": 3}, "code": {"rollout": {"max_new_tokens": 64}}},
                            distill={"steps": 5}, overrides={"seed": 7}, run_name="p", runs_root=str(tmp_path))  # fmt: skip
    specialists, distill = stage_configs(cfg)
    math, code = specialists["math"], specialists["code"]
    assert isinstance(math, SpecialistRunConfig) and math.steps == 3 and math.specialist.domain == "math"
    assert code.specialist.domain == "code" and code.rollout.max_new_tokens == 64 and code.steps == 60
    assert math.runs_root == str(tmp_path / "p") and math.run_name == "math" and math.logger.group == "p"
    assert math.seed == code.seed == distill.seed == 7 and math.model.path == "embedded:tiny-all"
    assert math.trainer.lr == 5e-4  # the job's own default (configs/train_specialist.yaml) is kept
    assert distill.steps == 5 and distill.distill.teachers == {"math": "math", "code": "code"}
    assert distill.distill.weights == {"math": 1.0, "code": 1.0} and distill.run_name == "distill"


def test_bad_stage_input_fails_before_any_stage_runs(tmp_path) -> None:
    with pytest.raises(ValueError, match="both train the math domain"):
        stage_configs(
            PipelineRunConfig(specialists={"a": {"specialist": "math"}, "b": {"specialist": "math"}})
        )
    with pytest.raises(ValueError, match="at least one entry under specialists"):
        stage_configs(PipelineRunConfig())
    with pytest.raises(Exception, match="stepz"):  # Hydra names the mistyped key of the stage
        stage_configs(PipelineRunConfig(specialists={"math": {"stepz": 3}}))


def test_submit_pins_the_run_directory_so_a_retry_resumes_it() -> None:
    out = fixed_overrides("train_specialist", ["steps=3"], now=0.0)
    assert (
        out[0] == "steps=3" and out[1].startswith("run_name=specialist-") and out[2].startswith("runs_root=/")
    )
    assert fixed_overrides("distill", ["run_name=d", "runs_root=rel"])[1].endswith("/rel")
    assert fixed_overrides("make_base", ["recipe.max_steps=5"]) == ["recipe.max_steps=5"]
    assert with_resume(["a=1", "resume=false"]) == ["a=1", "resume=true"]


def test_the_report_table_takes_every_column_from_the_distillation_evals() -> None:
    specialists = {n: SpecialistRunConfig(specialist=SpecialistConfig(domain=d)) for n, d in
                   (("m", "math"), ("c", "code"))}  # fmt: skip
    summary = {"eval/math/pass@1_start": 0.1, "eval/math/pass@1": 0.4, "eval/m/math/pass@1": 0.5,
               "eval/c/math/pass@1": 0.0, "eval/code/pass@1_start": 0.2, "eval/code/pass@1": 0.2,
               "eval/m/code/pass@1": 0.1, "eval/c/code/pass@1": 0.2, "opd/recovered/math": 0.75}  # fmt: skip
    scores = pass_at_1(specialists, summary)
    assert scores["math"] == {"base": 0.1, "specialist": 0.5, "specialist_name": "m", "student": 0.4,
                              "recovered": 0.75, "teachers": {"m": 0.5, "c": 0.0}}  # fmt: skip
    assert scores["code"]["recovered"] is None  # the code specialist is not ahead of the base
    table = table_md(scores).splitlines()
    assert table[0] == "| domain | base | m specialist | c specialist | student | recovered |"
    assert table[2] == "| math | 0.100 | **0.500** | 0.000 | 0.400 | 75% |"
    assert table[3] == "| code | 0.200 | 0.100 | **0.200** | 0.200 | n/a |"


def test_length_buckets_keep_every_example_and_cut_the_padding() -> None:
    lengths = [random.Random(i).choice([20, 60, 140]) for i in range(640)]
    plain = batch_order(list(range(640)), lengths, 32, random.Random(0))
    bucketed = batch_order(list(range(640)), lengths, 32, random.Random(0), bucket=8)
    assert sorted(i for b in bucketed for i in b) == sorted(i for b in plain for i in b) == list(range(640))

    def padded(batches: list[list[int]]) -> int:
        return sum(max(lengths[i] for i in b) * len(b) for b in batches)

    assert padded(bucketed) < 0.7 * padded(plain)
    order = list(range(10))  # without buckets: the order is shuffled in place each epoch, as before
    first = batch_order(order, [1] * 10, 4, random.Random(1))
    assert len(first) == 2 and all(len(b) == 4 for b in first) and order[:8] == [i for b in first for i in b]
