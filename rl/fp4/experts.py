"""FP4 for MoE experts: the routed experts' weights of one layer, a 3-D tensor [E, N, K], quantized expert by
expert with blocks along K (DeepSeek-V4 puts FP4 on exactly these weights).

Each expert is quantized on its own: for MXFP4 that is what quantizing the stacked tensor does anyway (its scales
are per block); for NVFP4 it gives every expert its own FP32 tensor scale, so one expert with large weights does
not coarsen the others. The stacked result is the format's usual tensor type with ``shape`` (E, N, K) and, for
NVFP4, ``tensor_scale`` of shape [E]; ``expert(q, e)`` is expert e as an ordinary 2-D FP4 tensor (views, no copy),
which the dequantizer and the Triton W4A16 kernel take as they are.

``fake_quant_experts(w) == dequantize_experts(quantize_experts(w))`` bitwise: the trainer's QAT forward and the
rollout's packed experts multiply by the same weights.
"""

from __future__ import annotations

import torch

from rl.fp4.formats import FP4Tensor, dequantize, quantize
from rl.fp4.tensors import MXFP4Tensor, NVFP4Tensor


def quantize_experts(w: torch.Tensor, fmt: str) -> FP4Tensor:
    """``w`` [E, N, K] quantized expert by expert; codes and scales stacked along the expert axis."""
    if w.dim() != 3:
        raise ValueError(f"experts' weight must be [experts, out, in], got shape {tuple(w.shape)}")
    if fmt == "mxfp4":
        return quantize(w, fmt)  # per-block scales only: stacking changes nothing
    parts = [quantize(w[e], fmt) for e in range(w.shape[0])]
    if not all(isinstance(p, NVFP4Tensor) for p in parts):
        raise ValueError(f"unknown expert format {fmt!r}")
    return NVFP4Tensor(
        packed=torch.cat([p.packed for p in parts]),  # type: ignore[union-attr]
        block_scale_bits=torch.cat([p.block_scale_bits for p in parts]),  # type: ignore[union-attr]
        tensor_scale=torch.stack([p.tensor_scale for p in parts]),  # type: ignore[union-attr]
        shape=tuple(w.shape),
    )


def num_experts(q: FP4Tensor) -> int:
    return q.shape[0]


def expert(q: FP4Tensor, e: int) -> FP4Tensor:
    """Expert ``e`` of stacked experts as a 2-D FP4 tensor [N, K] (views of ``q``'s codes and scales)."""
    _, n, k = q.shape
    rows = slice(e * n, (e + 1) * n)
    if isinstance(q, MXFP4Tensor):
        return MXFP4Tensor(packed=q.packed[rows], scales=q.scales[rows], shape=(n, k))
    return NVFP4Tensor(packed=q.packed[rows], block_scale_bits=q.block_scale_bits[rows],
                       tensor_scale=q.tensor_scale[e], shape=(n, k))  # fmt: skip


def dequantize_experts(q: FP4Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[E, N, K] in ``dtype``: each expert dequantized as ``rl.fp4.formats.dequantize`` does a 2-D weight."""
    if isinstance(q, MXFP4Tensor):
        return dequantize(q, dtype)
    return torch.stack([dequantize(expert(q, e), dtype) for e in range(num_experts(q))])


def fake_quant_experts(w: torch.Tensor, fmt: str) -> torch.Tensor:
    """The QAT weight of stacked experts, in ``w.dtype``: what the packed rollout experts multiply by."""
    return dequantize_experts(quantize_experts(w, fmt), dtype=w.dtype)


def ste_fake_quant_experts(w: torch.Tensor, fmt: str) -> torch.Tensor:
    """``fake_quant_experts(w)`` in value, identity in gradient (the straight-through estimator, as for linears)."""
    return w + (fake_quant_experts(w.detach(), fmt) - w).detach()
