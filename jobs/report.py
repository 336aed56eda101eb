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
from matplotlib.ticker import MaxNLocator

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


MODEL_COLORS = {"base": "#9e9e9e", "specialist": "#1f77b4", "student": "#ff7f0e"}


def integer_steps(ax: Any) -> None:
    ax.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))


def save(fig: Any, path: Path) -> list[dict[str, Any]]:
    """Write ``fig`` and close it; returns what each panel shows (title, axis labels, each series' points and
    line style), which the tests read instead of pixels."""
    panels = [{"title": ax.get_title(), "xlabel": ax.get_xlabel(), "ylabel": ax.get_ylabel(),
               "series": {line.get_label(): (len(line.get_xdata()), line.get_linestyle()) for line in ax.get_lines()}}
              for ax in fig.axes]  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return panels


def plot_bars(scores: dict[str, dict[str, Any]], path: Path) -> list[dict[str, Any]]:
    """Left: per domain, the base, the domain's specialist and the student. Right: every model on every domain
    (the cross table: what a specialist loses outside its domain, what the student keeps)."""
    fig, (ax, grid) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [1.2, 1]})
    width = 0.27
    for i, (key, color) in enumerate(MODEL_COLORS.items()):
        xs = [d + (i - 1) * width for d in range(len(scores))]
        values = [row[key] for row in scores.values()]
        ax.bar(xs, values, width, label=key, color=color)
        for x, v in zip(xs, values, strict=True):
            ax.text(x, v + 0.01, f"{v:.2f}", ha="center", fontsize=7)
    ax.set_xticks(range(len(scores)), list(scores))
    ax.set(ylim=(0, 1.25), ylabel="held-out greedy pass@1", xlabel="domain",
           title="each domain: base, its specialist, the student")  # fmt: skip
    ax.legend(loc="upper left", fontsize=8, ncols=3)
    domains = list(scores)
    names = list(next(iter(scores.values()))["teachers"])
    rows = [("base", [scores[d]["base"] for d in domains])]
    rows += [(f"{n} specialist", [scores[d]["teachers"][n] for d in domains]) for n in names]
    rows.append(("student", [scores[d]["student"] for d in domains]))
    grid.imshow([values for _, values in rows], cmap="Blues", vmin=0, vmax=1, aspect="auto")
    own = {
        (f"{scores[d]['specialist_name']} specialist", d) for d in domains
    }  # bold: a specialist on its domain
    for r, (label, values) in enumerate(rows):
        for c, v in enumerate(values):
            grid.text(c, r, f"{v:.3f}", ha="center", va="center", fontsize=8, color="white" if v > 0.6 else "black",
                      weight="bold" if (label, domains[c]) in own else "normal")  # fmt: skip
    grid.set_xticks(range(len(domains)), domains)
    grid.set_yticks(range(len(rows)), [label for label, _ in rows])
    grid.set(xlabel="evaluated on", title="every model on every domain (greedy pass@1)")
    return save(fig, path)


def plot_curves(
    out: Path, base: dict[str, Any], specialists: dict[str, SpecialistRunConfig], path: Path
) -> list[dict[str, Any]]:
    """One panel per stage: the base's SFT loss (and held-out pass@1 at its evals), each specialist's training
    reward and eval pass@1 (points, at every eval), the distillation's reverse KL per teacher, the student's
    held-out pass@1 per domain at the distillation's evals."""
    from jobs.make_base import base_curve

    panels = 3 + len(specialists)
    fig, axes = plt.subplots(1, panels, figsize=(3.3 * panels, 3.2))
    curve = base_curve(base)
    steps = sorted(curve)
    axes[0].plot(steps, [curve[s]["sft/loss"] for s in steps], color="#555555", label="SFT loss")
    axes[0].set(title="base: SFT", xlabel="SFT step", ylabel="loss (nats/token)")
    evals = [s for s in steps if any(k.startswith("eval/") for k in curve[s])]
    if evals:
        right = axes[0].twinx()
        for key in sorted({k for s in evals for k in curve[s] if k.startswith("eval/")}):
            right.plot(evals, [curve[s].get(key) for s in evals], marker="o", linestyle="",
                       label=key.split("/")[1])  # fmt: skip
        right.set(ylabel="held-out pass@1", ylim=(0, 1.05))
        right.legend(fontsize=7, loc="center right")
    for ax, (name, spec) in zip(axes[1:], specialists.items(), strict=False):
        rows = read_metrics(out / name)
        trained = [r for r in rows if "reward/mean" in r]
        ax.plot(
            [r["step"] for r in trained], [r["reward/mean"] for r in trained], label="train reward (mean)"
        )
        evals = [(r["step"], r["eval/pass@1"]) for r in rows if "eval/pass@1" in r]
        if evals:
            ax.plot(*zip(*evals, strict=True), marker="o", linestyle="", label="held-out pass@1")
        label = name if name == spec.specialist.domain else f"{name} ({spec.specialist.domain})"
        ax.set(title=f"{label} specialist", xlabel="RL step", ylabel="reward / pass@1", ylim=(0, 1.05))
        ax.legend(fontsize=7)
    rows = read_metrics(out / "distill")
    kl, student = axes[-2], axes[-1]
    for name in specialists:
        points = [(r["step"], r[f"opd/kl/{name}"]) for r in rows if f"opd/kl/{name}" in r]
        if points:
            kl.plot(*zip(*points, strict=True), label=f"to {name}")
    positive = any(v > 0 for line in kl.get_lines() for v in line.get_ydata())
    kl.set(title="distillation: reverse KL", xlabel="OPD step", ylabel="KL (nats/token)",
           yscale="log" if positive else "linear")  # fmt: skip
    domains = [spec.specialist.domain for spec in specialists.values()]
    for domain in dict.fromkeys(domains):
        key = f"eval/{domain}/pass@1"
        points = [(r["step"], r[key]) for r in rows if key in r]
        if points:
            student.plot(*zip(*points, strict=True), marker="o", linestyle="", label=domain)
    student.set(title="distillation: student", xlabel="OPD step", ylabel="held-out pass@1", ylim=(0, 1.05))
    for ax in (kl, student):
        ax.legend(fontsize=7)
    for ax in axes:
        integer_steps(ax)
    return save(fig, path)


def plot_system(out: Path, stages: list[str], path: Path) -> list[dict[str, Any]]:
    """Per step of every RL / distillation stage: the rollout-vs-trainer mismatch (KL k3 between the FP4
    rollout's and the trainer's token probabilities) and the weight-sync time."""
    fig, (mismatch, sync) = plt.subplots(1, 2, figsize=(9, 3.2))
    for stage in stages:
        rows = read_metrics(out / stage)
        for ax, key in ((mismatch, "mismatch/kl_k3"), (sync, "perf/weight_sync_s")):
            points = [(r["step"], r[key]) for r in rows if key in r]
            if points:
                ax.plot(*zip(*points, strict=True), marker=".", label=stage)
    mismatch.set(title="rollout vs trainer mismatch", xlabel="step", ylabel="KL k3 (nats/token)")
    sync.set(title="weight sync per step", xlabel="step", ylabel="seconds")
    for ax in (mismatch, sync):
        integer_steps(ax)
        if ax.get_lines():
            ax.legend(fontsize=7)
    return save(fig, path)


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
    plot_system(out, [*specialists, "distill"], out / "system.png")
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
        "plots": ["pass_at_1.png", "curves.png", "system.png"],
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

`pass_at_1.png`: left, each domain's base, specialist and student; right, every model on every domain.

![pass@1 per domain](pass_at_1.png)

## Learning curves

`curves.png`, one panel per stage: the base's SFT loss (held-out pass@1 at its evals on the right axis), each
specialist's mean training reward (line) and held-out pass@1 at its evals (points), the distillation's reverse KL
to each teacher, and the student's held-out pass@1 per domain at the distillation's evals.

![curves](curves.png)

`system.png`: per step of every stage, the KL between the FP4 rollout's and the trainer's token probabilities
(what the importance correction has to cover) and the seconds the weight sync took.

![system](system.png)

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
                      images={"plots/pass_at_1": out / "pass_at_1.png", "plots/curves": out / "curves.png",
                              "plots/system": out / "system.png"})  # fmt: skip
    summary = {
        f"{who}/{d}/pass@1": r[who] for d, r in scores.items() for who in ("base", "specialist", "student")
    }
    summary |= {f"recovered/{d}": r["recovered"] for d, r in scores.items() if r["recovered"] is not None}
    tracker.finish(summary | {"total_seconds": report["total_seconds"]})
