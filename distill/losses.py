"""On-policy distillation losses from hidden states and LM heads (reference §1.2, §3, §8.2).

Every loss here takes the same inputs, for the N generated positions of a batch routed to one teacher:

* ``h_s_ND`` student last-layer hidden states (after the final norm), with gradient;
* ``w_s_VD`` the student's LM head, with gradient (tied or not, it is the weight the logits use);
* ``h_t_ND`` / ``w_t_VD`` the teacher's hidden states and head (no gradient: the teacher is frozen);
* ``weight_N`` each position's weight in the sum: the teacher's loss weight divided by the batch's token
  count, so the total is the token-mean of §8.2 however the batch is split into parts and micro-batches;
* ``batch`` what the sampled-token form also needs (the sampled tokens and the sampler's log-probs).

and returns ``(loss, kl_N)``: the scalar ``sum_n weight_n * loss_n`` to backpropagate and the detached
per-position reverse KL ``KL(p_s || q_t)`` for metrics (exact for every loss, so runs are comparable).

``reverse_kl`` (the default, DeepSeek-V4): ``sum_v p_s(v) [log p_s(v) - log q_t(v)]`` over the full vocabulary,
never materialising [N x V]: the vocabulary is walked in chunks, the forward keeps per-position running
statistics (online log-sum-exp for both models and the running ``sum_v exp(z_s - m) (z_s - z_t)``), and the
backward recomputes each chunk's logits and applies ``dl/dz_v = p_v (d_v - KL)`` (§3.2) straight into the
two matmuls that give the hidden-state and head gradients. The elementwise part is torch on CPU and Triton on
CUDA (``distill/triton_kl.py``); the matmuls are the library's.

The alternatives materialise one token chunk's logits at a time under activation checkpointing:
``sampled_token`` (per-token advantage ``log q(y) - log mu(y)``, importance-weighted; tinker), ``gkd_jsd``
(generalized JSD with ``beta``; TRL's convention: 0 = forward KL, 1 = reverse KL), ``topk_forward_kl``
(forward KL over the teacher's top-k tokens plus one tail bucket).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

from distill.config import LossOptions

DEFAULTS = LossOptions()  # never mutated


@dataclass(frozen=True)
class SampledTokens:
    """What the sampled-token loss needs besides hidden states, per position [N]."""

    token_N: torch.Tensor  # int64, the sampled token at each position
    rollout_logprob_N: torch.Tensor  # float32, the sampler's log-prob of it (mu)


# ------------------------------------------------------------------------------------------ reference form


def naive_reverse_kl(
    h_s_ND: torch.Tensor,
    w_s_VD: torch.Tensor,
    h_t_ND: torch.Tensor,
    w_t_VD: torch.Tensor,
    weight_N: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference: full [N x V] logits for both models, autograd through everything."""
    logp_s = (h_s_ND @ w_s_VD.T).float().log_softmax(-1)
    logq_t = (h_t_ND @ w_t_VD.T).float().log_softmax(-1).detach()
    kl_N = _reverse_kl_of(logp_s, logq_t)
    return (weight_N.float() * kl_N).sum(), kl_N.detach()


# ------------------------------------------------------------------------------- fused chunked reverse KL


def pick_vocab_chunk(num_tokens: int, vocab: int, budget_elements: int = 1 << 26) -> int:
    """Columns per chunk so that one chunk's [N x Vc] logits of each model stay within ``budget_elements``."""
    return max(128, min(vocab, budget_elements // max(num_tokens, 1) // 128 * 128))


def _torch_stats_update(zs: torch.Tensor, zt: torch.Tensor, stats: torch.Tensor) -> None:
    """Fold one chunk's logits into the running per-row statistics ``stats`` [5, N] (fp32, in place):
    max and sum-exp of the student, max and sum-exp of the teacher, ``sum exp(zs - m_s) (zs - zt)``."""
    zs, zt = zs.float(), zt.float()
    m_s, l_s, m_t, l_t, acc = stats
    new_ms = torch.maximum(m_s, zs.amax(-1))
    new_mt = torch.maximum(m_t, zt.amax(-1))
    scale_s = torch.exp(m_s - new_ms)
    e_s = torch.exp(zs - new_ms[:, None])
    acc.mul_(scale_s).add_((e_s * (zs - zt)).sum(-1))
    l_s.mul_(scale_s).add_(e_s.sum(-1))
    l_t.mul_(torch.exp(m_t - new_mt)).add_(torch.exp(zt - new_mt[:, None]).sum(-1))
    m_s.copy_(new_ms)
    m_t.copy_(new_mt)


def _torch_grad_logits(
    zs: torch.Tensor, zt: torch.Tensor, lse_s: torch.Tensor, lse_t: torch.Tensor, kl: torch.Tensor,
    coef_N: torch.Tensor,
) -> torch.Tensor:  # fmt: skip
    """``coef_n * p_v (d_v - KL_n)`` for one chunk, in the logits' dtype (the matmuls' input)."""
    logp = zs.float() - lse_s[:, None]
    d = logp - (zt.float() - lse_t[:, None])
    return (coef_N[:, None] * logp.exp() * (d - kl[:, None])).to(zs.dtype)


def _kernels(device: torch.device) -> tuple[Callable, Callable]:
    if device.type == "cuda":
        from distill.triton_kl import grad_logits, stats_update

        return stats_update, grad_logits
    return _torch_stats_update, _torch_grad_logits


class _FusedReverseKL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h_s, w_s, h_t, w_t, weight, chunk):  # type: ignore[override]
        n, v = h_s.shape[0], w_s.shape[0]
        stats_update, _ = _kernels(h_s.device)
        stats = torch.zeros(5, n, device=h_s.device, dtype=torch.float32)
        stats[0].fill_(-math.inf)
        stats[2].fill_(-math.inf)
        for start in range(0, v, chunk):
            zs = h_s @ w_s[start : start + chunk].T
            zt = h_t @ w_t[start : start + chunk].T
            stats_update(zs, zt, stats)
        m_s, l_s, m_t, l_t, acc = stats
        lse_s, lse_t = m_s + l_s.log(), m_t + l_t.log()
        kl = acc / l_s - lse_s + lse_t
        ctx.save_for_backward(h_s, w_s, h_t, w_t, weight, lse_s, lse_t, kl)
        ctx.chunk = chunk
        return (weight.float() * kl).sum(), kl

    @staticmethod
    def backward(ctx, grad_loss, _grad_kl):  # type: ignore[override]
        h_s, w_s, h_t, w_t, weight, lse_s, lse_t, kl = ctx.saved_tensors
        _, grad_logits = _kernels(h_s.device)
        coef = weight.float() * grad_loss.float()
        grad_h = torch.zeros(h_s.shape, device=h_s.device, dtype=torch.float32)
        grad_w = torch.empty_like(w_s) if ctx.needs_input_grad[1] else None
        for start in range(0, w_s.shape[0], ctx.chunk):
            w_chunk = w_s[start : start + ctx.chunk]
            g = grad_logits(h_s @ w_chunk.T, h_t @ w_t[start : start + ctx.chunk].T, lse_s, lse_t, kl, coef)
            grad_h += (g @ w_chunk).float()
            if grad_w is not None:
                grad_w[start : start + ctx.chunk] = g.T @ h_s
        return grad_h.to(h_s.dtype), grad_w, None, None, None, None


def reverse_kl(
    h_s_ND: torch.Tensor,
    w_s_VD: torch.Tensor,
    h_t_ND: torch.Tensor,
    w_t_VD: torch.Tensor,
    weight_N: torch.Tensor,
    batch: SampledTokens | None = None,
    options: LossOptions = DEFAULTS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-vocabulary reverse KL, fused with both heads and chunked over the vocabulary (see the module doc)."""
    _check_shapes(h_s_ND, w_s_VD, h_t_ND, w_t_VD, weight_N)
    chunk = options.vocab_chunk or pick_vocab_chunk(h_s_ND.shape[0], w_s_VD.shape[0])
    loss, kl = _FusedReverseKL.apply(h_s_ND, w_s_VD, h_t_ND.detach(), w_t_VD.detach(), weight_N, chunk)
    return loss, kl.detach()


# ------------------------------------------------------------------------------------------ alternatives


def _token_chunked(
    per_token: Callable[..., tuple[torch.Tensor, torch.Tensor]],
    h_s_ND: torch.Tensor,
    w_s_VD: torch.Tensor,
    h_t_ND: torch.Tensor,
    w_t_VD: torch.Tensor,
    weight_N: torch.Tensor,
    extras: tuple[torch.Tensor, ...],
    token_chunk: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of ``weight * per_token(student log-probs, teacher log-probs, *extras)`` over token chunks, each under
    activation checkpointing (one chunk's [n x V] logits alive at a time, recomputed in the backward)."""

    def chunk_loss(h_s, h_t, weight, *chunk_extras):
        logp_s = (h_s @ w_s_VD.T).float().log_softmax(-1)
        logq_t = (h_t @ w_t_VD.T.detach()).float().log_softmax(-1).detach()
        loss_n, kl_n = per_token(logp_s, logq_t, *chunk_extras)
        return (weight.float() * loss_n).sum(), kl_n.detach()

    total, kls = h_s_ND.new_zeros((), dtype=torch.float32), []
    for start in range(0, h_s_ND.shape[0], token_chunk):
        part = slice(start, start + token_chunk)
        loss, kl = checkpoint(chunk_loss, h_s_ND[part], h_t_ND[part].detach(), weight_N[part],
                              *(e[part] for e in extras), use_reentrant=False)  # fmt: skip
        total, kls = total + loss, [*kls, kl]
    return total, torch.cat(kls) if kls else h_s_ND.new_zeros(0)


def _reverse_kl_of(logp_s: torch.Tensor, logq_t: torch.Tensor) -> torch.Tensor:
    return (logp_s.exp() * (logp_s - logq_t)).sum(-1)


def sampled_token(
    h_s_ND: torch.Tensor,
    w_s_VD: torch.Tensor,
    h_t_ND: torch.Tensor,
    w_t_VD: torch.Tensor,
    weight_N: torch.Tensor,
    batch: SampledTokens | None = None,
    options: LossOptions = DEFAULTS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sampled-token reverse KL as a per-token advantage (tinker / Thinking Machines, §3.3):
    ``A = sg(log q(y) - log mu(y))``, loss ``-min(pi(y)/mu(y), cap) * A * log pi(y)`` (weight detached). Its
    expected gradient is the full-vocabulary one (unbiased, higher variance)."""
    if batch is None:
        raise ValueError("distill.loss=sampled_token needs the sampled tokens and the sampler's log-probs")
    _check_shapes(h_s_ND, w_s_VD, h_t_ND, w_t_VD, weight_N)

    def per_token(logp_s, logq_t, token, mu):
        logp_y = logp_s.gather(-1, token[:, None])[:, 0]
        advantage = (logq_t.gather(-1, token[:, None])[:, 0] - mu).detach()
        ratio = (logp_y.detach() - mu).exp().clamp(max=options.is_cap)
        return -(ratio * advantage * logp_y), _reverse_kl_of(logp_s.detach(), logq_t)

    extras = (batch.token_N, batch.rollout_logprob_N.float())
    return _token_chunked(per_token, h_s_ND, w_s_VD, h_t_ND, w_t_VD, weight_N, extras, options.token_chunk)


def jsd(logp_s: torch.Tensor, logq_t: torch.Tensor, beta: float) -> torch.Tensor:
    """Generalized JSD per row (GKD): ``beta KL(q||m) + (1-beta) KL(p||m)``, ``m = beta q + (1-beta) p``; the
    end points are TRL's: ``beta = 0`` forward ``KL(q||p)``, ``beta = 1`` reverse ``KL(p||q)``."""
    if beta == 0.0:
        return (logq_t.exp() * (logq_t - logp_s)).sum(-1)
    if beta == 1.0:
        return _reverse_kl_of(logp_s, logq_t)
    log_m = torch.logsumexp(torch.stack([logq_t + math.log(beta), logp_s + math.log(1 - beta)]), 0)
    kl_q = (logq_t.exp() * (logq_t - log_m)).sum(-1)
    kl_p = (logp_s.exp() * (logp_s - log_m)).sum(-1)
    return beta * kl_q + (1 - beta) * kl_p


def gkd_jsd(
    h_s_ND: torch.Tensor,
    w_s_VD: torch.Tensor,
    h_t_ND: torch.Tensor,
    w_t_VD: torch.Tensor,
    weight_N: torch.Tensor,
    batch: SampledTokens | None = None,
    options: LossOptions = DEFAULTS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized JSD with ``options.beta`` at every position (GKD, Agarwal et al. 2023; §3.5)."""
    if not 0.0 <= options.beta <= 1.0:
        raise ValueError(f"distill.beta must be in [0, 1], got {options.beta}")
    _check_shapes(h_s_ND, w_s_VD, h_t_ND, w_t_VD, weight_N)

    def per_token(logp_s, logq_t):
        return jsd(logp_s, logq_t, options.beta), _reverse_kl_of(logp_s.detach(), logq_t)

    return _token_chunked(per_token, h_s_ND, w_s_VD, h_t_ND, w_t_VD, weight_N, (), options.token_chunk)


def topk_forward_kl_of(logp_s: torch.Tensor, logq_t: torch.Tensor, k: int) -> torch.Tensor:
    """Forward KL between the teacher's top-k tokens plus one tail bucket (the rest of the mass) of each model."""
    logq_k, index = logq_t.topk(min(k, logq_t.shape[-1]), -1)
    logp_k = logp_s.gather(-1, index)
    tail_q = torch.log1p(-logq_k.exp().sum(-1).clamp(max=1 - 1e-7))
    tail_p = torch.log1p(-logp_k.exp().sum(-1).clamp(max=1 - 1e-7))
    return (logq_k.exp() * (logq_k - logp_k)).sum(-1) + tail_q.exp() * (tail_q - tail_p)


def topk_forward_kl(
    h_s_ND: torch.Tensor,
    w_s_VD: torch.Tensor,
    h_t_ND: torch.Tensor,
    w_t_VD: torch.Tensor,
    weight_N: torch.Tensor,
    batch: SampledTokens | None = None,
    options: LossOptions = DEFAULTS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward KL over the teacher's top ``options.top_k`` tokens with a tail bucket."""
    if options.top_k < 1:
        raise ValueError(f"distill.top_k must be >= 1, got {options.top_k}")
    _check_shapes(h_s_ND, w_s_VD, h_t_ND, w_t_VD, weight_N)

    def per_token(logp_s, logq_t):
        return topk_forward_kl_of(logp_s, logq_t, options.top_k), _reverse_kl_of(logp_s.detach(), logq_t)

    return _token_chunked(per_token, h_s_ND, w_s_VD, h_t_ND, w_t_VD, weight_N, (), options.token_chunk)


def _check_shapes(h_s, w_s, h_t, w_t, weight) -> None:
    if h_s.shape[0] != h_t.shape[0] or h_s.shape[0] != weight.shape[0]:
        raise ValueError(
            f"student and teacher positions differ: {h_s.shape[0]} student, {h_t.shape[0]} teacher, "
            f"{weight.shape[0]} weights"
        )
    if w_s.shape[0] != w_t.shape[0]:
        raise ValueError(f"student vocabulary {w_s.shape[0]} != teacher vocabulary {w_t.shape[0]}")
    if h_s.shape[1] != w_s.shape[1] or h_t.shape[1] != w_t.shape[1]:
        raise ValueError(f"hidden size does not match its head: {tuple(h_s.shape)} vs {tuple(w_s.shape)}, "
                         f"{tuple(h_t.shape)} vs {tuple(w_t.shape)}")  # fmt: skip


OPD_LOSSES: dict[str, Callable[..., tuple[torch.Tensor, torch.Tensor]]] = {
    "reverse_kl": reverse_kl,
    "sampled_token": sampled_token,
    "gkd_jsd": gkd_jsd,
    "topk_forward_kl": topk_forward_kl,
}


def get_opd_loss(name: str) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    if name not in OPD_LOSSES:
        raise ValueError(f"unknown distill.loss {name!r}; valid: {', '.join(OPD_LOSSES)}")
    return OPD_LOSSES[name]
