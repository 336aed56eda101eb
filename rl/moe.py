"""MoE experts as transformers (5.x) stores them: one module per layer holding every routed expert's weights as
3-D parameters, ``gate_up_proj`` [E, 2I, H] and ``down_proj`` [E, H, I] (Qwen3-MoE, Qwen2-MoE, ...), called
with the router's top-k expert ids and weights per token.

``experts_forward`` is that module's computation with the per-expert matmuls passed in, so the trainer's QAT
forward (fake-quantized weights, ``rl.fp4.qat``) and the rollout's packed experts (FP4 codes, ``rl.fp4.packed``)
run the same routing arithmetic as the model's own eager forward, each with its own weights.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

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


# ---------------------------------------------------------------------------------------------------------------
# Routing replay (R3: "Stabilizing MoE RL by Aligning Training and Inference Routers", Ma et al., 2025; verl,
# slime, Miles): the rollout records each token's top-k experts per MoE layer; the trainer's forward routes every
# token to those experts, with its own gate probabilities at them (so the router still learns), instead of its
# own top-k. Routing tensors are [N, L, K] per sequence (position, MoE layer, slot), int16, -1 where a position
# was not routed by the rollout (the last sampled token is never fed back) or is padding: there the trainer's
# own choice stands.

NOT_ROUTED = -1
ROUTING_DTYPE = torch.int16


# model types whose routers take softmax-then-top-k over the experts, which replay rebuilds from their logits
# (``replayed_weights``); others (sigmoid scores with a selection bias, group-limited routing) need their own rule
REPLAYABLE_MODEL_TYPES = ("qwen3_moe", "qwen2_moe", "olmoe", "mixtral")


def routers(model: nn.Module) -> list[nn.Module]:
    """Each MoE block's router, in layer order: the ``gate`` beside an ``experts`` module, which returns
    ``(router_logits, top_k_weights, top_k_index)`` (transformers' ``Qwen3MoeTopKRouter`` and its kin)."""
    found = []
    for block in model.modules():  # the experts may be packed FP4 (rl.fp4.packed) in a rollout worker
        experts, gate = getattr(block, "experts", None), getattr(block, "gate", None)
        if isinstance(experts, nn.Module) and isinstance(gate, nn.Module) and hasattr(gate, "top_k"):
            found.append(gate)
    return found


def replayed_weights(logits_NE: torch.Tensor, index_NK: torch.Tensor, norm_topk_prob: bool) -> torch.Tensor:
    """The gate weights of experts ``index_NK`` under the router's own softmax (float32, then the logits'
    dtype), renormalised over the k chosen where the router does that (``norm_topk_prob``): what the router
    would output had it chosen these experts."""
    probs_NE = torch.softmax(logits_NE, dim=-1, dtype=torch.float)
    weights_NK = probs_NE.gather(-1, index_NK.long())
    if norm_topk_prob:
        weights_NK = weights_NK / weights_NK.sum(-1, keepdim=True)
    return weights_NK.to(logits_NE.dtype)


def merge_routing(own_NK: torch.Tensor, recorded_NK: torch.Tensor) -> torch.Tensor:
    """The recorded experts where a position has them, the router's own choice where it has not (-1)."""
    routed_N1 = (recorded_NK >= 0).all(-1, keepdim=True)
    return torch.where(routed_N1, recorded_NK.to(own_NK.dtype), own_NK)


def router_agreement(
    own_NLK: torch.Tensor, recorded_NLK: torch.Tensor, weight_N: torch.Tensor
) -> tuple[float, float]:
    """(weighted count of (position, layer) pairs whose top-k *sets* agree, weighted count of pairs compared);
    positions the rollout did not route (-1) are left out. The share is the first over the second."""
    own, recorded = own_NLK.long().sort(-1).values, recorded_NLK.long().sort(-1).values
    routed_NL = (recorded >= 0).all(-1)
    same_NL = (own == recorded).all(-1) & routed_NL
    w_N1 = weight_N.float()[:, None]
    return float((same_NL * w_N1).sum()), float((routed_NL * w_N1).sum())


class RoutingTap:
    """Forward hooks on a model's routers for the ``with`` block: every call's top-k (``calls``: one [N, L, K]
    tensor per forward, layers stacked), and, given ``replay`` ([N, L, K] for the next forward's N flattened
    positions), the router's output replaced by the recorded experts with its own gate weights."""

    def __init__(self, model: nn.Module, replay: torch.Tensor | None = None):
        self.routers = routers(model)
        self.replay = replay
        self.calls: list[torch.Tensor] = []
        self._layer: list[torch.Tensor] = []
        self._handles: list[Any] = []

    def __enter__(self) -> RoutingTap:
        for layer, router in enumerate(self.routers):
            self._handles.append(router.register_forward_hook(partial(self._hook, layer)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, layer: int, router: nn.Module, args: Any, out: Any) -> Any:
        logits_NE, weights_NK, index_NK = out
        if layer == 0 and self._layer:  # a new forward begins
            self._flush()
        self._layer.append(index_NK.detach().to(ROUTING_DTYPE))
        if layer == len(self.routers) - 1:
            self._flush()
        if self.replay is None:
            return None
        recorded_NK = self.replay[:, layer].to(index_NK.device)
        if recorded_NK.shape != index_NK.shape:
            raise ValueError(f"routing replay: {tuple(recorded_NK.shape)} recorded experts for a router "
                             f"that chose {tuple(index_NK.shape)}")  # fmt: skip
        index_NK = merge_routing(index_NK, recorded_NK)
        # Mixtral's router always renormalises and has no flag
        weights_NK = replayed_weights(logits_NE, index_NK, bool(getattr(router, "norm_topk_prob", True)))
        return logits_NE, weights_NK, index_NK

    def _flush(self) -> None:
        self.calls.append(torch.stack(self._layer, dim=1))
        self._layer = []


def decode_routing(
    calls: list[torch.Tensor], prompt_lens: list[int], response_lens: list[int]
) -> list[torch.Tensor]:
    """Each row's routing [p + n, L, K] from a KV-cached decode's router calls: the prefill of the left-padded
    prompts ([B * W, L, K]), then one call per decode step ([B, L, K]) feeding response token s - 1 at step s.
    The last response token is never fed back, so its row is -1."""
    rows = len(prompt_lens)
    prefill_BWLK = calls[0].view(rows, -1, *calls[0].shape[1:]).cpu()
    steps_SBLK = torch.stack(calls[1:]).cpu() if len(calls) > 1 else prefill_BWLK[:, :0].transpose(0, 1)
    out = []
    for b, (p, n) in enumerate(zip(prompt_lens, response_lens, strict=True)):
        unrouted = torch.full((1, *prefill_BWLK.shape[2:]), NOT_ROUTED, dtype=ROUTING_DTYPE)
        out.append(
            torch.cat([prefill_BWLK[b, prefill_BWLK.shape[1] - p :], steps_SBLK[: n - 1, b], unrouted])
        )
    return out


def pad_routing(routing_NLK: torch.Tensor, length: int) -> torch.Tensor:
    """``routing_NLK`` extended with unrouted (-1) positions to ``length`` (an episode's last observation,
    appended after the last turn was routed)."""
    pad = torch.full((length - len(routing_NLK), *routing_NLK.shape[1:]), NOT_ROUTED, dtype=routing_NLK.dtype)
    return torch.cat([routing_NLK, pad])
