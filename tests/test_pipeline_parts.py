"""The pipeline's and the launchers' pure parts: stage overrides, stage configs, submit overrides, the report
table, length-sorted SFT micro-batches."""

from __future__ import annotations

import json
import random

import pytest
import torch

from jobs.config import PipelineRunConfig
from jobs.pipeline import flatten, override_value, specialist_overrides, stage_configs
from jobs.report import (
    intervals_md,
    pass_at_1,
    plot_bars,
    plot_curves,
    plot_system,
    table_md,
    wilson_interval,
)
from jobs.submit import fixed_overrides, with_resume
from rl.config import SpecialistConfig, SpecialistRunConfig
from rl.sft import batch_order, batches, sft_backward, sft_loss


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


def test_the_real_model_experiment_composes_every_stage(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """configs/experiment/qwen0.5b-gsm8k-mbpp.yaml: GSM8K and MBPP specialists at a real model's learning rate,
    and a distillation whose evals (the report's table) cover every held-out task."""
    from hydra import compose, initialize_config_dir

    from jobs.config import register_configs
    from rl.config import CONFIGS, to_typed

    monkeypatch.setenv("DISTILLERY_MODELS", "/data/models")
    register_configs()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        composed = compose(
            "pipeline", ["+experiment=qwen0.5b-gsm8k-mbpp", "run_name=q", f"runs_root={tmp_path}"]
        )
    specialists, distill = stage_configs(to_typed(composed, PipelineRunConfig))
    data = {n: (s.specialist.train_data, s.specialist.eval_data) for n, s in specialists.items()}
    assert data == {"math": ("gsm8k", "gsm8k"), "code": ("mbpp", "mbpp"), "agent": ("synthetic", "synthetic")}
    for stage in (*specialists.values(), distill):
        assert stage.model.path == "/data/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
        assert stage.model.dtype == "float32" and stage.rollout.dtype == "bfloat16" and stage.fp4 == "nvfp4"
    assert all(s.trainer.lr == 2e-6 and s.trainer.num_minibatches == 4 for s in specialists.values())
    assert all(s.trainer.micro_batch_size == 8 and s.trainer.tf32 for s in (*specialists.values(), distill))
    assert distill.distill.lr == 8e-6
    assert all(
        s.specialist.num_eval_tasks == 100 and s.eval_samples == 0 for s in specialists.values()
    )  # progress
    assert (
        specialists["agent"].specialist.tool_prompt == "full"
        and specialists["math"].specialist.tool_prompt == "short"
    )
    assert distill.distill.num_eval_tasks == 0  # the report's table: all 1,319 GSM8K and 500 MBPP test tasks


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
               "eval/m/code/pass@1": 0.1, "eval/c/code/pass@1": 0.2, "opd/recovered/math": 0.75,
               "eval/math/n": 100, "eval/math/pass@1_lenient_start": 0.3, "eval/m/math/pass@1_lenient": 0.6,
               "eval/math/pass@1_lenient": 0.5}  # fmt: skip
    scores = pass_at_1(specialists, summary)
    assert scores["math"] == {"base": 0.1, "specialist": 0.5, "specialist_name": "m", "student": 0.4,
                              "recovered": 0.75, "teachers": {"m": 0.5, "c": 0.0}, "n": 100,
                              "lenient": {"base": 0.3, "specialist": 0.6, "student": 0.5}}  # fmt: skip
    assert scores["code"]["recovered"] is None  # the code specialist is not ahead of the base
    table = table_md(scores).splitlines()
    assert table[0] == "| domain | base | m specialist | c specialist | student | recovered |"
    assert table[2] == "| math | 0.100 | **0.500** | 0.000 | 0.400 | 75% |"
    assert table[3] == "| code | 0.200 | 0.100 | **0.200** | 0.200 | n/a |"
    rows = intervals_md(scores).splitlines()
    assert rows[0] == "| domain | n | model | strict pass@1 [95% CI] | lenient pass@1 [95% CI] |"
    assert rows[3] == "| math | 100 | m specialist | 0.500 [0.404, 0.596] | 0.600 [0.502, 0.691] |"
    assert rows[5] == "| code | n/a | base | 0.200 | n/a |"  # no n, no lenient reading: no interval


def test_wilson_intervals_worked_by_hand() -> None:
    # 50 of 100: centre 0.5, half-width 1.96 / (1 + 1.96^2/100) * sqrt(0.25/100 + 1.96^2/40000) = 0.0962
    low, high = wilson_interval(0.5, 100)
    assert (round(low, 4), round(high, 4)) == (0.4038, 0.5962)
    # 0 of 10: not the empty [0, 0] of p +- z*se; the upper end is z^2/n / (1 + z^2/n) = 0.2775
    assert tuple(round(x, 4) for x in wilson_interval(0.0, 10)) == (0.0, 0.2775)
    assert tuple(round(x, 4) for x in wilson_interval(1.0, 10)) == (0.7225, 1.0)
    with pytest.raises(ValueError, match="n >= 1"):
        wilson_interval(0.5, 0)


def test_length_sorted_micro_batches_give_the_same_gradient_with_less_padding(tiny_base) -> None:
    from transformers import Qwen3ForCausalLM

    model = Qwen3ForCausalLM.from_pretrained(str(tiny_base))
    gen = torch.Generator().manual_seed(0)
    rows = []
    for n in (6, 30, 9, 22, 14, 40, 7, 18):  # mixed lengths, as a batch mixing math and agent demos
        ids = torch.randint(1, model.config.vocab_size, (n,), generator=gen).tolist()
        rows.append((ids, [0] * 3 + [1] * (n - 3)))
    ids, attn, mask = next(batches(rows, 8, 0, random.Random(0)))

    def grads(step) -> dict[str, torch.Tensor]:
        model.zero_grad()
        step()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    whole = grads(lambda: sft_loss(model, ids, attn, mask).backward())
    for k in (2, 3, 8):
        split = grads(lambda k=k: sft_backward(model, ids, attn, mask, micro_batches=k))
        for name, g in whole.items():
            assert (split[name] - g).abs().max() <= 1e-5 * g.abs().max(), (k, name)  # float reordering only
    order = list(range(10))  # the epoch order is shuffled in place; the remainder is left out
    first = batch_order(order, 4, random.Random(1))
    assert len(first) == 2 and order[:8] == [i for b in first for i in b]


def test_stages_shorter_than_their_checkpoint_period_also_save_halfway(tmp_path) -> None:
    """An interrupted stage resumes from its middle, not step 0; a period the pipeline sets is kept."""
    cfg = PipelineRunConfig(specialists={"math": {"steps": 5}, "code": {"steps": 12, "checkpoint_every": 100},
                                         "agent": {"steps": 1}},
                            distill={"steps": 8}, run_name="p", runs_root=str(tmp_path))  # fmt: skip
    specialists, distill = stage_configs(cfg)
    assert specialists["math"].checkpoint_every == 3 and specialists["code"].checkpoint_every == 100
    assert specialists["agent"].checkpoint_every == 20 and distill.checkpoint_every == 4
    cfg = PipelineRunConfig(specialists={"math": {"steps": 60}}, distill={"steps": 8},
                            overrides={"checkpoint_every": 50}, run_name="p", runs_root=str(tmp_path))  # fmt: skip
    specialists, distill = stage_configs(cfg)
    assert specialists["math"].checkpoint_every == 50 and distill.checkpoint_every == 50


def test_the_report_figures_label_every_panel_and_draw_evals_as_points(tmp_path) -> None:
    specialists = {n: SpecialistRunConfig(specialist=SpecialistConfig(domain=n)) for n in ("math", "code")}
    base = {"loss_curve": [[1, 2.0], [10, 1.5], [20, 1.0]], "curve": [{"step": 20, "loss": 1.0,
            "pass@1": {"math": 0.2, "code": 0.1}}]}  # fmt: skip
    for stage, steps in (("math", 6), ("code", 4), ("distill", 4)):
        (tmp_path / stage).mkdir()
        lines = [{"step": 0, "eval/pass@1": 0.1, "eval/math/pass@1": 0.1, "eval/code/pass@1": 0.0}]
        lines += [{"step": s, "reward/mean": 0.1 * s, "mismatch/kl_k3": 1e-3, "perf/weight_sync_s": 0.1,
                   "opd/kl/math": 1 / s, "opd/kl/code": 2 / s} for s in range(1, steps + 1)]  # fmt: skip
        lines[2] |= {
            "eval/pass@1": 0.3,
            "eval/math/pass@1": 0.3,
            "eval/code/pass@1": 0.1,
        }  # an eval_every point
        (tmp_path / stage / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    curves = plot_curves(tmp_path, base, specialists, tmp_path / "curves.png")
    system = plot_system(tmp_path, ["math", "code", "distill"], tmp_path / "system.png")
    titled = [p for p in curves + system if p["title"]]
    assert [p["title"] for p in titled] == ["base: SFT", "math specialist", "code specialist",
                                            "distillation: reverse KL", "distillation: student",
                                            "rollout vs trainer mismatch", "weight sync per step"]  # fmt: skip
    assert all(p["xlabel"] and p["ylabel"] for p in titled)
    panel = {p["title"]: p["series"] for p in titled}
    assert panel["base: SFT"]["SFT loss"] == (3, "-")  # every logged SFT step, not only the evals
    assert curves[-1] == {"title": "", "xlabel": "", "ylabel": "held-out pass@1",  # the base panel's right axis
                          "series": {"math": (1, "None"), "code": (1, "None")}}  # fmt: skip
    assert panel["distillation: student"]["math"] == (2, "None")  # held-out pass@1: points, not a line
    assert panel["math specialist"] == {"train reward (mean)": (6, "-"), "held-out pass@1": (2, "None")}
    assert panel["rollout vs trainer mismatch"]["distill"][0] == 4
    assert set(panel["weight sync per step"]) == {"math", "code", "distill"}
    panels = plot_bars(pass_at_1(specialists, {
        "eval/math/pass@1_start": 0.1, "eval/math/pass@1": 0.4, "eval/math/math/pass@1": 0.5, "eval/code/math/pass@1": 0,
        "eval/code/pass@1_start": 0.2, "eval/code/pass@1": 0.2, "eval/math/code/pass@1": 0.1,
        "eval/code/code/pass@1": 0.3}), tmp_path / "pass_at_1.png")  # fmt: skip
    assert panels[1]["title"] == "every model on every domain (greedy pass@1)"
    assert (tmp_path / "pass_at_1.png").stat().st_size > 10_000
