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
    _check_clip("ppo_clip", clip_low, clip_high)
    keep_BT = mask_BT > 0
    # The log-ratio is zeroed on masked positions *before* exp, so padding can never overflow into
    # inf/NaN gradients (0 * inf in exp's backward); masked tokens then get exactly zero gradient.
    log_ratio_BT = torch.where(keep_BT, logprobs_BT - old_logprobs_BT.detach(), 0.0)
    return _clipped_surrogate(torch.exp(log_ratio_BT), advantages_BT, keep_BT, clip_low, clip_high)


def _check_clip(name: str, clip_low: float, clip_high: float) -> None:
    if not 0.0 <= clip_low < 1.0 or clip_high < 0.0:
        raise ValueError(f"{name} needs 0 <= clip_low < 1 and clip_high >= 0, got {clip_low}, {clip_high}")


def _clipped_surrogate(
    ratio_BT: torch.Tensor,
    advantages_BT: torch.Tensor,
    keep_BT: torch.Tensor,
    clip_low: float,
    clip_high: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """-min(r * A, clip(r, 1 - clip_low, 1 + clip_high) * A) on kept tokens (0 elsewhere), and the ratio metrics."""
    advantages_BT = advantages_BT.detach()
    unclipped_BT = ratio_BT * advantages_BT
    clipped_BT = ratio_BT.clamp(1.0 - clip_low, 1.0 + clip_high) * advantages_BT
    loss_BT = torch.where(keep_BT, -torch.minimum(unclipped_BT, clipped_BT), 0.0)
    return loss_BT, _ratio_metrics(ratio_BT.detach(), (clipped_BT < unclipped_BT).detach(), keep_BT)


def gspo(
    logprobs_BT: torch.Tensor,
    old_logprobs_BT: torch.Tensor,
    advantages_BT: torch.Tensor,
    mask_BT: torch.Tensor,
    clip_low: float = 3e-4,
    clip_high: float = 4e-4,
) -> tuple[torch.Tensor, dict[str, float]]:
    """GSPO (arXiv 2507.18071): one importance ratio per sequence, the geometric mean of its tokens' ratios,

        s_i = exp(mean_t (logp_it - logp_old_it)),  loss = -min(s_i * A, clip(s_i, 1 - clip_low, 1 + clip_high) * A)

    written per token in the paper's GSPO-token form s_it = sg[s_i] * exp(logp_it - sg[logp_it]): its value is s_i
    on every token of sequence i and its gradient s_i * grad logp_it, so averaging a sequence's tokens
    (``aggregation=seq_mean_token_mean``, the paper's 1/G sum_i) gives exactly grad of -min(s_i A_i, clip(s_i) A_i),
    and token-level advantages work unchanged. Ratios near 1 per sequence want the paper's tiny clip range
    (3e-4 / 4e-4; ``configs/algorithm/gspo.yaml``); one token's routing flip in an MoE moves s_i by 1/|o_i| of it.
    """
    _check_same_shape(logprobs_BT, old_logprobs_BT, advantages_BT, mask_BT)
    _check_clip("gspo", clip_low, clip_high)
    keep_BT = mask_BT > 0
    log_ratio_BT = torch.where(keep_BT, logprobs_BT - old_logprobs_BT.detach(), 0.0)
    # the mean over each sequence's trained tokens, and a term of value 0 whose gradient is grad logp
    seq_log_ratio_B = log_ratio_BT.sum(-1) / keep_BT.sum(-1).clamp(min=1)
    token_term_BT = torch.where(keep_BT, logprobs_BT - logprobs_BT.detach(), 0.0)
    ratio_BT = torch.exp(seq_log_ratio_B.detach()[:, None] + token_term_BT)
    return _clipped_surrogate(ratio_BT, advantages_BT, keep_BT, clip_low, clip_high)


def cispo(
    logprobs_BT: torch.Tensor,
    old_logprobs_BT: torch.Tensor,
    advantages_BT: torch.Tensor,
    mask_BT: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.28,
) -> tuple[torch.Tensor, dict[str, float]]:
    """CISPO (MiniMax-M1, arXiv 2506.13585): clip the importance weight, not the update, so every token keeps its
    gradient (PPO-clip zeroes it for tokens past the clip, often the rare "fork" tokens):

        loss = -sg[min(r, 1 + clip_high)] * A * logp,  r = exp(logp - logp_old)

    As MiniMax ran it, the weight has no lower bound (``clip_low`` is not used); its gradient is
    min(r, 1 + clip_high) * A * grad logp, which at r = 1 is the on-policy policy gradient, as PPO's is.
    """
    _check_same_shape(logprobs_BT, old_logprobs_BT, advantages_BT, mask_BT)
    if clip_high < 0.0:
        raise ValueError(f"cispo needs clip_high >= 0, got {clip_high}")
    keep_BT = mask_BT > 0
    log_ratio_BT = torch.where(keep_BT, logprobs_BT - old_logprobs_BT.detach(), 0.0)
    ratio_BT = torch.exp(log_ratio_BT).detach()
    weight_BT = ratio_BT.clamp(max=1.0 + clip_high)
    loss_BT = torch.where(keep_BT, -weight_BT * advantages_BT.detach() * logprobs_BT, 0.0)
    return loss_BT, _ratio_metrics(ratio_BT, ratio_BT > 1.0 + clip_high, keep_BT)


POLICY_LOSSES: dict[str, PolicyLossFn] = {"ppo_clip": ppo_clip, "gspo": gspo, "cispo": cispo}


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
