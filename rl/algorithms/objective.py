"""The RL objective of a trainer rank: the policy-gradient loss (clipped surrogate by name), the rollout /
trainer mismatch measured and optionally corrected, an optional KL to a frozen reference, aggregated by the
configured normaliser (``LossNormalizer`` counts the whole, all-rank batch).

The loss of every micro-batch is multiplied by ``world_size`` to undo DDP's mean, so the gradient equals that of
the whole batch's aggregate loss however it is split into ranks and micro-batches.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

from rl.algorithms.aggregation import aggregate
from rl.algorithms.kl import get_kl_fn
from rl.algorithms.mismatch import apply_correction, mismatch_metrics
from rl.algorithms.policy_loss import get_policy_loss_fn
from rl.config import AlgorithmConfig
from rl.models import load_model
from rl.moe import RoutingTap, router_agreement
from rl.types import LossNormalizer, TrainBatch

# float32 elements of one chunk of positions' log-softmax (256 MiB): the full-vocabulary intermediates of a long
# micro-batch (a 152k vocabulary x 8 rows x 2,500 positions is 12 GB a copy, and one pass keeps five) are made one
# chunk at a time and, under autograd, recomputed in the backward instead of kept: what stays is the logits and
# their gradient (benchmarks/logprob_pass.py: 0.57x the peak of one pass, 1.3x its time, on a CPU)
LOGITS_CHUNK_ELEMENTS = 2**26


def _logprobs_entropy(
    logits_BTV: torch.Tensor, targets_BT: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    logp_all = (logits_BTV.float() / temperature).log_softmax(-1)
    logprobs = logp_all.gather(-1, targets_BT[..., None])[..., 0]
    return logprobs, -(logp_all.exp() * logp_all).sum(-1)


def token_logprobs(
    model: torch.nn.Module,
    input_ids_BT: torch.Tensor,
    attention_mask_BT: torch.Tensor,
    temperature: float = 1.0,
    chunk_elements: int = LOGITS_CHUNK_ELEMENTS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs [B, T] of ``input_ids`` under ``softmax(logits / temperature)``, and its entropy [B, T].

    Index ``t`` holds ``log p(x_t | x_<t)`` and the entropy of that distribution; index 0 is 0. The
    temperature is the rollout's, so the PPO ratio compares the distribution that was actually sampled. The
    log-softmax runs over chunks of positions of at most ``chunk_elements`` values (checkpointed where there is a
    gradient); the values are those of one pass over all positions.
    """
    logits_BTV = model(input_ids=input_ids_BT, attention_mask=attention_mask_BT).logits[:, :-1]
    targets_BT = input_ids_BT[:, 1:]
    rows, positions, vocab = logits_BTV.shape
    step = max(1, chunk_elements // max(1, rows * vocab))
    if step >= positions:
        logprobs, entropy = _logprobs_entropy(logits_BTV, targets_BT, temperature)
    else:
        parts = [
            checkpoint(_logprobs_entropy, logits, targets, temperature, use_reentrant=False)
            if torch.is_grad_enabled()
            else _logprobs_entropy(logits, targets, temperature)
            for logits, targets in zip(logits_BTV.split(step, 1), targets_BT.split(step, 1), strict=True)
        ]
        logprobs, entropy = torch.cat([p[0] for p in parts], 1), torch.cat([p[1] for p in parts], 1)
    zero = logprobs.new_zeros((rows, 1))
    return torch.cat([zero, logprobs], 1), torch.cat([zero, entropy], 1)


def routed_logprobs(
    model: torch.nn.Module, forward: torch.nn.Module, batch: TrainBatch, temperature: float, replay: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``token_logprobs`` of ``batch`` through ``forward`` (``model`` or its DDP wrapper), routed to the
    rollout's experts where ``replay`` (and the batch has them), and the routers' own top-k [B * T, L, K]
    (None for a dense model or a batch without routing)."""
    if batch.routing_BTLK is None:
        return *token_logprobs(forward, batch.input_ids_BT, batch.attention_mask_BT, temperature), None
    with RoutingTap(model, batch.routing_BTLK.flatten(0, 1) if replay else None) as tap:
        logprobs, entropy = token_logprobs(forward, batch.input_ids_BT, batch.attention_mask_BT, temperature)
    return logprobs, entropy, tap.calls[0]


def routing_metrics(
    own_NLK: torch.Tensor, batch: TrainBatch, logprobs_no_replay_BT: torch.Tensor | None
) -> dict[str, float]:
    """``mismatch/router_agreement``: the share of (response token, MoE layer) pairs where the trainer's own
    top-k set is the rollout's; with replay on, the mismatch of the forward *without* it
    (``mismatch/no_replay/*``), what replay is there to remove."""
    assert batch.routing_BTLK is not None
    same, compared = router_agreement(own_NLK, batch.routing_BTLK.flatten(0, 1), batch.loss_mask_BT.flatten())
    metrics = {"mismatch/router_agreement": same / compared} if compared else {}
    if logprobs_no_replay_BT is not None:
        raw = mismatch_metrics(logprobs_no_replay_BT, batch.rollout_logprobs_BT, batch.loss_mask_BT)
        metrics |= {k.replace("mismatch/", "mismatch/no_replay/"): v for k, v in raw.items()}
    return metrics


class PolicyObjective:
    """``algorithm.*``'s loss on one rank's shard of a batch of scored rollouts (``train_step(shard, norm)``)."""

    def __init__(self, algo: AlgorithmConfig):
        self.algo = algo
        self.policy_loss_fn = get_policy_loss_fn(algo.policy_loss)
        self.kl_fn = get_kl_fn(algo.kl_estimator)
        self.ref_model: torch.nn.Module | None = None

    def attach(self, trainer: Any) -> None:
        """A frozen copy of the starting policy, when the loss has a KL term (``algorithm.kl_coef > 0``)."""
        if self.algo.kl_coef > 0:
            ref = load_model(trainer.spec.model_path, trainer.spec.dtype).to(trainer.device)
            self.ref_model = ref.eval().requires_grad_(False)

    def micro_batches(self, trainer: Any, batch: TrainBatch, norm: LossNormalizer) -> Iterable[Any]:
        batch, size = batch.to(trainer.device), trainer.cfg.micro_batch_size
        return [
            (batch.select(slice(start, start + size)).trimmed(), norm)
            for start in range(0, batch.num_sequences, size)
        ]

    def loss(
        self, trainer: Any, micro: tuple[TrainBatch, LossNormalizer]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        batch, norm = micro
        replay = self.algo.routing_replay
        logprobs, entropy, own_routing = routed_logprobs(
            trainer.model, trainer.forward_module, batch, trainer.spec.temperature, replay
        )
        old = batch.old_logprobs_BT if batch.old_logprobs_BT is not None else logprobs.detach()
        mask = batch.loss_mask_BT
        loss_BT, pg_metrics = self.policy_loss_fn(logprobs, old, batch.advantages_BT, mask,
                                                  clip_low=self.algo.clip_low, clip_high=self.algo.clip_high)  # fmt: skip
        # rollout (mu) vs trainer (pi_old) on the sampled tokens: measured always, corrected if configured.
        # Masked tokens still count in the global normaliser; metrics are token-weighted over micro-batches
        # (so mismatch/max_abs_prob_diff is a mean of per-micro-batch maxima).
        weights_BT, correction_metrics = apply_correction(
            self.algo, old, batch.rollout_logprobs_BT, batch.advantages_BT, mask
        )
        loss_BT = loss_BT * weights_BT
        tokens = float(mask.sum())
        if tokens:
            pg_metrics |= correction_metrics | mismatch_metrics(old, batch.rollout_logprobs_BT, mask)
            if own_routing is not None:
                pg_metrics |= self._routing_metrics(trainer, batch, own_routing)
        metrics = {f"{k}_sum": v * tokens for k, v in pg_metrics.items()}
        if self.ref_model is not None:
            with torch.no_grad():
                ref, _ = token_logprobs(self.ref_model, batch.input_ids_BT, batch.attention_mask_BT,
                                        trainer.spec.temperature)  # fmt: skip
            kl_BT = self.kl_fn(logprobs, ref, old) * mask
            loss_BT = loss_BT + self.algo.kl_coef * kl_BT
            metrics["train/kl_ref_sum"] = float(kl_BT.sum())
        loss = aggregate(loss_BT, mask, self.algo.aggregation, norm)
        metrics["train/loss"] = loss.item()
        metrics["train/entropy_sum"] = float((entropy.detach() * mask).sum())
        metrics["train/tokens"] = tokens
        metrics["train/sequences"] = float(batch.num_sequences)
        return loss * trainer.dist.world_size, metrics

    def _routing_metrics(self, trainer: Any, batch: TrainBatch, own_NLK: torch.Tensor) -> dict[str, float]:
        """Router agreement, and with replay on, the mismatch without it -- one more forward, no gradient: the
        trainer's own routing under replay follows the replayed layers before it, so it is not the answer."""
        if not self.algo.routing_replay:
            return routing_metrics(own_NLK, batch, None)
        with torch.no_grad():
            logprobs, _, own = routed_logprobs(trainer.model, trainer.model, batch, trainer.spec.temperature,
                                               replay=False)  # fmt: skip
        assert own is not None
        return routing_metrics(own, batch, logprobs)

    def finish(self, sums: dict[str, float]) -> dict[str, float]:
        """Token means of the ``*_sum`` figures; the loss summed over micro-batches."""
        tokens = max(sums.get("train/tokens", 0.0), 1.0)
        metrics = {k.removesuffix("_sum"): v / tokens for k, v in sums.items() if k.endswith("_sum")}
        return metrics | {"train/loss": sums["train/loss"], "train/tokens": tokens,
                          "train/sequences": sums.get("train/sequences", 0.0)}  # fmt: skip


def merge_policy_metrics(results: list[dict[str, float]], sequences: int) -> dict[str, float]:
    """Every rank's step metrics as one: token-weighted means, the loss summed, rank 0's optimizer figures."""
    tokens = sum(m["train/tokens"] for m in results)
    merged = {k: sum(m[k] * m["train/tokens"] for m in results) / tokens for k in results[0]}
    merged.update({k: results[0][k] for k in ("train/grad_norm", "train/lr", "train/nonfinite")})
    merged["train/loss"] = sum(m["train/loss"] for m in results)
    merged["train/tokens"] = tokens
    merged["train/sequences"] = float(sequences)
    return merged
