"""The trainer's log-prob pass (policy forward, full-vocabulary log-softmax, token log-probs and entropy, backward)
on one micro-batch of short rows from a batch with a long row, three ways, each in its own process:

- ``batch width, one pass``: the micro-batch at the whole batch's width (rows are right padded to the longest),
  the log-softmax over every position at once (the trainer before 2026-12-08);
- ``own width, one pass``: the micro-batch cut to its own longest row (``TrainBatch.trimmed``);
- ``own width, chunked``: and the log-softmax in checkpointed chunks of positions (``token_logprobs``' default,
  ``LOGITS_CHUNK_ELEMENTS``), what the trainer does now.

    python -m benchmarks.logprob_pass                      # CPU: Qwen2.5's vocabulary, a small model, ~2 minutes
    python -m benchmarks.logprob_pass --rows 8 --batch-width 2048 --own-width 1024 --hidden 896 --layers 24 \\
        --device cuda --out $OUT/logprob_pass.json         # Qwen2.5-0.5B's shape on a GPU

The model is built from a Qwen2 config with random weights (no hub), float32 as the trainer holds it. Reported per
way: the peak memory the pass adds (max RSS of its process on CPU, the CUDA allocator's peak on a GPU) over the
model and batch, the median time of ``--repeats`` passes after a warm-up, and the largest difference of its
log-probs on the rows' real tokens from the first way's (the three compute the same numbers).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

WAYS = ("batch width, one pass", "own width, one pass", "own width, chunked")


def build(args: argparse.Namespace) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """The model and a micro-batch of ``rows`` rows of ``own_width`` tokens, right padded to ``batch_width``."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.hidden * 4,
                         num_hidden_layers=args.layers, num_attention_heads=max(1, args.hidden // 64),
                         num_key_value_heads=max(1, args.hidden // 128), tie_word_embeddings=True)  # fmt: skip
    model = Qwen2ForCausalLM(config).to(args.device).train()
    ids = torch.zeros((args.rows, args.batch_width), dtype=torch.long, device=args.device)
    ids[:, : args.own_width] = torch.randint(0, args.vocab, (args.rows, args.own_width), device=args.device)
    attention = (torch.arange(args.batch_width, device=args.device) < args.own_width).long().expand_as(ids)
    return model, ids, attention.contiguous()


def peak_bytes(device: str) -> int:
    if device == "cuda":
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def one_way(args: argparse.Namespace) -> dict[str, float | str]:
    """Run one way in this process: its added peak, median time and log-probs on the real tokens."""
    from rl.algorithms.objective import LOGITS_CHUNK_ELEMENTS, token_logprobs

    way = WAYS[args.way]
    model, ids, attention = build(args)
    if way != WAYS[0]:
        ids, attention = ids[:, : args.own_width], attention[:, : args.own_width]
    chunk = LOGITS_CHUNK_ELEMENTS if way == WAYS[2] else 2**62
    if args.device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before, times = peak_bytes(args.device), []
    for _ in range(args.repeats + 1):
        model.zero_grad(set_to_none=True)
        started = time.perf_counter()
        logprobs, entropy = token_logprobs(model, ids, attention, 1.0, chunk)
        (logprobs.sum() + entropy.sum()).backward()
        if args.device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    real = logprobs[:, : args.own_width].detach().cpu()
    torch.save(real, args.logprobs)
    return {"way": way, "added_peak_gib": (peak_bytes(args.device) - before) / 2**30,
            "median_s": statistics.median(times[1:]), "chunk_elements": chunk if way == WAYS[2] else 0}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--vocab", type=int, default=151936, help="vocabulary (Qwen2.5's)")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--rows", type=int, default=4, help="rows in the micro-batch")
    parser.add_argument("--batch-width", type=int, default=1024, help="the batch's longest row")
    parser.add_argument("--own-width", type=int, default=512, help="the micro-batch's rows")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here too")
    parser.add_argument("--way", type=int, default=-1, help=argparse.SUPPRESS)  # a child process's way
    parser.add_argument("--logprobs", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not 0 < args.own_width <= args.batch_width:
        parser.error("--own-width must be from 1 to --batch-width")
    if args.way >= 0:
        print(json.dumps(one_way(args)))
        return
    rows, reference = [], None
    for way in range(len(WAYS)):
        lp = Path(f"/tmp/logprob_pass_{way}.pt")
        child = [sys.executable, "-m", "benchmarks.logprob_pass", *(argv or sys.argv[1:]), "--way", str(way),
                 "--logprobs", str(lp)]  # fmt: skip
        out = subprocess.run(child, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            sys.exit(f"error: {WAYS[way]}: {out.stderr.strip().splitlines()[-1]}")
        row = json.loads(out.stdout.strip().splitlines()[-1])
        values = torch.load(lp)
        reference = values if reference is None else reference
        row["max_abs_diff"] = float((values - reference).abs().max())
        rows.append(row)
        print(f"{row['way']:<24} peak +{row['added_peak_gib']:.2f} GiB  {row['median_s']:.2f} s  "
              f"max |dlogp| {row['max_abs_diff']:.1e}", flush=True)  # fmt: skip
    first, last = rows[0], rows[-1]
    print(f"now vs before: peak {last['added_peak_gib'] / first['added_peak_gib']:.2f}x, "
          f"time {last['median_s'] / first['median_s']:.2f}x")  # fmt: skip
    if args.out:
        settings = {k: v for k, v in vars(args).items() if k not in ("out", "way", "logprobs")}
        args.out.write_text(json.dumps({"settings": settings, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
