"""Triton kernels for the elementwise part of the fused reverse KL (``distill.losses.reverse_kl``) on CUDA.

The matmuls that make each vocabulary chunk's logits stay with cuBLAS; these kernels replace the torch
elementwise code between them, so each chunk of [N x Vc] logits is read once per pass instead of once per
torch op:

* ``stats_update``: one program per row folds a chunk of student and teacher logits into the row's running
  statistics (max and sum-exp of each model, and ``sum exp(z_s - m_s) (z_s - z_t)``), all in fp32;
* ``grad_logits``: ``coef_n * p_v ((z_s - lse_s) - (z_t - lse_t) - KL_n)`` written over the student chunk in
  place (its dtype: the input of the two gradient matmuls), so the backward allocates nothing per chunk.

``import triton`` is lazy (the module imports on a CPU-only box; the functions raise there).
"""

# pyright: reportInvalidTypeForm=false
# (Triton annotates compile-time parameters with `tl.constexpr`: no `from __future__ import annotations`.)

import importlib
from typing import Any

import torch

triton: Any = None
tl: Any = None
try:
    triton = importlib.import_module("triton")
    tl = importlib.import_module("triton.language")
except ImportError:  # pragma: no cover - depends on the box
    triton = tl = None


def _require_triton() -> None:
    if triton is None:
        raise RuntimeError(
            "the CUDA reverse-KL kernels need Triton (pip install triton); on CPU the torch path runs"
        )


if triton is not None:

    @triton.jit
    def _stats_kernel(zs_ptr, zt_ptr, stats_ptr, n_rows, n_cols, stride_s, stride_t, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        m_s = tl.load(stats_ptr + row)
        l_s = tl.load(stats_ptr + n_rows + row)
        m_t = tl.load(stats_ptr + 2 * n_rows + row)
        l_t = tl.load(stats_ptr + 3 * n_rows + row)
        acc = tl.load(stats_ptr + 4 * n_rows + row)
        for start in range(0, n_cols, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            ok = cols < n_cols
            zs = tl.load(zs_ptr + row * stride_s + cols, mask=ok, other=-float("inf")).to(tl.float32)
            zt = tl.load(zt_ptr + row * stride_t + cols, mask=ok, other=-float("inf")).to(tl.float32)
            new_ms = tl.maximum(m_s, tl.max(zs, 0))
            new_mt = tl.maximum(m_t, tl.max(zt, 0))
            e_s = tl.exp(zs - new_ms)
            scale_s = tl.exp(m_s - new_ms)
            diff = tl.where(ok, zs - zt, 0.0)
            acc = acc * scale_s + tl.sum(e_s * diff, 0)
            l_s = l_s * scale_s + tl.sum(e_s, 0)
            l_t = l_t * tl.exp(m_t - new_mt) + tl.sum(tl.exp(zt - new_mt), 0)
            m_s, m_t = new_ms, new_mt
        tl.store(stats_ptr + row, m_s)
        tl.store(stats_ptr + n_rows + row, l_s)
        tl.store(stats_ptr + 2 * n_rows + row, m_t)
        tl.store(stats_ptr + 3 * n_rows + row, l_t)
        tl.store(stats_ptr + 4 * n_rows + row, acc)

    @triton.jit
    def _grad_kernel(zs_ptr, zt_ptr, lse_s_ptr, lse_t_ptr, kl_ptr, coef_ptr, n_cols, stride_s, stride_t,
                     BLOCK: tl.constexpr):  # fmt: skip
        row = tl.program_id(0)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        ok = cols < n_cols
        lse_s = tl.load(lse_s_ptr + row)
        lse_t = tl.load(lse_t_ptr + row)
        kl = tl.load(kl_ptr + row)
        coef = tl.load(coef_ptr + row)
        logp = tl.load(zs_ptr + row * stride_s + cols, mask=ok, other=0.0).to(tl.float32) - lse_s
        logq = tl.load(zt_ptr + row * stride_t + cols, mask=ok, other=0.0).to(tl.float32) - lse_t
        g = coef * tl.exp(logp) * (logp - logq - kl)
        tl.store(zs_ptr + row * stride_s + cols, g.to(zs_ptr.dtype.element_ty), mask=ok)


def stats_update(zs: torch.Tensor, zt: torch.Tensor, stats: torch.Tensor) -> None:
    """Fold ``zs``/``zt`` [N, Vc] into ``stats`` [5, N] fp32 in place (see ``losses._torch_stats_update``)."""
    _require_triton()
    assert zs.stride(1) == 1 and zt.stride(1) == 1 and stats.is_contiguous()
    n, v = zs.shape
    if n:
        _stats_kernel[(n,)](zs, zt, stats, n, v, zs.stride(0), zt.stride(0), BLOCK=2048, num_warps=8)


def grad_logits(
    zs: torch.Tensor, zt: torch.Tensor, lse_s: torch.Tensor, lse_t: torch.Tensor, kl: torch.Tensor,
    coef_N: torch.Tensor,
) -> torch.Tensor:  # fmt: skip
    """``coef_n * p_v (d_v - KL_n)`` over ``zs`` in place; returns ``zs``."""
    _require_triton()
    assert zs.stride(1) == 1 and zt.stride(1) == 1
    n, v = zs.shape
    block = 2048
    if n:
        _grad_kernel[(n, triton.cdiv(v, block))](
            zs, zt, lse_s.contiguous(), lse_t.contiguous(), kl.contiguous(), coef_N.contiguous(), v,
            zs.stride(0), zt.stride(0), BLOCK=block, num_warps=8,
        )  # fmt: skip
    return zs
