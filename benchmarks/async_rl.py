"""Synchronous vs asynchronous RL (``algorithm.max_staleness`` 0, 1, 2) side by side: the math specialist on the
embedded tiny base (``model=tiny-all``, what ``make run`` builds), a few seeds each, as real
``jobs.train_specialist`` processes (Ray actors: one rollout worker, one trainer rank).

    python -m benchmarks.async_rl --steps 20 --seeds 0 1 2 --out benchmarks/results/async_rl_cpu.json

Per run: held-out pass@1 at the start and the end, the mean step time (steps 2 onwards: step 1 has nothing
sampled ahead), the mean and largest staleness the loss saw, and the rollout and trainer idle shares. Every run
with k > 0 uses the decoupled objective's behaviour correction (``algorithm.correction=tis``); so does k = 0,
so the only difference is the schedule.
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


def job_command(k: int, seed: int, steps: int, runs_root: str, run_name: str) -> list[str]:
    return [sys.executable, "-m", "jobs.train_specialist", "model=tiny-all", "specialist=math",
            f"algorithm.max_staleness={k}", "algorithm.correction=tis", f"seed={seed}", f"steps={steps}",
            "eval_every=0", "eval_samples=0", "specialist.num_eval_tasks=100", "logger=disabled",
            f"runs_root={runs_root}", f"run_name={run_name}"]  # fmt: skip


def summarize(lines: list[dict[str, float]], summary: dict[str, float]) -> dict[str, float]:
    """One run's figures from its metrics.jsonl lines (step 0 is the start eval) and summary.json."""
    steps = [m for m in lines if m["step"] >= 1]
    later = steps[1:] or steps  # step 1 samples on the spot in every mode
    stale = [m.get("async/staleness", 0.0) for m in steps]
    return {
        "pass_at_1_start": summary["eval/pass@1_start"],
        "pass_at_1": summary["eval/pass@1"],
        "step_s": mean(m["perf/step_s"] for m in later),
        "staleness_mean": mean(stale),
        "staleness_max": max(stale),
        "rollout_idle": mean(m["perf/rollout_idle"] for m in later),
        "trainer_idle": mean(m["perf/trainer_idle"] for m in later),
    }


def run(k: int, seed: int, steps: int, runs_root: str) -> dict[str, float]:
    run_name = f"k{k}-seed{seed}"
    cmd = job_command(k, seed, steps, runs_root, run_name)
    print(" ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)
    run_dir = Path(runs_root) / run_name
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return summarize(lines, json.loads((run_dir / "summary.json").read_text()))


def table(results: dict[str, dict[str, float]]) -> str:
    """Per k: the mean over seeds of each figure, the step time as a ratio to k = 0's."""
    by_k: dict[str, list[dict[str, float]]] = {}
    for name, figures in results.items():
        by_k.setdefault(name.split()[0], []).append(figures)
    base = mean(f["step_s"] for f in by_k["k=0"])
    rows = ["| schedule | held-out pass@1 per seed (start -> end) | s/step | vs k=0 | staleness mean / max |"
            " rollout idle | trainer idle |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for k, runs in by_k.items():
        ends = " / ".join(f"{f['pass_at_1']:.2f}" for f in runs)
        step_s = mean(f["step_s"] for f in runs)
        rows.append(f"| {k} | {runs[0]['pass_at_1_start']:.2f} -> {ends} | {step_s:.2f} | {step_s / base:.2f}x | "
                    f"{mean(f['staleness_mean'] for f in runs):.2f} / {max(f['staleness_max'] for f in runs):.0f} | "
                    f"{mean(f['rollout_idle'] for f in runs):.0%} | {mean(f['trainer_idle'] for f in runs):.0%} |")  # fmt: skip
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--staleness", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    if 0 not in args.staleness or min(args.staleness) < 0 or args.steps < 2:
        parser.error("--staleness must include 0 (the reference) and be >= 0; --steps must be >= 2")
    with tempfile.TemporaryDirectory(prefix="async-rl-") as runs_root:
        results = {
            f"k={k} seed={seed}": run(k, seed, args.steps, runs_root)
            for k in args.staleness
            for seed in args.seeds
        }
    for name, figures in results.items():
        print(name, " ".join(f"{key} {value:.4g}" for key, value in figures.items()))
    print(table(results))
    if args.out:
        command = " ".join(["python -m benchmarks.async_rl", *sys.argv[1:]])
        record = {"command": command, "machine": f"{os.cpu_count()} CPU cores", "runs": results,
                  "table": table(results)}  # fmt: skip
        Path(args.out).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
