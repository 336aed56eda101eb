"""The ``deepspeed`` trainer backend: the torch backend's step with DeepSpeed ZeRO-1/2/3 holding the state.

Everything about the loss (log-probs at the rollout temperature, policy loss, corrections, KL, global
normalisers) is the torch backend's; this class swaps what holds the weights, gradients and optimizer:

* ZeRO stage ``trainer.zero_stage`` partitions optimizer state (1), gradients (2) and parameters (3) across the
  data-parallel ranks; gloo on CPU, NCCL on GPU. Adam is DeepSpeed's torch path (``"torch_adam": true``), so
  nothing is compiled for the optimizer.
* A step has as many micro-batches as the batch needs (DAPO batches vary); the accumulation boundary is set
  by hand on the last one, so gradients are reduced once per step as with DDP's ``no_sync``.
* A non-finite gradient norm makes DeepSpeed skip the update (weights, optimizer and LR schedule untouched):
  the same contract as the torch backend's ``train/nonfinite``.
* QAT is unchanged: the fake-quantized forward runs inside DeepSpeed's module hooks, so under ZeRO-3 the
  quantizer sees the gathered full weight.
* ``export_weights``, ``fake_quant_weights`` and ``save`` gather full weights under ZeRO-3 and are collective:
  every rank must call them (``TrainerGroup`` does); rank 0 returns the result.
* ``save``/``load`` use DeepSpeed's own checkpointing (``<dir>/deepspeed``, every rank's partition) next to the
  HF weights; the controller writes checkpoints aside and renames them, so they stay atomic for the user.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import random
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch

from rl.config import TrainerConfig
from rl.fp4.qat import export_weights, fake_quant_weights, to_cpu
from rl.trainer.torch_backend import TorchTrainer, lr_lambda
from rl.weight_sync import SharedWeights

ZERO_STAGES = (1, 2, 3)
CHECKPOINT_DIR, CHECKPOINT_TAG = "deepspeed", "state"


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` merged in, nested dicts key by key (``extra`` wins)."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        out[key] = (
            deep_merge(out[key], value)
            if isinstance(value, dict) and isinstance(out.get(key), dict)
            else value
        )
    return out


def deepspeed_config(cfg: TrainerConfig, dtype: str, world_size: int) -> dict[str, Any]:
    """The DeepSpeed config a trainer config stands for, with ``cfg.deepspeed`` merged over it."""
    if cfg.zero_stage not in ZERO_STAGES:
        raise ValueError(f"trainer.zero_stage must be one of {ZERO_STAGES}, got {cfg.zero_stage}")
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": 1,  # boundaries are set per step (see the module docstring)
        "train_batch_size": cfg.micro_batch_size * world_size,
        "gradient_clipping": cfg.grad_clip if cfg.grad_clip > 0 else 0.0,
        "zero_optimization": {"stage": cfg.zero_stage},
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": cfg.lr,
                "betas": list(cfg.betas),
                "weight_decay": cfg.weight_decay,
                "torch_adam": True,
            },
        },
        "bf16": {"enabled": dtype == "bfloat16"},
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
    return deep_merge(config, dict(cfg.deepspeed))


class DeepSpeedTrainer(TorchTrainer):
    """One data-parallel rank whose weights, gradients and optimizer live in a DeepSpeed ZeRO engine."""

    always_distributed = True  # DeepSpeed needs a process group even on one rank

    def _init_process_group(self) -> None:
        import deepspeed

        logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
        # DeepSpeed also reads the launcher's variables; set them for this rank (one process per actor)
        os.environ.update(
            RANK=str(self.dist.rank),
            LOCAL_RANK=str(self.device.index or 0),
            WORLD_SIZE=str(self.dist.world_size),
            MASTER_ADDR=self.dist.master_addr,
            MASTER_PORT=str(self.dist.master_port),
        )
        deepspeed.init_distributed(
            dist_backend="nccl" if torch.cuda.is_available() else "gloo",
            init_method=f"tcp://{self.dist.master_addr}:{self.dist.master_port}",
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            auto_mpi_discovery=False,
        )

    def _setup_optimizer(self, optimizer_steps: int) -> None:
        import deepspeed

        dtype = str(next(self.model.parameters()).dtype).removeprefix("torch.")
        self.ds_config = deepspeed_config(self.cfg, dtype, self.dist.world_size)
        schedule = lr_lambda(self.cfg, optimizer_steps)
        engine, optimizer, _, scheduler = deepspeed.initialize(  # type: ignore[misc]
            model=self.model,
            model_parameters=[p for p in self.model.parameters() if p.requires_grad],  # type: ignore[arg-type]
            config=self.ds_config,
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, schedule),  # type: ignore[arg-type]
        )
        self.engine: Any = engine
        self.optimizer, self.scheduler = optimizer, scheduler
        self.ddp = None

    @property
    def forward_module(self) -> torch.nn.Module:
        return self.engine

    def _accumulate(self, last: bool) -> AbstractContextManager:
        self.engine.set_gradient_accumulation_boundary(last)
        return nullcontext()

    def _zero_grad(self) -> None:
        self.engine.zero_grad()

    def _backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)

    def _optimizer_step(self, loss: float) -> tuple[float, bool]:
        """DeepSpeed clips and steps; it skips the update itself when the global gradient norm is non-finite."""
        self.engine.step()
        norm = self.engine.get_global_grad_norm()  # None only if no step ran
        grad_norm = float(norm) if norm is not None else float("nan")
        return grad_norm, not (math.isfinite(grad_norm) and math.isfinite(loss))

    def _gathered(self) -> AbstractContextManager:
        """Full weights on every rank for the duration (ZeRO-3 only; other stages hold them already)."""
        if self.cfg.zero_stage != 3:
            return nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(self.model.parameters()), modifier_rank=None)

    def export_weights(self) -> dict[str, Any]:
        """Rank 0: the full weights with QAT linears packed as FP4; other ranks: {} (collective)."""
        self._release_cache()
        with self._gathered():
            return (
                to_cpu(export_weights(self.model, self.qat_names, self.spec.fp4))
                if self.dist.rank == 0
                else {}
            )

    def export_shared(self) -> SharedWeights | None:
        """``export_weights`` into rank 0's shared CUDA buffer, as the torch backend's (collective)."""
        self._release_cache()
        with self._gathered():
            state = export_weights(self.model, self.qat_names, self.spec.fp4) if self.dist.rank == 0 else None
        return self.shared.export(state) if state is not None else None

    def fake_quant_weights(self) -> dict[str, torch.Tensor]:
        with self._gathered():
            return (
                to_cpu(fake_quant_weights(self.model, self.qat_names, self.spec.fp4))
                if self.dist.rank == 0
                else {}
            )

    def save(self, path: str) -> None:
        """HF weights (rank 0, gathered) and DeepSpeed's checkpoint of every rank's partition (collective)."""
        out = Path(path)
        with self._gathered():
            if self.dist.rank == 0:
                state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
                self.model.save_pretrained(out, state_dict=state)  # type: ignore[operator]
        client = {"torch_rng": torch.get_rng_state(), "python_rng": random.getstate()}
        self.engine.save_checkpoint(str(out / CHECKPOINT_DIR), tag=CHECKPOINT_TAG, client_state=client)

    def load(self, path: str) -> None:
        """Restore what ``save`` wrote: weights, optimizer and LR schedule from DeepSpeed's checkpoint, RNG."""
        _, client = self.engine.load_checkpoint(str(Path(path) / CHECKPOINT_DIR), tag=CHECKPOINT_TAG)
        if client is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint under {Path(path) / CHECKPOINT_DIR}")
        torch.set_rng_state(client["torch_rng"])
        random.setstate(client["python_rng"])
