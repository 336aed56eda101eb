"""FP4 weight formats: E2M1 elements with MXFP4 (E8M0 block scales) or NVFP4 (E4M3 block scales + FP32 scale).

Reference §1.5 (DeepSeek-V4 kernel), §6.1-6.3 (formats), §8.3 (QAT fake-quant).

* E2M1 codes 0..7 are {0, 0.5, 1, 1.5, 2, 3, 4, 6}; bit 3 is the sign. Rounding is to nearest, ties to the
  even code; a value that rounds to zero gets code 0 (+0), never code 8 (-0), whatever its sign.
* Packing: two codes per byte along the last axis, element 2i in the low nibble, 2i+1 in the high nibble.
* Blocks run along the last (input / reduction) axis: 32 elements for MXFP4, 16 for NVFP4. A weight whose last
  dim is not a multiple of the block is refused (no implicit padding): the caller keeps such layers in high
  precision. Leading dims are flattened, so ``packed`` is [N, K/2] with N = prod(shape[:-1]).
* Quantization runs in float32. ``fake_quant(w) = dequantize(quantize(w))`` is the one function both the trainer
  (QAT forward) and the rollout export use, so their weights agree bitwise; it is idempotent bitwise.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from rl.fp4.tensors import MXFP4_BLOCK, NVFP4_BLOCK, MXFP4Tensor, NVFP4Tensor

ScaleRule = Literal["ceil", "floor"]

E2M1_MAX = 6.0
# Value of each 4-bit code; code 8 is -0.0 (never produced by ``round_to_e2m1``, but decodable).
E2M1_VALUES = torch.tensor(
    [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0],
    dtype=torch.float32,
)
# Midpoints between neighbouring magnitudes. Above an even code a tie stays on it (the lower code); above an
# odd code a tie moves up to the next (even) code.
_MIDPOINTS_ABOVE_EVEN = (0.25, 1.25, 2.5, 5.0)  # between codes 0|1, 2|3, 4|5, 6|7
_MIDPOINTS_ABOVE_ODD = (0.75, 1.75, 3.5)  # between codes 1|2, 3|4, 5|6

E8M0_BIAS = 127
E8M0_MAX_EXP = 254  # 255 encodes NaN
E4M3_MAX = 448.0
E4M3_TINY = 2.0**-6  # smallest normal E4M3: the floor of an NVFP4 block scale, as in torchao
_F32_TINY = 2.0**-126  # smallest normal float32
_CEIL_AMAX_FLOOR = 6.0 * 2.0**-126  # DeepSeek-V4's clamp: an all-zero block gets scale 2^-126


# ---------------------------------------------------------------------------------------------------------------
# E2M1 elements and nibble packing


def round_to_e2m1(x: torch.Tensor) -> torch.Tensor:
    """Codes (uint8, same shape) of the E2M1 values nearest to ``x``, ties to the even code.

    ``x`` is already scaled; magnitudes beyond 6 (including +-inf) clamp to +-6. Anything that rounds to 0
    (-0.0, -0.1, -0.25) gets code 0, so a dequantized zero is always +0.0 whatever the input's sign. NaN is
    a ValueError. Exact in any float dtype: only comparisons against the midpoints, no arithmetic.
    """
    if not x.is_floating_point():
        raise ValueError(f"round_to_e2m1 needs a floating-point tensor, got {x.dtype}")
    if torch.isnan(x).any():
        raise ValueError("round_to_e2m1: NaN in input")
    return _e2m1_codes(x)


def _e2m1_codes(x: torch.Tensor) -> torch.Tensor:
    magnitude = x.abs().clamp(max=E2M1_MAX)
    above_even = torch.tensor(_MIDPOINTS_ABOVE_EVEN, dtype=x.dtype, device=x.device)
    above_odd = torch.tensor(_MIDPOINTS_ABOVE_ODD, dtype=x.dtype, device=x.device)
    # Code = number of midpoints passed: strictly (right=False) where ties stay down, inclusively where they go up.
    code = torch.bucketize(magnitude, above_even, right=False, out_int32=True)
    code += torch.bucketize(magnitude, above_odd, right=True, out_int32=True)
    sign_bit = ((x < 0) & (code > 0)).to(torch.int32) << 3
    return (code | sign_bit).to(torch.uint8)


def e2m1_to_float(codes: torch.Tensor) -> torch.Tensor:
    """Float32 values of uint8 E2M1 codes (0..15)."""
    _check_codes(codes)
    return _e2m1_table(codes.device)[codes.long()]


def _decode_packed(packed: torch.Tensor) -> torch.Tensor:
    """Float32 values of packed E2M1 bytes [..., K/2] -> [..., K], without ``e2m1_to_float``'s check.

    Every nibble is a valid code by construction, and the check (``codes.max()`` read on the host) would be a
    device sync: inside a CUDA-graph capture (the static decoder's packed linears) it invalidates the capture.
    """
    return _e2m1_table(packed.device)[unpack_nibbles(packed).long()]


_E2M1_TABLES: dict[torch.device, torch.Tensor] = {}


def _e2m1_table(device: torch.device) -> torch.Tensor:
    """``E2M1_VALUES`` on ``device``, copied once: a pageable host->device copy cannot run inside a capture
    (the static decoder warms up, which fills this, before it captures)."""
    table = _E2M1_TABLES.get(device)
    if table is None:
        table = _E2M1_TABLES[device] = E2M1_VALUES.to(device)
    return table


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """uint8 codes [..., K] -> bytes [..., K/2]; element 2i in the low nibble, 2i+1 in the high nibble."""
    _check_codes(codes)
    if codes.dim() == 0 or codes.shape[-1] % 2:
        raise ValueError(f"pack_nibbles needs an even last dim, got shape {tuple(codes.shape)}")
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """Bytes [..., K/2] -> uint8 codes [..., K] (inverse of ``pack_nibbles``)."""
    if packed.dtype != torch.uint8 or packed.dim() == 0:
        raise ValueError(
            f"unpack_nibbles needs a uint8 tensor with >= 1 dim, got {packed.dtype} {tuple(packed.shape)}"
        )
    low, high = packed & 0x0F, packed >> 4
    return torch.stack((low, high), dim=-1).reshape(*packed.shape[:-1], 2 * packed.shape[-1])


def _check_codes(codes: torch.Tensor) -> None:
    if codes.dtype != torch.uint8:
        raise ValueError(f"E2M1 codes must be uint8, got {codes.dtype}")
    if codes.numel() and int(codes.max()) > 15:
        raise ValueError(f"E2M1 codes must be 0..15, got max {int(codes.max())}")


# ---------------------------------------------------------------------------------------------------------------
# MXFP4: 32 E2M1 codes share one E8M0 scale 2^(e - 127), e stored as a uint8


def quantize_mxfp4(w: torch.Tensor, scale_rule: ScaleRule = "ceil") -> MXFP4Tensor:
    """Quantize ``w`` [..., K] to MXFP4 with 32-element blocks along the last axis.

    ``scale_rule="ceil"`` (default; DeepSeek-V4 ``fp4_quant_kernel``, torchao RCEIL): scale = 2^ceil(log2(amax/6))
    with amax clamped to >= 6*2^-126, so |x|/scale <= 6 and nothing is ever clipped.
    ``scale_rule="floor"`` (OCP MX spec): scale = 2^(floor(log2 amax) - 2); a block max in (6s, 8s) clips to 6s.
    Exponents come from ``torch.frexp`` (exact, also at powers of two) and are clamped to E8M0's [0, 254].
    Near float32's top a rounded-up code would dequantize to inf (4 * 2^126 = 2^128), so codes saturate at the
    largest finite value: with scale 2^126 (only the ceil rule, amax > 3 * 2^126 ~ 2.55e38) magnitudes cap at 3.
    """
    w_NK = _check_weight(w, MXFP4_BLOCK, "MXFP4")
    n_rows, k = w_NK.shape
    w_NBk = w_NK.view(n_rows, k // MXFP4_BLOCK, MXFP4_BLOCK)
    exponent_NB = _mx_exponent(w_NBk.abs().amax(dim=-1), scale_rule)
    biased_NB = (exponent_NB + E8M0_BIAS).clamp(0, E8M0_MAX_EXP)
    # Division by a power of two is exact, so the only rounding is E2M1's.
    codes_NBk = _e2m1_codes(w_NBk / _e8m0_to_float(biased_NB).unsqueeze(-1))
    codes_NBk = _saturate_to_finite(codes_NBk, biased_NB)
    return MXFP4Tensor(
        packed=pack_nibbles(codes_NBk.view(n_rows, k)),
        scales=biased_NB.to(torch.uint8),
        shape=tuple(w.shape),
    )


def dequantize_mxfp4(q: MXFP4Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Weight of shape ``q.shape``: E2M1 value * 2^(e - 127), computed in float32 (exactly), then cast."""
    values_NK = _decode_packed(q.packed)
    n_rows, k = values_NK.shape
    scale_NB1 = _e8m0_to_float(q.scales.to(torch.int32)).unsqueeze(-1)
    values_NBk = values_NK.view(n_rows, k // MXFP4_BLOCK, MXFP4_BLOCK) * scale_NB1
    return values_NBk.reshape(q.shape).to(dtype)


def fake_quant_mxfp4(w: torch.Tensor, scale_rule: ScaleRule = "ceil") -> torch.Tensor:
    """``dequantize(quantize(w))`` in float32, cast to ``w.dtype``.

    For bf16 weights the cast is exact: an E2M1 value (<= 2 significant bits) times 2^(e-127) fits bf16's
    8-bit significand and, for e in [0, 254], bf16's exponent range (down to its subnormals, 2^-133).
    """
    return dequantize_mxfp4(quantize_mxfp4(w, scale_rule), dtype=w.dtype)


def _mx_exponent(amax: torch.Tensor, scale_rule: str) -> torch.Tensor:
    """Unbiased int32 scale exponent of each block from its max magnitude (float32)."""
    if scale_rule == "ceil":
        # amax = m * 2^p with m in [0.5, 1): 6 * 2^(p-3) < amax <= 6 * 2^(p-2) unless m <= 0.75, then one lower.
        mantissa, power = torch.frexp(amax.clamp(min=_CEIL_AMAX_FLOOR))
        return power - 2 - (mantissa <= 0.75).to(torch.int32)
    if scale_rule == "floor":
        # floor(log2 amax) = p - 1; the clamp only gives zero blocks a defined (then clamped) exponent.
        _, power = torch.frexp(amax.clamp(min=_F32_TINY))
        return power - 3
    raise ValueError(f"unknown MXFP4 scale_rule {scale_rule!r}; valid: 'ceil', 'floor'")


def _e8m0_to_float(biased: torch.Tensor) -> torch.Tensor:
    """2^(e - 127) in float32, built from its bits (exact; e = 0 is the subnormal 2^-127, e = 255 is NaN)."""
    biased = biased.to(torch.int32)
    bits = torch.where(biased > 0, biased << 23, torch.full_like(biased, 1 << 22))
    return torch.where(biased == 255, torch.nan, bits.view(torch.float32))


def _saturate_to_finite(codes: torch.Tensor, biased_NB: torch.Tensor) -> torch.Tensor:
    """Cap code magnitudes so that value * 2^(e - 127) stays below float32's max (only matters for e >= 253)."""
    # 6 * 2^125 is finite; 4 * 2^126 and 2 * 2^127 are not: largest finite magnitude codes are 5 (3.0), 3 (1.5).
    max_magnitude_NB = torch.where(biased_NB >= 254, 3, torch.where(biased_NB == 253, 5, 7)).to(torch.uint8)
    magnitude = torch.minimum(codes & 0x07, max_magnitude_NB.unsqueeze(-1))
    return (codes & 0x08) | magnitude


# ---------------------------------------------------------------------------------------------------------------
# NVFP4: 16 E2M1 codes share one E4M3 scale, times one FP32 scale per tensor (torchao nvfp4_tensor.py recipe)


def quantize_nvfp4(w: torch.Tensor) -> NVFP4Tensor:
    """Quantize ``w`` [..., K] to NVFP4 with 16-element blocks along the last axis (reference §6.3).

    s_tensor = amax(|W|) / (448 * 6) (1.0 for an all-zero W); s_blk = e4m3(clamp(amax_blk / 6 / s_tensor,
    2^-6, 448)); q = E2M1(clamp(x / (s_tensor * s_blk), -6, 6)). An all-zero block gets s_blk = 2^-6 and codes 0.
    s_tensor is floored at 2^-126 (torchao has no floor; below amax ~ 3.2e-35 it would go subnormal, then 0).
    Fake-quant is idempotent bitwise: re-quantizing finds the same s_tensor (its largest value is
    fl(2688 * s_tensor), and fl(fl(2688 * fl(a / 2688)) / 2688) == fl(a / 2688) for every float32 a, checked
    exhaustively in the tests), the same block scales and the same codes.
    """
    w_NK = _check_weight(w, NVFP4_BLOCK, "NVFP4")
    n_rows, k = w_NK.shape
    w_NBk = w_NK.view(n_rows, k // NVFP4_BLOCK, NVFP4_BLOCK)
    tensor_scale = _nvfp4_tensor_scale(w_NK.abs().amax())
    block_ratio_NB = w_NBk.abs().amax(dim=-1) / E2M1_MAX / tensor_scale
    block_scales_NB = block_ratio_NB.clamp(E4M3_TINY, E4M3_MAX).to(torch.float8_e4m3fn)
    total_scale_NB1 = (tensor_scale * block_scales_NB.float()).unsqueeze(-1)
    codes_NBk = _e2m1_codes(w_NBk / total_scale_NB1)
    return NVFP4Tensor(
        packed=pack_nibbles(codes_NBk.view(n_rows, k)),
        block_scale_bits=block_scales_NB.view(torch.uint8),
        tensor_scale=tensor_scale,
        shape=tuple(w.shape),
    )


def dequantize_nvfp4(q: NVFP4Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Weight of shape ``q.shape``: (E2M1 value * block scale) * tensor scale in float32, then cast.

    The first product is exact; the second rounds once. A zero block scale (not produced here) gives zeros.
    """
    values_NK = _decode_packed(q.packed)
    n_rows, k = values_NK.shape
    values_NBk = values_NK.view(n_rows, k // NVFP4_BLOCK, NVFP4_BLOCK) * q.block_scales.float().unsqueeze(-1)
    return (values_NBk * q.tensor_scale.float()).reshape(q.shape).to(dtype)


def fake_quant_nvfp4(w: torch.Tensor) -> torch.Tensor:
    """``dequantize(quantize(w))`` in float32, cast to ``w.dtype``.

    Unlike MXFP4 the cast to bf16 generally rounds: the FP32 tensor scale is not a power of two.
    """
    return dequantize_nvfp4(quantize_nvfp4(w), dtype=w.dtype)


def _nvfp4_tensor_scale(amax: torch.Tensor) -> torch.Tensor:
    """float32 0-dim: max(amax / (448 * 6), 2^-126); 1.0 when amax == 0."""
    scale = (amax / (E4M3_MAX * E2M1_MAX)).clamp(min=_F32_TINY)
    return torch.where(amax > 0, scale, torch.ones_like(scale))


# ---------------------------------------------------------------------------------------------------------------
# Shared input checks and the registry


def _check_weight(w: torch.Tensor, block: int, fmt: str) -> torch.Tensor:
    """``w`` as a float32 [N, K] view/copy, after the checks every quantizer shares."""
    if not w.is_floating_point():
        raise ValueError(f"{fmt}: weight must be floating point, got {w.dtype}")
    if w.dim() == 0 or w.shape[-1] == 0 or w.shape[-1] % block:
        raise ValueError(
            f"{fmt}: weight shape {tuple(w.shape)} has a last dim that is not a positive multiple of the block "
            f"size {block}; there is no implicit padding (keep such layers in high precision)"
        )
    if w.numel() == 0:
        raise ValueError(f"{fmt}: weight of shape {tuple(w.shape)} has no elements")
    w_NK = w.detach().to(torch.float32).reshape(-1, w.shape[-1])
    if not bool(torch.isfinite(w_NK).all()):
        raise ValueError(
            f"{fmt}: non-finite values in weight of shape {tuple(w.shape)} (NaN/Inf, or beyond float32's range)"
        )
    return w_NK


FP4Tensor = MXFP4Tensor | NVFP4Tensor


@dataclass(frozen=True)
class FP4Format:
    """One FP4 weight format, selected by name through ``FORMATS``."""

    name: str
    block_size: int  # elements per block along the last (input) axis
    quantize: Callable[[torch.Tensor], FP4Tensor]  # w [..., K] -> packed tensor (the format's default rule)

    @property
    def bytes_ratio_vs_bf16(self) -> float:
        """Bytes per element relative to bf16: (4 code bits + one 8-bit scale per block) / 16 bits."""
        return (4 + 8 / self.block_size) / 16


FORMATS: dict[str, FP4Format] = {
    "mxfp4": FP4Format("mxfp4", MXFP4_BLOCK, quantize_mxfp4),
    "nvfp4": FP4Format("nvfp4", NVFP4_BLOCK, quantize_nvfp4),
}
BLOCK_SIZES: dict[str, int] = {name: spec.block_size for name, spec in FORMATS.items()}


def get_format(fmt: str) -> FP4Format:
    """The format registered as ``fmt``; ValueError naming the valid ones otherwise."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown FP4 format {fmt!r}; valid: {sorted(FORMATS)}")
    return FORMATS[fmt]


def _on_gpu_kernel(w: torch.Tensor, fmt: str) -> bool:
    """MXFP4 on a CUDA tensor goes through the one-pass Triton kernel (bitwise the same result);
    ``DISTILLERY_FP4_TRITON=0`` forces the torch reference (for comparisons)."""
    if not w.is_cuda or os.environ.get("DISTILLERY_FP4_TRITON", "1") == "0":
        return False
    from rl.fp4.triton_quant import usable

    return usable(w, fmt)


def quantize(w: torch.Tensor, fmt: str) -> FP4Tensor:
    """Quantize ``w`` [..., K] to the named format."""
    if _on_gpu_kernel(w, fmt):
        from rl.fp4.triton_quant import mxfp4_quantize

        return mxfp4_quantize(w)[0]
    return get_format(fmt).quantize(w)


def dequantize(q: FP4Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Dequantize either packed tensor type to ``dtype`` (computed in float32)."""
    if isinstance(q, MXFP4Tensor):
        return dequantize_mxfp4(q, dtype)
    if isinstance(q, NVFP4Tensor):
        return dequantize_nvfp4(q, dtype)
    raise ValueError(f"dequantize expects MXFP4Tensor or NVFP4Tensor, got {type(q).__name__}")


def fake_quant(w: torch.Tensor, fmt: str) -> torch.Tensor:
    """``dequantize(quantize(w, fmt))`` in ``w.dtype``: the trainer's QAT weight and the rollout's weight."""
    if _on_gpu_kernel(w, fmt):
        from rl.fp4.triton_quant import mxfp4_quantize

        fake = mxfp4_quantize(w, fake=True)[1]
        assert fake is not None
        return fake
    return dequantize(quantize(w, fmt), dtype=w.dtype)


def bytes_ratio_vs_bf16(fmt: str) -> float:
    """Per-element bytes of ``fmt`` over bf16's 2: MXFP4 0.265625, NVFP4 0.28125 (its 4-byte tensor scale aside)."""
    return get_format(fmt).bytes_ratio_vs_bf16
