"""The packed FP4 tensor types and their block sizes: the leaf that the reference formats (``formats.py``) and the
Triton kernels (``triton_quant.py``, ``triton_w4a16.py``) share, so neither imports the other's module."""

from __future__ import annotations

from dataclasses import dataclass

import torch

MXFP4_BLOCK = 32
NVFP4_BLOCK = 16


@dataclass(frozen=True, eq=False)
class MXFP4Tensor:
    """A weight in MXFP4 (OCP MX v1.0 layout; DeepSeek-V4's expert-weight format)."""

    packed: torch.Tensor  # uint8 [N, K/2]: E2M1 codes, element 2i in the low nibble
    scales: torch.Tensor  # uint8 [N, K/32]: E8M0 biased exponent e of each block, scale = 2^(e - 127)
    shape: tuple[int, ...]  # shape of the original weight, [..., K]; N = prod(shape[:-1])

    @property
    def nbytes(self) -> int:
        """Bytes of the packed codes plus the scales."""
        return self.packed.numel() + self.scales.numel()


@dataclass(frozen=True, eq=False)
class NVFP4Tensor:
    """A weight in NVFP4: x = E2M1 value * block_scale * tensor_scale."""

    packed: torch.Tensor  # uint8 [N, K/2]: E2M1 codes, element 2i in the low nibble
    block_scale_bits: torch.Tensor  # uint8 [N, K/16]: E4M3 bit patterns of the block scales
    tensor_scale: torch.Tensor  # float32 0-dim: ~ amax(|W|) / (448 * 6)
    shape: tuple[int, ...]  # shape of the original weight, [..., K]; N = prod(shape[:-1])

    # The scales are stored as their uint8 bits because float8 tensors do not survive pickling across
    # processes (torch 2.13 legacy storage path), and weights travel to rollout workers through Ray.
    @property
    def block_scales(self) -> torch.Tensor:
        """float8_e4m3fn [N, K/16]: block scale relative to tensor_scale (a view of the bits)."""
        return self.block_scale_bits.view(torch.float8_e4m3fn)

    @property
    def nbytes(self) -> int:
        """Bytes of the packed codes, the block scales and the 4-byte tensor scale."""
        return self.packed.numel() + self.block_scale_bits.numel() + 4
