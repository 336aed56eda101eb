"""Per-token policy-gradient losses. Each returns ``(loss_BT, metrics)``: the loss is NOT aggregated
(``rl.algorithms.aggregation`` does that with global counts) and is 0 on masked-out positions.

Gradients flow through ``logprobs_BT`` only: old log-probs and advantages are detached inside.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

PolicyLossFn = Callable[..., tuple[torch.Tensor, dict[str, float]]]


def ppo_clip(
    logprobs_BT: torch.Tensor,
    old_logprobs_BT: torch.Tensor,
    advantages_BT: torch.Tensor,
    mask_BT: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.28,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO-clip surrogate per token with DAPO's asymmetric "clip-higher" (arXiv 2503.14476, §3.1):

        r = exp(logp - logp_old),  loss = -min(r * A, clip(r, 1 - clip_low, 1 + clip_high) * A)

    GRPO (arXiv 2402.03300) is the symmetric case clip_low == clip_high.
    """
    _check_same_shape(logprobs_BT, old_logprobs_BT, advantages_BT, mask_BT)
    if not 0.0 <= clip_low < 1.0 or clip_high < 0.0:
        raise ValueError(f"ppo_clip needs 0 <= clip_low < 1 and clip_high >= 0, got {clip_low}, {clip_high}")
    keep_BT = mask_BT > 0
    # The log-ratio is zeroed on masked positions *before* exp, so padding can never overflow into
    # inf/NaN gradients (0 * inf in exp's backward); masked tokens then get exactly zero gradient.
    log_ratio_BT = torch.where(keep_BT, logprobs_BT - old_logprobs_BT.detach(), 0.0)
    ratio_BT = torch.exp(log_ratio_BT)
    advantages_BT = advantages_BT.detach()
    unclipped_BT = ratio_BT * advantages_BT
    clipped_BT = ratio_BT.clamp(1.0 - clip_low, 1.0 + clip_high) * advantages_BT
    loss_BT = torch.where(keep_BT, -torch.minimum(unclipped_BT, clipped_BT), 0.0)
    return loss_BT, _ratio_metrics(ratio_BT.detach(), (clipped_BT < unclipped_BT).detach(), keep_BT)


POLICY_LOSSES: dict[str, PolicyLossFn] = {"ppo_clip": ppo_clip}


def get_policy_loss_fn(name: str) -> PolicyLossFn:
    """The policy loss registered under ``name``."""
    if name not in POLICY_LOSSES:
        raise ValueError(f"unknown policy loss {name!r}; valid names: {sorted(POLICY_LOSSES)}")
    return POLICY_LOSSES[name]


def _check_same_shape(*tensors_BT: torch.Tensor) -> None:
    shapes = [tuple(t.shape) for t in tensors_BT]
    if len(set(shapes)) != 1 or len(shapes[0]) != 2:
        raise ValueError(f"policy loss inputs must all be [B, T] of one shape, got {shapes}")


def _ratio_metrics(
    ratio_BT: torch.Tensor, clipped_BT: torch.Tensor, keep_BT: torch.Tensor
) -> dict[str, float]:
    """Clip fraction (the min strictly took the clipped branch) and ratio stats over trained tokens."""
    num_kept = int(keep_BT.sum().item())
    if num_kept == 0:
        return {"train/clip_frac": 0.0, "train/ratio_mean": 0.0, "train/ratio_max": 0.0}
    return {
        "train/clip_frac": clipped_BT[keep_BT].sum().item() / num_kept,
        "train/ratio_mean": ratio_BT[keep_BT].sum().item() / num_kept,
        "train/ratio_max": ratio_BT[keep_BT].max().item(),
    }
