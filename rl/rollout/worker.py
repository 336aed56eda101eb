"""RolloutWorker: holds the policy in a rollout engine and samples completions.

The logic is this plain class (tests build it without Ray); ``RolloutActor`` is its Ray actor. Engines
(``rollout.engine``) share one contract: ``generate(prompts, params) -> list[Rollout]`` with token ids and
per-token sampling log-probs, ``load_weights(state)`` taking what the trainer exports (dense tensors plus FP4
entries for its QAT linears), ``served_weights()``, ``memory_report()`` and ``fp4_mode`` (packed | simulated
| none).
"""

from __future__ import annotations

import os
import time
from typing import Any, Protocol

import ray
import torch

from rl.config import FP4, RolloutConfig
from rl.faults import maybe_kill
from rl.fp4.qat import payload_nbytes
from rl.memory import peak_gpu_gib
from rl.types import Rollout, SamplingParams
from rl.weight_sync import SharedImport, SharedWeights, device_uuid

ENGINES = ("hf", "vllm")


class Engine(Protocol):
    fp4_mode: str

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Rollout]: ...
    def load_weights(self, state: dict[str, Any]) -> None: ...
    def served_weights(self) -> dict[str, torch.Tensor]: ...
    def memory_report(self) -> dict[str, int]: ...


def build_engine(model_path: str, cfg: RolloutConfig, dtype: str, fp4: FP4 | None) -> Engine:
    """The engine named by ``cfg.engine`` (vLLM is imported only when chosen)."""
    if cfg.engine == "hf":
        from rl.rollout.hf import HFEngine

        return HFEngine.from_path(model_path, cfg, dtype, fp4)
    if cfg.engine == "vllm":
        from rl.rollout.vllm_engine import VLLMEngine

        return VLLMEngine.from_path(model_path, cfg, dtype, fp4)
    raise ValueError(f"unknown rollout.engine {cfg.engine!r}; valid: {', '.join(ENGINES)}")


class RolloutWorker:
    """One rollout engine replica."""

    def __init__(
        self,
        model_path: str,
        cfg: RolloutConfig,
        dtype: str = "float32",
        threads: int = 0,
        fp4: FP4 | None = None,
    ):
        # Ray pins a 1-CPU actor to one thread (OMP_NUM_THREADS=1); roles run one at a time, so use the cores.
        torch.set_num_threads(threads or os.cpu_count() or 1)
        self.engine = build_engine(model_path, cfg, dtype, fp4)
        self.shared = SharedImport()  # the trainer's CUDA buffer, mapped once (cluster.weight_sync=cuda_ipc)
        print(f"rollout worker: engine={cfg.engine} rollout/fp4_mode={self.engine.fp4_mode}", flush=True)

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Rollout]:
        """One completion per prompt (token ids, sampling log-probs, finish reason, text)."""
        maybe_kill("rollout")
        return self.engine.generate(prompts, params)

    def load_weights(self, state: dict[str, Any] | SharedWeights) -> tuple[float, int]:
        """Take new policy weights (a payload, or the trainer's shared CUDA buffer); returns (seconds, bytes)."""
        start = time.perf_counter()
        if isinstance(state, SharedWeights):
            self.engine.load_weights(self.shared.open(state))
            torch.cuda.synchronize()  # copied out before the trainer's next export overwrites the buffer
            return time.perf_counter() - start, state.nbytes
        self.engine.load_weights(state)
        return time.perf_counter() - start, payload_nbytes(state)

    def device_uuid(self) -> str:
        """This worker's GPU ("" on CPU)."""
        return device_uuid()

    def peak_gpu_gib(self) -> float:
        """The most GPU memory this worker has held: weights, KV caches, CUDA graph pools (0 on CPU)."""
        return peak_gpu_gib()

    def dequantized_weights(self) -> dict[str, torch.Tensor]:
        """What each FP4 linear multiplies by (float32, on the CPU like the trainer's ``fake_quant_weights``),
        keyed like the trainer's weights."""
        return {name: weight.cpu() for name, weight in self.engine.served_weights().items()}

    def memory_report(self) -> dict[str, int]:
        """Bytes held by the FP4 linears, and what the same weights would take in bf16."""
        return self.engine.memory_report()

    def fp4_mode(self) -> str:
        return self.engine.fp4_mode

    def ready(self) -> bool:
        return True


RolloutActor = ray.remote(RolloutWorker)
