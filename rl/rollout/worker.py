"""RolloutWorker: holds the policy in a rollout engine and samples completions.

The logic is this plain class (tests build it without Ray); ``RolloutActor`` is its Ray actor.
"""

from __future__ import annotations

import os
import time
from typing import Any

import ray
import torch

from rl.config import RolloutConfig
from rl.fp4.formats import dequantize
from rl.fp4.packed import PackedFP4Linear, pack_linears
from rl.fp4.qat import payload_nbytes, qat_linear_names
from rl.models import load_model, load_tokenizer
from rl.rollout.hf import HFEngine
from rl.types import Rollout, SamplingParams

ENGINES = {"hf": HFEngine}


class RolloutWorker:
    """One rollout engine replica."""

    def __init__(
        self, model_path: str, cfg: RolloutConfig, dtype: str = "float32", threads: int = 0, fp4: str = "none"
    ):
        # Ray pins a 1-CPU actor to one thread (OMP_NUM_THREADS=1); roles run one at a time, so use the cores.
        torch.set_num_threads(threads or os.cpu_count() or 1)
        if cfg.engine not in ENGINES:
            raise ValueError(f"unknown rollout.engine {cfg.engine!r}; valid: {', '.join(ENGINES)}")
        model = load_model(model_path, dtype)
        # FP4: the targeted linears hold packed codes + scales only (no high-precision copy)
        self.packed_names = qat_linear_names(model, fp4) if fp4 != "none" else []
        self.packed_nbytes = pack_linears(model, self.packed_names, fp4)
        self.engine = ENGINES[cfg.engine](
            model, load_tokenizer(model_path), max_batch_size=cfg.max_batch_size
        )

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Rollout]:
        """One completion per prompt (token ids, sampling log-probs, finish reason, text)."""
        return self.engine.generate(prompts, params)

    def _packed(self, name: str) -> PackedFP4Linear:
        module = self.engine.model.get_submodule(name)
        assert isinstance(module, PackedFP4Linear), name
        return module

    def load_weights(self, state: dict[str, Any]) -> tuple[float, int]:
        """Take new policy weights (FP4 entries into the packed linears); returns (seconds, bytes received)."""
        start = time.perf_counter()
        dense = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
        packed = {k.removesuffix(".weight"): v for k, v in state.items() if not isinstance(v, torch.Tensor)}
        if set(packed) != set(self.packed_names):
            raise ValueError(f"packed weights {sorted(packed)} do not match this worker's FP4 linears")
        for name, quantized in packed.items():
            self._packed(name).load_quantized(quantized)
        self.engine.load_weights(dense, packed_modules=set(packed))
        return time.perf_counter() - start, payload_nbytes(state)

    def dequantized_weights(self) -> dict[str, torch.Tensor]:
        """What each packed linear multiplies by (float32), keyed like the trainer's weights."""
        return {f"{n}.weight": dequantize(self._packed(n).quantized()) for n in self.packed_names}

    def memory_report(self) -> dict[str, int]:
        """Bytes held by the packed linears, and what the same weights would take in bf16."""
        shapes = [self._packed(n).quantized().shape for n in self.packed_names]
        return {"packed_bytes": self.packed_nbytes, "bf16_bytes": sum(2 * r * c for r, c in shapes)}

    def ready(self) -> bool:
        return True


RolloutActor = ray.remote(RolloutWorker)
