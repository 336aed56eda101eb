"""Chaos: 10 SIGKILLs of rollout workers, teachers and trainer ranks at seeded calls of one distillation job
under `jobs.submit` (rl/faults.py, ``DISTILLERY_FAULT_CHAOS``); the run ends with the metrics of an undisturbed
run with the same seed, every step logged once, in one W&B run."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from rl.faults import chaos_hit, chaos_schedule
from specialists.registry import SpecialistEntry, register
from tests.conftest import ROOT, RayHead, run_temp
from tests.test_checkpoint_tracking import wandb_history
from tests.test_job_e2e import metrics

# The student distils one teacher, the tiny base served unquantized (fp4=none, while the student rolls out and
# trains in MXFP4), so the KL and the loss are not 0. One rollout worker, one teacher, one trainer rank: every
# call of a role is the next one in its count, so a seed's schedule plays out the same way every run.
DISTILL = [
    "prompts_per_step=4", "distill.samples_per_prompt=2", "eval_every=0", "distill.num_eval_tasks=4",
    "rollout.max_new_tokens=12", "checkpoint_every=1", "cluster.num_cpus=2", "cluster.actor_cpus=0.5",
    "distill.teacher_cpus=0.25", "distill.teachers.math=m", "~distill.teachers.code", "~distill.teachers.agent",
    "steps=4",
]  # fmt: skip
# seed 4's 10 kills: rollout calls 3, 6, 9, 11; teacher calls 2, 5, 7, 9; trainer calls 2, 4 -- the last one in
# step 4 of this job (its 12th rollout call is step 4's); each trainer kill costs an attempt.
SEED, KILLS = 4, 10
NOT_COMPARED = (
    "perf/",
    "opd/teacher_s/",
    "opd/teacher_restarts",
    "rollout/worker_restarts",
)  # times, counters


def test_the_chaos_schedule_kills_every_role_with_gaps_that_let_each_redo_survive() -> None:
    assert chaos_schedule(4, 10) == chaos_schedule(4, 10) != chaos_schedule(5, 10)
    for seed in range(20):
        schedule = chaos_schedule(seed, 10)
        assert len(schedule) == 10 and set(Counter(r for r, _ in schedule)) == {
            "rollout",
            "teacher",
            "trainer",
        }
        for role in ("rollout", "teacher", "trainer"):
            calls = [n for r, n in schedule if r == role]
            gaps = [b - a for a, b in zip([0, *calls], calls, strict=False)]
            assert all(2 <= g <= 3 for g in gaps), (seed, role, calls)
    # a gap of exactly 2: every role's first kill is its second call, in the order the seed shuffles
    assert sorted(chaos_schedule(0, 3, max_gap=2)) == [("rollout", 2), ("teacher", 2), ("trainer", 2)]
    assert chaos_schedule(0, 1, max_gap=2) == [("rollout", 2)]


def test_chaos_counts_calls_across_processes_in_the_state_dir_and_kills_each_scheduled_call_once(
    tmp_path: Path,
) -> None:
    schedule = [("teacher", 2), ("rollout", 3)]
    hits = [
        chaos_hit(tmp_path, schedule, role)
        for role in ["rollout", "teacher", "teacher", "rollout", "rollout"]
    ]
    assert hits == [False, False, True, False, True]
    assert (tmp_path / "calls-rollout").read_text() == "3" and (tmp_path / "calls-teacher").read_text() == "2"
    assert (tmp_path / "kill-00").read_text().startswith("teacher 2 ")
    assert (tmp_path / "kill-01").read_text().startswith("rollout 3 ")
    # a restarted process (or a resubmitted job) continues the count: no kill repeats
    assert not any(chaos_hit(tmp_path, schedule, role) for role in ["teacher", "rollout"] * 3)
    # another process's calls count too: a child increments the same file under the lock
    code = "from pathlib import Path; from rl.faults import chaos_hit; chaos_hit(Path(r'%s'), [], 'rollout')"
    subprocess.run([sys.executable, "-c", code % tmp_path], cwd=ROOT, check=True)
    assert (tmp_path / "calls-rollout").read_text() == "7"


def job_env(cache: Path) -> dict[str, str]:
    """What a user's shell gives a job: no Ray or W&B settings of this session, a private cache."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "WANDB_", "DISTILLERY_"))}
    return env | {"PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '')}", "DISTILLERY_CACHE": str(cache),
                  "WANDB_SILENT": "true"}  # fmt: skip


def register_teacher(runs_root: Path, base: Path) -> None:
    register(runs_root / "registry.json",
             SpecialistEntry(name="m", domain="math", checkpoint=str(base), fp4="none", base=str(base)))  # fmt: skip


def reference_run(base: Path, root: Path) -> Path:
    """The undisturbed run on a local Ray, run once per test run (this module and test_node_loss compare to it;
    under xdist the first worker to need it runs it while the other waits on the lock)."""
    run_dir = root / "straight"
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (run_dir / "summary.json").exists():
            run_straight(base, root)
    return run_dir


def run_straight(base: Path, root: Path) -> None:
    register_teacher(root, base)
    cmd = [sys.executable, "-m", "jobs.distill", *DISTILL, f"model.path={base}", f"runs_root={root}",
           "run_name=straight"]  # fmt: skip
    proc = subprocess.run(
        cmd, cwd=ROOT, env=job_env(root / "cache"), capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]


@pytest.fixture(scope="module")
def reference(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return reference_run(tiny_base, run_temp(tmp_path_factory) / "distill-reference")


def compared(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in m.items() if not k.startswith(NOT_COMPARED)} for m in metrics(run_dir)]


def assert_one_run_like(run_dir: Path, reference: Path) -> None:
    """Every step once, the reference's figures exactly, one W&B run holding each step once."""
    assert [m["step"] for m in metrics(run_dir)] == [0, 1, 2, 3, 4]
    # bitwise: a redone batch has the same seeds, a resumed step the same weights, optimizer state and data
    assert compared(run_dir) == compared(reference)
    samples = [(run_dir / "samples.jsonl").read_text(), (reference / "samples.jsonl").read_text()]
    assert samples[0] == samples[1] and samples[0]  # the eval generations too, each logged once
    assert len({p.name.rsplit("-", 1)[-1] for p in run_dir.glob("wandb/offline-run-*")}) == 1
    logged = [h["_step"] for h in wandb_history(run_dir) if "train/loss" in h or "eval/math/pass@1" in h]
    assert sorted(logged) == [0, 1, 2, 3, 4]


@pytest.mark.slow
def test_ten_random_kills_in_one_distillation_job_end_like_an_undisturbed_run(
    tiny_base: Path, tmp_path: Path, ray_head: RayHead, reference: Path
) -> None:
    runs, state = tmp_path / "runs", tmp_path / "chaos"
    register_teacher(runs, tiny_base)
    env = ray_head.env | {"DISTILLERY_FAULT_CHAOS": f"{SEED}:{KILLS}:{state}", "DISTILLERY_CACHE": str(tmp_path),
                          "WANDB_SILENT": "true"}  # fmt: skip
    cmd = [sys.executable, "-m", "jobs.submit", "--address", ray_head.address, "--retries", "3", "distill",
           *DISTILL, f"model.path={tiny_base}", f"runs_root={runs}", "run_name=chaos"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    (tmp_path / "submit.log").write_text(out)  # the whole story, when something here fails
    assert proc.returncode == 0, out[-8000:]

    kills = [p.read_text().split() for p in sorted(state.glob("kill-*"))]
    assert len(kills) == KILLS  # each scheduled kill happened, none twice
    assert Counter(role for role, _, _ in kills) == {"rollout": 4, "teacher": 4, "trainer": 2}
    assert len({pid for _, _, pid in kills}) == KILLS  # ten distinct processes died
    assert (
        "rollout worker(s) [0] died" in out and "teacher 'm' died" in out
    )  # (streamed logs may repeat a line)
    # each trainer kill stopped an attempt (exit 3), resubmitted with resume=true; the third attempt finished
    assert out.count("FAILED (exit code 3)") == 2 and "error: trainer rank(s) [0] of 1 died" in out
    assert "attempt 3/4" in out and "attempt 4/4" not in out and "from step_000002" in out
    assert_one_run_like(runs / "chaos", reference)
