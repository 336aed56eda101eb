"""rl.algorithms: literal tensors with hand-worked expected values (the arithmetic is in the comments)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from rl.algorithms.advantages import ADVANTAGES, dr_grpo, get_advantage_fn, grpo, rloo
from rl.algorithms.aggregation import AGGREGATIONS, aggregate
from rl.algorithms.kl import KL_ESTIMATORS, get_kl_fn, kl_k1, kl_k2, kl_k3, kl_k3_ratio_weighted
from rl.algorithms.policy_loss import POLICY_LOSSES, cispo, get_policy_loss_fn, gspo, ppo_clip
from rl.algorithms.sampling import overlong_penalty, zero_variance_groups
from rl.types import LossNormalizer

# ----------------------------------------------------------------------------------------------- advantages


def test_grpo_z_scores_each_group_with_unbiased_std():
    rewards_NG = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 3.0]])
    advantages_NG, metrics = grpo(rewards_NG, eps=0.0)
    # group 0: mean 2, deviations (-1, 0, 1), unbiased var (1 + 0 + 1) / 2 = 1 -> std 1 -> (-1, 0, 1)
    # group 1: mean 1, deviations (-1, -1, 2), unbiased var (1 + 1 + 4) / 2 = 3 -> std sqrt(3) = 1.7320508
    #          -> (-1/sqrt 3, -1/sqrt 3, 2/sqrt 3) = (-0.5773503, -0.5773503, 1.1547005)
    expected_NG = torch.tensor([[-1.0, 0.0, 1.0], [-0.5773503, -0.5773503, 1.1547005]])
    assert_close(advantages_NG, expected_NG)
    assert metrics["adv/zero_std_groups_frac"] == 0.0
    assert metrics["adv/mean"] == pytest.approx(0.0, abs=1e-6)  # each group sums to 0
    assert metrics["adv/max"] == pytest.approx(1.1547005)
    assert metrics["adv/min"] == pytest.approx(-1.0)


def test_grpo_eps_is_added_to_the_std():
    # mean 0.5, deviations +-0.5, unbiased var 4 * 0.25 / 3 = 1/3, std 0.5773503; with eps = 0.5:
    # 0.5 / (0.5773503 + 0.5) = 0.4641016
    advantages_NG, _ = grpo(torch.tensor([[1.0, 0.0, 0.0, 1.0]]), eps=0.5)
    assert_close(advantages_NG, torch.tensor([[0.4641016, -0.4641016, -0.4641016, 0.4641016]]))


def test_constant_groups_get_exactly_zero_advantage():
    # In float32 the mean of eight 0.1s is not exactly 0.1, so a naive (r - mean) / (std + 1e-6) gives ~7e-3
    # here: the estimators must zero constant groups explicitly.
    rewards_NG = torch.tensor([[0.1] * 8, [0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0]])
    for name, fn in ADVANTAGES.items():
        advantages_NG, metrics = fn(rewards_NG)
        assert torch.equal(advantages_NG[0], torch.zeros(8)), name
        assert advantages_NG[1].abs().sum() > 0, name
        assert metrics["adv/zero_std_groups_frac"] == 0.5, name


def test_dr_grpo_only_subtracts_the_group_mean():
    # group 0: mean 2 -> (-1, 0, 1); group 1: mean 1 -> (-1, -1, 2); no std division
    advantages_NG, metrics = dr_grpo(torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 3.0]]))
    assert_close(advantages_NG, torch.tensor([[-1.0, 0.0, 1.0], [-1.0, -1.0, 2.0]]))
    # all six advantages: mean 0, population var (1 + 0 + 1 + 1 + 1 + 4) / 6 = 4/3 -> std 1.1547005
    assert metrics["adv/std"] == pytest.approx(1.1547005)


def test_rloo_subtracts_the_mean_of_the_other_samples():
    advantages_NG, _ = rloo(torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 3.0]]))
    # group 0: 1 - (2+3)/2 = -1.5, 2 - (1+3)/2 = 0, 3 - (1+2)/2 = 1.5
    # group 1: 0 - (0+3)/2 = -1.5, 0 - (0+3)/2 = -1.5, 3 - (0+0)/2 = 3
    assert_close(advantages_NG, torch.tensor([[-1.5, 0.0, 1.5], [-1.5, -1.5, 3.0]]))


@pytest.mark.parametrize("fn", [rloo, grpo])
def test_group_of_one_is_rejected(fn):
    with pytest.raises(ValueError, match="at least 2 samples per group, got G=1"):
        fn(torch.tensor([[1.0], [0.0]]))


def test_rewards_must_be_a_float_matrix():
    with pytest.raises(ValueError, match=r"shape \[N groups, G samples\]"):
        dr_grpo(torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="float tensor"):
        dr_grpo(torch.tensor([[1, 2]]))


def test_advantage_registry():
    assert set(ADVANTAGES) == {"grpo", "dr_grpo", "rloo"}
    assert get_advantage_fn("rloo") is rloo
    with pytest.raises(ValueError, match=r"unknown advantage estimator 'gae'.*\['dr_grpo', 'grpo', 'rloo'\]"):
        get_advantage_fn("gae")


# ---------------------------------------------------------------------------------------------- policy loss


def _ppo_case():
    """Six trained tokens covering each branch of the min, and one masked token."""
    ratios = [1.5, 0.5, 0.5, 1.5, 1.0, 2.0, math.e**3]
    advantages_BT = torch.tensor([[1.0, 1.0, -1.0, -1.0, 2.0, 0.0, 5.0]])
    old_logprobs_BT = torch.tensor([[-1.0, -2.0, -0.5, -1.5, -0.7, -3.0, -4.0]])
    logprobs_BT = (old_logprobs_BT + torch.tensor([ratios]).log()).requires_grad_(True)
    mask_BT = torch.tensor([[1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]])
    return logprobs_BT, old_logprobs_BT.requires_grad_(True), advantages_BT.requires_grad_(True), mask_BT


def test_ppo_clip_loss_and_metrics():
    logprobs_BT, old_logprobs_BT, advantages_BT, mask_BT = _ppo_case()
    loss_BT, metrics = ppo_clip(logprobs_BT, old_logprobs_BT, advantages_BT, mask_BT)
    # clip range [0.8, 1.28]; loss = -min(r A, clip(r) A):
    # t0 r=1.5 A=+1: min(1.5, 1.28)   = 1.28 clipped   -> -1.28
    # t1 r=0.5 A=+1: min(0.5, 0.8)    = 0.5            -> -0.5
    # t2 r=0.5 A=-1: min(-0.5, -0.8)  = -0.8 clipped   -> 0.8
    # t3 r=1.5 A=-1: min(-1.5, -1.28) = -1.5           -> 1.5
    # t4 r=1.0 A=+2: min(2, 2)        = 2              -> -2
    # t5 r=2.0 A=0:  min(0, 0)        = 0 (a tie is not clipped) -> 0
    # t6 masked -> 0
    expected_BT = torch.tensor([[-1.28, -0.5, 0.8, 1.5, -2.0, 0.0, 0.0]])
    assert_close(loss_BT, expected_BT)
    assert metrics["train/clip_frac"] == pytest.approx(2 / 6)  # t0, t2 of the 6 trained tokens
    assert metrics["train/ratio_mean"] == pytest.approx((1.5 + 0.5 + 0.5 + 1.5 + 1.0 + 2.0) / 6)  # 7/6
    assert metrics["train/ratio_max"] == pytest.approx(2.0)  # the masked e^3 = 20.1 is excluded


def test_ppo_clip_gradient_is_zero_on_clipped_and_masked_tokens_only():
    logprobs_BT, old_logprobs_BT, advantages_BT, mask_BT = _ppo_case()
    loss_BT, _ = ppo_clip(logprobs_BT, old_logprobs_BT, advantages_BT, mask_BT)
    loss_BT.sum().backward()
    # unclipped branch: d(-r A)/d logp = -r A. t1: -0.5*1 = -0.5; t3: -1.5*-1 = 1.5; t4: -1*2 = -2
    # t0, t2 clipped -> 0; t5 has A = 0 -> 0; t6 masked -> 0
    assert logprobs_BT.grad is not None
    assert_close(logprobs_BT.grad, torch.tensor([[0.0, -0.5, 0.0, 1.5, -2.0, 0.0, 0.0]]))
    assert old_logprobs_BT.grad is None and advantages_BT.grad is None


def test_ppo_clip_higher_is_asymmetric():
    logprobs_BT = torch.tensor([[1.25, 0.75]]).log()
    zeros_BT = torch.zeros(1, 2)
    advantages_BT = torch.tensor([[1.0, -1.0]])
    mask_BT = torch.ones(1, 2)
    # r=1.25 A=+1: inside [0.8, 1.28] -> -1.25;  symmetric 0.2: min(1.25, 1.2) = 1.2 -> -1.2
    # r=0.75 A=-1: min(-0.75, -0.8) = -0.8 -> 0.8 under both (the lower bound is 0.8 in both)
    loss_higher_BT, _ = ppo_clip(logprobs_BT, zeros_BT, advantages_BT, mask_BT, clip_low=0.2, clip_high=0.28)
    loss_sym_BT, _ = ppo_clip(logprobs_BT, zeros_BT, advantages_BT, mask_BT, clip_low=0.2, clip_high=0.2)
    assert_close(loss_higher_BT, torch.tensor([[-1.25, 0.8]]))
    assert_close(loss_sym_BT, torch.tensor([[-1.2, 0.8]]))


def test_ppo_clip_padding_with_overflowing_ratio_gives_finite_gradients():
    # t0 trained, r = 0.9, A = +1: unclipped (0.9 in [0.8, 1.28]) -> loss -0.9, gradient -r A = -0.9.
    # t1 masked with log-ratio 0 - (-200) = 200: exp overflows float32 to inf, which must not leak NaN.
    logprobs_BT = torch.tensor([[math.log(0.9), 0.0]], requires_grad=True)
    old_logprobs_BT = torch.tensor([[0.0, -200.0]])
    loss_BT, metrics = ppo_clip(logprobs_BT, old_logprobs_BT, torch.ones(1, 2), torch.tensor([[1.0, 0.0]]))
    loss_BT.sum().backward()
    assert logprobs_BT.grad is not None
    assert_close(loss_BT.detach(), torch.tensor([[-0.9, 0.0]]))
    assert_close(logprobs_BT.grad, torch.tensor([[-0.9, 0.0]]))
    assert metrics["train/ratio_max"] == pytest.approx(0.9)  # the max over trained tokens only


def test_ppo_clip_fully_masked_batch_has_zero_loss_and_metrics():
    logprobs_BT = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    loss_BT, metrics = ppo_clip(logprobs_BT, torch.zeros(1, 2), torch.ones(1, 2), torch.zeros(1, 2))
    assert torch.equal(loss_BT, torch.zeros(1, 2))
    assert metrics == {"train/clip_frac": 0.0, "train/ratio_mean": 0.0, "train/ratio_max": 0.0}


def test_ppo_clip_rejects_bad_inputs():
    ones_BT = torch.ones(2, 3)
    with pytest.raises(ValueError, match="one shape"):
        ppo_clip(ones_BT, ones_BT, torch.ones(2, 4), ones_BT)
    with pytest.raises(ValueError, match="0 <= clip_low < 1"):
        ppo_clip(ones_BT, ones_BT, ones_BT, ones_BT, clip_low=1.0)


def test_policy_loss_registry():
    assert get_policy_loss_fn("ppo_clip") is ppo_clip and get_policy_loss_fn("gspo") is gspo
    with pytest.raises(ValueError, match=r"unknown policy loss 'sapo'.*\['cispo', 'gspo', 'ppo_clip'\]"):
        get_policy_loss_fn("sapo")
    assert set(POLICY_LOSSES) == {"ppo_clip", "gspo", "cispo"}


def test_gspo_uses_one_ratio_per_sequence_and_its_gradient():
    """Hand-worked: sequence 0 has log-ratios 0.2 and -0.2 (mean 0: s = 1, inside any clip), sequence 1 has
    0.3 and 0.1 over its two trained tokens (mean 0.2: s = e^0.2 = 1.2214, clipped at 1.0004 for A > 0)."""
    old_BT = torch.zeros(2, 3)
    logp_BT = torch.tensor([[0.2, -0.2, 9.0], [0.3, 0.1, 9.0]], requires_grad=True)
    mask_BT = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    adv_BT = torch.tensor([[-1.0, -1.0, -1.0], [2.0, 2.0, 2.0]])
    loss_BT, metrics = gspo(logp_BT, old_BT, adv_BT, mask_BT)
    s1 = math.exp(0.2)
    assert torch.allclose(loss_BT, torch.tensor([[1.0, 1.0, 0.0], [-2 * 1.0004, -2 * 1.0004, 0.0]]))
    assert metrics["train/clip_frac"] == 0.5 and metrics["train/ratio_max"] == pytest.approx(s1, rel=1e-6)
    # seq-mean-token-mean of the loss = -(1/G) sum_i min(s_i A_i, clip(s_i) A_i); its gradient is
    # s_i * A_i / |o_i| on each trained token of an unclipped sequence, 0 on a clipped one and on padding
    loss = (loss_BT.sum(-1) / mask_BT.sum(-1)).mean()
    loss.backward()
    assert logp_BT.grad is not None
    assert torch.allclose(logp_BT.grad, torch.tensor([[0.25, 0.25, 0.0], [0.0, 0.0, 0.0]]))


def test_gspo_gradient_is_the_sequence_ratio_gradient():
    """Unclipped, the per-token form's gradient equals autograd through s_i = exp(mean_t log r_it) itself."""
    torch.manual_seed(0)
    old_BT = torch.randn(3, 5) * 0.01
    logp_BT = (old_BT + torch.randn(3, 5) * 0.01).requires_grad_(True)
    mask_BT = torch.tensor([[1.0] * 5, [1.0] * 3 + [0.0] * 2, [0.0] + [1.0] * 4])
    adv_BT = torch.tensor([[1.0] * 5, [-0.5] * 5, [2.0] * 5])
    loss_BT, _ = gspo(logp_BT, old_BT, adv_BT, mask_BT, clip_low=0.5, clip_high=0.5)
    (loss_BT.sum(-1) / mask_BT.sum(-1)).mean().backward()
    assert logp_BT.grad is not None
    ours = logp_BT.grad.clone()
    logp_BT.grad = None
    s_B = torch.exp(((logp_BT - old_BT) * mask_BT).sum(-1) / mask_BT.sum(-1))
    (-(s_B * adv_BT[:, 0]).mean()).backward()
    assert logp_BT.grad is not None
    assert torch.allclose(ours, logp_BT.grad, atol=1e-6)


def test_cispo_clips_the_weight_and_keeps_every_token_gradient():
    """Hand-worked: ratios e^0 = 1, e^0.5 = 1.6487 (weight clipped to 1.28) and e^-1 = 0.3679 (no lower bound);
    the loss is -w * A * logp with w detached, so d loss / d logp = -w * A on every trained token -- where PPO-clip
    gives the clipped token (r > 1.28, A > 0) no gradient at all."""
    old_BT = torch.zeros(1, 4)
    logp_BT = torch.tensor([[0.0, 0.5, -1.0, 7.0]], requires_grad=True)
    mask_BT = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    adv_BT = torch.full((1, 4), 2.0)
    loss_BT, metrics = cispo(logp_BT, old_BT, adv_BT, mask_BT)
    w = [1.0, 1.28, math.exp(-1.0)]
    assert torch.allclose(loss_BT, torch.tensor([[-2 * w[0] * 0.0, -2 * w[1] * 0.5, -2 * w[2] * -1.0, 0.0]]))
    loss_BT.sum().backward()
    assert logp_BT.grad is not None
    assert torch.allclose(logp_BT.grad, torch.tensor([[-2 * w[0], -2 * w[1], -2 * w[2], 0.0]]))
    assert metrics["train/clip_frac"] == pytest.approx(1 / 3)
    ppo_logp_BT = logp_BT.detach().clone().requires_grad_(True)
    ppo_clip(ppo_logp_BT, old_BT, adv_BT, mask_BT)[0].sum().backward()
    assert ppo_logp_BT.grad is not None
    assert ppo_logp_BT.grad[0, 1] == 0.0  # what CISPO exists to avoid


def test_sequence_level_losses_reject_bad_inputs():
    ones_BT = torch.ones(2, 3)
    with pytest.raises(ValueError, match="one shape"):
        gspo(ones_BT, ones_BT, torch.ones(2, 4), ones_BT)
    with pytest.raises(ValueError, match="0 <= clip_low < 1"):
        gspo(ones_BT, ones_BT, ones_BT, ones_BT, clip_low=1.0)
    with pytest.raises(ValueError, match="clip_high >= 0"):
        cispo(ones_BT, ones_BT, ones_BT, ones_BT, clip_high=-0.1)


# ---------------------------------------------------------------------------------------------- aggregation

# 9s sit on masked positions to show they are ignored.
LOSS_BT = torch.tensor([[1.0, 2.0, 3.0, 9.0], [4.0, 9.0, 9.0, 9.0], [5.0, 7.0, 9.0, 9.0]])
MASK_BT = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
NORM = LossNormalizer(num_tokens=6, num_sequences=3, max_response_tokens=4)


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("token_mean", 22 / 6),  # masked sum (1+2+3) + 4 + (5+7) = 22 over 6 tokens = 3.6667
        ("seq_mean_token_mean", 4.0),  # per-sequence means 6/3 = 2, 4/1 = 4, 12/2 = 6 -> (2+4+6)/3 = 4
        ("seq_mean_token_sum", 22 / 12),  # 22 / (3 sequences * 4 max tokens) = 1.8333
    ],
)
def test_aggregate_modes(mode, expected):
    assert aggregate(LOSS_BT, MASK_BT, mode, NORM).item() == pytest.approx(expected)


@pytest.mark.parametrize("mode", sorted(AGGREGATIONS))
def test_micro_batch_aggregates_sum_to_the_full_batch_aggregate(mode):
    gen = torch.Generator().manual_seed(0)
    loss_BT = torch.randn(7, 5, generator=gen, dtype=torch.float64)
    mask_BT = (torch.rand(7, 5, generator=gen) < 0.6).double()
    mask_BT[3] = 0.0  # a sequence with no trained token still counts as a sequence
    norm = LossNormalizer(num_tokens=int(mask_BT.sum()), num_sequences=7, max_response_tokens=5)
    full = aggregate(loss_BT, mask_BT, mode, norm)
    # uneven micro-batches, each normalised by the GLOBAL counts
    micro_sum = sum(
        aggregate(loss_BT[s], mask_BT[s], mode, norm) for s in (slice(0, 1), slice(1, 4), slice(4, 7))
    )
    assert_close(micro_sum, full)
    # a per-micro-batch normaliser would not add up: the invariant is not vacuous for this data
    local_sum = sum(
        aggregate(loss_BT[s], mask_BT[s], mode, _local_norm(mask_BT[s], 5))
        for s in (slice(0, 1), slice(1, 4), slice(4, 7))
    )
    assert not torch.allclose(torch.as_tensor(local_sum), full)


def _local_norm(mask_BT: torch.Tensor, max_response_tokens: int) -> LossNormalizer:
    return LossNormalizer(
        num_tokens=max(int(mask_BT.sum()), 1),
        num_sequences=mask_BT.shape[0],
        max_response_tokens=max_response_tokens,
    )


def test_aggregation_gradient_is_mask_over_normaliser():
    loss_BT = LOSS_BT.clone().requires_grad_(True)
    aggregate(loss_BT, MASK_BT, "token_mean", NORM).backward()
    assert loss_BT.grad is not None
    assert_close(loss_BT.grad, MASK_BT / 6)  # d(sum(loss*mask)/6)/d loss = mask/6


def test_aggregate_errors():
    with pytest.raises(ValueError, match=r"unknown loss aggregation 'sum'.*'seq_mean_token_mean'"):
        aggregate(LOSS_BT, MASK_BT, "sum", NORM)
    with pytest.raises(ValueError, match="num_tokens must be > 0"):
        aggregate(LOSS_BT, MASK_BT, "token_mean", LossNormalizer(0, 3, 4))
    with pytest.raises(ValueError, match="num_sequences must be > 0"):
        aggregate(LOSS_BT, MASK_BT, "seq_mean_token_mean", LossNormalizer(6, 0, 4))
    with pytest.raises(ValueError, match="max_response_tokens must be > 0"):
        aggregate(LOSS_BT, MASK_BT, "seq_mean_token_sum", LossNormalizer(6, 3, 0))
    with pytest.raises(ValueError, match="one shape"):
        aggregate(LOSS_BT, MASK_BT[:, :3], "token_mean", NORM)


# ------------------------------------------------------------------------------------------------------- KL

LN2 = math.log(2.0)


def test_kl_estimators_on_literal_log_probs():
    # tokens: (pi, ref, old) = (0.5, 0.25, 0.25), (0.3, 0.3, 0.3), (0.25, 0.5, 0.5)
    logprobs_BT = torch.tensor([[0.5, 0.3, 0.25]]).log()
    ref_BT = torch.tensor([[0.25, 0.3, 0.5]]).log()
    old_BT = torch.tensor([[0.25, 0.3, 0.5]]).log()
    # k1 = log(pi/ref): log 2, 0, -log 2
    assert_close(kl_k1(logprobs_BT, ref_BT, old_BT), torch.tensor([[LN2, 0.0, -LN2]]))
    # k2 = (log 2)^2 / 2 = 0.2402265 for t0 and t2
    assert_close(kl_k2(logprobs_BT, ref_BT, old_BT), torch.tensor([[0.2402265, 0.0, 0.2402265]]))
    # k3 = ref/pi - log(ref/pi) - 1: t0 0.5 + log 2 - 1 = 0.1931472; t2 2 - log 2 - 1 = 0.3068528
    assert_close(kl_k3(logprobs_BT, ref_BT, old_BT), torch.tensor([[0.1931472, 0.0, 0.3068528]]))
    # k3_ratio = pi/old * k3: t0 (0.5/0.25) * 0.1931472 = 0.3862944; t2 (0.25/0.5) * 0.3068528 = 0.1534264
    assert_close(
        kl_k3_ratio_weighted(logprobs_BT, ref_BT, old_BT), torch.tensor([[0.3862944, 0.0, 0.1534264]])
    )


def test_kl_gradients_flow_through_logprobs_only():
    logprobs_BT = torch.tensor([[-0.5, -1.0]], requires_grad=True)
    ref_BT = torch.tensor([[-1.0, -0.2]], requires_grad=True)
    old_BT = torch.tensor([[-0.7, -1.1]], requires_grad=True)
    for fn in KL_ESTIMATORS.values():
        fn(logprobs_BT, ref_BT, old_BT).sum().backward()
    assert logprobs_BT.grad is not None and logprobs_BT.grad.abs().sum() > 0
    assert ref_BT.grad is None and old_BT.grad is None


def _enumerated_expectations(name: str) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """E_{x~p}[k(x)] and E_{x~p}[grad k(x)] (sample held fixed), exactly, by summing over the vocabulary.

    Each column of the [B, V] tensors is one vocabulary entry x of the state b; weighting by the detached
    p(x) is the expectation over sampling without differentiating through the sampler. Also returns the
    exact gradients of the reverse KL(p||q) and forward KL(q||p) w.r.t. the logits.
    """
    gen = torch.Generator().manual_seed(1234)
    logits_BV = torch.randn(3, 5, generator=gen, dtype=torch.float64).requires_grad_(True)
    ref_logq_BV = torch.log_softmax(torch.randn(3, 5, generator=gen, dtype=torch.float64), dim=-1)
    logp_BV = torch.log_softmax(logits_BV, dim=-1)
    p_BV = logp_BV.exp().detach()
    k_BV = get_kl_fn(name)(logp_BV, ref_logq_BV, logp_BV.detach())  # old = p, detached
    expected_value = (p_BV * k_BV).sum()
    (expected_grad_BV,) = torch.autograd.grad(expected_value, logits_BV, retain_graph=True)
    reverse_kl = (logp_BV.exp() * (logp_BV - ref_logq_BV)).sum()
    forward_kl = (ref_logq_BV.exp() * (ref_logq_BV - logp_BV)).sum()
    exact = {
        "reverse_value": reverse_kl.detach(),
        "reverse_grad": torch.autograd.grad(reverse_kl, logits_BV, retain_graph=True)[0],
        "forward_grad": torch.autograd.grad(forward_kl, logits_BV)[0],
    }
    # the two gradients must differ for the identities below to discriminate
    assert not torch.allclose(exact["reverse_grad"], exact["forward_grad"], atol=1e-3)
    return expected_value.detach(), expected_grad_BV, exact


@pytest.mark.parametrize("name", ["k1", "k3", "k3_ratio"])
def test_unbiased_estimators_match_the_reverse_kl_value(name):
    value, _, exact = _enumerated_expectations(name)
    assert_close(value, exact["reverse_value"])


def test_k2_value_is_biased():
    value, _, exact = _enumerated_expectations("k2")
    assert not torch.allclose(value, exact["reverse_value"], rtol=1e-2)


def test_k3_ratio_and_k2_expected_gradients_are_the_reverse_kl_gradient():
    for name in ("k3_ratio", "k2"):
        _, grad_BV, exact = _enumerated_expectations(name)
        assert_close(grad_BV, exact["reverse_grad"])


def test_k3_expected_gradient_is_the_forward_kl_gradient():
    _, grad_BV, exact = _enumerated_expectations("k3")
    assert_close(grad_BV, exact["forward_grad"])


def test_k1_expected_gradient_is_zero():
    _, grad_BV, _ = _enumerated_expectations("k1")
    assert_close(grad_BV, torch.zeros_like(grad_BV))


def test_kl_registry():
    assert set(KL_ESTIMATORS) == {"k1", "k2", "k3", "k3_ratio"}
    assert get_kl_fn("k3_ratio") is kl_k3_ratio_weighted
    with pytest.raises(ValueError, match=r"unknown KL estimator 'k4'.*\['k1', 'k2', 'k3', 'k3_ratio'\]"):
        get_kl_fn("k4")


# ------------------------------------------------------------------------------------------------- sampling


def test_zero_variance_groups_keeps_groups_with_distinct_rewards():
    rewards_NG = torch.tensor([[1.0, 1.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.5, 0.5, 0.25]])
    # all right -> drop, mixed -> keep, all wrong -> drop, one differs -> keep
    assert torch.equal(zero_variance_groups(rewards_NG), torch.tensor([False, True, False, True]))


def test_overlong_penalty_ramps_over_the_cache():
    lengths_B = torch.tensor([5, 6, 7, 8, 10, 11])
    # max_len 10, cache 4 -> soft limit 6: len <= 6 -> 0; 7 -> (6-7)/4 = -0.25; 8 -> (6-8)/4 = -0.5;
    # 10 -> (6-10)/4 = -1; 11 > max_len -> -1
    expected_B = torch.tensor([0.0, 0.0, -0.25, -0.5, -1.0, -1.0])
    assert_close(overlong_penalty(lengths_B, max_len=10, cache_len=4), expected_B)


@pytest.mark.parametrize("cache_len", [0, -1, 10, 12])
def test_overlong_penalty_rejects_bad_cache(cache_len):
    with pytest.raises(ValueError, match="0 < cache_len < max_len"):
        overlong_penalty(torch.tensor([3]), max_len=10, cache_len=cache_len)
