"""Weight-only FP4 (W4A16) linear for Hopper: packed FP4 codes dequantized in registers, bf16 MMA, fp32 accum.

Reference §7: sm90 has no FP4 tensor cores, so decode-time FP4 pays off through bytes, not FLOPs. The kernel
streams the packed uint8 codes (0.5 byte/weight) plus one scale byte per block, dequantizes each tile to bf16
in registers, exactly as ``rl.fp4.formats.dequantize`` does, and feeds ``tl.dot`` with an fp32 accumulator.

* MXFP4: E2M1 value built from the code bits as a float32 (sign | exponent | mantissa; code 1 = 0.5 is the one
  subnormal, special-cased), times 2^(e-127) built from its bits (e = 0 is the float32 subnormal 2^-127,
  e = 255 is NaN). Both products are exact in float32 and the cast to bf16 is exact, so the kernel's weight is
  bitwise the reference's ``dequantize(q, torch.bfloat16)``.
* NVFP4: E2M1 * E4M3 block scale (exact in float32) * FP32 tensor scale (one rounding), then bf16, the same
  order of operations as ``dequantize_nvfp4``.
* Tiles are "swapped": the MMA's row dimension runs over the output features N (large) and its column
  dimension over the tokens M (1..128, padded to >= 16), the usual trick for skinny decode matmuls.
  Split-K (fp32 atomics) keeps the SMs busy when N / BLOCK_N is small.
* A small tuner times a handful of configs per (M bucket, N, K, format) on first use and keeps its choice in
  ``$DISTILLERY_CACHE/triton_w4a16/<gpu>-triton<version>.json``, so that the next process (every job stage,
  every teacher served for evaluation) starts tuned.

``import triton`` happens lazily, so this module imports on a CPU-only box; ``fp4_linear`` raises a clear
error there.
"""

# pyright: reportInvalidTypeForm=false
# (Triton kernels annotate their compile-time parameters with `tl.constexpr`; no `from __future__ import
# annotations` here, so that Triton sees real annotation objects.)

import dataclasses
import importlib
import json
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rl.cache import cache_dir
from rl.fp4.tensors import MXFP4_BLOCK, NVFP4_BLOCK, MXFP4Tensor, NVFP4Tensor


@dataclass(frozen=True)
class KernelConfig:
    """Launch parameters of the W4A16 kernel."""

    block_m: int
    block_n: int
    block_k: int  # unpacked K elements per iteration (a multiple of the format's block size)
    split_k: int
    num_warps: int
    num_stages: int
    two_dots: bool = False  # even/odd K split into two dots (no in-register interleave of the weight)


# Guarded: the module must import on CPU-only boxes without Triton (Triton's API is untyped: Any).
triton: Any = None
tl: Any = None
_TRITON_IMPORT_ERROR: ImportError | None = None
try:
    triton = importlib.import_module("triton")
    tl = importlib.import_module("triton.language")
    importlib.import_module("triton.testing")
except ImportError as _exc:  # pragma: no cover - depends on the box
    triton, tl, _TRITON_IMPORT_ERROR = None, None, _exc


def triton_available() -> bool:
    """True when Triton imports and a CUDA device is visible."""
    return triton is not None and torch.cuda.is_available()


if triton is not None:

    @triton.jit
    def _e2m1_f32(code):
        # code: int32 in 0..15. Magnitude codes 2..7 are normal E2M1 numbers: placing the 3 magnitude bits at
        # float32 bit 22 and adding exponent 126 gives (1 + m/2) * 2^(e-1); code 1 (0.5) is subnormal.
        mag = code & 7
        bits = tl.where(mag > 1, (mag << 22) + 0x3F000000, mag * 0x3F000000)
        bits = bits | ((code & 8) << 28)
        return bits.to(tl.float32, bitcast=True)

    @triton.jit
    def _w4a16_kernel(
        x_ptr,
        wq_ptr,
        ws_ptr,
        bias_ptr,
        out_ptr,
        tensor_scale_ptr,
        M,
        N,
        K,
        stride_xm,
        stride_xk,
        stride_wn,
        stride_sn,
        stride_om,
        stride_on,
        IS_NVFP4: tl.constexpr,
        HAS_BIAS: tl.constexpr,
        ATOMIC: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
        SPLIT_K: tl.constexpr,
        SB: tl.constexpr,  # elements per scale block: 32 (MXFP4) or 16 (NVFP4)
        HALF: tl.constexpr,  # BLOCK_K // 2: packed bytes per row per iteration
        GROUPS: tl.constexpr,  # BLOCK_K // SB: scales per row per iteration
        SB_HALF: tl.constexpr,  # SB // 2: packed bytes per scale
        TWO_DOTS: tl.constexpr,  # variant: two half-K dots on even/odd x instead of interleaving the weight
    ):
        pid_n = tl.program_id(0)
        pid_m = tl.program_id(1)
        pid_k = tl.program_id(2)

        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_j = tl.arange(0, HALF)
        offs_g = tl.arange(0, GROUPS)
        offs_k = tl.arange(0, BLOCK_K)
        n_mask = offs_n < N
        m_mask = offs_m < M
        k_half = K // 2
        n_groups = K // SB

        k_tiles = tl.cdiv(K, BLOCK_K)
        per_split = tl.cdiv(k_tiles, SPLIT_K)
        kt_start = pid_k * per_split
        kt_end = tl.minimum(kt_start + per_split, k_tiles)

        wq_rows = wq_ptr + offs_n[:, None].to(tl.int64) * stride_wn
        ws_rows = ws_ptr + offs_n[:, None].to(tl.int64) * stride_sn
        x_cols = x_ptr + offs_m[None, :].to(tl.int64) * stride_xm  # M * K can pass 2**31 (a long prefill)
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
        for kt in range(kt_start, kt_end):
            j = kt * HALF + offs_j
            wb = tl.load(wq_rows + j[None, :], mask=n_mask[:, None] & (j < k_half)[None, :], other=0)
            if TWO_DOTS:
                # Scale of each byte gathered straight from memory (L1 hits), no register reshuffle.
                g2 = kt * GROUPS + offs_j // SB_HALF
                sc = tl.load(ws_rows + g2[None, :], mask=n_mask[:, None] & (g2 < n_groups)[None, :], other=0)
            else:
                g = kt * GROUPS + offs_g
                sc = tl.load(ws_rows + g[None, :], mask=n_mask[:, None] & (g < n_groups)[None, :], other=0)
            if IS_NVFP4:
                s = sc.to(tl.float8e4nv, bitcast=True).to(tl.float32)
            else:
                e = sc.to(tl.int32)
                sbits = tl.where(e > 0, e << 23, 1 << 22)
                sbits = tl.where(e == 255, 0x7FC00000, sbits)
                s = sbits.to(tl.float32, bitcast=True)
            if not TWO_DOTS:
                s = tl.reshape(tl.broadcast_to(s[:, :, None], (BLOCK_N, GROUPS, SB_HALF)), (BLOCK_N, HALF))
            w = wb.to(tl.int32)
            lo = _e2m1_f32(w & 0xF) * s
            hi = _e2m1_f32(w >> 4) * s
            if IS_NVFP4:
                ts = tl.load(tensor_scale_ptr)
                lo = lo * ts
                hi = hi * ts
            if TWO_DOTS:
                # Even K elements (low nibbles) against x[:, 0::2], odd ones against x[:, 1::2].
                k_even = kt * BLOCK_K + 2 * offs_j
                x_mask = (k_even < K)[:, None] & m_mask[None, :]
                x_even = tl.load(x_cols + k_even[:, None] * stride_xk, mask=x_mask, other=0.0)
                x_odd = tl.load(x_cols + (k_even + 1)[:, None] * stride_xk, mask=x_mask, other=0.0)
                acc = tl.dot(lo.to(tl.bfloat16), x_even, acc)
                acc = tl.dot(hi.to(tl.bfloat16), x_odd, acc)
            else:
                # Element 2i is the low nibble: interleave (lo, hi) along K.
                w_tile = tl.reshape(tl.join(lo.to(tl.bfloat16), hi.to(tl.bfloat16)), (BLOCK_N, BLOCK_K))
                k = kt * BLOCK_K + offs_k
                x_tile = tl.load(
                    x_cols + k[:, None] * stride_xk, mask=(k < K)[:, None] & m_mask[None, :], other=0.0
                )
                acc = tl.dot(w_tile, x_tile, acc)

        out_ptrs = out_ptr + offs_m[None, :].to(tl.int64) * stride_om + offs_n[:, None] * stride_on
        mask = n_mask[:, None] & m_mask[None, :]
        if ATOMIC:
            tl.atomic_add(out_ptrs, acc, mask=mask, sem="relaxed")
        else:
            if HAS_BIAS:
                acc += tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[:, None]
            tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask)


def _kernel() -> Any:
    if triton is None:
        raise RuntimeError(
            "fp4_linear needs Triton and a CUDA GPU; on CPU use "
            "F.linear(x, rl.fp4.formats.dequantize(q, x.dtype), bias) instead"
        ) from _TRITON_IMPORT_ERROR
    return _w4a16_kernel


def _launch(x: torch.Tensor, q: MXFP4Tensor | NVFP4Tensor, bias: torch.Tensor | None, cfg: KernelConfig):
    m, k = x.shape
    n = q.packed.shape[0]
    is_nv = isinstance(q, NVFP4Tensor)
    scales = q.block_scale_bits if is_nv else q.scales
    atomic = cfg.split_k > 1
    sb = NVFP4_BLOCK if is_nv else MXFP4_BLOCK
    if cfg.block_k % sb:
        raise ValueError(f"block_k={cfg.block_k} is not a multiple of the scale block {sb}")
    out = torch.zeros((m, n), device=x.device, dtype=torch.float32) if atomic else x.new_empty((m, n))
    ts = q.tensor_scale.to(device=x.device, dtype=torch.float32).reshape(1) if is_nv else out
    grid = (
        (n + cfg.block_n - 1) // cfg.block_n,
        (m + cfg.block_m - 1) // cfg.block_m,
        cfg.split_k,
    )
    _kernel()[grid](
        x,
        q.packed,
        scales,
        bias if bias is not None else out,
        out,
        ts,
        m,
        n,
        k,
        x.stride(0),
        x.stride(1),
        q.packed.stride(0),
        scales.stride(0),
        out.stride(0),
        out.stride(1),
        IS_NVFP4=is_nv,
        HAS_BIAS=bias is not None,
        ATOMIC=atomic,
        BLOCK_M=cfg.block_m,
        BLOCK_N=cfg.block_n,
        BLOCK_K=cfg.block_k,
        SPLIT_K=cfg.split_k,
        SB=sb,
        HALF=cfg.block_k // 2,
        GROUPS=cfg.block_k // sb,
        SB_HALF=sb // 2,
        TWO_DOTS=cfg.two_dots,
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )
    if atomic:
        if bias is not None:
            out += bias.float()
        return out.to(x.dtype)
    return out


def _m_bucket(m: int) -> int:
    return max(16, min(128, 1 << (m - 1).bit_length()))


def candidate_configs(m: int, n: int, k: int) -> list[KernelConfig]:
    """Configs the tuner tries for an [m, k] x [n, k]^T product."""
    bm = min(_m_bucket(m), 64)
    out: list[KernelConfig] = []
    if m <= 32:
        for bn, bk, warps, stages in ((64, 128, 4, 4), (32, 256, 4, 4), (64, 256, 4, 3)):
            for split in (1, 2, 4):
                tiles_n = (n + bn - 1) // bn
                if split > 1 and tiles_n * split > 8 * 132:
                    continue
                for two in (False, True):
                    out.append(KernelConfig(bm, bn, bk, split, warps, stages, two))
    else:
        for bm, bn, bk, warps, stages in (
            (64, 64, 128, 4, 4),
            (64, 128, 128, 8, 3),
            (128, 64, 128, 8, 3),
            (128, 128, 64, 8, 3),
        ):
            for split in (1, 2, 4):
                for two in (False, True):
                    out.append(KernelConfig(bm, bn, bk, split, warps, stages, two))
    return list(dict.fromkeys(out))


TuneKey = tuple[int, int, int, bool, bool]  # (M bucket, N, K, nvfp4, bias)
_TUNED: dict[TuneKey, KernelConfig] = {}
_SAVED: dict[str, KernelConfig] | None = None  # the tuning file's configs, read on the first miss


def tuning_file(device: torch.device | None = None) -> Path:
    """Where the tuner's choices are kept between processes: one JSON file per GPU model and Triton version."""
    name = torch.cuda.get_device_name(device) if torch.cuda.is_available() else "cpu"
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    version = getattr(triton, "__version__", "none")
    return cache_dir() / "triton_w4a16" / f"{slug}-triton{version}.json"


def key_text(key: TuneKey) -> str:
    """A tuning key as the file writes it, e.g. ``m64-n4864-k896-nvfp4-bias``."""
    m, n, k, nvfp4, bias = key
    return f"m{m}-n{n}-k{k}-{'nvfp4' if nvfp4 else 'mxfp4'}" + ("-bias" if bias else "")


def read_tunings(path: Path) -> dict[str, KernelConfig]:
    """The configs a tuning file holds; a missing, unreadable or foreign file holds none (the tuner times
    again), as does any entry that is not a KernelConfig."""
    try:
        raw = json.loads(path.read_text())
        entries = raw["configs"] if isinstance(raw, dict) and raw.get("version") == 1 else {}
    except (OSError, ValueError, KeyError):
        return {}
    out = {}
    for key, fields in entries.items() if isinstance(entries, dict) else ():
        try:
            config = KernelConfig(**fields)
        except TypeError:
            continue
        if all(isinstance(v, int) for v in dataclasses.astuple(config)):
            out[key] = config
    return out


def write_tunings(path: Path, new: dict[str, KernelConfig]) -> None:
    """Merge ``new`` into the file (another process may have added its own) and replace it atomically; a file
    that cannot be written costs a warning, not the run."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        merged = read_tunings(path) | new
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        body = {"version": 1, "configs": {k: dataclasses.asdict(merged[k]) for k in sorted(merged)}}
        tmp.write_text(json.dumps(body, indent=1) + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        warnings.warn(f"W4A16 kernel tuning not saved to {path}: {exc}", stacklevel=2)


def _saved_or_tuned(key: TuneKey, x: torch.Tensor, q: MXFP4Tensor | NVFP4Tensor,
                    bias: torch.Tensor | None) -> KernelConfig:  # fmt: skip
    """The tuning file's config for ``key``, else a fresh tuning, which is saved."""
    global _SAVED
    path = tuning_file(x.device)
    if _SAVED is None:
        _SAVED = read_tunings(path)
    text = key_text(key)
    if (config := _SAVED.get(text)) is not None:
        return config
    config = _SAVED[text] = _tune(x, q, bias)
    write_tunings(path, {text: config})
    return config


def _bench(fn: Any) -> float:
    """Median device time (ms) of ``fn``: CUDA-graph replays, so host launch overhead does not count."""
    fn()  # compile outside the capture
    try:
        return float(triton.testing.do_bench_cudagraph(fn, rep=20, return_mode="median"))
    except Exception:
        return float(triton.testing.do_bench(fn, warmup=5, rep=20, return_mode="median"))


def _tune(x: torch.Tensor, q: MXFP4Tensor | NVFP4Tensor, bias: torch.Tensor | None) -> KernelConfig:
    m, k = x.shape
    n = q.packed.shape[0]
    best: tuple[float, KernelConfig] | None = None
    last_error: Exception | None = None
    for cfg in candidate_configs(m, n, k):
        try:
            t = _bench(lambda c=cfg: _launch(x, q, bias, c))
        except Exception as exc:
            last_error = exc
            continue
        if best is None or t < best[0]:
            best = (t, cfg)
    if best is None:
        raise RuntimeError(f"no W4A16 kernel config compiled for M={m} N={n} K={k}") from last_error
    return best[1]


def chosen_config(m: int, n: int, k: int, nvfp4: bool = False, bias: bool = False) -> KernelConfig | None:
    """The config the tuner picked for this problem (None if not tuned yet)."""
    return _TUNED.get((_m_bucket(m), n, k, nvfp4, bias))


def fp4_linear(
    x: torch.Tensor,
    q: MXFP4Tensor | NVFP4Tensor,
    bias: torch.Tensor | None = None,
    config: KernelConfig | None = None,
) -> torch.Tensor:
    """``x @ dequantize(q).T (+ bias)`` with a Triton W4A16 kernel; x is bf16/fp16 [..., K] on CUDA.

    ``q`` is an MXFP4Tensor or NVFP4Tensor of a 2-D weight [N, K] on the same device. ``config`` forces a launch
    config; otherwise the first call per (M bucket, N, K) takes the tuning file's config or times the candidates
    and keeps the fastest (in the process and in the file).
    """
    if not isinstance(q, MXFP4Tensor | NVFP4Tensor):
        raise TypeError(f"fp4_linear expects an MXFP4Tensor or NVFP4Tensor, got {type(q).__name__}")
    if not x.is_cuda or not triton_available():
        raise RuntimeError(
            "fp4_linear needs a CUDA tensor and Triton; on CPU use "
            "F.linear(x, rl.fp4.formats.dequantize(q, x.dtype), bias) (the torch reference)"
        )
    if x.dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"fp4_linear: x must be bf16 or fp16, got {x.dtype}")
    if len(q.shape) != 2:
        raise ValueError(f"fp4_linear: weight must be 2-D [N, K], got shape {q.shape}")
    n, k = q.shape
    block = NVFP4_BLOCK if isinstance(q, NVFP4Tensor) else MXFP4_BLOCK
    if x.shape[-1] != k or k % block:
        raise ValueError(f"fp4_linear: x [..., {x.shape[-1]}] does not match weight [N={n}, K={k}]")
    if q.packed.device != x.device:
        raise ValueError(f"fp4_linear: weight on {q.packed.device}, x on {x.device}")
    for name in ("packed", "block_scale_bits" if isinstance(q, NVFP4Tensor) else "scales"):
        if getattr(q, name).stride(-1) != 1:
            raise ValueError(f"fp4_linear: q.{name} must be contiguous along K")
    if bias is not None and bias.shape != (n,):
        raise ValueError(f"fp4_linear: bias shape {tuple(bias.shape)} != ({n},)")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, k)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    m = x2.shape[0]
    if m == 0:
        return x.new_zeros((*lead, n))
    if config is None:
        key = (_m_bucket(m), n, k, isinstance(q, NVFP4Tensor), bias is not None)
        config = _TUNED.get(key)
        if config is None:
            config = _TUNED[key] = _saved_or_tuned(key, x2, q, bias)
    return _launch(x2, q, bias, config).reshape(*lead, n)
