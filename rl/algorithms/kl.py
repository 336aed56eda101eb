"""Per-token estimators of KL(pi || pi_ref) from the log-probs of the sampled tokens (tokens drawn from pi).

Schulman, "Approximating KL Divergence" (http://joschu.net/blog/kl-approx.html). With log_ratio = log pi_ref - log pi
on a token sampled from pi: k1 and k3 are unbiased for the VALUE of KL(pi || pi_ref), k2 is biased. Used as
LOSSES with the sample held fixed their expected gradients differ (reference §3.4, verified in the tests):
E grad k1 = 0, E grad k2 = grad KL(pi || ref), E grad k3 = grad KL(ref || pi) (the forward KL!), and the
ratio-weighted k3 of DeepSeek-V3.2 gives grad KL(pi || ref).

All estimators share one signature ``(logprobs_BT, ref_logprobs_BT, old_logprobs_BT) -> kl_BT`` and ignore
what they do not use. Gradients flow through ``logprobs_BT`` only; the reference and old log-probs are data.
Padding (all three log-probs 0) gives 0. Masking and aggregation are the caller's.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

KLFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def kl_k1(
    logprobs_BT: torch.Tensor, ref_logprobs_BT: torch.Tensor, old_logprobs_BT: torch.Tensor
) -> torch.Tensor:
    """k1 = log pi - log pi_ref: unbiased, high variance, can be negative; zero expected gradient as a loss."""
    del old_logprobs_BT
    return logprobs_BT - ref_logprobs_BT.detach()


def kl_k2(
    logprobs_BT: torch.Tensor, ref_logprobs_BT: torch.Tensor, old_logprobs_BT: torch.Tensor
) -> torch.Tensor:
    """k2 = 1/2 (log pi - log pi_ref)^2: biased value, but its expected gradient is that of KL(pi || ref)."""
    del old_logprobs_BT
    return 0.5 * (logprobs_BT - ref_logprobs_BT.detach()) ** 2


def kl_k3(
    logprobs_BT: torch.Tensor, ref_logprobs_BT: torch.Tensor, old_logprobs_BT: torch.Tensor
) -> torch.Tensor:
    """k3 = exp(log_ratio) - log_ratio - 1 with log_ratio = log pi_ref - log pi: unbiased, >= 0, low variance.

    This is the KL term of GRPO (DeepSeekMath, arXiv 2402.03300).
    """
    del old_logprobs_BT
    log_ratio_BT = ref_logprobs_BT.detach() - logprobs_BT
    return torch.exp(log_ratio_BT) - log_ratio_BT - 1.0


def kl_k3_ratio_weighted(
    logprobs_BT: torch.Tensor, ref_logprobs_BT: torch.Tensor, old_logprobs_BT: torch.Tensor
) -> torch.Tensor:
    """(pi / pi_old) * k3: DeepSeek-V3.2's unbiased KL estimate for tokens sampled from pi_old (arXiv 2512.02556).

    The importance ratio is deliberately NOT detached: its gradient is what turns k3's expected gradient from
    grad KL(ref || pi) into grad KL(pi || ref) (slime ``ppo_utils.py``: ``kl = importance_ratio * k3``).
    """
    ratio_BT = torch.exp(logprobs_BT - old_logprobs_BT.detach())
    return ratio_BT * kl_k3(logprobs_BT, ref_logprobs_BT, old_logprobs_BT)


KL_ESTIMATORS: dict[str, KLFn] = {
    "k1": kl_k1,
    "k2": kl_k2,
    "k3": kl_k3,
    "k3_ratio": kl_k3_ratio_weighted,
}


def get_kl_fn(name: str) -> KLFn:
    """The KL estimator registered under ``name``."""
    if name not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {name!r}; valid names: {sorted(KL_ESTIMATORS)}")
    return KL_ESTIMATORS[name]
