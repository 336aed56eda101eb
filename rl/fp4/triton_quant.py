"""MXFP4 quantization on the GPU in one pass: codes, E8M0 scales and (optionally) the fake-quantized weight.

``rl.fp4.formats.quantize_mxfp4`` is the reference: a chain of torch ops (bucketize twice, frexp, packing) plus
finiteness and code-range checks that each wait for the GPU. QAT runs it on every QAT linear at every forward
and the weight export runs it again, so on a 0.6B model it costs ~0.3 s a call. This kernel reads each weight
once and writes the packed codes, the scales and the bf16/fp32 ``dequant(quant(W))`` that the QAT forward
multiplies by -- bitwise what the reference gives (tested on GPU over random, tied and extreme inputs):

* scale (ceil rule): amax clamped to >= 6 * 2^-126; ``frexp`` read from the float32 bits (amax = m * 2^p,
  m in [0.5, 1)); exponent p - 2, one lower when m <= 0.75; biased into E8M0 [0, 254].
* codes: x / 2^(e-127) (an exact IEEE division) rounded to E2M1 by counting the midpoints passed, strictly
  where the tie goes to the even code below, inclusively where it goes to the even code above; sign only on
  non-zero codes; magnitudes capped where e >= 253 (see ``_saturate_to_finite``).

Unlike the reference, a non-finite weight is not a ValueError (that check needs a host sync): its block
gets scale byte 255 (NaN), so the fake-quantized block is NaN and the trainer's non-finite guard trips.
"""

# pyright: reportInvalidTypeForm=false

from typing import Any

import torch

from rl.fp4.tensors import MXFP4_BLOCK, MXFP4Tensor
from rl.fp4.triton_w4a16 import tl, triton, triton_available

if triton is not None:
    from rl.fp4.triton_w4a16 import _e2m1_f32

    @triton.jit
    def _e2m1_code(x):
        mag = tl.minimum(tl.abs(x), 6.0)
        code = (mag > 0.25).to(tl.int32) + (mag >= 0.75).to(tl.int32) + (mag > 1.25).to(tl.int32)
        code += (mag >= 1.75).to(tl.int32) + (mag > 2.5).to(tl.int32) + (mag >= 3.5).to(tl.int32)
        code += (mag > 5.0).to(tl.int32)
        return code | tl.where((x < 0) & (code > 0), 8, 0)

    @triton.jit
    def _per_byte(v, BLOCK_N: tl.constexpr, GROUPS: tl.constexpr):
        # [BLOCK_N, GROUPS] -> [BLOCK_N, GROUPS * 16]: each block's value on its 16 packed bytes
        return tl.reshape(tl.broadcast_to(v[:, :, None], (BLOCK_N, GROUPS, 16)), (BLOCK_N, GROUPS * 16))

    @triton.jit
    def _mxfp4_quant_kernel(
        w_ptr, packed_ptr, scales_ptr, fake_ptr, N, K,
        stride_w, stride_p, stride_s, stride_f,
        BLOCK_N: tl.constexpr, GROUPS: tl.constexpr, WRITE_FAKE: tl.constexpr,
    ):  # fmt: skip
        HALF: tl.constexpr = GROUPS * 16
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        j = tl.program_id(1) * HALF + tl.arange(0, HALF)  # packed byte = elements 2j (low) and 2j + 1 (high)
        mask = (rows < N)[:, None] & (j < K // 2)[None, :]
        src = w_ptr + rows[:, None].to(tl.int64) * stride_w + 2 * j[None, :]
        even = tl.load(src, mask=mask, other=0.0).to(tl.float32)
        odd = tl.load(src + 1, mask=mask, other=0.0).to(tl.float32)
        mag_e = tl.where(even == even, tl.abs(even), float("inf"))  # NaN counts as inf: the block goes NaN
        mag_o = tl.where(odd == odd, tl.abs(odd), float("inf"))
        amax = tl.maximum(
            tl.max(tl.reshape(mag_e, (BLOCK_N, GROUPS, 16)), axis=2),
            tl.max(tl.reshape(mag_o, (BLOCK_N, GROUPS, 16)), axis=2),
        )
        bits = tl.maximum(amax, 6.0 * 2.0**-126).to(tl.int32, bitcast=True)
        power = ((bits >> 23) & 0xFF) - 126  # amax = m * 2^power, m in [0.5, 1)
        exponent = power - 2 - tl.where((bits & 0x7FFFFF) <= 0x400000, 1, 0)  # m <= 0.75: one lower
        biased = tl.minimum(tl.maximum(exponent + 127, 0), 254)
        biased = tl.where(amax <= 3.4028234663852886e38, biased, 255)
        scale = tl.where(biased > 0, biased << 23, 1 << 22).to(tl.float32, bitcast=True)
        scale = tl.where(biased == 255, float("nan"), scale)
        scale_b = _per_byte(scale, BLOCK_N, GROUPS)
        cap_b = _per_byte(tl.where(biased >= 254, 3, tl.where(biased == 253, 5, 7)), BLOCK_N, GROUPS)
        code_e = _e2m1_code(tl.math.div_rn(even, scale_b))
        code_o = _e2m1_code(tl.math.div_rn(odd, scale_b))
        code_e = (code_e & 8) | tl.minimum(code_e & 7, cap_b)
        code_o = (code_o & 8) | tl.minimum(code_o & 7, cap_b)
        tl.store(packed_ptr + rows[:, None].to(tl.int64) * stride_p + j[None, :],
                 (code_e | (code_o << 4)).to(tl.uint8), mask=mask)  # fmt: skip
        g = tl.program_id(1) * GROUPS + tl.arange(0, GROUPS)
        smask = (rows < N)[:, None] & (g < K // 32)[None, :]
        tl.store(
            scales_ptr + rows[:, None].to(tl.int64) * stride_s + g[None, :], biased.to(tl.uint8), mask=smask
        )
        if WRITE_FAKE:
            dst = fake_ptr + rows[:, None].to(tl.int64) * stride_f + 2 * j[None, :]
            out_ty = fake_ptr.dtype.element_ty
            tl.store(dst, (_e2m1_f32(code_e) * scale_b).to(out_ty), mask=mask)
            tl.store(dst + 1, (_e2m1_f32(code_o) * scale_b).to(out_ty), mask=mask)


def usable(w: torch.Tensor, fmt: str) -> bool:
    """Whether the kernel handles this weight (MXFP4, on CUDA, Triton there, last dim a multiple of 32)."""
    return (
        fmt == "mxfp4"
        and w.is_cuda
        and w.dtype in (torch.float32, torch.bfloat16, torch.float16)
        and w.dim() >= 1
        and w.numel() > 0
        and w.shape[-1] % MXFP4_BLOCK == 0
        and triton_available()
    )


def mxfp4_quantize(w: torch.Tensor, fake: bool = False) -> tuple[MXFP4Tensor, torch.Tensor | None]:
    """``(quantize_mxfp4(w), dequantize(that, w.dtype) if fake)`` in one kernel launch."""
    if not usable(w, "mxfp4"):
        raise ValueError(
            f"mxfp4_quantize needs a CUDA float weight [..., K%32==0], got {w.dtype} {tuple(w.shape)}"
        )
    k = w.shape[-1]
    w_NK = w.detach().reshape(-1, k)
    if w_NK.stride(-1) != 1:
        w_NK = w_NK.contiguous()
    n = w_NK.shape[0]
    packed = torch.empty((n, k // 2), dtype=torch.uint8, device=w.device)
    scales = torch.empty((n, k // MXFP4_BLOCK), dtype=torch.uint8, device=w.device)
    out = torch.empty((n, k), dtype=w.dtype, device=w.device) if fake else packed
    block_n, groups = 16, 4
    grid = (-(-n // block_n), -(-k // (groups * MXFP4_BLOCK)))
    kernel: Any = _mxfp4_quant_kernel
    kernel[grid](w_NK, packed, scales, out, n, k, w_NK.stride(0), packed.stride(0), scales.stride(0),
                 out.stride(0), BLOCK_N=block_n, GROUPS=groups, WRITE_FAKE=fake)  # fmt: skip
    q = MXFP4Tensor(packed=packed, scales=scales, shape=tuple(w.shape))
    return q, out.view(w.shape) if fake else None
