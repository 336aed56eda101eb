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
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rl.fp4.experts import dequantize_experts, expert
from rl.fp4.formats import dequantize
from rl.moe import EXPERT_PARAMS, experts_forward, is_experts


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

    params = ("weight",)  # what a weight update's FP4 entries name: <module>.weight

    def quantized(self, param: str = "weight") -> Any:
        """The FP4 tensor this layer holds (codes and scales, no copy)."""
        tensors = {name: buf for name, buf in self.named_buffers(recurse=False)}
        return self._qtype(**tensors, **self._static)

    def load_quantized(self, quantized: Any, param: str = "weight") -> None:
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

    def served(self, param: str = "weight") -> torch.Tensor:
        """The weight this layer multiplies by, float32 (the bitwise check against the trainer's fake-quant)."""
        return dequantize(self.quantized())

    def bf16_nbytes(self) -> int:
        rows, cols = self.quantized().shape
        return 2 * rows * cols

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda and x.dtype in (torch.bfloat16, torch.float16):  # Triton W4A16 (rl/fp4/triton_w4a16.py)
            from rl.fp4.triton_w4a16 import fp4_linear

            return fp4_linear(x, self.quantized(), self.bias)
        if x.is_cuda:  # a float32 model on a GPU: the reference, no copy kept
            return F.linear(x, dequantize(self.quantized(), dtype=x.dtype), self.bias)
        if self._dequantized is None or self._dequantized.dtype != x.dtype:
            self._dequantized = dequantize(self.quantized(), dtype=x.dtype)
        return F.linear(x, self._dequantized, self.bias)


class PackedFP4Experts(nn.Module):
    """An MoE layer's routed experts held as FP4 (``gate_up_proj`` and ``down_proj`` stacked, each expert quantized
    on its own: ``rl.fp4.experts``), computing ``rl.moe.experts_forward`` with dequantizing matmuls: per expert
    the Triton W4A16 kernel on a GPU, the torch reference (dequantized once per weight update) on CPU."""

    params = EXPERT_PARAMS

    def __init__(self, gate_up: Any, down: Any, act_fn: Any):
        super().__init__()
        self.gate_up_proj, self.down_proj = PackedFP4Linear(gate_up, None), PackedFP4Linear(down, None)
        self.act_fn = act_fn
        self._dequantized: dict[str, torch.Tensor] = {}  # CPU only, as PackedFP4Linear's

    def _part(self, param: str) -> PackedFP4Linear:
        if param not in EXPERT_PARAMS:
            raise ValueError(f"an experts module has {EXPERT_PARAMS}, not {param!r}")
        return getattr(self, param)

    def quantized(self, param: str) -> Any:
        return self._part(param).quantized()

    def load_quantized(self, quantized: Any, param: str) -> None:
        self._part(param).load_quantized(quantized)
        self._dequantized.pop(param, None)

    def weight_nbytes(self) -> int:
        return sum(self._part(p).weight_nbytes() for p in EXPERT_PARAMS)

    def bf16_nbytes(self) -> int:
        return sum(2 * math.prod(self.quantized(p).shape) for p in EXPERT_PARAMS)

    def served(self, param: str) -> torch.Tensor:
        return dequantize_experts(self.quantized(param))

    def _matmul(self, param: str, x: torch.Tensor) -> Any:
        q = self.quantized(param)
        if x.is_cuda and x.dtype in (torch.bfloat16, torch.float16):
            from rl.fp4.triton_w4a16 import fp4_linear

            return lambda e, h: fp4_linear(h, expert(q, e), None)
        if x.is_cuda:
            return lambda e, h: F.linear(h, dequantize(expert(q, e), dtype=h.dtype))
        weight = self._dequantized.get(param)
        if weight is None or weight.dtype != x.dtype:
            weight = self._dequantized[param] = dequantize_experts(q, dtype=x.dtype)
        return lambda e, h: F.linear(h, weight[e])

    def forward(
        self, hidden: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
    ) -> torch.Tensor:
        return experts_forward(hidden, top_k_index, top_k_weights, self.quantized("gate_up_proj").shape[0],
                               self._matmul("gate_up_proj", hidden), self._matmul("down_proj", hidden),
                               self.act_fn)  # fmt: skip


PackedModule = PackedFP4Linear | PackedFP4Experts


def pack_linears(model: nn.Module, names: list[str], fmt: str) -> int:
    """Replace the named ``nn.Linear`` modules by packed FP4 linears, and the named MoE experts modules by packed
    experts, in place; returns the packed bytes."""
    from rl.fp4.experts import quantize_experts
    from rl.fp4.formats import quantize

    total = 0
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        module = getattr(parent, child)
        packed: PackedModule
        if is_experts(module):
            packed = PackedFP4Experts(quantize_experts(module.gate_up_proj.detach().float(), fmt),
                                      quantize_experts(module.down_proj.detach().float(), fmt), module.act_fn)  # fmt: skip
        elif isinstance(module, nn.Linear):
            packed = PackedFP4Linear(quantize(module.weight.detach().float(), fmt), module.bias)
        else:
            raise ValueError(
                f"{name} is a {type(module).__name__}, not an nn.Linear or an MoE experts module"
            )
        setattr(parent, child, packed)
        total += packed.weight_nbytes()
    return total
