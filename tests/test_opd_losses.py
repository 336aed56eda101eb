"""The OPD losses (distill/losses.py) against hand-worked values and a naive full-logits reference."""

from __future__ import annotations

import math

import pytest
import torch

from distill.config import LossOptions
from distill.losses import (
    SampledTokens,
    get_opd_loss,
    gkd_jsd,
    jsd,
    naive_reverse_kl,
    reverse_kl,
    sampled_token,
    topk_forward_kl,
    topk_forward_kl_of,
)


def inputs(n=37, d=16, v=203, dtype=torch.float32, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    h_s = (torch.randn(n, d, generator=g) * scale).to(dtype).requires_grad_()
    w_s = (torch.randn(v, d, generator=g) * scale).to(dtype).requires_grad_()
    h_t = (torch.randn(n, d, generator=g) * scale).to(dtype)
    w_t = (torch.randn(v, d, generator=g) * scale).to(dtype)
    weight = torch.rand(n, generator=g) / n
    return h_s, w_s, h_t, w_t, weight


def grads(loss, *tensors):
    return torch.autograd.grad(loss, tensors, retain_graph=True)


def rel(a, b):
    return float(
        (a.detach().float() - b.detach().float()).norm() / b.detach().float().norm().clamp_min(1e-30)
    )


def test_two_token_vocabulary_by_hand():
    # identity heads: logits are the hidden states; p = (1/2, 1/2), q = (1/4, 3/4)
    h_s = torch.zeros(1, 2, requires_grad=True)
    h_t = torch.log(torch.tensor([[0.25, 0.75]]))
    eye = torch.eye(2)
    loss, kl = reverse_kl(h_s, eye, h_t, eye, torch.ones(1))
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)  # 0.14384
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert kl.tolist() == pytest.approx([expected], abs=1e-6)
    # dl/dz_v = p_v (d_v - KL): d = (ln 2, ln 2/3)
    (g,) = grads(loss, h_s)
    d = torch.tensor([math.log(2.0), math.log(2 / 3)])
    assert g[0].tolist() == pytest.approx((0.5 * (d - expected)).tolist(), abs=1e-6)


@pytest.mark.parametrize("chunk", [0, 16, 64, 203, 1000])
def test_fused_reverse_kl_matches_naive_fp32(chunk):
    h_s, w_s, h_t, w_t, weight = inputs()
    loss, kl = reverse_kl(h_s, w_s, h_t, w_t, weight, options=LossOptions(vocab_chunk=chunk))
    ref, ref_kl = naive_reverse_kl(h_s, w_s, h_t, w_t, weight)
    assert rel(loss, ref) < 1e-4 and rel(kl, ref_kl) < 1e-4
    for got, want in zip(grads(loss, h_s, w_s), grads(ref, h_s, w_s), strict=True):
        assert rel(got, want) < 1e-4


def test_fused_reverse_kl_fresh_inputs_and_large_logits():
    for seed in range(5):  # logits of magnitude ~30 exercise the running max rescaling
        h_s, w_s, h_t, w_t, weight = inputs(n=50, d=32, v=517, seed=seed, scale=1.0 + seed)
        loss, _ = reverse_kl(h_s, w_s, h_t, w_t, weight, options=LossOptions(vocab_chunk=128))
        ref, _ = naive_reverse_kl(h_s, w_s, h_t, w_t, weight)
        assert rel(loss, ref) < 1e-4
        for got, want in zip(grads(loss, h_s, w_s), grads(ref, h_s, w_s), strict=True):
            assert rel(got, want) < 1e-4


def test_fused_reverse_kl_bf16_against_naive():
    # bf16 in, like training: the naive reference also rounds its logits to bf16 (softmax in fp32); against
    # an all-fp32 reference the error is the inputs' rounding (a few percent), so that bound is looser
    h_s, w_s, h_t, w_t, weight = inputs(n=64, d=32, v=300, dtype=torch.bfloat16)
    loss, _ = reverse_kl(h_s, w_s, h_t, w_t, weight, options=LossOptions(vocab_chunk=128))
    ref, _ = naive_reverse_kl(h_s, w_s, h_t, w_t, weight)
    assert rel(loss, ref) < 2e-2
    for got, want in zip(grads(loss, h_s, w_s), grads(ref, h_s, w_s), strict=True):
        assert got.dtype == torch.bfloat16 and rel(got, want) < 2e-2
    f32 = [t.detach().float().requires_grad_() for t in (h_s, w_s)]
    ref32, _ = naive_reverse_kl(f32[0], f32[1], h_t.float(), w_t.float(), weight)
    assert rel(loss, ref32) < 2e-2
    for got, want in zip(grads(loss, h_s, w_s), grads(ref32, *f32), strict=True):
        assert rel(got, want) < 5e-2


def test_teacher_gets_no_gradient_and_equal_models_give_zero():
    h_s, w_s, _, _, weight = inputs()
    loss, kl = reverse_kl(h_s, w_s, h_s.detach(), w_s.detach(), weight)
    assert abs(loss.item()) < 1e-5 and kl.abs().max() < 1e-5
    g_h, g_w = grads(loss, h_s, w_s)
    assert g_h.abs().max() < 1e-6 and g_w.abs().max() < 1e-6


def test_sampled_token_gradient_is_unbiased_for_the_full_vocabulary_one():
    # E_{y ~ p}[grad of the sampled-token loss] = grad of the full reverse KL (reference §3.3), checked exactly
    # by enumerating every token y with probability p(y) (mu = p: on-policy, importance weight 1)
    h_s, w_s, h_t, w_t, _ = inputs(n=1, d=8, v=11)
    one = torch.ones(1)
    full, _ = reverse_kl(h_s, w_s, h_t, w_t, one)
    want = grads(full, h_s, w_s)
    p = (h_s @ w_s.T).log_softmax(-1).detach()[0]
    expected = [torch.zeros_like(h_s), torch.zeros_like(w_s)]
    for y in range(11):
        batch = SampledTokens(torch.tensor([y]), p[y : y + 1])
        loss, _ = sampled_token(h_s, w_s, h_t, w_t, one, batch, LossOptions(is_cap=100.0))
        for acc, g in zip(expected, grads(loss, h_s, w_s), strict=True):
            acc += p[y].exp() * g
    for got, ref in zip(expected, want, strict=True):
        assert rel(got, ref) < 1e-4


def test_sampled_token_needs_its_batch():
    h_s, w_s, h_t, w_t, weight = inputs()
    with pytest.raises(ValueError, match="sampled tokens"):
        sampled_token(h_s, w_s, h_t, w_t, weight)


def test_jsd_end_points_symmetry_and_zero():
    g = torch.Generator().manual_seed(1)
    logp = torch.randn(4, 9, generator=g).log_softmax(-1)
    logq = torch.randn(4, 9, generator=g).log_softmax(-1)
    forward = (logq.exp() * (logq - logp)).sum(-1)
    reverse = (logp.exp() * (logp - logq)).sum(-1)
    assert torch.allclose(jsd(logp, logq, 0.0), forward) and torch.allclose(jsd(logp, logq, 1.0), reverse)
    assert torch.allclose(jsd(logp, logq, 0.5), jsd(logq, logp, 0.5), atol=1e-6)
    assert (jsd(logp, logq, 0.3) > 0).all() and jsd(logp, logp, 0.3).abs().max() < 1e-6
    # beta = 1/2 by hand on two tokens: p = (1, 0), q = (0, 1) -> m = (1/2, 1/2), JSD = ln 2
    hard_p, hard_q = torch.tensor([[0.0, -80.0]]), torch.tensor([[-80.0, 0.0]])
    assert jsd(hard_p, hard_q, 0.5).item() == pytest.approx(math.log(2), abs=1e-5)


def test_topk_forward_kl_by_hand_and_full_k():
    q = torch.tensor([[0.5, 0.3, 0.2]])
    p = torch.tensor([[0.25, 0.25, 0.5]])
    # k = 1: buckets {top: q .5 / p .25}, tail q .5 / p .75
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert topk_forward_kl_of(p.log(), q.log(), 1).item() == pytest.approx(expected, abs=1e-6)
    full = (q * (q / p).log()).sum().item()
    assert topk_forward_kl_of(p.log(), q.log(), 3).item() == pytest.approx(full, abs=1e-5)


@pytest.mark.parametrize("name", ["gkd_jsd", "topk_forward_kl"])
def test_chunked_alternatives_match_their_unchunked_form(name):
    h_s, w_s, h_t, w_t, weight = inputs(n=30)
    options = LossOptions(beta=0.3, top_k=5, token_chunk=7)
    loss, kl = get_opd_loss(name)(h_s, w_s, h_t, w_t, weight, None, options)
    logp, logq = (h_s @ w_s.T).log_softmax(-1), (h_t @ w_t.T).log_softmax(-1)
    per = jsd(logp, logq, 0.3) if name == "gkd_jsd" else topk_forward_kl_of(logp, logq, 5)
    ref = (weight * per).sum()
    assert rel(loss, ref) < 1e-5
    assert rel(kl, naive_reverse_kl(h_s, w_s, h_t, w_t, weight)[1]) < 1e-5
    for got, want in zip(grads(loss, h_s, w_s), grads(ref, h_s, w_s), strict=True):
        assert rel(got, want) < 1e-4


def test_bad_inputs_are_named():
    h_s, w_s, h_t, w_t, weight = inputs()
    with pytest.raises(ValueError, match=r"unknown distill.loss 'kl'; valid: reverse_kl"):
        get_opd_loss("kl")
    with pytest.raises(ValueError, match="positions differ"):
        reverse_kl(h_s, w_s, h_t[:-1], w_t, weight)
    with pytest.raises(ValueError, match="vocabulary 203 != teacher vocabulary 202"):
        reverse_kl(h_s, w_s, h_t, w_t[:-1], weight)
    with pytest.raises(ValueError, match="beta must be in"):
        gkd_jsd(h_s, w_s, h_t, w_t, weight, options=LossOptions(beta=1.5))
    with pytest.raises(ValueError, match="top_k must be"):
        topk_forward_kl(h_s, w_s, h_t, w_t, weight, options=LossOptions(top_k=0))


@pytest.mark.gpu
def test_triton_kernels_match_naive_on_cuda():
    h_s, w_s, h_t, w_t, weight = (t.detach().cuda() for t in inputs(n=300, d=64, v=5000, seed=3))
    for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 2e-2)):
        hs, ws, ht, wt = (t.to(dtype) for t in (h_s, w_s, h_t, w_t))
        hs, ws = hs.requires_grad_(), ws.requires_grad_()
        loss, kl = reverse_kl(hs, ws, ht, wt, weight, options=LossOptions(vocab_chunk=1024))
        ref, ref_kl = naive_reverse_kl(hs, ws, ht, wt, weight)
        assert rel(loss, ref) < tol and rel(kl, ref_kl) < tol
        for got, want in zip(grads(loss, hs, ws), grads(ref, hs, ws), strict=True):
            assert got.dtype == dtype and rel(got, want) < tol
