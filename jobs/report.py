"""The pipeline's report: one table of held-out pass@1 (base / specialists / student on every domain), learning
curves of every stage and per-domain bars, as ``report.md``, ``report.json``, PNGs and a W&B ``eval`` run.

Every figure comes from the stages' own files (``summary.json`` and ``metrics.jsonl`` of each run directory,
``base.json`` of the base), so a report can be rebuilt from a finished run directory alone.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

from jobs.config import PipelineRunConfig
from rl.config import SpecialistRunConfig
from rl.tracking import Tracker, write_json_atomic


def pass_at_1(
    specialists: dict[str, SpecialistRunConfig], distill: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """Per domain: base, every specialist, the domain's own specialist, the student and the share of the own
    specialist's gain the student recovered (None where the specialist is not ahead of the base). All greedy
    pass@1 on the distillation eval's held-out tasks, so every column is measured on the same tasks."""
    out = {}
    for name, spec in specialists.items():
        domain = spec.specialist.domain
        key = f"eval/{domain}/pass@1"
        teachers = {other: distill[f"eval/{other}/{domain}/pass@1"] for other in specialists}
        out[domain] = {"base": distill[f"{key}_start"], "specialist": teachers[name], "specialist_name": name,
                       "student": distill[key], "recovered": distill.get(f"opd/recovered/{domain}"),
                       "teachers": teachers, "n": distill.get(f"eval/{domain}/n"),
                       "lenient": {"base": distill.get(f"{key}_lenient_start"),
                                   "specialist": distill.get(f"eval/{name}/{domain}/pass@1_lenient"),
                                   "student": distill.get(f"{key}_lenient")}}  # fmt: skip
    return out


def wilson_interval(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a pass rate ``p`` measured on ``n`` tasks (95% for z = 1.96): unlike
    p +- z * se it stays inside [0, 1] and is not empty at p = 0 or 1."""
    if n <= 0:
        raise ValueError(f"an interval needs n >= 1 tasks, got {n}")
    denominator = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denominator
    half = z / denominator * (p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5
    return max(0.0, center - half), min(1.0, center + half)


def with_interval(p: float | None, n: int | None) -> str:
    if p is None:
        return "n/a"
    if not n:
        return f"{p:.3f}"
    low, high = wilson_interval(p, n)
    return f"{p:.3f} [{low:.3f}, {high:.3f}]"


def intervals_md(scores: dict[str, dict[str, Any]]) -> str:
    """Base, the domain's specialist and the student per domain: strict pass@1 (the rewarded answer form) and
    lenient (the last number / the first code block), each with its 95% Wilson interval over the n tasks."""
    lines = [
        "| domain | n | model | strict pass@1 [95% CI] | lenient pass@1 [95% CI] |",
        "|---|---|---|---|---|",
    ]
    for domain, row in scores.items():
        n = int(row["n"]) if row.get("n") else None
        for who in ("base", "specialist", "student"):
            label = f"{row['specialist_name']} specialist" if who == "specialist" else who
            lenient = row.get("lenient", {}).get(who)
            lines.append(f"| {domain} | {n or 'n/a'} | {label} | {with_interval(row[who], n)} | "
                         f"{with_interval(lenient, n)} |")  # fmt: skip
    return "\n".join(lines)


def table_md(scores: dict[str, dict[str, Any]]) -> str:
    names = list(next(iter(scores.values()))["teachers"])
    lines = ["| domain | base | " + " | ".join(f"{n} specialist" for n in names) + " | student | recovered |",
             "|---" * (len(names) + 4) + "|"]  # fmt: skip
    for domain, row in scores.items():
        cells = [
            (f"**{v:.3f}**" if n == row["specialist_name"] else f"{v:.3f}")
            for n, v in row["teachers"].items()
        ]
        recovered = "n/a" if row["recovered"] is None else f"{row['recovered']:.0%}"
        lines.append(
            f"| {domain} | {row['base']:.3f} | "
            + " | ".join(cells)
            + f" | {row['student']:.3f} | {recovered} |"
        )
    return "\n".join(lines)


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []


def plot_bars(scores: dict[str, dict[str, Any]], path: Path) -> None:
    """Per domain: base, the domain's specialist, the student."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.27
    for i, (label, key, color) in enumerate(
        [
            ("base", "base", "#9e9e9e"),
            ("specialist", "specialist", "#1f77b4"),
            ("student", "student", "#ff7f0e"),
        ]
    ):
        xs = [d + (i - 1) * width for d in range(len(scores))]
        values = [row[key] for row in scores.values()]
        ax.bar(xs, values, width, label=label, color=color)
        for x, v in zip(xs, values, strict=True):
            ax.text(x, v + 0.01, f"{v:.2f}", ha="center", fontsize=7)
    ax.set_xticks(range(len(scores)), list(scores))
    ax.set_ylim(0, 1.25)
    ax.set_ylabel("held-out greedy pass@1")
    ax.legend(loc="upper left", fontsize=8, ncols=3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_curves(
    out: Path, base: dict[str, Any], specialists: dict[str, SpecialistRunConfig], path: Path
) -> None:
    """One panel per stage: the base's SFT loss, each specialist's training reward (and eval points), the
    distillation's per-teacher reverse KL."""
    panels = 2 + len(specialists)
    fig, axes = plt.subplots(1, panels, figsize=(3.2 * panels, 3))
    curve = base.get("curve", [])
    axes[0].plot([p["step"] for p in curve], [p["loss"] for p in curve], marker="o")
    axes[0].set(title="base: SFT loss", xlabel="SFT step")
    for ax, (name, spec) in zip(axes[1:], specialists.items(), strict=False):
        rows = read_metrics(out / name)
        ax.plot([r["step"] for r in rows if "reward/mean" in r], [r["reward/mean"] for r in rows if "reward/mean" in r],
                label="train reward")  # fmt: skip
        evals = [(r["step"], r["eval/pass@1"]) for r in rows if "eval/pass@1" in r]
        if evals:
            ax.plot(*zip(*evals, strict=True), marker="o", linestyle="--", label="eval pass@1")
        label = name if name == spec.specialist.domain else f"{name} ({spec.specialist.domain})"
        ax.set(title=f"{label} specialist", xlabel="RL step", ylim=(0, 1.05))
        ax.legend(fontsize=7)
    rows = read_metrics(out / "distill")
    for name in specialists:
        points = [(r["step"], r[f"opd/kl/{name}"]) for r in rows if f"opd/kl/{name}" in r]
        if points:
            axes[-1].plot(*zip(*points, strict=True), label=f"KL to {name}")
    positive = any(v > 0 for line in axes[-1].get_lines() for v in line.get_ydata())
    axes[-1].set(title="distillation: reverse KL", xlabel="OPD step", yscale="log" if positive else "linear")
    axes[-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def machine() -> str:
    """Where the run ran: the platform, the CPU count, the GPUs when there are any, Python."""
    from rl.memory import local_gpu

    gpu = local_gpu()
    gpus = f", {gpu[1]} ({gpu[0] / 2**30:.0f} GiB)" if gpu else ""
    return f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPU cores{gpus}, Python {sys.version.split()[0]}"


def write(out: Path, cfg: PipelineRunConfig, specialists: dict[str, SpecialistRunConfig], summaries: dict[str, Any],
          seconds: dict[str, float], wall_s: float, group: str) -> dict[str, Any]:  # fmt: skip
    """Write report.md, report.json and the plots into ``out``; log them as the W&B ``eval`` run."""
    scores = pass_at_1(specialists, summaries["distill"])
    base_json = Path(summaries["base"]["path"]) / "base.json"
    base = json.loads(base_json.read_text()) if base_json.exists() else {}
    plot_bars(scores, out / "pass_at_1.png")
    plot_curves(out, base, specialists, out / "curves.png")
    table = table_md(scores)
    total = sum(seconds.values())
    report = {
        "pipeline": cfg.run_name, "wandb_group": group, "machine": machine(), "pass@1": scores, "table_md": table,
        "intervals_md": intervals_md(scores),
        "stage_seconds": seconds, "total_seconds": round(total, 1), "this_attempt_seconds": round(wall_s, 1),
        "specialists": {n: {"domain": s.specialist.domain, "steps": s.steps,
                            "own_eval_pass@1": summaries[n].get("eval/pass@1"),
                            "own_eval_pass@1_start": summaries[n].get("eval/pass@1_start"),
                            "wandb_run_id": summaries[n].get("wandb_run_id"),
                            "wandb_artifact": summaries[n].get("wandb_artifact")} for n, s in specialists.items()},
        "student": {"checkpoint": summaries["distill"].get("checkpoint"),
                    "wandb_artifact": summaries["distill"].get("wandb_artifact")},
        "plots": ["pass_at_1.png", "curves.png"],
        "report_md": str(out / "report.md"), "report_json": str(out / "report.json"),
    }  # fmt: skip
    write_json_atomic(out / "report.json", report)
    (out / "report.md").write_text(report_md(report, cfg, seconds))
    log_eval_run(out, cfg, group, scores, report)
    return report


def report_md(report: dict[str, Any], cfg: PipelineRunConfig, seconds: dict[str, float]) -> str:
    stages = "\n".join(f"| {stage} | {s:.0f} |" for stage, s in seconds.items())
    return f"""# Pipeline `{cfg.run_name}`

Base `{cfg.base_model}` -> {", ".join(report["specialists"])} specialists (GRPO, FP4 `{cfg.fp4}` rollouts and QAT) ->
one student by on-policy distillation (full-vocabulary reverse KL to each domain's specialist).
Wall time {report["total_seconds"] / 60:.1f} min over all stages on {report["machine"]}. W&B group `{report["wandb_group"]}`.

## Held-out greedy pass@1

Each column is greedy pass@1 on the same held-out tasks per domain; the bold cell is the domain's own specialist;
"recovered" is the share of that specialist's gain over the base that the student kept.

{report["table_md"]}

Strict is the rewarded answer form (`\\boxed{{}}`, a fenced python block); lenient reads the last number where nothing
is boxed, or the first code block of any language, so a gain in form is told apart from a gain in skill. The
intervals are 95% Wilson intervals over the n held-out tasks.

{report["intervals_md"]}

![pass@1 per domain](pass_at_1.png)

## Learning curves

![curves](curves.png)

## Stages

| stage | seconds |
|---|---|
{stages}

Each stage's directory beside this file holds its config.yaml, metrics.jsonl, summary.json, checkpoints and
W&B run; `registry.json` lists the specialists the student was distilled from.
"""


def log_eval_run(out: Path, cfg: PipelineRunConfig, group: str, scores: dict[str, dict[str, Any]],
                 report: dict[str, Any]) -> None:  # fmt: skip
    """The report as the pipeline's W&B run of job type ``eval``: the table, the plots, the figures."""
    run_dir = out / "report"
    run_dir.mkdir(exist_ok=True)
    logger = dataclasses.replace(cfg.logger, group=group)
    tracker = Tracker(run_dir, logger, {"pipeline": cfg.run_name}, "report", job_type="eval")
    columns = ["domain", "base", "specialist", "student", "recovered"]
    rows = [[d, r["base"], r["specialist"], r["student"], r["recovered"]] for d, r in scores.items()]
    tracker.log_media(tables={"pass@1": (columns, rows)},
                      images={"plots/pass_at_1": out / "pass_at_1.png", "plots/curves": out / "curves.png"})  # fmt: skip
    summary = {
        f"{who}/{d}/pass@1": r[who] for d, r in scores.items() for who in ("base", "specialist", "student")
    }
    summary |= {f"recovered/{d}": r["recovered"] for d, r in scores.items() if r["recovered"] is not None}
    tracker.finish(summary | {"total_seconds": report["total_seconds"]})
