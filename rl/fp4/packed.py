"""Packed FP4 linears for rollout engines: uint8 codes + scales in memory, a dequantizing matmul in forward.

Its forward dequantizes with the same function the trainer's fake-quant uses (``rl.fp4.formats.dequantize``),
so the weight it multiplies by is bitwise the trainer's ``fake_quant(W)``. On a GPU a Triton weight-only
(W4A16) kernel with the same contract multiplies the packed codes directly, and no high-precision copy exists.
On CPU the matmul is the torch reference, and the module keeps the dequantized weight from one weight update to
the next (one copy in the activations' dtype): dequantizing every linear at every decoded token made a 0.5B
model's rollout on CPU minutes per token.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rl.fp4.formats import dequantize


class PackedFP4Linear(nn.Module):
    """``y = x @ dequant(q).T + b`` with ``q`` an FP4 tensor (its tensor fields are buffers)."""

    def __init__(self, quantized: Any, bias: torch.Tensor | None):
        super().__init__()
        self._qtype = type(quantized)
        self._static: dict[str, Any] = {}
        for f in dataclasses.fields(quantized):
            value = getattr(quantized, f.name)
            if isinstance(value, torch.Tensor):
                self.register_buffer(f.name, value)
            else:
                self._static[f.name] = value
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False) if bias is not None else None
        # CPU only: dequant(codes, scales), kept until the next weight update
        self._dequantized: torch.Tensor | None = None

    def quantized(self) -> Any:
        """The FP4 tensor this layer holds (codes and scales, no copy)."""
        tensors = {name: buf for name, buf in self.named_buffers(recurse=False)}
        return self._qtype(**tensors, **self._static)

    def load_quantized(self, quantized: Any) -> None:
        """Take new codes and scales in place (a weight update from the trainer)."""
        if type(quantized) is not self._qtype:
            raise ValueError(f"expected a {self._qtype.__name__}, got {type(quantized).__name__}")
        for f in dataclasses.fields(quantized):
            value = getattr(quantized, f.name)
            if isinstance(value, torch.Tensor):
                getattr(self, f.name).copy_(value)
            elif self._static[f.name] != value:
                raise ValueError(f"weight update changes {f.name}: {self._static[f.name]} -> {value}")
        self._dequantized = None

    def weight_nbytes(self) -> int:
        return sum(buf.numel() * buf.element_size() for _, buf in self.named_buffers(recurse=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda and x.dtype in (torch.bfloat16, torch.float16):  # Triton W4A16 (rl/fp4/triton_w4a16.py)
            from rl.fp4.triton_w4a16 import fp4_linear

            return fp4_linear(x, self.quantized(), self.bias)
        if x.is_cuda:  # a float32 model on a GPU: the reference, no copy kept
            return F.linear(x, dequantize(self.quantized(), dtype=x.dtype), self.bias)
        if self._dequantized is None or self._dequantized.dtype != x.dtype:
            self._dequantized = dequantize(self.quantized(), dtype=x.dtype)
        return F.linear(x, self._dequantized, self.bias)


def pack_linears(model: nn.Module, names: list[str], fmt: str) -> int:
    """Replace the named ``nn.Linear`` modules by packed FP4 linears in place; returns the packed bytes."""
    from rl.fp4.formats import quantize

    total = 0
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        linear = getattr(parent, child)
        if not isinstance(linear, nn.Linear):
            raise ValueError(f"{name} is a {type(linear).__name__}, not an nn.Linear")
        packed = PackedFP4Linear(quantize(linear.weight.detach().float(), fmt), linear.bias)
        setattr(parent, child, packed)
        total += packed.weight_nbytes()
    return total
