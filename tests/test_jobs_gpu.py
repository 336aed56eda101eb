"""The jobs on one GPU, as a user runs them: subprocesses, real Ray actors sharing the GPU by fractions
(``cluster.actor_gpus``), the default decode (``rollout.decode=auto``: static KV cache + CUDA graphs on a GPU),
FP4 (MXFP4) rollouts and QAT. Opt-in (``pytest -m gpu``); tests/test_job_e2e.py runs the same jobs on CPU.

The first test is the one that would have caught the static decoder's failed capture inside a rollout worker
(a host sync in the packed-FP4 reference path of a float32 model).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.test_distill_job import DISTILL_TINY
from tests.test_job_e2e import TINY, metrics
from tests.test_pipeline import STEPS, check_report, pipeline

pytestmark = pytest.mark.gpu

# a quarter of the GPU per actor: trainer + rollout worker + two teachers fit on one device
NAMES = {"math": "m", "code": "c", "agent": "a"}  # the teacher names DISTILL_TINY routes to
ON_GPU = ["cluster.actor_gpus=0.25", "cluster.num_cpus=8", "cluster.actor_cpus=1", "logger=disabled"]


def gpu_job(module: str, env: dict[str, str], *overrides: str) -> subprocess.CompletedProcess:
    tiny = DISTILL_TINY if module == "jobs.distill" else TINY
    cmd = [sys.executable, "-m", module, *tiny, *ON_GPU, *overrides]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (
        f"{module} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    )
    return proc


@pytest.fixture(scope="module")
def gpu_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "WANDB_"))}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    env["DISTILLERY_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    return env


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("runs")


@pytest.mark.parametrize("domain", ["math", "code", "agent"])
def test_each_specialist_trains_on_the_gpu_through_ray(
    domain: str, tiny_base: Path, runs: Path, gpu_env: dict[str, str]
) -> None:
    extra = ["specialist.max_turns=3"] if domain == "agent" else []
    name = NAMES[domain]
    proc = gpu_job("jobs.train_specialist", gpu_env, f"model.path={tiny_base}", f"runs_root={runs}",
                   f"specialist={domain}", f"run_name={name}", "steps=2", *extra)  # fmt: skip
    lines = metrics(runs / name)
    assert [m["step"] for m in lines] == [0, 1, 2]
    summary = json.loads((runs / name / "summary.json").read_text())
    # the rollout's packed FP4 weights are the trainer's fake-quantized ones: the sampler/trainer gap stays tiny
    assert summary["mismatch/kl_k3"] < 1e-3, summary
    assert summary["rollout/weight_sync"] == "cuda_ipc"  # trainer and rollout worker share the GPU
    assert summary["memory/trainer_peak_gib"] > 0 and summary["memory/rollout_peak_gib"] > 0, summary
    assert "eval/pass@1" in summary and "step 2/2" in proc.stdout


def test_a_specialist_resumes_on_the_gpu(tiny_base: Path, runs: Path, gpu_env: dict[str, str]) -> None:
    common = [f"model.path={tiny_base}", f"runs_root={runs}", "specialist=math", "run_name=resumed"]
    gpu_job("jobs.train_specialist", gpu_env, *common, "steps=1")
    proc = gpu_job("jobs.train_specialist", gpu_env, *common, "steps=2", "resume=true")
    assert "resuming" in proc.stdout
    assert [m["step"] for m in metrics(runs / "resumed")] == [0, 1, 2]


def test_distillation_on_the_gpu_from_the_specialists(
    tiny_base: Path, runs: Path, gpu_env: dict[str, str]
) -> None:
    if not (runs / "m" / "summary.json").exists() or not (runs / "a" / "summary.json").exists():
        pytest.fail(
            "needs the math and agent specialists of test_each_specialist_trains_on_the_gpu_through_ray"
        )
    proc = gpu_job("jobs.distill", gpu_env, f"model.path={tiny_base}", f"runs_root={runs}", "run_name=student",
                   "steps=2")  # fmt: skip
    lines = metrics(runs / "student")
    assert [m["step"] for m in lines] == [0, 1, 2]
    assert all(m["opd/teacher_s/a"] > 0 and m["opd/kl/m"] >= 0 for m in lines[1:])
    summary = json.loads((runs / "student" / "summary.json").read_text())
    assert min(summary[f"memory/{role}_peak_gib"] for role in ("trainer", "rollout", "teacher")) > 0, summary
    assert "| domain |" in proc.stdout


def test_the_pipeline_runs_every_stage_on_the_gpu(
    tiny_base: Path, tmp_path: Path, gpu_env: dict[str, str]
) -> None:
    """base (reused) -> math, code, agent specialists -> distillation -> report, every stage's actors on the GPU."""
    # every specialist and the distillation; the latter holds 5 actors (trainer, rollout worker, 3 teachers)
    on_gpu = ["+overrides.cluster.actor_gpus=0.125"]
    common = [f"runs_root={tmp_path}", "run_name=p", f"+overrides.model.path={tiny_base}", *on_gpu]
    proc = pipeline(gpu_env, *common)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    out = tmp_path / "p"
    for stage, steps in STEPS.items():
        assert [m["step"] for m in metrics(out / stage)] == list(range(steps + 1)), stage
    check_report(out, proc.stdout)


def test_a_share_of_the_gpu_too_small_for_an_actor_is_refused_before_any_actor_starts(
    runs: Path, gpu_env: dict[str, str]
) -> None:
    """SmolLM2-135M's trainer rank needs ~2 GiB at the least (weights, gradients, AdamW in float32); 1% of the
    GPU is ~1.4 GiB: one line naming the actor and the figures, exit 2, no actor started."""
    cmd = [sys.executable, "-m", "jobs.train_specialist", *TINY, "model=smollm2-135m", f"runs_root={runs}",
           "run_name=too-big", "logger=disabled", "cluster.actor_gpus=0.01"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=gpu_env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: not enough GPU memory: the trainer rank needs at least 2.0 GiB (weights 0.5 + "
                           "gradients 0.5 + AdamW moments 1.0)"), line  # fmt: skip
    assert "cluster.actor_gpus=0.01 of the NVIDIA" in line
    assert "rollout worker: engine=" not in proc.stdout  # refused before any actor started
    assert not (runs / "too-big").exists()
