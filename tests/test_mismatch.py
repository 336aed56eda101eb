"""rl.algorithms.mismatch: literal tensors with hand-worked expected values (the arithmetic is in the comments).

Log-probs are written as logs of round probabilities, so every ratio pi / mu is a round number.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch.testing import assert_close

from rl.algorithms.mismatch import (
    CORRECTIONS,
    apply_correction,
    geo_mask,
    mismatch_metrics,
    opsm_mask,
    tis_weights,
)
from rl.config import AlgorithmConfig

LN2 = math.log(2.0)


def _log(probs: list[list[float]]) -> torch.Tensor:
    return torch.tensor(probs, dtype=torch.float64).log().float()


# ------------------------------------------------------------------------------------------------ diagnostics


def test_identical_policies_give_zero_kl_and_perfect_agreement():
    logprobs_BT = _log([[0.5, 0.1, 0.9], [0.3, 0.7, 1.0]])
    mask_BT = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    metrics = mismatch_metrics(logprobs_BT, logprobs_BT.clone(), mask_BT)
    assert metrics == {
        "mismatch/kl_k1": 0.0,
        "mismatch/kl_k3": 0.0,
        "mismatch/ppl_ratio": 1.0,
        "mismatch/prob_corr": 1.0,
        "mismatch/max_abs_prob_diff": 0.0,
    }


def test_mismatch_metrics_hand_worked_2x3():
    # response tokens (pi = train prob, mu = rollout prob, r = pi / mu):
    #   (0.5, 0.5) r=1, (0.25, 0.5) r=1/2, (0.5, 0.25) r=2 | (0.8, 0.4) r=2, (0.1, 0.1) r=1, then one padding token
    # whose wild values (train p=1, rollout p=e^-50) must be ignored.
    train_BT = _log([[0.5, 0.25, 0.5], [0.8, 0.1, 1.0]])
    rollout_BT = torch.cat([_log([[0.5, 0.5, 0.25]]), torch.tensor([[math.log(0.4), math.log(0.1), -50.0]])])
    mask_BT = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    metrics = mismatch_metrics(train_BT, rollout_BT, mask_BT)
    # log r = (0, -ln2, ln2, ln2, 0): k1 = mean(-log r) = -ln2 / 5 = -0.1386294 (k1 can be negative)
    assert metrics["mismatch/kl_k1"] == pytest.approx(-LN2 / 5)
    # k3 = r - 1 - log r: (0, 0.5 - 1 + ln2 = 0.1931472, 2 - 1 - ln2 = 0.3068528, 0.3068528, 0), sum 0.8068528
    # -> mean 0.1613706
    assert metrics["mismatch/kl_k3"] == pytest.approx(0.1613706)
    # ppl_pi / ppl_mu = exp(mean(log mu - log pi)) = exp(-ln2 / 5) = 2^(-1/5) = 0.8705506
    assert metrics["mismatch/ppl_ratio"] == pytest.approx(0.8705506)
    # |pi - mu| = (0, 0.25, 0.25, 0.4, 0) -> 0.4 (the padding's |1 - e^-50| = 1 is excluded)
    assert metrics["mismatch/max_abs_prob_diff"] == pytest.approx(0.4)
    # Pearson: x = pi = (0.5, 0.25, 0.5, 0.8, 0.1), mean 0.43; y = mu = (0.5, 0.5, 0.25, 0.4, 0.1), mean 0.35
    # x - 0.43 = (0.07, -0.18, 0.07, 0.37, -0.33); y - 0.35 = (0.15, 0.15, -0.10, 0.05, -0.25)
    # cov sum = 0.0105 - 0.027 - 0.007 + 0.0185 + 0.0825 = 0.0775
    # sum x^2 = 0.0049 + 0.0324 + 0.0049 + 0.1369 + 0.1089 = 0.288; sum y^2 = 0.0225 * 2 + 0.01 + 0.0025 + 0.0625 = 0.12
    # corr = 0.0775 / sqrt(0.288 * 0.12) = 0.0775 / 0.1859032 = 0.4168836
    assert metrics["mismatch/prob_corr"] == pytest.approx(0.4168836)


def test_prob_corr_of_a_constant_side():
    mask_BT = torch.ones(1, 2)
    # both sides constant and equal (one value repeated): 1.0
    same = mismatch_metrics(_log([[0.5, 0.5]]), _log([[0.5, 0.5]]), mask_BT)
    assert same["mismatch/prob_corr"] == 1.0
    # pi constant, mu not: correlation undefined and the sides differ -> 0.0 (not NaN)
    differ = mismatch_metrics(_log([[0.5, 0.5]]), _log([[0.5, 0.25]]), mask_BT)
    assert differ["mismatch/prob_corr"] == 0.0
    # a single response token: 1.0 only if exactly equal
    one_token_BT = torch.tensor([[1.0, 0.0]])
    assert mismatch_metrics(_log([[0.3, 0.9]]), _log([[0.3, 0.1]]), one_token_BT)["mismatch/prob_corr"] == 1.0
    assert mismatch_metrics(_log([[0.3, 0.9]]), _log([[0.4, 0.9]]), one_token_BT)["mismatch/prob_corr"] == 0.0


def test_prob_corr_is_minus_one_for_anti_correlated_probs():
    # x = (0.2, 0.4, 0.6), y = (0.6, 0.4, 0.2) = 0.8 - x: an exact negative linear relation -> -1
    metrics = mismatch_metrics(_log([[0.2, 0.4, 0.6]]), _log([[0.6, 0.4, 0.2]]), torch.ones(1, 3))
    assert metrics["mismatch/prob_corr"] == pytest.approx(-1.0)


def test_mismatch_metrics_rejects_empty_mask_and_bad_shapes():
    ones_BT = torch.ones(2, 3)
    with pytest.raises(ValueError, match="at least one response token"):
        mismatch_metrics(ones_BT, ones_BT, torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"mismatch_metrics inputs must all be \[B, T\] of one shape"):
        mismatch_metrics(ones_BT, torch.ones(2, 4), ones_BT)
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        mismatch_metrics(torch.ones(6), torch.ones(6), torch.ones(6))


# ------------------------------------------------------------------------------------------------------ TIS


def test_tis_caps_the_ratio_and_zeroes_padding():
    # pi_old / mu per token: 0.2/0.4 = 0.5, 0.3/0.3 = 1, 0.6/0.2 = 3 | 0.6/0.4 = 1.5, 0.5/0.05 = 10, padding whose
    # log-ratio 0 - (-200) = 200 overflows float32 exp: it must still give weight 0, not inf/NaN.
    old_BT = torch.cat([_log([[0.2, 0.3, 0.6]]), torch.tensor([[math.log(0.6), math.log(0.5), 0.0]])])
    rollout_BT = torch.cat([_log([[0.4, 0.3, 0.2]]), torch.tensor([[math.log(0.4), math.log(0.05), -200.0]])])
    mask_BT = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    weights_BT, metrics = tis_weights(old_BT, rollout_BT, mask_BT, cap=2.0)
    # min(r, 2): (0.5, 1, 2 [3 capped]) | (1.5, 2 [10 capped], 0 padding)
    assert_close(weights_BT, torch.tensor([[0.5, 1.0, 2.0], [1.5, 2.0, 0.0]]))
    assert metrics["mismatch/tis_clipped_frac"] == pytest.approx(2 / 5)  # 3 and 10 of the 5 tokens
    assert metrics["mismatch/tis_weight_mean"] == pytest.approx(7 / 5)  # (0.5 + 1 + 2 + 1.5 + 2) / 5 = 1.4


def test_tis_with_a_large_cap_is_the_plain_ratio():
    # r = (0.5, 3), cap 5 clips nothing
    weights_BT, metrics = tis_weights(_log([[0.2, 0.6]]), _log([[0.4, 0.2]]), torch.ones(1, 2), cap=5.0)
    assert_close(weights_BT, torch.tensor([[0.5, 3.0]]))
    assert metrics == {"mismatch/tis_clipped_frac": 0.0, "mismatch/tis_weight_mean": pytest.approx(1.75)}


def test_tis_fully_masked_batch():
    weights_BT, metrics = tis_weights(
        torch.zeros(1, 2), torch.full((1, 2), -300.0), torch.zeros(1, 2), cap=2.0
    )
    assert torch.equal(weights_BT, torch.zeros(1, 2))
    assert metrics == {"mismatch/tis_clipped_frac": 0.0, "mismatch/tis_weight_mean": 0.0}


@pytest.mark.parametrize("cap", [0.0, -1.0, float("nan")])
def test_tis_rejects_non_positive_cap(cap):
    ones_BT = torch.ones(1, 2)
    with pytest.raises(ValueError, match="tis_weights needs cap > 0"):
        tis_weights(ones_BT, ones_BT, ones_BT, cap=cap)


def test_tis_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"tis_weights inputs must all be \[B, T\] of one shape"):
        tis_weights(torch.ones(2, 3), torch.ones(3, 2), torch.ones(2, 3), cap=2.0)


# ------------------------------------------------------------------------------------------------- geo mask


def _geo_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Five sequences; log(pi_old / mu) per token is written in the rows of log_ratio_BT (mu = 0.5 throughout)."""
    ln4, ln8 = math.log(4.0), math.log(8.0)
    log_ratio_BT = torch.tensor(
        [
            [LN2, LN2, 0.0],  # mean 2 ln2 / 3 -> g = 2^(2/3) = 1.5874011: kept
            [ln4, ln4, ln4],  # g = 4 > 2: dropped
            [-ln8, 0.0, 9.0],  # mean over 2 tokens -3 ln2 / 2 -> g = 8^(-1/2) = 0.3535534 < 0.5: dropped
            [ln4, -LN2, 0.0],  # one token at r = 4, but mean ln2 / 3 -> g = 2^(1/3) = 1.2599210: kept
            [9.0, 9.0, 9.0],  # no response token: g = 1, kept (and its mask stays all 0)
        ]
    )
    rollout_BT = torch.full((5, 3), math.log(0.5))
    mask_BT = torch.tensor([[1.0, 1, 1], [1, 1, 1], [1, 1, 0], [1, 1, 1], [0, 0, 0]])
    return rollout_BT + log_ratio_BT, rollout_BT, mask_BT


def test_geo_mask_keeps_sequences_by_geometric_mean_ratio():
    old_BT, rollout_BT, mask_BT = _geo_case()
    new_mask_BT, metrics = geo_mask(old_BT, rollout_BT, mask_BT, low=0.5, high=2.0)
    expected_BT = torch.tensor([[1.0, 1, 1], [0, 0, 0], [0, 0, 0], [1, 1, 1], [0, 0, 0]])
    assert torch.equal(new_mask_BT, expected_BT)
    assert metrics["mismatch/geo_masked_seq_frac"] == pytest.approx(
        2 / 4
    )  # rows 1, 2 of the 4 non-empty rows
    assert metrics["mismatch/geo_masked_token_frac"] == pytest.approx(5 / 11)  # 3 + 2 of 3 + 3 + 2 + 3 tokens
    # (1.5874011 + 4 + 0.3535534 + 1.2599210) / 4 = 7.2008755 / 4 = 1.8002189 (the empty row is not averaged)
    assert metrics["mismatch/geo_ratio_mean"] == pytest.approx(1.8002189)


def test_geo_mask_band_is_inclusive_and_a_wider_band_keeps_more():
    old_BT, rollout_BT, mask_BT = _geo_case()
    # low = high = 1 keeps exactly the sequences with g == 1: only the empty row (whose mask is 0 anyway)
    only_exact_BT, metrics = geo_mask(rollout_BT, rollout_BT, mask_BT, low=1.0, high=1.0)
    assert torch.equal(only_exact_BT, mask_BT)  # identical policies: every g = exp(0) = 1 exactly
    assert metrics["mismatch/geo_masked_seq_frac"] == 0.0
    strict_BT, _ = geo_mask(old_BT, rollout_BT, mask_BT, low=1.0, high=1.0)
    assert torch.equal(strict_BT, torch.zeros(5, 3))
    # band [0.25, 8]: every g (1.59, 4, 0.35, 1.26) is inside
    wide_BT, metrics = geo_mask(old_BT, rollout_BT, mask_BT, low=0.25, high=8.0)
    assert torch.equal(wide_BT, mask_BT)
    assert metrics["mismatch/geo_masked_seq_frac"] == 0.0


def test_geo_mask_fully_masked_batch():
    new_mask_BT, metrics = geo_mask(
        torch.zeros(2, 2), torch.full((2, 2), -300.0), torch.zeros(2, 2), 0.5, 2.0
    )
    assert torch.equal(new_mask_BT, torch.zeros(2, 2))
    assert metrics == {
        "mismatch/geo_masked_seq_frac": 0.0,
        "mismatch/geo_masked_token_frac": 0.0,
        "mismatch/geo_ratio_mean": 1.0,
    }


@pytest.mark.parametrize(
    ("low", "high"), [(0.0, 2.0), (-0.5, 2.0), (1.5, 2.0), (0.5, 0.9), (float("nan"), 2.0)]
)
def test_geo_mask_rejects_a_band_not_around_one(low, high):
    ones_BT = torch.ones(1, 2)
    with pytest.raises(ValueError, match="geo_mask needs 0 < low <= 1 <= high"):
        geo_mask(ones_BT, ones_BT, ones_BT, low=low, high=high)


def test_geo_mask_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"geo_mask inputs must all be \[B, T\] of one shape"):
        geo_mask(torch.ones(2, 3), torch.ones(2, 3), torch.ones(2), 0.5, 2.0)


# ----------------------------------------------------------------------------------------------------- OPSM


def _opsm_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """rollout_lp - old_lp per token in the rows of seq_kl_terms_BT; rollout log-prob -1 throughout."""
    seq_kl_terms_BT = torch.tensor(
        [
            [0.3, 0.0, 0.3],  # A = -1, seq_kl = 0.6 / 3 = 0.2 > 0.1: masked
            [0.3, 0.0, 0.3],  # A = +1, seq_kl = 0.2 but a positive advantage: kept
            [0.05, 0.05, 5.0],  # A = -1, seq_kl over 2 tokens = 0.05 <= 0.1: kept (padding's 5.0 ignored)
            [0.6, -0.6, -0.6],  # A = -1, seq_kl = -0.6 / 3 = -0.2 (pi_old above mu on average): kept
            [5.0, 5.0, 5.0],  # A = -1, no response token: seq_kl 0, kept
        ]
    )
    rollout_BT = torch.full((5, 3), -1.0)
    advantages_B = torch.tensor([-1.0, 1.0, -1.0, -1.0, -1.0])
    mask_BT = torch.tensor([[1.0, 1, 1], [1, 1, 1], [1, 1, 0], [1, 1, 1], [0, 0, 0]])
    return rollout_BT - seq_kl_terms_BT, rollout_BT, advantages_B, mask_BT


def test_opsm_masks_only_negative_advantage_off_policy_sequences():
    old_BT, rollout_BT, advantages_B, mask_BT = _opsm_case()
    new_mask_BT, metrics = opsm_mask(old_BT, rollout_BT, advantages_B, mask_BT, delta=0.1)
    expected_BT = torch.tensor([[0.0, 0, 0], [1, 1, 1], [1, 1, 0], [1, 1, 1], [0, 0, 0]])
    assert torch.equal(new_mask_BT, expected_BT)
    assert metrics["mismatch/opsm_masked_seq_frac"] == pytest.approx(1 / 4)  # row 0 of the 4 non-empty rows
    assert metrics["mismatch/opsm_masked_token_frac"] == pytest.approx(3 / 11)  # 3 of 3 + 3 + 2 + 3 tokens


def test_opsm_per_token_advantages():
    old_BT, rollout_BT, advantages_B, mask_BT = _opsm_case()
    # GRPO's [B, T] advantages (constant along T) mask exactly as the [B] ones
    broadcast_BT, _ = opsm_mask(old_BT, rollout_BT, advantages_B[:, None].expand(5, 3), mask_BT, delta=0.1)
    assert torch.equal(broadcast_BT, torch.tensor([[0.0, 0, 0], [1, 1, 1], [1, 1, 0], [1, 1, 1], [0, 0, 0]]))
    # M_it is per token: in row 0 (seq_kl 0.2 > 0.1) only the tokens with A_it < 0 are masked
    advantages_BT = torch.tensor([[-1.0, 0.0, 2.0], [1, 1, 1], [-1, -1, -1], [-1, -1, -1], [-1, -1, -1]])
    new_mask_BT, metrics = opsm_mask(old_BT, rollout_BT, advantages_BT, mask_BT, delta=0.1)
    assert torch.equal(new_mask_BT, torch.tensor([[0.0, 1, 1], [1, 1, 1], [1, 1, 0], [1, 1, 1], [0, 0, 0]]))
    assert metrics["mismatch/opsm_masked_seq_frac"] == pytest.approx(1 / 4)  # row 0 lost a token
    assert metrics["mismatch/opsm_masked_token_frac"] == pytest.approx(1 / 11)


def test_opsm_direction_and_delta():
    old_BT, rollout_BT, advantages_B, mask_BT = _opsm_case()
    # swapped roles negate seq_kl: row 0 -> -0.2 (kept), row 2 -> -0.05 (kept), row 3 -> +0.2 > 0.1 (masked)
    swapped_BT, metrics = opsm_mask(rollout_BT, old_BT, advantages_B, mask_BT, delta=0.1)
    assert torch.equal(swapped_BT, torch.tensor([[1.0, 1, 1], [1, 1, 1], [1, 1, 0], [0, 0, 0], [0, 0, 0]]))
    assert metrics["mismatch/opsm_masked_seq_frac"] == pytest.approx(1 / 4)
    # delta = 0.01: row 2 (seq_kl 0.05) joins row 0; row 1 (A > 0) and row 3 (-0.2) stay
    tight_BT, metrics = opsm_mask(old_BT, rollout_BT, advantages_B, mask_BT, delta=0.01)
    assert torch.equal(tight_BT, torch.tensor([[0.0, 0, 0], [1, 1, 1], [0, 0, 0], [1, 1, 1], [0, 0, 0]]))
    assert metrics["mismatch/opsm_masked_seq_frac"] == pytest.approx(2 / 4)
    # delta = 0 with identical policies: seq_kl 0 is not > 0, so nothing is masked
    same_BT, _ = opsm_mask(rollout_BT, rollout_BT, advantages_B, mask_BT, delta=0.0)
    assert torch.equal(same_BT, mask_BT)


def test_opsm_rejects_bad_arguments():
    ones_BT = torch.ones(2, 3)
    with pytest.raises(ValueError, match=r"opsm_mask needs delta >= 0, got -0\.1"):
        opsm_mask(ones_BT, ones_BT, torch.ones(2), ones_BT, delta=-0.1)
    with pytest.raises(
        ValueError, match=r"advantages must be \[B\] or \[B, T\] with \[B, T\] = \[2, 3\], got \[3\]"
    ):
        opsm_mask(ones_BT, ones_BT, torch.ones(3), ones_BT, delta=0.1)
    with pytest.raises(ValueError, match=r"opsm_mask inputs must all be \[B, T\] of one shape"):
        opsm_mask(ones_BT, torch.ones(2, 2), torch.ones(2), ones_BT, delta=0.1)


# ---------------------------------------------------------------------------------------- shared invariants


def test_empty_rows_never_produce_nan():
    # row 0 has tokens (r = 2 each), row 1 is all padding with log-probs that would overflow if used
    old_BT = torch.tensor([[math.log(0.4), math.log(0.4)], [0.0, 0.0]])
    rollout_BT = torch.tensor([[math.log(0.2), math.log(0.2)], [-300.0, -300.0]])
    mask_BT = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    tis_BT, tis_metrics = tis_weights(old_BT, rollout_BT, mask_BT, cap=3.0)
    assert_close(tis_BT, torch.tensor([[2.0, 2.0], [0.0, 0.0]]))
    geo_BT, geo_metrics = geo_mask(old_BT, rollout_BT, mask_BT, low=0.5, high=4.0)  # g = 2: kept
    assert torch.equal(geo_BT, mask_BT)
    assert geo_metrics["mismatch/geo_ratio_mean"] == pytest.approx(2.0)
    opsm_BT, opsm_metrics = opsm_mask(old_BT, rollout_BT, -torch.ones(2), mask_BT, delta=0.0)
    assert torch.equal(opsm_BT, mask_BT)  # row 0: seq_kl = -ln2, not > 0
    for value in [*tis_metrics.values(), *geo_metrics.values(), *opsm_metrics.values()]:
        assert math.isfinite(value)


def test_outputs_are_detached_even_when_inputs_require_grad():
    old_BT = _log([[0.2, 0.6]]).requires_grad_(True)
    rollout_BT = _log([[0.4, 0.2]]).requires_grad_(True)
    advantages_B = torch.tensor([-1.0], requires_grad=True)
    mask_BT = torch.ones(1, 2, requires_grad=True)
    metrics = mismatch_metrics(old_BT, rollout_BT, mask_BT)
    assert all(type(v) is float for v in metrics.values())
    outputs = [
        tis_weights(old_BT, rollout_BT, mask_BT, cap=2.0)[0],
        geo_mask(old_BT, rollout_BT, mask_BT, low=0.5, high=2.0)[0],
        opsm_mask(old_BT, rollout_BT, advantages_B, mask_BT, delta=0.0)[0],
        *(
            apply_correction(AlgorithmConfig(correction=name), old_BT, rollout_BT, advantages_B, mask_BT)[0]
            for name in CORRECTIONS
        ),
    ]
    for out_BT in outputs:
        assert not out_BT.requires_grad and out_BT.grad_fn is None


# ----------------------------------------------------------------------------------------------- dispatcher


def test_apply_correction_dispatches_with_the_config_parameters():
    old_BT, rollout_BT, advantages_B, mask_BT = _opsm_case()
    cfg = AlgorithmConfig(tis_cap=1.2, geo_low=0.9, geo_high=1.1, opsm_delta=0.01)
    expected = {
        "none": (mask_BT, {}),
        "tis": tis_weights(old_BT, rollout_BT, mask_BT, cap=1.2),
        "geo_mask": geo_mask(old_BT, rollout_BT, mask_BT, low=0.9, high=1.1),
        "opsm": opsm_mask(old_BT, rollout_BT, advantages_B, mask_BT, delta=0.01),
    }
    assert set(CORRECTIONS) == set(expected) == {"none", "tis", "geo_mask", "opsm"}
    for name, (expected_BT, expected_metrics) in expected.items():
        weights_BT, metrics = apply_correction(
            dataclasses.replace(cfg, correction=name), old_BT, rollout_BT, advantages_B, mask_BT
        )
        assert torch.equal(weights_BT, expected_BT), name
        assert metrics == expected_metrics, name
    # the parameters reach the functions: row 0's seq_kl 0.2 > 0.01 with A < 0 is masked under "opsm"
    assert (
        apply_correction(
            dataclasses.replace(cfg, correction="opsm"), old_BT, rollout_BT, advantages_B, mask_BT
        )[0][0].sum()
        == 0.0
    )


def test_none_correction_returns_a_copy_of_the_mask():
    mask_BT = torch.tensor([[1.0, 0.0]])
    weights_BT, metrics = apply_correction(
        AlgorithmConfig(), torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1), mask_BT
    )
    assert torch.equal(weights_BT, mask_BT) and metrics == {}
    weights_BT[0, 0] = 5.0
    assert mask_BT[0, 0] == 1.0


def test_the_correction_config_rejects_unknown_names():
    with pytest.raises(
        ValueError, match=r"unknown algorithm.correction 'mis'; valid: none, tis, geo_mask, opsm"
    ):
        AlgorithmConfig(correction="mis")
    cfg = AlgorithmConfig()
    assert (cfg.correction, cfg.tis_cap, cfg.geo_low, cfg.geo_high, cfg.opsm_delta) == (
        "none",
        2.0,
        0.5,
        2.0,
        1e-3,
    )
