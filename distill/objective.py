"""The on-policy distillation objective of a trainer rank: ``distill.loss`` between the student's and each
teacher's last-layer hidden states (through their LM heads), over the positions that predict the student's own
sampled tokens (reference §8.2: the weighted token-mean over every teacher's parts).

One ``train_step(parts, total_tokens, *hidden)`` trains on ``parts`` (one per teacher routed to this rank,
grouped by teacher so that one teacher head is on the device at a time); ``hidden[i]`` is the teacher's hidden
states for ``parts[i]``; ``total_tokens`` counts the trained tokens of the whole batch (all ranks, all parts).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from distill.config import DistillConfig, LossOptions
from distill.losses import SampledTokens, get_opd_loss
from rl.models import lm_head_weight
from rl.types import DistillPart, TrainBatch, predicting_mask


@dataclass
class OPDObjective:
    """``distill.loss`` by name with its options, against the teachers' LM heads (kept on CPU; one at a time
    goes to the device)."""

    loss_name: str
    options: LossOptions = field(default_factory=LossOptions)
    heads: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        get_opd_loss(
            self.loss_name
        )  # an unknown name fails where the objective is made, naming the valid ones
        self._head: tuple[str | None, Any] = (None, None)  # (teacher, its head on the device)

    @classmethod
    def of(cls, d: DistillConfig, heads: dict[str, torch.Tensor]) -> OPDObjective:
        """``distill.loss`` with the config's knobs (a ``DistillConfig`` is its ``LossOptions``)."""
        return cls(d.loss, d, heads)

    def __call__(self, h_s: torch.Tensor, w_s: torch.Tensor, h_t: torch.Tensor, w_t: torch.Tensor,
                 weight: torch.Tensor, token_N: torch.Tensor, rollout_logprob_N: torch.Tensor,
                 ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """The weighted loss and the per-position KL it reports, for N positions of one teacher."""
        sampled = SampledTokens(token_N, rollout_logprob_N)
        return get_opd_loss(self.loss_name)(h_s, w_s, h_t, w_t, weight, sampled, self.options)

    def attach(self, trainer: Any) -> None:
        self._head = (None, None)

    def micro_batches(self, trainer: Any, parts: list[DistillPart], total_tokens: int, *hidden: torch.Tensor
                      ) -> Iterator[tuple[DistillPart, TrainBatch, torch.Tensor, int]]:  # fmt: skip
        """Micro-batches of each part with their slice of the teacher's hidden states."""
        for part, hidden_ND in zip(parts, hidden, strict=True):
            counts = predicting_mask(part.batch.loss_mask_BT).sum(1).tolist()
            for start in range(0, part.batch.num_sequences, trainer.cfg.micro_batch_size):
                rows = slice(start, start + trainer.cfg.micro_batch_size)
                first, n = sum(counts[:start]), sum(counts[rows])
                yield part, part.batch.select(rows), hidden_ND[first : first + n], total_tokens

    def loss(self, trainer: Any, micro: tuple[DistillPart, TrainBatch, torch.Tensor, int]
             ) -> tuple[torch.Tensor, dict[str, float]]:  # fmt: skip
        part, batch, h_t_ND, total_tokens = micro
        batch, device, world = batch.to(trainer.device), trainer.device, trainer.dist.world_size
        out = trainer.forward_module(input_ids=batch.input_ids_BT, attention_mask=batch.attention_mask_BT,
                                     output_hidden_states=True, logits_to_keep=1)  # fmt: skip
        mask = predicting_mask(batch.loss_mask_BT)
        h_s = out.hidden_states[-1][:, :-1][mask]
        w_s = lm_head_weight(trainer.model)
        w_t = self._resident_head(part.teacher, w_s.dtype, device)
        weight = torch.full((h_s.shape[0],), part.weight * world / max(total_tokens, 1), device=device)
        loss, kl_N = self(h_s, w_s, h_t_ND.to(device, h_s.dtype), w_t, weight,
                          batch.input_ids_BT[:, 1:][mask], batch.rollout_logprobs_BT[:, 1:][mask])  # fmt: skip
        metrics = {"train/loss": loss.item() / world, f"opd/kl/{part.teacher}_sum": float(kl_N.sum()),
                   f"opd/tokens/{part.teacher}": float(h_s.shape[0])}  # fmt: skip
        return loss, metrics

    def finish(self, sums: dict[str, float]) -> dict[str, float]:
        return sums

    def _resident_head(self, teacher: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """``teacher``'s head on the device; parts come grouped by teacher, so each head moves there once a step
        and at most one is resident (the previous one is dropped first)."""
        if self._head[0] != teacher:
            self._head = (None, None)
            self._head = (teacher, self.heads[teacher].to(device, dtype))
        return self._head[1]


def merge_opd_metrics(results: list[dict[str, float]], total_tokens: int) -> dict[str, float]:
    """Every rank's step metrics as one: the loss summed, per-teacher KL token-weighted over ranks
    (``opd/kl/<teacher>``, ``opd/tokens/<teacher>``), rank 0's optimizer figures."""
    merged = {k: results[0][k] for k in ("train/grad_norm", "train/lr", "train/nonfinite")}
    merged["train/loss"] = sum(m["train/loss"] for m in results)
    for key in {k for m in results for k in m if k.startswith("opd/tokens/")}:
        teacher = key.removeprefix("opd/tokens/")
        tokens = sum(m.get(key, 0.0) for m in results)
        merged[key] = tokens
        merged[f"opd/kl/{teacher}"] = sum(m.get(f"opd/kl/{teacher}_sum", 0.0) for m in results) / max(
            tokens, 1
        )
    merged["train/tokens"] = float(total_tokens)
    return merged
