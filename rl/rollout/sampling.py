"""Token sampling shared by the rollout engines' decode loops: top-k/top-p filtering, the draw, log-probs.

The log-prob recorded for a sampled token is ``log_softmax(logits / temperature)[token]`` -- the distribution
the trainer's forward computes at the same temperature -- before top-k/top-p truncation (which only decides
what may be sampled).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from rl.types import SamplingParams


def filter_logits(logits_BV: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Set logits outside the top-k and outside the top-p nucleus to -inf (the most likely token is kept)."""
    if top_k > 0 and top_k < logits_BV.shape[-1]:
        kth = torch.topk(logits_BV, top_k, dim=-1).values[..., -1:]
        logits_BV = logits_BV.masked_fill(logits_BV < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits_BV, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        # drop a token when the mass before it already reaches top_p
        drop_sorted = (cumulative - sorted_logits.softmax(-1)) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits_BV = logits_BV.masked_fill(drop, float("-inf"))
    return logits_BV


def multinomial(probs_BV: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One token per row drawn from ``probs`` by ``torch.multinomial`` (the dynamic loop's draw)."""
    return torch.multinomial(probs_BV, 1, generator=generator)[:, 0]


def exponential_race(probs_BV: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One token per row drawn from ``probs`` (rows sum to 1): ``argmax(p / E)`` with E ~ Exp(1) is a sample
    of the categorical (the exponential race); unlike ``torch.multinomial`` it needs no host sync, so it can
    live inside a CUDA graph (the static decoder's draw)."""
    noise = torch.empty_like(probs_BV).exponential_(generator=generator).clamp_min_(1e-20)
    return (probs_BV / noise).argmax(-1)


Draw = Callable[[torch.Tensor, "torch.Generator | None"], torch.Tensor]


def sample_tokens(
    logits_BV: torch.Tensor,
    params: SamplingParams,
    generator: torch.Generator | None,
    draw: Draw = multinomial,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Next tokens [B] and their log-probs [B] under ``logits / temperature`` (greedy at temperature 0);
    ``draw`` picks the sampled token from the top-k/top-p filtered probabilities."""
    logits_BV = logits_BV.float()
    if params.temperature == 0:
        tokens_B = logits_BV.argmax(-1)
        return tokens_B, logits_BV.log_softmax(-1).gather(-1, tokens_B[:, None])[:, 0]
    scaled_BV = logits_BV / params.temperature
    probs_BV = filter_logits(scaled_BV, params.top_k, params.top_p).softmax(-1)
    tokens_B = draw(probs_BV, generator)
    return tokens_B, scaled_BV.log_softmax(-1).gather(-1, tokens_B[:, None])[:, 0]
