"""The ``torch`` trainer backend: master weights, AdamW, and the policy-gradient step of one rank.

With ``world_size > 1`` each rank is one process (one TrainerWorker actor) and gradients are averaged
by DDP over gloo (CPU) or NCCL (GPU). The loss of every micro-batch is normalised by *global* counts
(``LossNormalizer``) and multiplied by ``world_size`` to undo DDP's mean, so the gradient equals that of
the whole batch's aggregate loss regardless of how it is split into ranks and micro-batches.
"""

from __future__ import annotations

import math
import os
import random
import socket
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from rl.algorithms.aggregation import aggregate
from rl.algorithms.kl import get_kl_fn
from rl.algorithms.mismatch import CorrectionConfig, apply_correction, mismatch_metrics
from rl.algorithms.policy_loss import get_policy_loss_fn
from rl.config import AlgorithmConfig, TrainerConfig
from rl.faults import maybe_kill
from rl.fp4.qat import HostStaging, apply_qat, export_weights, fake_quant_weights, to_cpu
from rl.memory import peak_gpu_gib
from rl.models import lm_head_weight, load_model
from rl.types import DistillPart, LossNormalizer, TrainBatch, predicting_mask
from rl.weight_sync import SharedExport, SharedWeights, device_uuid


@dataclass(frozen=True)
class DistInfo:
    """Where this rank sits in the data-parallel group."""

    rank: int = 0
    world_size: int = 1
    master_addr: str = "127.0.0.1"
    master_port: int = 29500


def free_port() -> int:
    """A TCP port free on this host right now (for a process group's rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def token_logprobs(
    model: torch.nn.Module,
    input_ids_BT: torch.Tensor,
    attention_mask_BT: torch.Tensor,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs [B, T] of ``input_ids`` under ``softmax(logits / temperature)``, and its entropy [B, T].

    Index ``t`` holds ``log p(x_t | x_<t)`` and the entropy of that distribution; index 0 is 0. The
    temperature is the rollout's, so the PPO ratio compares the distribution that was actually sampled.
    """
    logits = (
        model(input_ids=input_ids_BT, attention_mask=attention_mask_BT).logits[:, :-1].float() / temperature
    )
    logp_all = logits.log_softmax(-1)
    logprobs = logp_all.gather(-1, input_ids_BT[:, 1:, None])[..., 0]
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    zero = logprobs.new_zeros((logprobs.shape[0], 1))
    return torch.cat([zero, logprobs], 1), torch.cat([zero, entropy], 1)


def lr_lambda(cfg: TrainerConfig, total_steps: int):
    """LR multiplier per optimizer step: linear warmup, then constant / linear / cosine decay to the floor."""
    schedules = ("constant", "linear", "cosine")
    if cfg.lr_schedule not in schedules:
        raise ValueError(f"unknown trainer.lr_schedule {cfg.lr_schedule!r}; valid: {', '.join(schedules)}")

    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.lr_schedule == "constant":
            return 1.0
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
        decay = 1 - progress if cfg.lr_schedule == "linear" else 0.5 * (1 + math.cos(math.pi * progress))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * decay

    return factor


# (student hidden, student head, teacher hidden, teacher head, per-position weight, sampled tokens, their rollout
# log-probs) -> (loss, per-position KL): the OPD objective's call (distill.losses.OPDObjective)
OPDLoss = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    tuple[torch.Tensor, torch.Tensor],
]


class TorchTrainer:
    """One data-parallel rank: loads the model, owns the optimizer, runs train steps, exports weights."""

    def __init__(
        self,
        model_path: str,
        cfg: TrainerConfig,
        algo: AlgorithmConfig,
        total_steps: int,
        dtype: str = "float32",
        dist_info: DistInfo | None = None,
        seed: int = 0,
        threads: int = 0,
        temperature: float = 1.0,
        fp4: str = "none",
    ):
        # Ray pins a 1-CPU actor to one thread (OMP_NUM_THREADS=1); roles run one at a time, so use the cores.
        torch.set_num_threads(threads or os.cpu_count() or 1)
        if temperature <= 0:
            raise ValueError(
                f"training needs a sampling temperature > 0 (got {temperature}); greedy is for eval"
            )
        self.cfg, self.algo, self.dist = cfg, algo, dist_info or DistInfo()
        self.temperature = temperature
        torch.manual_seed(seed)
        self.device = self._pick_device()
        if self.dist.world_size > 1 or self.always_distributed:
            self._init_process_group()
        self.model = load_model(model_path, dtype).to(self.device).train()
        self.fp4 = fp4
        self.qat_names = apply_qat(self.model, fp4) if fp4 != "none" else []
        self.ref_model = (
            load_model(model_path, dtype).to(self.device).eval().requires_grad_(False)
            if algo.kl_coef > 0
            else None
        )
        self.policy_loss_fn = get_policy_loss_fn(algo.policy_loss)
        self.kl_fn = get_kl_fn(algo.kl_estimator)
        self.correction = CorrectionConfig(
            algo.correction, algo.tis_cap, algo.geo_low, algo.geo_high, algo.opsm_delta
        )
        self._setup_optimizer(total_steps * cfg.num_minibatches)
        # Fault injection for tests (DISTILLERY_FAULT_NAN_AFTER=N): every train step after the N-th gets a
        # NaN loss, exercising the real skip-and-stop path end to end.
        nan_after = os.environ.get("DISTILLERY_FAULT_NAN_AFTER")
        self._nan_after = int(nan_after) if nan_after else None
        self._train_calls = 0
        self.staging = HostStaging() if self.device.type == "cuda" else None  # pinned buffers for exports
        self.shared = SharedExport()  # the CUDA buffer colocated rollout workers map (cluster.weight_sync)

    always_distributed = False  # backends that need a process group even on one rank

    def ready(self) -> bool:
        return True

    def _pick_device(self) -> torch.device:
        """This rank's GPU (one per rank: Ray gives each actor its own, a launcher numbers them), else CPU."""
        if not torch.cuda.is_available():
            return torch.device("cpu")
        index = self.dist.rank % torch.cuda.device_count()
        torch.cuda.set_device(index)
        return torch.device("cuda", index)

    def _setup_optimizer(self, optimizer_steps: int) -> None:
        """AdamW over the master weights, the LR schedule, and DDP when there are several ranks."""
        self.ddp = DistributedDataParallel(self.model) if self.dist.world_size > 1 else None
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=self.cfg.lr,
            betas=(self.cfg.betas[0], self.cfg.betas[1]),
            weight_decay=self.cfg.weight_decay,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(self.cfg, optimizer_steps)
        )

    @property
    def forward_module(self) -> torch.nn.Module:
        """What the training forward calls (the DDP wrapper when there is one)."""
        return self.ddp if self.ddp is not None else self.model

    def _accumulate(self, last: bool) -> AbstractContextManager:
        """Context of one micro-batch's backward: gradients are all-reduced only on the ``last`` one."""
        return self.ddp.no_sync() if self.ddp is not None and not last else nullcontext()

    def _zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def _backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def _optimizer_step(self, loss: float) -> tuple[float, bool]:
        """Clip, then step unless the loss or gradient norm is non-finite on any rank; (grad norm, skipped)."""
        clip = self.cfg.grad_clip if self.cfg.grad_clip > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip))
        nonfinite = not (math.isfinite(grad_norm) and math.isfinite(loss))
        if self.ddp is not None:  # every rank must take the same decision
            flag = torch.tensor([float(nonfinite)], device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            nonfinite = bool(flag.item())
        if nonfinite:
            self.optimizer.zero_grad(set_to_none=True)
        else:
            self.optimizer.step()
            self.scheduler.step()
        return grad_norm, nonfinite

    def _init_process_group(self) -> None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(
            backend,
            init_method=f"tcp://{self.dist.master_addr}:{self.dist.master_port}",
            rank=self.dist.rank,
            world_size=self.dist.world_size,
        )

    @torch.no_grad()
    def forward_logprobs(self, batch: TrainBatch) -> torch.Tensor:
        """Current policy's per-token log-probs [B, T] (no gradient), micro-batched."""
        out, batch = [], batch.to(self.device)
        for start in range(0, batch.num_sequences, self.cfg.micro_batch_size):
            micro = batch.select(slice(start, start + self.cfg.micro_batch_size))
            out.append(
                token_logprobs(self.model, micro.input_ids_BT, micro.attention_mask_BT, self.temperature)[0]
            )
        return torch.cat(out).cpu()

    def train_step(self, batch: TrainBatch, norm: LossNormalizer) -> dict[str, float]:
        """One optimizer step on this rank's shard; ``norm`` counts the whole (all-rank) batch.

        A non-finite loss or gradient norm skips the update (weights and optimizer state untouched) and
        reports ``train/nonfinite = 1``; the controller decides when too many in a row stop the run.
        """
        maybe_kill("trainer")
        self._zero_grad()
        batch = batch.to(self.device)
        self._train_calls += 1
        poison = self._nan_after is not None and self._train_calls > self._nan_after
        sums: dict[str, float] = {}
        micro_batches = range(0, batch.num_sequences, self.cfg.micro_batch_size)
        for i, start in enumerate(micro_batches):
            micro = batch.select(slice(start, start + self.cfg.micro_batch_size))
            last = i == len(micro_batches) - 1
            with self._accumulate(last):
                loss, metrics = self._micro_loss(micro, norm)
                if poison:
                    loss = loss * float("nan")
                    metrics["train/loss"] = float("nan")
                self._backward(loss)
            for key, value in metrics.items():
                sums[key] = sums.get(key, 0.0) + value
        grad_norm, nonfinite = self._optimizer_step(sums["train/loss"])
        return self._step_metrics(sums, batch, grad_norm, nonfinite)

    def _micro_loss(self, micro: TrainBatch, norm: LossNormalizer) -> tuple[torch.Tensor, dict[str, float]]:
        logprobs, entropy = token_logprobs(
            self.forward_module, micro.input_ids_BT, micro.attention_mask_BT, self.temperature
        )
        old = micro.old_logprobs_BT if micro.old_logprobs_BT is not None else logprobs.detach()
        mask = micro.loss_mask_BT
        loss_BT, pg_metrics = self.policy_loss_fn(
            logprobs,
            old,
            micro.advantages_BT,
            mask,
            clip_low=self.algo.clip_low,
            clip_high=self.algo.clip_high,
        )
        # rollout (mu) vs trainer (pi_old) on the sampled tokens: measured always, corrected if configured.
        # Masked tokens still count in the global normaliser; metrics are token-weighted over micro-batches
        # (so mismatch/max_abs_prob_diff is a mean of per-micro-batch maxima).
        weights_BT, correction_metrics = apply_correction(
            self.correction, old, micro.rollout_logprobs_BT, micro.advantages_BT, mask
        )
        loss_BT = loss_BT * weights_BT
        tokens = float(mask.sum())
        if tokens:
            pg_metrics |= correction_metrics | mismatch_metrics(old, micro.rollout_logprobs_BT, mask)
        metrics = {f"{k}_sum": v * tokens for k, v in pg_metrics.items()}
        if self.ref_model is not None:
            with torch.no_grad():
                ref, _ = token_logprobs(
                    self.ref_model, micro.input_ids_BT, micro.attention_mask_BT, self.temperature
                )
            kl_BT = self.kl_fn(logprobs, ref, old) * mask
            loss_BT = loss_BT + self.algo.kl_coef * kl_BT
            metrics["train/kl_ref_sum"] = float(kl_BT.sum())
        loss = aggregate(loss_BT, mask, self.algo.aggregation, norm)
        metrics["train/loss"] = loss.item()
        metrics["train/entropy_sum"] = float((entropy.detach() * mask).sum())
        metrics["train/tokens"] = tokens
        return loss * self.dist.world_size, metrics

    # ------------------------------------------------------------------------- on-policy distillation

    def set_teacher_heads(self, heads: dict[str, torch.Tensor], objective: OPDLoss) -> None:
        """Teachers' LM heads (kept on CPU; one at a time goes to the device) and the OPD objective
        (``distill.losses.OPDObjective``: called per micro-batch, see ``OPDLoss``)."""
        self.teacher_heads, self.opd_objective = heads, objective
        self._head: tuple[str | None, Any] = (None, None)  # (teacher, its head on the device)

    def distill_step(
        self, parts: list[DistillPart], total_tokens: int, *hidden: torch.Tensor
    ) -> dict[str, float]:
        """One optimizer step of on-policy distillation over ``parts`` (grouped by teacher); ``hidden[i]`` is
        the teacher's hidden states for ``parts[i]``. ``total_tokens`` counts the trained tokens of the whole
        batch (all ranks, all parts), so the loss is the weighted token-mean of reference §8.2."""
        maybe_kill("trainer")
        self._zero_grad()
        sums: dict[str, float] = {"train/loss": 0.0}
        calls = [
            (part, micro, h)
            for part, h in zip(parts, hidden, strict=True)
            for micro, h in self._opd_micro(part, h)
        ]
        for i, (part, micro, h_t) in enumerate(calls):
            with self._accumulate(i == len(calls) - 1):
                loss, kl_sum, tokens = self._opd_micro_loss(part, micro, h_t, total_tokens)
                self._backward(loss)
            sums["train/loss"] += loss.item() / self.dist.world_size
            sums[f"opd/kl/{part.teacher}_sum"] = sums.get(f"opd/kl/{part.teacher}_sum", 0.0) + kl_sum
            sums[f"opd/tokens/{part.teacher}"] = sums.get(f"opd/tokens/{part.teacher}", 0.0) + tokens
        grad_norm, nonfinite = self._optimizer_step(sums["train/loss"])
        return sums | {"train/grad_norm": grad_norm, "train/lr": float(self.scheduler.get_last_lr()[0]),
                       "train/nonfinite": float(nonfinite)}  # fmt: skip

    def _resident_head(self, teacher: str, dtype: torch.dtype) -> torch.Tensor:
        """``teacher``'s head on the device; parts come grouped by teacher, so each head moves there once a step
        and at most one is resident (the previous one is dropped first)."""
        if self._head[0] != teacher:
            self._head = (None, None)
            self._head = (teacher, self.teacher_heads[teacher].to(self.device, dtype))
        return self._head[1]

    def _opd_micro(self, part: DistillPart, hidden_ND: torch.Tensor):
        """Micro-batches of ``part`` with their slice of the teacher's hidden states."""
        counts = predicting_mask(part.batch.loss_mask_BT).sum(1).tolist()
        for start in range(0, part.batch.num_sequences, self.cfg.micro_batch_size):
            rows = slice(start, start + self.cfg.micro_batch_size)
            first, n = sum(counts[:start]), sum(counts[rows])
            yield part.batch.select(rows), hidden_ND[first : first + n]

    def _opd_micro_loss(
        self, part: DistillPart, micro: TrainBatch, h_t_ND: torch.Tensor, total_tokens: int
    ) -> tuple[torch.Tensor, float, float]:
        micro = micro.to(self.device)
        out = self.forward_module(input_ids=micro.input_ids_BT, attention_mask=micro.attention_mask_BT,
                                  output_hidden_states=True, logits_to_keep=1)  # fmt: skip
        mask = predicting_mask(micro.loss_mask_BT)
        h_s = out.hidden_states[-1][:, :-1][mask]
        w_s = lm_head_weight(self.model)
        w_t = self._resident_head(part.teacher, w_s.dtype)
        weight = torch.full((h_s.shape[0],), part.weight * self.dist.world_size / max(total_tokens, 1),
                            device=self.device)  # fmt: skip
        loss, kl_N = self.opd_objective(h_s, w_s, h_t_ND.to(self.device, h_s.dtype), w_t, weight,
                                        micro.input_ids_BT[:, 1:][mask], micro.rollout_logprobs_BT[:, 1:][mask])  # fmt: skip
        return loss, float(kl_N.sum()), float(h_s.shape[0])

    def _step_metrics(
        self, sums: dict[str, float], batch: TrainBatch, grad_norm: float, nonfinite: bool
    ) -> dict[str, float]:
        tokens = max(sums.pop("train/tokens"), 1.0)
        metrics = {k.removesuffix("_sum"): v / tokens for k, v in sums.items() if k.endswith("_sum")}
        metrics["train/loss"] = sums["train/loss"]
        metrics["train/tokens"] = tokens
        metrics["train/grad_norm"] = grad_norm
        metrics["train/lr"] = float(self.scheduler.get_last_lr()[0])
        metrics["train/nonfinite"] = float(nonfinite)
        metrics["train/sequences"] = float(batch.num_sequences)
        return metrics

    def export_weights(self) -> dict[str, Any]:
        """The current weights by name (what rollout workers load); QAT linears go packed as FP4 tensors.

        Rank 0 answers; other ranks return {} (backends that shard weights gather them in this call).
        """
        if self.dist.rank != 0:
            return {}
        return to_cpu(export_weights(self.model, self.qat_names, self.fp4), self.staging)

    def export_shared(self) -> SharedWeights | None:
        """``export_weights`` packed into this rank's CUDA buffer, answered by its IPC handle (rank 0; others
        None): for rollout workers on the same GPU (``rl.weight_sync``)."""
        if self.dist.rank != 0:
            return None
        return self.shared.export(export_weights(self.model, self.qat_names, self.fp4))

    def device_uuid(self) -> str:
        """This rank's GPU ("" on CPU): rollout workers on the same GPU take the weights by CUDA IPC."""
        return device_uuid()

    def peak_gpu_gib(self) -> float:
        """The most GPU memory this rank has held (0 on CPU)."""
        return peak_gpu_gib()

    def fake_quant_weights(self) -> dict[str, torch.Tensor]:
        """The weights each QAT linear multiplies by in the training forward (rank 0; for the bitwise check)."""
        return to_cpu(fake_quant_weights(self.model, self.qat_names, self.fp4)) if self.dist.rank == 0 else {}

    def save(self, path: str) -> None:
        """Weights (HF format), optimizer, scheduler and RNG into ``path`` (rank 0 writes; all ranks agree)."""
        if self.dist.rank != 0:
            return
        out = Path(path)
        self.model.save_pretrained(out)  # type: ignore[operator]
        state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "python_rng": random.getstate(),
        }
        torch.save(state, out / "trainer_state.pt")

    def load(self, path: str) -> None:
        """Restore what ``save`` wrote."""
        src = Path(path)
        loaded = load_model(str(src), dtype=str(next(self.model.parameters()).dtype).removeprefix("torch."))
        self.model.load_state_dict(loaded.state_dict())
        state = torch.load(src / "trainer_state.pt", weights_only=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        random.setstate(state["python_rng"])

    def shutdown(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()
