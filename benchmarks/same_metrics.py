"""Whether two pipeline runs logged the same numbers: each stage's ``metrics.jsonl`` compared line by line,
wall-clock keys left out (``perf/*`` and any key ending in ``_s`` or holding ``_s/``). What a refactor that must
not change results is checked with (same seed, same config, before and after):

    python -m jobs.pipeline runs_root=/tmp/before    # on the old commit
    python -m jobs.pipeline runs_root=/tmp/after     # on the new one
    python -m benchmarks.same_metrics /tmp/before/pipeline-* /tmp/after/pipeline-*

Prints one line per stage and each differing key; exits 1 if any line differs, 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

STAGES = ("base", "math", "code", "agent", "distill")


def timing_key(key: str) -> bool:
    return key.startswith("perf/") or key.endswith("_s") or "_s/" in key


def numbers(path: Path) -> list[dict[str, Any]]:
    """Each line of a ``metrics.jsonl`` without its wall-clock keys."""
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [{k: v for k, v in line.items() if not timing_key(k)} for line in lines]


def differences(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> list[str]:
    """What differs, one entry per line number or key (a line count that differs is one entry)."""
    out = [f"{len(before)} lines before, {len(after)} after"] if len(before) != len(after) else []
    for i, (a, b) in enumerate(zip(before, after, strict=False)):  # the shorter run's lines
        out += [f"line {i + 1} {k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(a.keys() | b.keys())
                if a.get(k) != b.get(k)]  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    args = parser.parse_args(argv)
    for run in (args.before, args.after):
        if not any((run / s / "metrics.jsonl").is_file() for s in STAGES):
            print(
                f"error: {run} holds no <stage>/metrics.jsonl (stages: {', '.join(STAGES)})", file=sys.stderr
            )
            return 2
    same = True
    for stage in STAGES:
        a, b = args.before / stage / "metrics.jsonl", args.after / stage / "metrics.jsonl"
        if not a.is_file() and not b.is_file():
            continue
        found = differences(numbers(a), numbers(b)) if a.is_file() and b.is_file() else ["only in one run"]
        same &= not found
        print(f"{stage}: {'same' if not found else f'{len(found)} differences'}")
        for line in found[:20]:
            print(f"  {line}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
