"""Group-relative advantages: one scalar per sampled completion from the G rewards of its prompt's group.

Every estimator maps ``rewards_NG`` (N prompts x G samples) to ``advantages_NG`` and returns
``(advantages_NG, metrics)``. A group whose rewards are all equal carries no learning signal and gets exactly
0 advantage in every estimator (float round-off in the group mean would otherwise leave tiny non-zero values,
which GRPO's std division then blows up, e.g. to ~7e-3 for eight rewards of 0.1).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

AdvantageFn = Callable[..., tuple[torch.Tensor, dict[str, float]]]


def grpo(rewards_NG: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, dict[str, float]]:
    """GRPO group z-score (DeepSeekMath, arXiv 2402.03300): A_i = (R_i - mean R) / (std R + eps).

    The std is the unbiased (Bessel-corrected) one, as in DeepSeekMath, TRL and verl, so G >= 2.
    """
    _check_rewards(rewards_NG, min_group_size=2, name="grpo")
    mean_N1 = rewards_NG.mean(dim=1, keepdim=True)
    std_N1 = rewards_NG.std(dim=1, keepdim=True)
    advantages_NG = _zero_constant_groups((rewards_NG - mean_N1) / (std_N1 + eps), rewards_NG)
    return advantages_NG, _metrics(advantages_NG, rewards_NG)


def dr_grpo(rewards_NG: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean-centred advantage without std division: A_i = R_i - mean R.

    Dr. GRPO (arXiv 2503.20783) and DeepSeek-V3.2 (arXiv 2512.02556) drop the std, which up-weights
    prompts whose rewards barely vary (too easy or too hard).
    """
    _check_rewards(rewards_NG, min_group_size=1, name="dr_grpo")
    advantages_NG = rewards_NG - rewards_NG.mean(dim=1, keepdim=True)
    advantages_NG = _zero_constant_groups(advantages_NG, rewards_NG)
    return advantages_NG, _metrics(advantages_NG, rewards_NG)


def rloo(rewards_NG: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """REINFORCE leave-one-out (arXiv 2402.14740): A_i = R_i - 1/(G-1) * sum_{j != i} R_j.

    The baseline of sample i excludes R_i, so it is independent of sample i and the estimate unbiased.
    """
    _check_rewards(rewards_NG, min_group_size=2, name="rloo")
    group_size = rewards_NG.shape[1]
    others_mean_NG = (rewards_NG.sum(dim=1, keepdim=True) - rewards_NG) / (group_size - 1)
    advantages_NG = _zero_constant_groups(rewards_NG - others_mean_NG, rewards_NG)
    return advantages_NG, _metrics(advantages_NG, rewards_NG)


ADVANTAGES: dict[str, AdvantageFn] = {"grpo": grpo, "dr_grpo": dr_grpo, "rloo": rloo}


def get_advantage_fn(name: str) -> AdvantageFn:
    """The advantage estimator registered under ``name``."""
    if name not in ADVANTAGES:
        raise ValueError(f"unknown advantage estimator {name!r}; valid names: {sorted(ADVANTAGES)}")
    return ADVANTAGES[name]


def _check_rewards(rewards_NG: torch.Tensor, min_group_size: int, name: str) -> None:
    if rewards_NG.dim() != 2 or not rewards_NG.is_floating_point():
        raise ValueError(
            f"{name}: rewards must be a float tensor of shape [N groups, G samples], "
            f"got dtype {rewards_NG.dtype} and shape {tuple(rewards_NG.shape)}"
        )
    if rewards_NG.shape[0] == 0:
        raise ValueError(f"{name}: rewards have no groups (N=0)")
    if rewards_NG.shape[1] < min_group_size:
        raise ValueError(
            f"{name} needs at least {min_group_size} samples per group, got G={rewards_NG.shape[1]}"
        )


def _constant_groups_N1(rewards_NG: torch.Tensor) -> torch.Tensor:
    return (rewards_NG == rewards_NG[:, :1]).all(dim=1, keepdim=True)


def _zero_constant_groups(advantages_NG: torch.Tensor, rewards_NG: torch.Tensor) -> torch.Tensor:
    return torch.where(_constant_groups_N1(rewards_NG), torch.zeros_like(advantages_NG), advantages_NG)


def _metrics(advantages_NG: torch.Tensor, rewards_NG: torch.Tensor) -> dict[str, float]:
    return {
        "adv/mean": advantages_NG.mean().item(),
        "adv/std": advantages_NG.std(correction=0).item(),
        "adv/min": advantages_NG.min().item(),
        "adv/max": advantages_NG.max().item(),
        "adv/zero_std_groups_frac": _constant_groups_N1(rewards_NG).float().mean().item(),
    }
