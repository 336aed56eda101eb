"""Routing replay on and off (``--compare replay``), or the policy losses GRPO/GSPO/CISPO (``--compare loss``: four
PPO minibatches per step, so the ratios leave 1), side by side: the math specialist on the tiny MoE base with a
bfloat16 rollout and a float32 trainer (so the two compute differently and their routers can disagree), a few seeds
each.

    python -m benchmarks.routing_replay --steps 30 --seeds 0 1 2 --out benchmarks/results/routing_replay_cpu.json
    python -m benchmarks.routing_replay --compare loss --out benchmarks/results/moe_policy_losses_cpu.json

Per run: the mean over steps of ``mismatch/router_agreement`` (the trainer's own top-k vs the rollout's), of the
rollout/trainer mismatch KL (k3) the loss saw, and of the KL without replay (with replay on, measured by a second
forward); the held-out pass@1 at the end. Runs are real ``jobs.train_specialist`` processes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from statistics import mean

ROOT = Path(__file__).resolve().parents[1]


COMPARISONS = {
    "replay": {
        "replay=false": ["algorithm.routing_replay=false"],
        "replay=true": ["algorithm.routing_replay=true"],
    },
    "loss": {name: [f"algorithm={name}", "trainer.num_minibatches=4"] for name in ("grpo", "gspo", "cispo")},
}


def job_command(variant: list[str], seed: int, steps: int, runs_root: str, run_name: str) -> list[str]:
    return [sys.executable, "-m", "jobs.train_specialist", "model=tiny-moe", "rollout.dtype=bfloat16", *variant,
            f"seed={seed}", f"steps={steps}", "prompts_per_step=32", "eval_every=0", "eval_samples=0",
            "specialist.num_eval_tasks=100", "logger=disabled", f"runs_root={runs_root}", f"run_name={run_name}"]  # fmt: skip


def summarize(lines: list[dict[str, float]], summary: dict[str, float]) -> dict[str, float]:
    """One run's figures from its metrics.jsonl lines (step 0 has no training) and summary.json. Without
    replay the loss's KL is the no-replay KL."""
    steps = [m for m in lines if "mismatch/kl_k3" in m]
    kl = mean(m["mismatch/kl_k3"] for m in steps)
    return {
        "router_agreement": mean(m["mismatch/router_agreement"] for m in steps),
        "kl_k3": kl,
        "kl_k3_no_replay": mean(m.get("mismatch/no_replay/kl_k3", m["mismatch/kl_k3"]) for m in steps),
        "pass_at_1_start": summary["eval/pass@1_start"],
        "pass_at_1": summary["eval/pass@1"],
    }


def run(variant: list[str], seed: int, steps: int, runs_root: str, run_name: str) -> dict[str, float]:
    cmd = job_command(variant, seed, steps, runs_root, run_name)
    print(" ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True, env=os.environ | {"WANDB_MODE": "offline"})
    run_dir = Path(runs_root) / run_name
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return summarize(lines, json.loads((run_dir / "summary.json").read_text()))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--compare", choices=sorted(COMPARISONS), default="replay")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="replay-") as runs_root:
        results = {
            f"{name} seed={seed}": run(
                variant, seed, args.steps, runs_root, f"{name}-{seed}".replace("=", "-")
            )
            for name, variant in COMPARISONS[args.compare].items()
            for seed in args.seeds
        }
    for name, figures in results.items():
        print(name, " ".join(f"{k} {v:.5g}" for k, v in figures.items()))
    if args.out:
        command = " ".join(["python -m benchmarks.routing_replay", *sys.argv[1:]])
        record = {"command": command, "machine": f"{os.cpu_count()} CPU cores", "runs": results}
        Path(args.out).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
