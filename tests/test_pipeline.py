"""`python -m jobs.pipeline` as a user runs it: every stage, a trainer killed mid-stage and the pipeline resumed,
the report, and the W&B runs (group, job types, artifacts and their lineage) read back from the offline files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from specialists.registry import load_registry
from tests.conftest import ROOT, wandb_records

pytestmark = pytest.mark.slow

QUICK_STAGE = {"prompts_per_step": 4, "algorithm.group_size": 4, "specialist.num_eval_tasks": 6,
               "rollout.max_new_tokens": 16, "checkpoint_every": 1, "algorithm.dynamic_sampling": "false",
               "cluster.actor_cpus": 0.5}  # fmt: skip
STEPS = {"math": 2, "code": 3, "agent": 1}


def pipeline(env: dict[str, str], *overrides: str) -> subprocess.CompletedProcess:
    # ++ sets a stage's key whether or not configs/pipeline.yaml lists it
    stages = [f"++specialists.{s}.{k}={v}" for s in STEPS for k, v in QUICK_STAGE.items()]
    stages += [f"++specialists.{s}.steps={n}" for s, n in STEPS.items()]
    stages.append("++specialists.agent.specialist.max_turns=2")
    distill = ["++distill.steps=2", "++distill.prompts_per_step=3", "++distill.distill.num_eval_tasks=6",
               "++distill.rollout.max_new_tokens=16", "++distill.distill.max_turns=2",
               "++distill.cluster.actor_cpus=0.5"]  # fmt: skip
    cmd = [sys.executable, "-m", "jobs.pipeline", *stages, *distill, *overrides]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def artifacts(run_dir: Path) -> list[dict]:
    return [r["artifact"] for r in wandb_records(run_dir) if r.get("type") == "artifact"
            and not r["artifact"]["type"].startswith("run_table")]  # fmt: skip


def test_the_pipeline_on_an_moe_base_resumes_after_a_killed_trainer_and_reports_every_stage(
    moe_dir: Path, tmp_path: Path, job_env: dict[str, str]
) -> None:
    # the base is a Qwen3-MoE (FP4 QAT and packed rollouts on its experts): specialists and student are MoE too;
    # the dense pipeline is `make run`'s
    common = [f"runs_root={tmp_path}", "run_name=p", f"+overrides.model.path={moe_dir}"]
    # a real fault: the trainer SIGKILLs itself at its 3rd step -- step 3 of the code stage (math has 2)
    killed = pipeline(job_env | {"DISTILLERY_FAULT_KILL": f"trainer:3:{tmp_path / 'killed'}"}, *common)
    assert killed.returncode == 3, killed.stdout[-3000:] + killed.stderr[-3000:]
    assert "trainer rank(s) [0] of 1 died" in killed.stderr
    hint = killed.stdout.split("continue with: ")[1].splitlines()[0]  # same command, run name, resume=true
    assert hint.startswith("python -m jobs.pipeline ++specialists.math.prompts_per_step=4 ")
    assert hint.endswith(f"run_name=p runs_root={tmp_path} resume=true") and "+overrides.model.path=" in hint
    out = tmp_path / "p"
    assert sorted(json.loads((out / "pipeline.json").read_text())["stages"]) == ["base", "math"]
    again = pipeline(job_env, *common)
    assert again.returncode != 0 and "pass resume=true" in again.stderr  # not silently started over

    resumed = pipeline(job_env, *common, "resume=true")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-5000:]
    log = resumed.stdout
    assert (
        "base tiny-all: done in an earlier attempt" in log
        and "'math' (2 RL steps): done in an earlier" in log
    )
    assert "resuming" in log and "code" in log and "step_000002" in log  # the code stage continued
    for stage, steps in STEPS.items():
        lines = [json.loads(x)["step"] for x in (out / stage / "metrics.jsonl").read_text().splitlines()]
        assert lines == list(range(steps + 1)), stage  # start eval + every step once: none lost or repeated
    assert sorted(json.loads((out / "pipeline.json").read_text())["stages"]) == sorted(
        ["base", *STEPS, "distill", "report"]
    )
    check_report(out, resumed.stdout)
    check_wandb(out)
    student = json.loads((out / "distill" / "summary.json").read_text())["checkpoint"]
    assert json.loads((Path(student) / "config.json").read_text())["model_type"] == "qwen3_moe"


def check_report(out: Path, stdout: str) -> None:
    """The report: table from the distillation's evals, plots, every stage's time."""
    report = json.loads((out / "report.json").read_text())
    distill = json.loads((out / "distill" / "summary.json").read_text())
    assert set(report["pass@1"]) == set(STEPS)
    for domain, row in report["pass@1"].items():
        assert row["base"] == distill[f"eval/{domain}/pass@1_start"]
        assert row["student"] == distill[f"eval/{domain}/pass@1"]
        assert (
            row["specialist"] == distill[f"eval/{domain}/{domain}/pass@1"]
            and row["specialist_name"] == domain
        )
    assert set(report["stage_seconds"]) >= {"base", *STEPS, "distill"}
    md = (out / "report.md").read_text()
    assert (
        "| domain | base | math specialist | code specialist | agent specialist | student | recovered |" in md
    )
    for png in ("pass_at_1.png", "curves.png", "system.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (out / png).stat().st_size > 10_000
    assert report["table_md"] in stdout


def check_wandb(out: Path) -> None:
    """W&B: one group, a job type per stage, the report table logged as measured, the artifacts' lineage."""
    report = json.loads((out / "report.json").read_text())
    job_types = {"base": "base", "math": "specialist", "code": "specialist", "agent": "specialist",
                 "distill": "distill", "report": "eval"}  # fmt: skip
    for stage, job_type in job_types.items():
        (run,) = [r["run"] for r in wandb_records(out / stage) if r.get("type") == "run"][:1]
        assert run["run_group"] == "p" and run["job_type"] == job_type and run["display_name"] == f"p/{stage}"
    (table_file,) = (out / "report").glob("wandb/offline-run-*/files/media/table/pass@1_*.table.json")
    table = json.loads(table_file.read_text())
    assert table["columns"] == ["domain", "base", "specialist", "student", "recovered"]
    assert {r[0]: r[3] for r in table["data"]} == {d: row["student"] for d, row in report["pass@1"].items()}

    # lineage: base -> each specialist -> the student, by artifact digest (what W&B matches on sync)
    (base,) = [a for a in artifacts(out / "base") if a["type"] == "base"]
    registry = load_registry(out / "registry.json")
    used = {a["name"]: a for a in artifacts(out / "distill") if a.get("use_after_commit")}
    for stage in STEPS:
        logged = {a["name"]: a for a in artifacts(out / stage)}
        assert (
            logged["base-tiny-all"]["digest"] == base["digest"]
            and logged["base-tiny-all"]["use_after_commit"]
        )
        assert registry[stage].wandb_artifact == f"specialist-{stage}:latest"
        assert report["specialists"][stage]["wandb_artifact"] == f"specialist-{stage}:latest"
        assert report["specialists"][stage]["wandb_run_id"] == registry[stage].wandb_run_id
        assert used[f"specialist-{stage}"]["digest"] == logged[f"specialist-{stage}"]["digest"]
    (student,) = [a for a in artifacts(out / "distill") if a["type"] == "student"]
    assert student["name"] == "student-distill" and not student.get("use_after_commit")
    assert report["student"]["wandb_artifact"] == "student-distill:latest"
