"""FP4 W4A16 matmul vs bf16 ``F.linear`` in the decode regime (``python -m benchmarks.fp4_matmul``).

GPU mode: for each weight shape (N x K) and token count M, times the Triton kernel
(``rl.fp4.triton_w4a16.fp4_linear``) and bf16 ``F.linear`` in the same run: device time from CUDA-graph
replays (``triton.testing.do_bench_cudagraph`` medians, the two alternated over several rounds, the median of
the rounds kept; this is how decode engines launch), plus one eager ``do_bench`` median each (host launch
overhead included; at M=1 the Python/Triton launch path alone is ~40 us). Checks the kernel against
``F.linear(x, dequantize(q, bf16), bias)`` on fresh random inputs, prints a table and writes JSON.

``--cpu``: tiny shapes, the torch reference (dequantize + F.linear) against F.linear on a bf16 weight, on CPU
and without Triton, so that the script keeps running in CI. Takes a few seconds.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from rl.fp4.formats import dequantize, quantize

GPU_SHAPES = ((4096, 4096), (14336, 4096), (4096, 14336))  # (N, K)
GPU_MS = (1, 8, 32, 128)
CPU_SHAPES = ((256, 512), (512, 256))
CPU_MS = (1, 8)
REL_TOL = 1e-2  # max |out - ref| / max |ref|: bf16 matmul tolerance


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.float(), ref.float()
    if not bool(torch.isfinite(out).all()):
        return float("inf")
    return float((out - ref).abs().max() / ref.abs().max().clamp(min=1e-30))


def _weight(n: int, k: int, fmt: str, device: str, gen: torch.Generator) -> Any:
    w = torch.randn(n, k, generator=gen, device=device) * 0.02
    return quantize(w, fmt)


def _check_gpu(
    fn: Callable[..., torch.Tensor], q: Any, m: int, bias: torch.Tensor | None, seed: int
) -> float:
    """Relative error of ``fn(x, q, bias)`` vs the torch reference on a fresh random x."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(m, q.shape[1], generator=gen, device="cuda", dtype=torch.bfloat16)
    ref = F.linear(x, dequantize(q, torch.bfloat16), bias)
    return _rel_err(fn(x, q, bias), ref)


def run_gpu(fmt: str, rounds: int, shapes: tuple[tuple[int, int], ...], ms: tuple[int, ...]) -> list[dict]:
    import importlib

    testing: Any = importlib.import_module("triton.testing")

    from rl.fp4.triton_w4a16 import chosen_config, fp4_linear

    rows: list[dict] = []
    gen = torch.Generator(device="cuda").manual_seed(0)
    for n, k in shapes:
        q = _weight(n, k, fmt, "cuda", gen)
        w_bf16 = dequantize(q, torch.bfloat16)
        fp4_bytes = q.packed.numel() + (q.block_scale_bits if fmt == "nvfp4" else q.scales).numel()
        bf16_bytes = w_bf16.numel() * 2
        for m in ms:
            x = torch.randn(m, k, generator=gen, device="cuda", dtype=torch.bfloat16)
            fp4_linear(x, q)  # tunes and compiles
            # Device time: CUDA-graph replays (as a decode engine runs them), bf16 and fp4 alternated.
            t_bf, t_fp = [], []
            for _ in range(rounds):
                t_bf.append(
                    float(
                        testing.do_bench_cudagraph(
                            lambda x=x, w=w_bf16: F.linear(x, w), rep=50, return_mode="median"
                        )
                    )
                )
                t_fp.append(
                    float(
                        testing.do_bench_cudagraph(
                            lambda x=x, q=q: fp4_linear(x, q), rep=50, return_mode="median"
                        )
                    )
                )
            us_bf = statistics.median(t_bf) * 1e3
            us_fp = statistics.median(t_fp) * 1e3
            # Eager launches (host overhead included).
            eager_bf = (
                float(testing.do_bench(lambda x=x, w=w_bf16: F.linear(x, w), return_mode="median")) * 1e3
            )
            eager_fp = float(testing.do_bench(lambda x=x, q=q: fp4_linear(x, q), return_mode="median")) * 1e3
            errs = [_check_gpu(fp4_linear, q, m, None, seed=1000 * n + 10 * m + i) for i in range(2)]
            bias = torch.randn(n, generator=gen, device="cuda", dtype=torch.bfloat16)
            errs.append(_check_gpu(fp4_linear, q, m, bias, seed=7 + m))
            cfg = chosen_config(m, n, k, nvfp4=fmt == "nvfp4")
            rows.append(
                {
                    "fmt": fmt,
                    "N": n,
                    "K": k,
                    "M": m,
                    "bf16_us": us_bf,
                    "fp4_us": us_fp,
                    "speedup": us_bf / us_fp,
                    "bf16_weight_GBps": bf16_bytes / (us_bf * 1e-6) / 1e9,
                    "fp4_weight_GBps": fp4_bytes / (us_fp * 1e-6) / 1e9,
                    "bf16_eager_us": eager_bf,
                    "fp4_eager_us": eager_fp,
                    "max_rel_err": max(errs),
                    "correct": max(errs) < REL_TOL,
                    "config": None if cfg is None else cfg.__dict__,
                }
            )
            _print_row(rows[-1])
    return rows


def _time_cpu(fn: Callable[[], Any], reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def run_cpu(fmt: str, reps: int) -> list[dict]:
    rows: list[dict] = []
    gen = torch.Generator().manual_seed(0)
    for n, k in CPU_SHAPES:
        q = _weight(n, k, fmt, "cpu", gen)
        w_bf16 = dequantize(q, torch.bfloat16)
        for m in CPU_MS:
            x = torch.randn(m, k, generator=gen).to(torch.bfloat16)
            bias = torch.randn(n, generator=gen).to(torch.bfloat16)
            us_bf = _time_cpu(lambda x=x, w=w_bf16: F.linear(x, w), reps)
            us_fp = _time_cpu(lambda x=x, q=q: F.linear(x, dequantize(q, torch.bfloat16)), reps)
            out = F.linear(x, dequantize(q, torch.bfloat16), bias)
            ref = F.linear(x.double(), dequantize(q, torch.float64), bias.double())
            err = _rel_err(out, ref)
            fp4_bytes = q.packed.numel() + (q.block_scale_bits if fmt == "nvfp4" else q.scales).numel()
            rows.append(
                {
                    "fmt": fmt,
                    "N": n,
                    "K": k,
                    "M": m,
                    "bf16_us": us_bf,
                    "fp4_us": us_fp,
                    "speedup": us_bf / us_fp,
                    "bf16_weight_GBps": n * k * 2 / (us_bf * 1e-6) / 1e9,
                    "fp4_weight_GBps": fp4_bytes / (us_fp * 1e-6) / 1e9,
                    "bf16_eager_us": us_bf,
                    "fp4_eager_us": us_fp,
                    "max_rel_err": err,
                    "correct": err < REL_TOL,
                    "config": "torch reference (CPU)",
                }
            )
            _print_row(rows[-1])
    return rows


HEADER = (
    f"{'fmt':>5} {'N x K':>12} {'M':>4} {'bf16 us':>9} {'fp4 us':>9} {'speedup':>8} "
    f"{'bf16 GB/s':>10} {'fp4 GB/s':>9} {'rel err':>9} ok {'eager bf16/fp4 us':>18}"
)


def _print_row(r: dict) -> None:
    print(
        f"{r['fmt']:>5} {str(r['N']) + 'x' + str(r['K']):>12} {r['M']:>4} {r['bf16_us']:>9.1f} {r['fp4_us']:>9.1f} "
        f"{r['speedup']:>7.2f}x {r['bf16_weight_GBps']:>10.0f} {r['fp4_weight_GBps']:>9.0f} "
        f"{r['max_rel_err']:>9.2e} {r['correct']} {r['bf16_eager_us']:>8.1f}/{r['fp4_eager_us']:<8.1f}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", default="benchmarks/results/fp4_matmul.json")
    parser.add_argument(
        "--cpu", action="store_true", help="tiny shapes, torch reference only (no GPU/Triton)"
    )
    parser.add_argument("--fmt", default="mxfp4", choices=("mxfp4", "nvfp4", "both"))
    parser.add_argument("--rounds", type=int, default=5, help="alternating timing rounds per row (GPU)")
    parser.add_argument("--reps", type=int, default=20, help="timed calls per row (CPU)")
    parser.add_argument("--shapes", default=None, help="e.g. 4096x4096,14336x4096 (N x K; GPU)")
    parser.add_argument("--ms", default=None, help="e.g. 1,8,32,128 (GPU)")
    args = parser.parse_args(argv)
    fmts = ("mxfp4", "nvfp4") if args.fmt == "both" else (args.fmt,)

    print(HEADER, flush=True)
    rows: list[dict] = []
    if args.cpu:
        device = f"cpu ({platform.processor() or platform.machine()})"
        for fmt in fmts:
            rows += run_cpu(fmt, args.reps)
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: run with --cpu for the CPU-only smoke benchmark")
        device = torch.cuda.get_device_name()
        shapes: tuple[tuple[int, int], ...] = GPU_SHAPES
        if args.shapes:
            pairs = [s.split("x") for s in args.shapes.split(",")]
            shapes = tuple((int(a), int(b)) for a, b in pairs)
        ms = tuple(int(v) for v in args.ms.split(",")) if args.ms else GPU_MS
        for fmt in fmts:
            rows += run_gpu(fmt, args.rounds, shapes, ms)
    result = {
        "device": device,
        "torch": torch.__version__,
        "mode": "cpu" if args.cpu else "gpu",
        "rel_tol": REL_TOL,
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"device: {device}; wrote {out}")
    return 0 if all(r["correct"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
