"""Workers killed for real (SIGKILL of the actor's own process, rl/faults.py) while they work."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import ray

from distill.teacher import TeacherGroup
from jobs.common import forwarded_env
from rl.batching import build_train_batch
from rl.config import ClusterConfig, RolloutConfig
from rl.faults import INJECTED
from rl.models import load_model, load_tokenizer
from rl.rollout.group import RolloutGroup
from rl.sft import chat_prompt_ids
from rl.types import SamplingParams
from specialists.synthetic import math_tasks
from tests.test_checkpoint_tracking import wandb_history
from tests.test_job_e2e import metrics, run_job

CLUSTER = ClusterConfig(actor_cpus=0.5)


def prompts(base: Path) -> list[list[int]]:
    tokenizer = load_tokenizer(str(base))
    return [chat_prompt_ids(tokenizer, t.prompt) for t in math_tasks(6, "train")]


def test_a_rollout_worker_killed_mid_generation_is_replaced_and_the_batch_redone(
    tiny_base: Path, tmp_path: Path, ray_local, monkeypatch
) -> None:
    params = SamplingParams(max_new_tokens=8, seed=3)
    healthy = RolloutGroup(
        str(tiny_base), RolloutConfig(), CLUSTER, forwarded_env(), "mxfp4", dtype="float32"
    )
    expected = healthy.generate(prompts(tiny_base), params)
    healthy.shutdown()
    monkeypatch.setenv("DISTILLERY_FAULT_KILL", f"rollout:1:{tmp_path / 'killed'}")
    group = RolloutGroup(str(tiny_base), RolloutConfig(), CLUSTER, forwarded_env(), "mxfp4", dtype="float32")
    first_pid = ray.get(group.workers[0].__ray_call__.remote(lambda self: __import__("os").getpid()))
    got = group.generate(prompts(tiny_base), params)  # the worker kills itself on this call
    assert (tmp_path / "killed").exists() and group.restarts == 1
    assert ray.get(group.workers[0].__ray_call__.remote(lambda self: __import__("os").getpid())) != first_pid
    assert [r.response_ids for r in got] == [r.response_ids for r in expected]  # the same batch, redone
    group.shutdown()


def test_a_rollout_worker_dead_when_weights_are_pushed_is_replaced_and_given_them(
    tiny_base: Path, ray_local
) -> None:
    params = SamplingParams(max_new_tokens=8, seed=3)
    weights = ray.put(
        {k: v * 0.5 for k, v in load_model(str(tiny_base)).state_dict().items()}
    )  # not the base's
    healthy = RolloutGroup(str(tiny_base), RolloutConfig(), CLUSTER, forwarded_env(), None, dtype="float32")
    healthy.push_weights(weights)
    expected = healthy.generate(prompts(tiny_base), params)
    healthy.shutdown()
    group = RolloutGroup(str(tiny_base), RolloutConfig(), CLUSTER, forwarded_env(), None, dtype="float32")
    base = group.generate(prompts(tiny_base), params)
    assert [r.response_ids for r in base] != [r.response_ids for r in expected]  # the weights tell apart
    pid = ray.get(group.workers[0].__ray_call__.remote(lambda self: __import__("os").getpid()))
    os.kill(pid, signal.SIGKILL)  # dead before the weights arrive (a lost node looks the same from here)
    group.push_weights(weights)
    assert group.restarts == 1
    assert [r.response_ids for r in group.generate(prompts(tiny_base), params)] == [
        r.response_ids for r in expected
    ]  # the replacement generates from the pushed weights, not the checkpoint it started from
    group.shutdown()


def test_a_teacher_killed_during_prefill_is_restarted_and_its_batch_redone(
    tiny_base: Path, tmp_path: Path, ray_local, monkeypatch
) -> None:
    tokenizer = load_tokenizer(str(tiny_base))
    rollouts = RolloutGroup(str(tiny_base), RolloutConfig(), CLUSTER, forwarded_env(), None, dtype="float32")
    batch = build_train_batch(rollouts.generate(prompts(tiny_base), SamplingParams(max_new_tokens=8)), [0.0] * 6,
                              int(tokenizer.pad_token_id))  # type: ignore[arg-type]  # fmt: skip
    rollouts.shutdown()
    monkeypatch.setenv("DISTILLERY_FAULT_KILL", f"teacher:1:{tmp_path / 'killed'}")
    teachers = TeacherGroup({"t": (str(tiny_base), "mxfp4")}, "float32", CLUSTER, 0.25, forwarded_env())
    refs, seconds = teachers.prefill("t", [batch.select(slice(0, 3)), batch.select(slice(3, 6))])
    assert (tmp_path / "killed").exists() and teachers.restarts == 1 and seconds > 0
    hidden = ray.get(refs)
    assert sum(h.shape[0] for h in hidden) == int(batch.loss_mask_BT[:, 1:].sum())
    teachers.shutdown()


@pytest.mark.slow
def test_a_job_survives_a_killed_rollout_worker_and_a_killed_trainer_stops_it_for_a_resume(
    tiny_base: Path, tmp_path: Path, job_env: dict[str, str], default_run: Path
) -> None:
    """Three faults in one run, three attempts: a rollout worker killed (replaced, its batch redone), an exception
    inside an actor (a CUDA error's text: one line, exit 3), a trainer killed (exit 3); each resumed attempt
    continues from the last checkpoint and the finished run matches the undisturbed one step for step."""
    common = [
        f"model.path={tiny_base}",
        f"runs_root={tmp_path}",
        "steps=3",
        "run_name=faults",
    ]  # default_run's
    straight, run_dir = metrics(default_run), tmp_path / "faults"  # undisturbed, same seeds

    # rollout calls: start eval greedy + sampled, step 1 (killed: the worker is replaced and step 1's batch redone);
    # the replacement counts its own calls: step 1, step 2, step 3 (raises)
    env = {
        **job_env,
        "DISTILLERY_FAULT_KILL": f"rollout:3:{tmp_path / 'rollout-killed'}",
        "DISTILLERY_FAULT_RAISE": "rollout:3",
    }
    proc = run_job(env, *common, check=False)
    assert "rollout worker(s) [0] died" in proc.stdout and (tmp_path / "rollout-killed").exists()
    checkpoint = run_dir / "checkpoints" / "step_000002"
    assert proc.returncode == 3, proc.stderr[-3000:]
    # the one error line (actors' own output, forwarded by Ray, may still arrive after it): the actor, its method,
    # the step and the checkpoint; exit 3, so jobs.submit resubmits with resume=true
    assert [line for line in proc.stderr.splitlines() if line.startswith("error:")] == [
        f"error: RolloutWorker.generate failed at step 3: RuntimeError: {INJECTED}; the last good checkpoint "
        f"is {checkpoint} (resume=true continues from it)"
    ]
    lines = metrics(run_dir)
    assert [m["step"] for m in lines] == [0, 1, 2]  # same number of steps, none duplicated
    assert lines[-1]["rollout/worker_restarts"] == 1.0
    assert [m.get("reward/mean") for m in lines] == [m.get("reward/mean") for m in straight[:3]]  # redone

    env = {
        **job_env,
        "DISTILLERY_FAULT_KILL": f"trainer:1:{tmp_path / 'trainer-killed'}",
    }  # the resumed step 3
    proc = run_job(env, *common, "resume=true", check=False)
    assert proc.returncode == 3 and "error: trainer rank(s) [0] of 1 died" in proc.stderr, proc.stderr[-3000:]
    assert [m["step"] for m in metrics(run_dir)] == [0, 1, 2]  # step 3 never logged

    proc = run_job(job_env, *common, "resume=true")  # the resubmitted job
    assert "resuming" in proc.stdout
    lines = metrics(run_dir)
    assert [m["step"] for m in lines] == [0, 1, 2, 3]  # nothing lost beyond the checkpoint, nothing repeated
    logged = [h["_step"] for h in wandb_history(run_dir) if "train/loss" in h or "eval/pass@1" in h]
    assert sorted(logged) == [0, 1, 2, 3]  # the W&B run (all three attempts' offline files): each step once
    assert [m.get("reward/mean") for m in lines] == [m.get("reward/mean") for m in straight]
