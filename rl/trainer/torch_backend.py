"""The ``torch`` trainer engine of one rank: master weights, the optimizer (``rl/trainer/optim.py``), the LR
schedule, accumulation over micro-batches, clipping and the optimizer step, export / save / load. What it
optimizes is an objective (``rl/trainer/objective.py``): the policy-gradient loss of RL or the on-policy
distillation loss.

With ``world_size > 1`` each rank is one process (one TrainerWorker actor) and gradients are averaged
by DDP over gloo (CPU) or NCCL (GPU); objectives scale their losses so the gradient is the whole batch's.
"""

from __future__ import annotations

import math
import os
import random
import socket
from contextlib import AbstractContextManager, nullcontext, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from rl.algorithms.objective import routed_logprobs
from rl.config import TrainerConfig
from rl.faults import maybe_kill
from rl.fp4.qat import HostStaging, apply_qat, export_weights, fake_quant_weights, skipped_experts, to_cpu
from rl.memory import peak_gpu_gib
from rl.models import load_model, quiet_deepspeed
from rl.trainer.objective import Objective
from rl.trainer.optim import make_optimizer
from rl.trainer.spec import TrainerSpec
from rl.types import TrainBatch
from rl.weight_sync import SharedExport, SharedWeights, device_uuid


@dataclass(frozen=True)
class DistInfo:
    """Where this rank sits in the data-parallel group."""

    rank: int = 0
    world_size: int = 1
    master_addr: str = "127.0.0.1"
    master_port: int = 29500


# Ray's worker processes listen on ports 10002-19999 by default; the kernel hands out ephemeral ports (every
# outgoing connection's) from ip_local_port_range, 32768-60999 by default
RENDEZVOUS_PORTS = (20000, 32768)
PORT_RANGE_FILE = "/proc/sys/net/ipv4/ip_local_port_range"


def rendezvous_ports(port_range_file: str = PORT_RANGE_FILE) -> range:
    """Ports a process group's rendezvous may take: above Ray's worker ports and below the ephemeral range (read
    from the kernel where it says), so no connection another process opens meanwhile can be given it."""
    low, high = RENDEZVOUS_PORTS
    with suppress(OSError, ValueError, IndexError):
        high = min(high, int(Path(port_range_file).read_text().split()[0]))
    return range(low, high)


def free_port(candidates: range | None = None, rng: random.Random | None = None) -> int:
    """A TCP port free on this host right now, for a process group's rendezvous, which binds it seconds later
    (once the ranks have started). Drawn at random outside the ephemeral range: a port the kernel chose
    (``bind(0)``) is an ephemeral one, which any new connection on the host -- a Ray cluster makes many -- could
    take before rank 0 binds it (EADDRINUSE, seen with two jobs on one machine)."""
    candidates = rendezvous_ports() if candidates is None else candidates
    rng = rng or random.SystemRandom()
    for _ in range(100 if len(candidates) else 0):
        port = rng.choice(candidates)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with (
        socket.socket() as s
    ):  # none free outside the ephemeral range (an odd kernel setting): the kernel's pick
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


class TorchTrainer:
    """One data-parallel rank: loads the model, owns the optimizer, runs train steps, exports weights."""

    def __init__(
        self, spec: TrainerSpec, objective: Objective, dist_info: DistInfo | None = None, threads: int = 0
    ):
        # Ray pins a 1-CPU actor to one thread (OMP_NUM_THREADS=1); roles run one at a time, so use the cores.
        torch.set_num_threads(threads or os.cpu_count() or 1)
        if spec.temperature <= 0:
            raise ValueError(
                f"training needs a sampling temperature > 0 (got {spec.temperature}); greedy is for eval"
            )
        self.spec, self.cfg, self.dist = spec, spec.cfg, dist_info or DistInfo()
        torch.manual_seed(spec.seed)
        self.device = self._pick_device()
        torch.backends.cuda.matmul.allow_tf32 = self.cfg.tf32
        if self.dist.world_size > 1 or self.always_distributed:
            self._init_process_group()
        self.model = load_model(spec.model_path, spec.dtype).to(self.device).train()
        self.qat_names = apply_qat(self.model, spec.fp4) if spec.fp4 else []
        if spec.fp4 and self.dist.rank == 0 and (dense := skipped_experts(self.model, spec.fp4)):
            print(f"fp4={spec.fp4}: {len(dense)} MoE experts module(s) stay high precision (an input width is not "
                  f"whole {spec.fp4} blocks): {', '.join(dense)}", flush=True)  # fmt: skip
        self.objective = objective
        objective.attach(self)
        self._setup_optimizer(spec.total_steps * spec.cfg.num_minibatches)
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
        """``trainer.optimizer`` (AdamW, or Muon + AdamW) over the master weights, the LR schedule, and DDP when
        there are several ranks."""
        self.ddp = DistributedDataParallel(self.model) if self.dist.world_size > 1 else None
        self.optimizer = make_optimizer(self.model, self.cfg)
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
    def forward_logprobs(self, batch: TrainBatch, replay: bool = False) -> torch.Tensor:
        """Current policy's per-token log-probs [B, T] (no gradient), micro-batched; an MoE routed to the
        rollout's experts where ``replay``."""
        batch, size = batch.to(self.device), self.cfg.micro_batch_size
        out_BT = torch.zeros(batch.input_ids_BT.shape, device=self.device)
        for start in range(0, batch.num_sequences, size):
            micro = batch.select(slice(start, start + size)).trimmed()  # its own width: 0 past it
            logprobs = routed_logprobs(self.model, self.model, micro, self.spec.temperature, replay)[0]
            out_BT[start : start + size, : logprobs.shape[1]] = logprobs
        return out_BT.cpu()

    def _release_cache(self) -> None:
        """Hand the allocator's cached blocks back to the GPU, once a step, when the weights go out to the
        rollout: a colocated rollout worker shares the GPU, and the trainer's peak (full-vocabulary logits of a
        micro-batch) would otherwise stay reserved through the next rollout (an H200 ran out that way: the
        trainer held 132 of 140 GB)."""
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def train_step(self, *work: Any) -> dict[str, float]:
        """One optimizer step of the objective over ``work`` (what the objective takes: a batch shard and the
        whole batch's ``LossNormalizer``, or distillation parts with their teachers' hidden states): its loss
        per micro-batch, gradients accumulated (all-reduced on the last), clipped, then stepped.

        A non-finite loss or gradient norm skips the update (weights and optimizer state untouched) and
        reports ``train/nonfinite = 1``; the loop decides when too many in a row stop the run.
        """
        maybe_kill("trainer")
        self._zero_grad()
        self._train_calls += 1
        poison = self._nan_after is not None and self._train_calls > self._nan_after
        micros = list(self.objective.micro_batches(self, *work))
        sums: dict[str, float] = {"train/loss": 0.0}
        for i, micro in enumerate(micros):
            with self._accumulate(i == len(micros) - 1):
                loss, metrics = self.objective.loss(self, micro)
                if poison:
                    loss = loss * float("nan")
                    metrics["train/loss"] = float("nan")
                self._backward(loss)
            for key, value in metrics.items():
                sums[key] = sums.get(key, 0.0) + value
        grad_norm, nonfinite = self._optimizer_step(sums["train/loss"])
        return self.objective.finish(sums) | {"train/grad_norm": grad_norm, "train/nonfinite": float(nonfinite),
                                              "train/lr": float(self.scheduler.get_last_lr()[0])}  # fmt: skip

    def export_weights(self) -> dict[str, Any]:
        """The current weights by name (what rollout workers load); QAT linears go packed as FP4 tensors.

        Rank 0 answers; other ranks return {} (backends that shard weights gather them in this call).
        """
        self._release_cache()
        if self.dist.rank != 0:
            return {}
        return to_cpu(export_weights(self.model, self.qat_names, self.spec.fp4), self.staging)

    def export_shared(self) -> SharedWeights | None:
        """``export_weights`` packed into this rank's CUDA buffer, answered by its IPC handle (rank 0; others
        None): for rollout workers on the same GPU (``rl.weight_sync``)."""
        self._release_cache()
        if self.dist.rank != 0:
            return None
        return self.shared.export(export_weights(self.model, self.qat_names, self.spec.fp4))

    def device_uuid(self) -> str:
        """This rank's GPU ("" on CPU): rollout workers on the same GPU take the weights by CUDA IPC."""
        return device_uuid()

    def peak_gpu_gib(self) -> float:
        """The most GPU memory this rank has held (0 on CPU)."""
        return peak_gpu_gib()

    def fake_quant_weights(self) -> dict[str, torch.Tensor]:
        """The weights each QAT linear multiplies by in the training forward (rank 0; for the bitwise check)."""
        return (
            to_cpu(fake_quant_weights(self.model, self.qat_names, self.spec.fp4))
            if self.dist.rank == 0
            else {}
        )

    def save(self, path: str) -> None:
        """Weights (HF format), optimizer, scheduler and RNG into ``path`` (rank 0 writes; all ranks agree)."""
        if self.dist.rank != 0:
            return
        out = Path(path)
        quiet_deepspeed()
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
