"""Reduce a per-token loss [B, T] to the scalar that is back-propagated.

Every mode divides by counts of the WHOLE optimizer batch (``LossNormalizer``), never by counts of the
micro-batch at hand, so the aggregates of the micro-batches (and ranks) of one step sum to the aggregate of
the full batch and gradient accumulation is exact whatever the split.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from rl.types import LossNormalizer

AggregationFn = Callable[[torch.Tensor, torch.Tensor, LossNormalizer], torch.Tensor]


def token_mean(loss_BT: torch.Tensor, mask_BT: torch.Tensor, norm: LossNormalizer) -> torch.Tensor:
    """Mean over all trained tokens of the batch: DAPO's token-level loss (arXiv 2503.14476, §3.3)."""
    _require_positive(norm, "num_tokens")
    return (loss_BT * mask_BT).sum() / norm.num_tokens


def seq_mean_token_mean(loss_BT: torch.Tensor, mask_BT: torch.Tensor, norm: LossNormalizer) -> torch.Tensor:
    """Token mean within each sequence, then mean over sequences: original GRPO (arXiv 2402.03300).

    A sequence without trained tokens contributes 0 but still counts in ``norm.num_sequences``.
    """
    _require_positive(norm, "num_sequences")
    per_seq_B = (loss_BT * mask_BT).sum(dim=1) / mask_BT.sum(dim=1).clamp(min=1.0)
    return per_seq_B.sum() / norm.num_sequences


def seq_mean_token_sum(loss_BT: torch.Tensor, mask_BT: torch.Tensor, norm: LossNormalizer) -> torch.Tensor:
    """Token sum divided by a constant, num_sequences * max_response_tokens (Dr. GRPO, arXiv 2503.20783):
    no length normaliser, so long wrong answers are not diluted."""
    _require_positive(norm, "num_sequences")
    _require_positive(norm, "max_response_tokens")
    return (loss_BT * mask_BT).sum() / (norm.num_sequences * norm.max_response_tokens)


AGGREGATIONS: dict[str, AggregationFn] = {
    "token_mean": token_mean,
    "seq_mean_token_mean": seq_mean_token_mean,
    "seq_mean_token_sum": seq_mean_token_sum,
}


def aggregate(loss_BT: torch.Tensor, mask_BT: torch.Tensor, mode: str, norm: LossNormalizer) -> torch.Tensor:
    """Scalar loss of ``loss_BT`` over ``mask_BT`` by the aggregation ``mode`` (a key of AGGREGATIONS)."""
    if mode not in AGGREGATIONS:
        raise ValueError(f"unknown loss aggregation {mode!r}; valid modes: {sorted(AGGREGATIONS)}")
    if loss_BT.shape != mask_BT.shape or loss_BT.dim() != 2:
        raise ValueError(
            f"loss and mask must be [B, T] of one shape, got {tuple(loss_BT.shape)}, {tuple(mask_BT.shape)}"
        )
    return AGGREGATIONS[mode](loss_BT, mask_BT, norm)


def _require_positive(norm: LossNormalizer, field: str) -> None:
    if getattr(norm, field) <= 0:
        raise ValueError(f"LossNormalizer.{field} must be > 0 for this aggregation, got {norm}")
