"""FP4 quantization-aware training: selected linears compute with ``dequant(quant(W))``, STE backward.

The forward uses ``W + sg(fake_quant(W) - W)``: its value is exactly the fake-quantized weight (the same
function the rollout export uses, so sampled = trained), and its gradient with respect to ``W`` is the
identity -- DeepSeek-V4's straight-through estimator onto the master weights (V4 section 3.4).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rl.fp4.formats import BLOCK_SIZES, fake_quant, quantize

# Linears inside transformer blocks (HF Llama/Qwen naming); embeddings, norms and the LM head stay high
# precision. For MoE models the routed experts' linears match too (``...mlp.experts.N.*_proj``).
DEFAULT_TARGETS = r"(^|\.)layers\.\d+\..*"


def ste_fake_quant(weight: torch.Tensor, fmt: str) -> torch.Tensor:
    """``fake_quant(weight)`` in value, identity in gradient (straight-through estimator)."""
    return weight + (fake_quant(weight.detach(), fmt) - weight).detach()


def qat_linear_names(model: nn.Module, fmt: str, targets: str = DEFAULT_TARGETS) -> list[str]:
    """Names of the ``nn.Linear`` modules QAT applies to: matching ``targets`` and whole blocks wide."""
    pattern, block = re.compile(targets), BLOCK_SIZES[fmt]
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and pattern.search(name) and module.in_features % block == 0
    ]


def _qat_forward(module: nn.Linear, fmt: str) -> Callable[[torch.Tensor], torch.Tensor]:
    def forward(x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, ste_fake_quant(module.weight, fmt), module.bias)

    return forward


def apply_qat(model: nn.Module, fmt: str, targets: str = DEFAULT_TARGETS) -> list[str]:
    """Switch the targeted linears of ``model`` to fake-quantized forwards in place; returns their names."""
    names = qat_linear_names(model, fmt, targets)
    if not names:
        raise ValueError(
            f"fp4={fmt}: no nn.Linear matches {targets!r} with in_features divisible by the block"
        )
    modules = dict(model.named_modules())
    for name in names:
        module = modules[name]
        assert isinstance(module, nn.Linear)
        module.forward = _qat_forward(module, fmt)  # type: ignore[method-assign]
    return names


def export_weights(model: nn.Module, qat_names: list[str], fmt: str | None) -> dict[str, Any]:
    """The model's weights by name, with each QAT linear's weight quantized (packed codes + scales); without a
    format (no FP4) every weight is dense.

    Quantizing here, with the function the QAT forward uses, is what makes the rollout's dequantized
    weights bitwise equal to the trainer's fake-quantized ones.
    """
    if fmt is None:
        return {key: value.detach().clone() for key, value in model.state_dict().items()}
    quantized = {f"{name}.weight" for name in qat_names}
    state: dict[str, Any] = {}
    for key, value in model.state_dict().items():
        state[key] = quantize(value.detach(), fmt) if key in quantized else value.detach().clone()
    return state


class HostStaging:
    """Pinned host buffers reused across weight exports: device-to-host copies from CUDA run at full bus speed
    (pageable copies reach a fraction of it) and are queued together, with one synchronize at the end.

    An export's tensors are these buffers, so the next export overwrites them: consumers copy what they get
    right away (a Ray return value is serialized, an engine copies into its own weights)."""

    def __init__(self) -> None:
        self.buffers: dict[str, torch.Tensor] = {}

    def host(self, key: str, tensor: torch.Tensor) -> torch.Tensor:
        buf = self.buffers.get(key)
        if buf is None or buf.shape != tensor.shape or buf.dtype != tensor.dtype:
            buf = self.buffers[key] = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        return buf.copy_(tensor, non_blocking=True)


def to_cpu(state: dict[str, Any], staging: HostStaging | None = None) -> dict[str, Any]:
    """A weight payload with every tensor (also those inside FP4 entries) on the CPU, for shipping; CUDA
    tensors go through ``staging``'s pinned buffers when given."""

    def move(key: str, t: torch.Tensor) -> torch.Tensor:
        return staging.host(key, t) if staging is not None and t.is_cuda else t.cpu()

    out: dict[str, Any] = {}
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            out[key] = move(key, value)
        else:
            fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
            out[key] = dataclasses.replace(
                value,
                **{k: move(f"{key}.{k}", v) for k, v in fields.items() if isinstance(v, torch.Tensor)},
            )
    if staging is not None and torch.cuda.is_available():
        torch.cuda.synchronize()
    return out


def fake_quant_weights(model: nn.Module, qat_names: list[str], fmt: str | None) -> dict[str, torch.Tensor]:
    """What each QAT linear multiplies by in the trainer's forward (float32); none without a format."""
    if fmt is None:
        return {}
    modules = dict(model.named_modules())
    return {
        f"{name}.weight": ste_fake_quant(modules[name].weight.detach().float(), fmt)  # type: ignore[arg-type]
        for name in qat_names
    }


def payload_nbytes(state: dict[str, Any]) -> int:
    """Bytes of a weight payload: dense tensors plus the tensors inside FP4 entries."""
    total = 0
    for value in state.values():
        tensors = (
            [value]
            if isinstance(value, torch.Tensor)
            else [
                getattr(value, f.name)
                for f in dataclasses.fields(value)
                if isinstance(getattr(value, f.name), torch.Tensor)
            ]
        )
        total += sum(t.numel() * t.element_size() for t in tensors)
    return total
