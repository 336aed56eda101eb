"""Greedy pass@1 of a model on held-out agent tasks under each ``specialist.tool_prompt``
(``python -m benchmarks.agent_prompt MODEL_DIR``).

The check behind ``specialist.tool_prompt=full``: a pretrained model that has never seen the built-in lookup +
calc environment, given only the short instruction the embedded base was SFT'd on, does not call the tools.
Runs the same held-out episodes (the unquantized model, the hf engine, greedy) under each prompt and prints
pass@1 and the first transcripts. On 2 CPU cores Qwen2.5-Coder-0.5B-Instruct takes ~2 minutes for 16 tasks.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from specialists.agent_env import TOOL_PROMPTS


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.agent_prompt", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("model", help="a local HF model directory (a converted GGUF: see README 'Models')")
    parser.add_argument("--tasks", type=int, default=16, help="held-out tasks (default 16)")
    parser.add_argument("--max-new-tokens", type=int, default=96, help="tokens per model turn (default 96)")
    parser.add_argument("--max-turns", type=int, default=4, help="model turns per episode (default 4)")
    parser.add_argument("--prompts", nargs="+", default=list(TOOL_PROMPTS), choices=TOOL_PROMPTS)
    parser.add_argument("--out", default="", help="write the results as JSON here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for name in ("tasks", "max_new_tokens", "max_turns"):
        if getattr(args, name) < 1:
            print(
                f"error: --{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}",
                file=sys.stderr,
            )
            return 2
    from rl.model_files import ModelLoadError, check_model_dir

    try:
        check_model_dir(Path(args.model).expanduser(), tokenizer=True)
    except ModelLoadError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    from rl.config import SpecialistConfig
    from rl.episodes import Prompts, specialist_rollouts, specialist_scores
    from rl.models import load_model, load_tokenizer
    from rl.rollout.hf import HFEngine
    from rl.types import SamplingParams
    from specialists.domains import get_specialist

    spec = get_specialist("agent")
    tokenizer = load_tokenizer(args.model)
    engine = HFEngine(load_model(args.model, "float32"), tokenizer, max_batch_size=args.tasks)
    params = SamplingParams(args.max_new_tokens, 0.0, 1.0, 0, (), 0)
    results = {}
    for prompt in args.prompts:
        cfg = SpecialistConfig(domain="agent", num_eval_tasks=args.tasks, max_turns=args.max_turns,
                               tool_prompt=prompt)  # fmt: skip
        tasks = spec.eval_tasks(cfg)
        ids = Prompts(tokenizer)
        started = time.perf_counter()
        rollouts = specialist_rollouts(spec, engine.generate, tokenizer, tasks, [ids(t) for t in tasks], params,
                                       args.max_turns, args.max_turns * args.max_new_tokens)  # fmt: skip
        scores = [r.score for r in specialist_scores(spec, tasks, rollouts)]
        results[prompt] = {"pass@1": sum(scores) / len(scores), "solved": int(sum(scores)), "tasks": len(tasks),
                           "seconds": round(time.perf_counter() - started, 1),
                           "transcripts": [r.text for r in rollouts[:3]]}  # fmt: skip
        print(f"tool_prompt={prompt}: {int(sum(scores))}/{len(tasks)} solved, pass@1 "
              f"{results[prompt]['pass@1']:.3f} ({results[prompt]['seconds']:.0f} s)", flush=True)  # fmt: skip
        for text in results[prompt]["transcripts"]:
            print("   ", repr(text[:300]), flush=True)
    if args.out:
        Path(args.out).write_text(
            json.dumps({"model": args.model, "args": vars(args), "results": results}, indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
