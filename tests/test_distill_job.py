"""The distillation job as a user runs it: specialists register themselves, then jobs.distill (subprocesses,
real Ray actors for rollout, trainer and teachers, W&B offline)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from specialists.registry import load_registry, register
from tests.conftest import ROOT
from tests.test_job_e2e import TINY, metrics, run_job

pytestmark = pytest.mark.slow

DISTILL_TINY = [
    "prompts_per_step=4", "distill.samples_per_prompt=2", "eval_every=0", "distill.num_eval_tasks=6",
    "rollout.max_new_tokens=24", "checkpoint_every=1", "cluster.num_cpus=2", "cluster.actor_cpus=0.5",
    "distill.teacher_cpus=0.25", "distill.max_turns=3", "distill.teachers.math=m", "distill.teachers.agent=a",
    "~distill.teachers.code", "distill.weights.agent=2.0",
]  # fmt: skip


def distill(env: dict[str, str], *overrides: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "jobs.distill", *DISTILL_TINY, *overrides], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    if check and proc.returncode != 0:
        raise AssertionError(f"job failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def test_specialists_register_and_one_student_distills_them_and_resumes(
    tiny_base: Path, tmp_path: Path, job_env: dict[str, str], default_run: Path
) -> None:
    assert "prompts_per_step=4" in TINY
    common = [f"model.path={tiny_base}", f"runs_root={tmp_path}"]
    # the math teacher is the session's default run (a math specialist, registered where it ran) under the name
    # this test gives it; the agent teacher registers itself here
    math = load_registry(default_run.parent / "registry.json")["default"]
    register(tmp_path / "registry.json", replace(math, name="m"))
    run_job(job_env, *common, "specialist=agent", "run_name=a", "steps=1", "specialist.max_turns=3")
    registry = load_registry(tmp_path / "registry.json")
    assert sorted(registry) == ["a", "m"] and registry["a"].domain == "agent" and math.fp4 == "mxfp4"
    assert Path(registry["a"].checkpoint, "config.json").exists() and "eval/pass@1" in registry["a"].eval
    assert (
        registry["a"].wandb_artifact == "specialist-a:latest"
        and math.wandb_artifact == "specialist-default:latest"
    )
    assert (
        registry["a"].config["specialist"]["domain"] == "agent"
        and math.config["specialist"]["domain"] == "math"
    )

    distill(job_env, *common, "run_name=d", "steps=1")
    proc = distill(job_env, *common, "run_name=d", "steps=2", "resume=true")
    assert "resuming" in proc.stdout and "| domain | base | m | a | student | recovered |" in proc.stdout
    lines = metrics(tmp_path / "d")
    assert [m["step"] for m in lines] == [0, 1, 2]  # no step lost or repeated across the restart
    assert {"eval/math/pass@1", "eval/agent/pass@1", "eval/agent/pass@1/level_1"} <= set(lines[0])
    for line in lines[1:]:
        # one RL step barely moves a teacher off the base (the tiny base's rewards are mostly equal, so the
        # advantages are near 0): the KL is ~0 here; tests/test_distill.py trains against a distinct teacher
        assert line["opd/kl/m"] >= 0 and line["opd/kl/a"] >= 0 and line["opd/teacher_s/a"] > 0
        assert line["opd/tokens/m"] + line["opd/tokens/a"] == line["train/tokens"]
        assert {"reward/math", "reward/agent", "rollout/agent/turns_mean", "perf/weight_sync_bytes"} <= set(
            line
        )
    summary = json.loads((tmp_path / "d" / "summary.json").read_text())
    for model in ("m", "a"):  # each teacher evaluated on every domain
        assert {f"eval/{model}/math/pass@1", f"eval/{model}/agent/pass@1"} <= set(summary)
    assert {"eval/math/pass@1_start", "eval/math/pass@1", "eval_table"} <= set(summary)
    for domain, teacher in (("math", "m"), ("agent", "a")):  # recovered where the teacher is ahead, else n/a
        gain = summary[f"eval/{teacher}/{domain}/pass@1"] - summary[f"eval/{domain}/pass@1_start"]
        assert (f"opd/recovered/{domain}" in summary) == (gain > 0)
        assert (gain > 0) or (f"| {domain} |" in summary["eval_table"] and "n/a" in summary["eval_table"])
    assert summary["rollout/fp4_mode"] == "packed"


def test_bad_distillation_input_is_one_clear_line(
    tmp_path: Path, job_env: dict[str, str], tiny_base: Path
) -> None:
    common = [f"model.path={tiny_base}", f"runs_root={tmp_path}"]
    cases = [
        ([], "error: no specialist 'm' in registry"),
        (
            ["distill.loss=kl"],
            "error: unknown distill.loss 'kl'; valid: reverse_kl, sampled_token, gkd_jsd, topk_forward_kl",
        ),
        (["+distill.teachers.poetry=m"], "error: unknown domain(s) poetry in distill.teachers"),
        (["trainer=deepspeed"], "error: distillation runs on trainer.backend=torch"),
    ]
    for overrides, message in cases:
        proc = distill(job_env, *common, *overrides, check=False)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
        assert not [
            p
            for pattern in ("*/summary.json", "*/metrics.jsonl", "*/checkpoints")
            for p in tmp_path.glob(pattern)
        ]
