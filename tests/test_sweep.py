"""`hydra/launcher=ray_jobs`: a distillation sweep whose members run as Ray jobs on a real `ray start --head`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from specialists.registry import SpecialistEntry, register
from tests.conftest import ROOT, RayHead, wandb_records

pytestmark = pytest.mark.slow


def test_a_distillation_sweep_runs_each_member_as_a_ray_job_and_writes_the_sweep_table(
    tiny_base: Path, tmp_path: Path, ray_head: RayHead
) -> None:
    runs = tmp_path / "runs"
    register(runs / "registry.json", SpecialistEntry(name="m", domain="math", checkpoint=str(tiny_base),
                                                     fp4="mxfp4", base=str(tiny_base)))  # fmt: skip
    cmd = [sys.executable, "-m", "jobs.distill", "-m", "hydra/launcher=ray_jobs",
           f"hydra.launcher.address={ray_head.address}", f"model.path={tiny_base}", f"runs_root={runs}",
           "distill.teachers.math=m", "~distill.teachers.code", "~distill.teachers.agent", "steps=1",
           "prompts_per_step=2", "distill.num_eval_tasks=4", "rollout.max_new_tokens=16", "cluster.actor_cpus=0.25",
           "distill.teacher_cpus=0.25", "distill.lr=1e-6", "distill.loss=reverse_kl,sampled_token"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=ray_head.env | {"WANDB_SILENT": "true"}, capture_output=True,
                          text=True, timeout=900)  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    (sweep_dir,) = (runs / "sweeps").iterdir()
    rows = json.loads((sweep_dir / "sweep.json").read_text())
    assert len(rows) == 2 and {r["status"] for r in rows} == {"SUCCEEDED"}
    members = {(float(o["distill.lr"]), o["distill.loss"]) for o in
               ({k: v for k, v in (x.split("=", 1) for x in r["overrides"])} for r in rows)}  # fmt: skip
    assert members == {(1e-6, "reverse_kl"), (1e-6, "sampled_token")}
    table = (sweep_dir / "sweep.md").read_text()
    assert table.count("| SUCCEEDED |") == 2 and "eval/math/pass@1" in table
    for row in rows:
        run_dir = Path(row["run_dir"])
        assert run_dir.name == f"{sweep_dir.name}-{row['index']}" and row["ray_job"]
        summary = json.loads((run_dir / "summary.json").read_text())
        assert row["figures"]["eval/math/pass@1"] == summary["eval/math/pass@1"]
        assert row["figures"]["wandb_run_id"] == summary["wandb_run_id"]
        (run,) = [r["run"] for r in wandb_records(run_dir) if r.get("type") == "run"][:1]
        assert run["run_group"] == sweep_dir.name and run["job_type"] == "distill"  # one W&B group per sweep
        config = OmegaConf.load(run_dir / "config.yaml")  # the member ran with its own overrides
        overrides = dict(x.split("=", 1) for x in row["overrides"])
        assert (
            config.distill.lr == float(overrides["distill.lr"])
            and config.distill.loss == overrides["distill.loss"]
        )


def test_the_sweep_table_says_shared_overrides_once_and_rows_show_what_varies() -> None:
    from hydra_plugins.distillery_ray_jobs.ray_jobs_launcher import split_overrides, sweep_table

    rows = [{"index": i, "overrides": ["steps=4", f"distill.lr={lr}", "distill.loss=reverse_kl"], "status": "SUCCEEDED",
             "figures": {"eval/math/pass@1": p, "wandb_run_id": f"run{i}"}}
            for i, (lr, p) in enumerate([(1e-4, 0.5), (3e-4, 0.25)])]  # fmt: skip
    assert split_overrides(rows) == (["steps=4", "distill.loss=reverse_kl"], [["distill.lr=0.0001"],
                                                                               ["distill.lr=0.0003"]])  # fmt: skip
    assert sweep_table(rows).splitlines() == [
        "Every member: steps=4 distill.loss=reverse_kl",
        "",
        "| # | overrides | status | eval/math/pass@1 | W&B run |",
        "|---|---|---|---|---|",
        "| 0 | distill.lr=0.0001 | SUCCEEDED | 0.500 | run0 |",
        "| 1 | distill.lr=0.0003 | SUCCEEDED | 0.250 | run1 |",
    ]
