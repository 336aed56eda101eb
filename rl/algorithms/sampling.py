"""DAPO's sampling-side pieces (arXiv 2503.14476): dynamic sampling filter and soft overlong punishment."""

from __future__ import annotations

import torch


def zero_variance_groups(rewards_NG: torch.Tensor) -> torch.Tensor:
    """``keep_N``: True for groups whose rewards are NOT all equal (DAPO dynamic sampling, §3.2).

    A group where every sample got the same reward (all right or all wrong) has zero advantage under any
    group baseline, so it adds no gradient; dynamic sampling drops it and samples more prompts instead.
    """
    if rewards_NG.dim() != 2:
        raise ValueError(f"rewards must be [N groups, G samples], got shape {tuple(rewards_NG.shape)}")
    return (rewards_NG != rewards_NG[:, :1]).any(dim=1)


def overlong_penalty(lengths_B: torch.Tensor, max_len: int, cache_len: int) -> torch.Tensor:
    """DAPO soft overlong punishment (§3.4), a reward term per response of ``lengths_B`` tokens:

        0                                   if len <= max_len - cache_len
        ((max_len - cache_len) - len) / cache_len   if max_len - cache_len < len <= max_len
        -1                                  if len > max_len

    The penalty falls linearly from 0 to -1 across the last ``cache_len`` tokens of the budget.
    """
    if not 0 < cache_len < max_len:
        raise ValueError(
            f"overlong_penalty needs 0 < cache_len < max_len, got cache_len={cache_len}, max_len={max_len}"
        )
    soft_limit = max_len - cache_len
    lengths_B = lengths_B.to(torch.float32)
    ramp_B = (soft_limit - lengths_B) / cache_len
    penalty_B = torch.where(lengths_B <= soft_limit, torch.zeros_like(lengths_B), ramp_B)
    return torch.where(lengths_B > max_len, torch.full_like(lengths_B, -1.0), penalty_B)
