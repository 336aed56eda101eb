"""MoE experts as transformers (5.x) stores them: one module per layer holding every routed expert's weights as
3-D parameters, ``gate_up_proj`` [E, 2I, H] and ``down_proj`` [E, H, I] (Qwen3-MoE, Qwen2-MoE, ...), called
with the router's top-k expert ids and weights per token.

``experts_forward`` is that module's computation with the per-expert matmuls passed in, so the trainer's QAT
forward (fake-quantized weights, ``rl.fp4.qat``) and the rollout's packed experts (FP4 codes, ``rl.fp4.packed``)
run the same routing arithmetic as the model's own eager forward, each with its own weights.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

EXPERT_PARAMS = ("gate_up_proj", "down_proj")

ExpertMatmul = Callable[[int, torch.Tensor], torch.Tensor]  # (expert id, x [T, in]) -> [T, out]


def is_experts(module: nn.Module) -> bool:
    """A fused routed-experts module: ``gate_up_proj`` [E, 2I, H] and ``down_proj`` [E, H, I], an ``act_fn``."""
    gate_up, down = getattr(module, "gate_up_proj", None), getattr(module, "down_proj", None)
    if (
        not isinstance(gate_up, torch.Tensor)
        or not isinstance(down, torch.Tensor)
        or not hasattr(module, "act_fn")
    ):
        return False
    if gate_up.dim() != 3 or down.dim() != 3:
        return False
    experts, two_inter, hidden = gate_up.shape
    return tuple(down.shape) == (experts, hidden, two_inter // 2) and two_inter % 2 == 0


def experts_forward(
    hidden_TH: torch.Tensor,
    top_k_index_TK: torch.Tensor,
    top_k_weights_TK: torch.Tensor,
    num_experts: int,
    gate_up: ExpertMatmul,
    down: ExpertMatmul,
    act: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """sum over each token's top-k experts e of weight * down_e(act(gate_e(x)) * up_e(x)); the loop over the
    experts that got tokens is transformers' eager ``Qwen3MoeExperts.forward``."""
    out_TH = torch.zeros_like(hidden_TH)
    with torch.no_grad():
        hit = torch.unique(top_k_index_TK).tolist()
    for e in hit:
        if not 0 <= e < num_experts:  # transformers' padding id (num_experts) for dropped slots
            continue
        token_idx, slot = torch.where(top_k_index_TK == e)
        gate, up = gate_up(e, hidden_TH[token_idx]).chunk(2, dim=-1)
        y = down(e, act(gate) * up) * top_k_weights_TK[token_idx, slot, None]
        out_TH.index_add_(0, token_idx, y.to(out_TH.dtype))
    return out_TH


def dense_matmuls(gate_up_EOI: torch.Tensor, down_EOI: torch.Tensor) -> tuple[ExpertMatmul, ExpertMatmul]:
    """The per-expert matmuls of stacked dense weights (``F.linear`` with expert e's slice)."""
    return (
        lambda e, x: nn.functional.linear(x, gate_up_EOI[e]),
        lambda e, x: nn.functional.linear(x, down_EOI[e]),
    )
