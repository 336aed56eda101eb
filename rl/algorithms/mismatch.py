"""Rollout/training mismatch: diagnostics and loss corrections (reference §2 and §5).

mu is the rollout engine's sampling policy (``rollout_logprobs_BT``); pi is the trainer's policy, recomputed now
(``train_logprobs_BT``) or before the update (pi_old, ``old_logprobs_BT``). Every tensor is [B, T] and holds
log-probs of the sampled tokens; ``mask_BT`` is 1 on response tokens. Even at identical parameters mu != pi
(quantized rollout weights, other kernels), so "on-policy" RL is silently off-policy.

Nothing here carries gradient. A correction returns ``(weights_BT, metrics)``: detached per-token weights, 0 on
padding, that the per-token policy loss is multiplied by. Log-ratios are zeroed on padding before ``exp``, and a
sequence with no response token has sequence log-ratio 0 (ratio 1), so padding never yields inf or NaN.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from rl.config import AlgorithmConfig


@torch.no_grad()
def mismatch_metrics(
    train_logprobs_BT: torch.Tensor, rollout_logprobs_BT: torch.Tensor, mask_BT: torch.Tensor
) -> dict[str, float]:
    """Token-level diagnostics of mu vs pi over the response tokens (verl PR #7242, ms-swift PR #6678).

    With log r = log pi - log mu on tokens sampled from mu (Schulman's estimators of KL(mu || pi)):
    ``kl_k1`` = mean(-log r); ``kl_k3`` = mean(r - 1 - log r); ``ppl_ratio`` = ppl_pi / ppl_mu = exp(kl_k1)
    with ppl = exp(-token-mean log-prob); ``prob_corr`` = Pearson correlation of the token probabilities
    (a constant side has none: 1.0 if both sides are exactly equal, else 0.0); ``max_abs_prob_diff``.
    """
    _check_same_shape("mismatch_metrics", train_logprobs_BT, rollout_logprobs_BT, mask_BT)
    keep_BT = mask_BT > 0
    if not bool(keep_BT.any()):
        raise ValueError("mismatch_metrics needs at least one response token, but mask_BT is all 0")
    # float64: the KLs are means of tiny differences, and these few ops on N tokens are off the hot path.
    train_N = train_logprobs_BT[keep_BT].double()
    rollout_N = rollout_logprobs_BT[keep_BT].double()
    log_ratio_N = train_N - rollout_N
    kl_k1 = (-log_ratio_N).mean()
    probs_train_N, probs_rollout_N = train_N.exp(), rollout_N.exp()
    return {
        "mismatch/kl_k1": kl_k1.item(),
        "mismatch/kl_k3": (torch.expm1(log_ratio_N) - log_ratio_N).mean().item(),
        "mismatch/ppl_ratio": kl_k1.exp().item(),
        "mismatch/prob_corr": _pearson(probs_train_N, probs_rollout_N),
        "mismatch/max_abs_prob_diff": (probs_train_N - probs_rollout_N).abs().max().item(),
    }


@torch.no_grad()
def tis_weights(
    old_logprobs_BT: torch.Tensor, rollout_logprobs_BT: torch.Tensor, mask_BT: torch.Tensor, cap: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """Truncated importance sampling (Yao et al., "Your Efficient RL Framework Secretly Brings You Off-Policy RL
    Training", FlashRL): w = min(pi_old / mu, cap) per response token, 0 on padding. Multiplying the token loss by
    w re-weights tokens sampled from mu towards pi_old; the cap bounds the variance (typical cap 2).
    """
    if not cap > 0:
        raise ValueError(f"tis_weights needs cap > 0, got {cap}")
    _check_same_shape("tis_weights", old_logprobs_BT, rollout_logprobs_BT, mask_BT)
    keep_BT = mask_BT > 0
    ratio_BT = _masked_log_ratio(old_logprobs_BT, rollout_logprobs_BT, keep_BT).exp()
    weights_BT = torch.where(keep_BT, ratio_BT.clamp(max=cap), 0.0)
    num_kept = int(keep_BT.sum().item())
    if num_kept == 0:
        return weights_BT, {"mismatch/tis_clipped_frac": 0.0, "mismatch/tis_weight_mean": 0.0}
    return weights_BT, {
        "mismatch/tis_clipped_frac": (ratio_BT > cap)[keep_BT].sum().item() / num_kept,
        "mismatch/tis_weight_mean": weights_BT[keep_BT].sum().item() / num_kept,
    }


@torch.no_grad()
def geo_mask(
    old_logprobs_BT: torch.Tensor,
    rollout_logprobs_BT: torch.Tensor,
    mask_BT: torch.Tensor,
    low: float,
    high: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Geometric-mean sequence masking (Geo-MIS; Liu, Li et al., "When Speed Kills Stability"): per sequence
    g = exp(mean over its response tokens of log(pi_old / mu)), a length-invariant sequence ratio; the sequence is
    kept iff low <= g <= high. Returns ``keep_B * mask_BT``.

    Use the result as the loss mask, so rejected tokens also leave the loss denominator (slime PR #657).
    A sequence with no response token has g = 1 and is kept; metrics count only sequences with response tokens.
    """
    if not 0 < low <= 1 <= high:
        raise ValueError(f"geo_mask needs 0 < low <= 1 <= high, got low={low}, high={high}")
    _check_same_shape("geo_mask", old_logprobs_BT, rollout_logprobs_BT, mask_BT)
    keep_BT = mask_BT > 0
    log_ratio_BT = _masked_log_ratio(old_logprobs_BT, rollout_logprobs_BT, keep_BT)
    geo_ratio_B = _sequence_mean(log_ratio_BT, keep_BT).exp()
    keep_B = (geo_ratio_B >= low) & (geo_ratio_B <= high)
    new_mask_BT = mask_BT.detach() * keep_B[:, None].to(mask_BT.dtype)
    has_tokens_B = keep_BT.any(dim=-1)
    ratio_mean = geo_ratio_B[has_tokens_B].mean().item() if bool(has_tokens_B.any()) else 1.0
    return new_mask_BT, {
        **_dropped_fracs("geo", keep_BT & ~keep_B[:, None], keep_BT),
        "mismatch/geo_ratio_mean": ratio_mean,
    }


@torch.no_grad()
def opsm_mask(
    old_logprobs_BT: torch.Tensor,
    rollout_logprobs_BT: torch.Tensor,
    advantages_B_or_BT: torch.Tensor,
    mask_BT: torch.Tensor,
    delta: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Off-policy sequence masking of DeepSeek-V3.2 (arXiv 2512.02556; reference §2 item 3).

    The paper sets M_it = 0 iff A_it < 0 and (1/|o_i|) sum_t log(pi_old / pi_theta) > delta, where its pi_old is
    the inference engine's (sampling) probability. Here the behaviour policy is mu (``rollout_logprobs_BT``) and
    pi_theta is the trainer's pre-update log-prob (``old_logprobs_BT``), so

        seq_kl_i = mean over the response tokens of sequence i of (rollout_lp - old_lp),

    and a token is masked iff its advantage < 0 and seq_kl_i > delta. Taking pi_theta at its pre-update value
    (rather than the live policy) makes the mask one constant per rollout batch across minibatch steps; at
    the first step they coincide. With [B] advantages (or [B, T] constant along T, as in GRPO) this masks whole
    sequences: negative-advantage ones whose geometric-mean ratio pi_theta / mu is below exp(-delta). Positive-
    advantage sequences are always kept ("the model learns most from its own mistakes; highly off-policy
    negatives hurt"). A sequence with no response token has seq_kl 0 and is kept. Returns ``M * mask_BT``.
    """
    if not delta >= 0:
        raise ValueError(f"opsm_mask needs delta >= 0, got {delta}")
    _check_same_shape("opsm_mask", old_logprobs_BT, rollout_logprobs_BT, mask_BT)
    advantages_BT = _advantages_BT(advantages_B_or_BT, mask_BT.shape)
    keep_BT = mask_BT > 0
    log_ratio_BT = _masked_log_ratio(rollout_logprobs_BT, old_logprobs_BT, keep_BT)
    off_policy_B = _sequence_mean(log_ratio_BT, keep_BT) > delta
    drop_BT = keep_BT & (advantages_BT < 0) & off_policy_B[:, None]
    new_mask_BT = torch.where(drop_BT, 0.0, mask_BT.detach())
    return new_mask_BT, _dropped_fracs("opsm", drop_BT, keep_BT)


# (cfg, old_logprobs_BT, rollout_logprobs_BT, advantages_B_or_BT, mask_BT) -> (weights_BT, metrics)
CorrectionFn = Callable[
    [AlgorithmConfig, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    tuple[torch.Tensor, dict[str, float]],
]


def _no_correction(
    cfg: AlgorithmConfig,
    old_BT: torch.Tensor,
    rollout_BT: torch.Tensor,
    adv: torch.Tensor,
    mask_BT: torch.Tensor,
) -> tuple[torch.Tensor, dict[str, float]]:
    return mask_BT.detach().clone(), {}


CORRECTIONS: dict[str, CorrectionFn] = {
    "none": _no_correction,
    "tis": lambda cfg, old_BT, rollout_BT, adv, mask_BT: tis_weights(
        old_BT, rollout_BT, mask_BT, cfg.tis_cap
    ),
    "geo_mask": lambda cfg, old_BT, rollout_BT, adv, mask_BT: geo_mask(
        old_BT, rollout_BT, mask_BT, cfg.geo_low, cfg.geo_high
    ),
    "opsm": lambda cfg, old_BT, rollout_BT, adv, mask_BT: opsm_mask(
        old_BT, rollout_BT, adv, mask_BT, cfg.opsm_delta
    ),
}


def apply_correction(
    cfg: AlgorithmConfig,
    old_logprobs_BT: torch.Tensor,
    rollout_logprobs_BT: torch.Tensor,
    advantages_B_or_BT: torch.Tensor,
    mask_BT: torch.Tensor,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The correction ``algorithm.correction`` names, with its parameters from the same config: detached
    ``weights_BT`` (0 on padding) to multiply the token loss by.
    "none" returns a copy of ``mask_BT``."""
    if cfg.correction not in CORRECTIONS:
        raise ValueError(
            f"unknown mismatch correction {cfg.correction!r}; valid names: {sorted(CORRECTIONS)}"
        )
    return CORRECTIONS[cfg.correction](cfg, old_logprobs_BT, rollout_logprobs_BT, advantages_B_or_BT, mask_BT)


def _check_same_shape(fn_name: str, *tensors_BT: torch.Tensor) -> None:
    shapes = [tuple(t.shape) for t in tensors_BT]
    if len(set(shapes)) != 1 or len(shapes[0]) != 2:
        raise ValueError(f"{fn_name} inputs must all be [B, T] of one shape, got {shapes}")


def _advantages_BT(advantages_B_or_BT: torch.Tensor, shape_BT: torch.Size) -> torch.Tensor:
    if tuple(advantages_B_or_BT.shape) == tuple(shape_BT):
        return advantages_B_or_BT.detach()
    if tuple(advantages_B_or_BT.shape) == tuple(shape_BT[:1]):
        return advantages_B_or_BT.detach()[:, None].expand(shape_BT)
    raise ValueError(
        f"advantages must be [B] or [B, T] with [B, T] = {list(shape_BT)}, got {list(advantages_B_or_BT.shape)}"
    )


def _masked_log_ratio(num_BT: torch.Tensor, den_BT: torch.Tensor, keep_BT: torch.Tensor) -> torch.Tensor:
    """log(num / den) on response tokens and exactly 0 on padding, in at least float32, detached."""
    dtype = torch.promote_types(torch.promote_types(num_BT.dtype, den_BT.dtype), torch.float32)
    return torch.where(keep_BT, num_BT.detach().to(dtype) - den_BT.detach().to(dtype), 0.0)


def _sequence_mean(values_BT: torch.Tensor, keep_BT: torch.Tensor) -> torch.Tensor:
    """Mean over each row's response tokens of values that are 0 on padding; 0 for a row without any."""
    return values_BT.sum(dim=-1) / keep_BT.sum(dim=-1).clamp(min=1)


def _dropped_fracs(prefix: str, drop_BT: torch.Tensor, keep_BT: torch.Tensor) -> dict[str, float]:
    """Fractions of sequences (with response tokens) and of response tokens that a mask removed."""
    num_seqs, num_tokens = int(keep_BT.any(dim=-1).sum().item()), int(keep_BT.sum().item())
    return {
        f"mismatch/{prefix}_masked_seq_frac": drop_BT.any(dim=-1).sum().item() / max(num_seqs, 1),
        f"mismatch/{prefix}_masked_token_frac": drop_BT.sum().item() / max(num_tokens, 1),
    }


def _pearson(x_N: torch.Tensor, y_N: torch.Tensor) -> float:
    """Pearson correlation. It is undefined when a side is constant (e.g. one token, or both sides putting
    probability 1 everywhere): then 1.0 if the two sides are exactly equal, else 0.0."""
    if bool((x_N == x_N[0]).all()) or bool((y_N == y_N[0]).all()):
        return 1.0 if torch.equal(x_N, y_N) else 0.0
    x_centered_N, y_centered_N = x_N - x_N.mean(), y_N - y_N.mean()
    cov = (x_centered_N * y_centered_N).sum()
    corr = cov / ((x_centered_N**2).sum() * (y_centered_N**2).sum()).sqrt()
    return corr.clamp(-1.0, 1.0).item()
