"""The full-vocabulary OPD loss, forward + backward: the fused chunked loss against the naive one and Liger's.

    python -m benchmarks.opd_loss                                   # CPU smoke: small shapes, naive vs fused
    python -m benchmarks.opd_loss --tokens 8192 --hidden 1024 --vocab 151936 --dtype bfloat16 \\
        --impls naive,fused,liger --out $OUT/opd_loss.json         # the issue's shape, on a GPU

Every implementation gets the same inputs (student hidden states and head with gradient, teacher hidden states
and head without), computes the token-mean reverse KL ``KL(p_student || q_teacher)`` and backpropagates into the
student's hidden states and head. Per implementation: the median time of ``--repeats`` forward+backward calls
after one warm-up, and the peak memory the call allocates beyond its inputs (CUDA allocator; not measured on
CPU). The loss and gradients of each are compared with the fused loss's (relative error), so a fast wrong
kernel shows. ``liger`` is ``LigerFusedLinearJSD(jsd_beta=1)`` (Liger's reverse KL), CUDA only.
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from distill.config import LossOptions
from distill.losses import naive_reverse_kl, reverse_kl

Inputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def make_inputs(
    tokens: int, hidden: int, vocab: int, dtype: torch.dtype, device: str, seed: int = 0
) -> Inputs:
    """Hidden states like a final RMSNorm's output (unit scale) and heads at init scale, so logits are O(1)."""
    g = torch.Generator(device=device).manual_seed(seed)
    std = hidden**-0.5

    def rand(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=g, device=device) * scale).to(dtype)

    return (
        rand(tokens, hidden),
        rand(vocab, hidden, scale=std * 2),
        rand(tokens, hidden),
        rand(vocab, hidden, scale=std * 2),
    )


def run_naive(h_s, w_s, h_t, w_t) -> torch.Tensor:
    return naive_reverse_kl(
        h_s, w_s, h_t, w_t, torch.full((h_s.shape[0],), 1 / h_s.shape[0], device=h_s.device)
    )[0]


def run_fused(h_s, w_s, h_t, w_t, vocab_chunk: int = 0) -> torch.Tensor:
    weight = torch.full((h_s.shape[0],), 1 / h_s.shape[0], device=h_s.device)
    return reverse_kl(h_s, w_s, h_t, w_t, weight, options=LossOptions(vocab_chunk=vocab_chunk))[0]


def run_liger(h_s, w_s, h_t, w_t) -> torch.Tensor:
    liger = importlib.import_module("liger_kernel.transformers")  # GPU extra only
    return liger.LigerFusedLinearJSD(jsd_beta=1.0)(h_s, w_s, h_t, w_t, None)


IMPLS: dict[str, Callable[..., torch.Tensor]] = {"naive": run_naive, "fused": run_fused, "liger": run_liger}


def impl(name: str) -> Callable[..., torch.Tensor]:
    """``naive``, ``fused``, ``fused:<vocab chunk>``, ``liger``."""
    base, _, chunk = name.partition(":")
    if base not in IMPLS or (chunk and (base != "fused" or not chunk.isdigit())):
        raise ValueError(f"unknown implementation {name!r}; valid: {', '.join(IMPLS)}, fused:<vocab chunk>")
    return (lambda *a: run_fused(*a, vocab_chunk=int(chunk))) if chunk else IMPLS[base]


def one_call(fn: Callable[..., torch.Tensor], inputs: Inputs) -> tuple[torch.Tensor, list[torch.Tensor]]:
    h_s, w_s, h_t, w_t = inputs
    h_s, w_s = h_s.detach().requires_grad_(), w_s.detach().requires_grad_()
    loss = fn(h_s, w_s, h_t, w_t)
    loss.backward()
    assert h_s.grad is not None and w_s.grad is not None
    return loss.detach(), [h_s.grad, w_s.grad]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(name: str, inputs: Inputs, repeats: int, device: str) -> dict[str, Any]:
    fn = impl(name)
    one_call(fn, inputs)  # warm-up: kernels compiled, allocator primed
    times = []
    for _ in range(repeats):
        sync(device)
        started = time.perf_counter()
        out = one_call(fn, inputs)
        sync(device)
        times.append(time.perf_counter() - started)
        del out
    peak = None
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        loss, grads = one_call(fn, inputs)
        peak = (torch.cuda.max_memory_allocated() - base) / 2**30
    else:
        loss, grads = one_call(fn, inputs)
    return {
        "ms": 1000 * statistics.median(times),
        "peak_extra_gib": peak,
        "loss": loss.float(),
        "grads": grads,
    }


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument(
        "--impls", default="naive,fused", help="comma-separated: naive, fused, fused:<vocab chunk>, liger"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="", help="write the results as JSON here")
    args = parser.parse_args(argv)
    names = args.impls.split(",")
    for name in names:
        try:
            impl(name)
        except ValueError as exc:
            parser.error(str(exc))
    if "liger" in names and not args.device.startswith("cuda"):
        parser.error("liger needs CUDA (Triton kernels)")
    inputs = make_inputs(args.tokens, args.hidden, args.vocab, getattr(torch, args.dtype), args.device)
    results = {name: measure(name, inputs, args.repeats, args.device) for name in names}
    ref = results.get("fused") or results[names[0]]
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"OPD loss fwd+bwd, T={args.tokens} d={args.hidden} V={args.vocab} {args.dtype} on {device}")
    print(
        f"{'impl':8s} {'ms':>9s} {'peak extra GiB':>15s} {'loss':>10s} {'rel err loss / dh / dW vs fused':>34s}"
    )
    table = []
    for name, r in results.items():
        errors = [rel(r["loss"], ref["loss"])] + [
            rel(g, gr) for g, gr in zip(r["grads"], ref["grads"], strict=True)
        ]
        peak = "n/a" if r["peak_extra_gib"] is None else f"{r['peak_extra_gib']:.2f}"
        print(
            f"{name:8s} {r['ms']:9.1f} {peak:>15s} {r['loss'].item():10.5f} "
            + " / ".join(f"{e:.1e}" for e in errors)
        )
        table.append({"impl": name, "ms": r["ms"], "peak_extra_gib": r["peak_extra_gib"], "loss": r["loss"].item(),
                      "rel_err_vs_fused": errors})  # fmt: skip
    result = {"device": device, "tokens": args.tokens, "hidden": args.hidden, "vocab": args.vocab,
              "dtype": args.dtype, "repeats": args.repeats, "results": table}  # fmt: skip
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
