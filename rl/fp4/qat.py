"""FP4 quantization-aware training: selected linears, and MoE layers' routed experts, compute with
``dequant(quant(W))``, STE backward.

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

from rl.fp4.experts import quantize_experts, ste_fake_quant_experts
from rl.fp4.formats import BLOCK_SIZES, fake_quant, quantize
from rl.moe import EXPERT_PARAMS, dense_matmuls, experts_forward, is_experts

# Linears inside transformer blocks (HF Llama/Qwen naming) and MoE layers' fused routed experts
# (``...mlp.experts``, 3-D weights); embeddings, norms, the LM head and MoE routers stay high precision.
DEFAULT_TARGETS = r"(^|\.)layers\.\d+\..*"


def ste_fake_quant(weight: torch.Tensor, fmt: str) -> torch.Tensor:
    """``fake_quant(weight)`` in value, identity in gradient (straight-through estimator)."""
    return weight + (fake_quant(weight.detach(), fmt) - weight).detach()


def qat_linear_names(model: nn.Module, fmt: str, targets: str = DEFAULT_TARGETS) -> list[str]:
    """Names of the modules QAT applies to, matching ``targets`` and whole blocks wide: in a dense model its
    ``nn.Linear`` layers; in an MoE model only the fused routed-experts modules (``rl.moe.is_experts``) whose two
    matmuls both reduce over whole blocks -- DeepSeek-V4's choice: attention, shared experts and the router keep
    high precision."""
    pattern, block = re.compile(targets), BLOCK_SIZES[fmt]
    moe = any(is_experts(m) for m in model.modules())

    def whole_blocks(module: nn.Module) -> bool:
        if isinstance(module, nn.Linear) and not moe:
            return module.in_features % block == 0
        return is_experts(module) and all(getattr(module, p).shape[-1] % block == 0 for p in EXPERT_PARAMS)

    return [name for name, module in model.named_modules() if pattern.search(name) and whole_blocks(module)]


def skipped_experts(model: nn.Module, fmt: str) -> list[str]:
    """Fused experts modules left in high precision because a matmul's input width is not whole blocks."""
    block = BLOCK_SIZES[fmt]
    return [name for name, module in model.named_modules()
            if is_experts(module) and any(getattr(module, p).shape[-1] % block for p in EXPERT_PARAMS)]  # fmt: skip


def quantized_params(module: nn.Module) -> tuple[str, ...]:
    """The parameters of a QAT module that are FP4: an experts module's two stacked weights, a linear's weight."""
    return EXPERT_PARAMS if is_experts(module) else ("weight",)


def quantized_keys(model: nn.Module, qat_names: list[str]) -> list[str]:
    """``model.state_dict()`` keys of the FP4 weights of the QAT modules ``qat_names``."""
    return [f"{name}.{p}" for name in qat_names for p in quantized_params(model.get_submodule(name))]


def _qat_forward(module: nn.Linear, fmt: str) -> Callable[[torch.Tensor], torch.Tensor]:
    def forward(x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, ste_fake_quant(module.weight, fmt), module.bias)

    return forward


def _qat_experts_forward(module: nn.Module, fmt: str) -> Callable[..., torch.Tensor]:
    def forward(hidden: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor) -> torch.Tensor:
        gate_up = ste_fake_quant_experts(module.gate_up_proj, fmt)  # type: ignore[arg-type]
        down = ste_fake_quant_experts(module.down_proj, fmt)  # type: ignore[arg-type]
        matmuls = dense_matmuls(gate_up, down)
        return experts_forward(hidden, top_k_index, top_k_weights, gate_up.shape[0], *matmuls, module.act_fn)  # type: ignore[arg-type]

    return forward


def apply_qat(model: nn.Module, fmt: str, targets: str = DEFAULT_TARGETS) -> list[str]:
    """Switch the targeted modules of ``model`` to fake-quantized forwards in place; returns their names."""
    names = qat_linear_names(model, fmt, targets)
    if not names:
        skipped = skipped_experts(model, fmt)
        why = f" (MoE experts whose widths are not whole blocks: {', '.join(skipped)})" if skipped else ""
        raise ValueError(f"fp4={fmt}: no nn.Linear (or MoE experts module) matches {targets!r} with input widths "
                         f"divisible by the block{why}; train it with fp4=none")  # fmt: skip
    for name in names:
        module = model.get_submodule(name)
        qat = _qat_experts_forward(module, fmt) if is_experts(module) else _qat_forward(module, fmt)  # type: ignore[arg-type]
        module.forward = qat  # type: ignore[method-assign]
    return names


def export_weights(model: nn.Module, qat_names: list[str], fmt: str | None) -> dict[str, Any]:
    """The model's weights by name, with each QAT linear's weight quantized (packed codes + scales); without a
    format (no FP4) every weight is dense.

    Quantizing here, with the function the QAT forward uses, is what makes the rollout's dequantized
    weights bitwise equal to the trainer's fake-quantized ones.
    """
    if fmt is None:
        return {key: value.detach().clone() for key, value in model.state_dict().items()}
    quantized = set(quantized_keys(model, qat_names))
    state: dict[str, Any] = {}
    for key, value in model.state_dict().items():
        state[key] = quantize_param(value.detach(), fmt) if key in quantized else value.detach().clone()
    return state


def quantize_param(weight: torch.Tensor, fmt: str) -> Any:
    """A linear's weight [N, K] as one FP4 tensor; stacked experts [E, N, K] expert by expert."""
    return quantize_experts(weight, fmt) if weight.dim() == 3 else quantize(weight, fmt)


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
    """What each QAT module multiplies by in the trainer's forward (float32), by weight key; none without a
    format."""
    if fmt is None:
        return {}
    state = model.state_dict()
    out = {}
    for key in quantized_keys(model, qat_names):
        weight = state[key].detach().float()
        out[key] = ste_fake_quant_experts(weight, fmt) if weight.dim() == 3 else ste_fake_quant(weight, fmt)
    return out


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
