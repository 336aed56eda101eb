"""RolloutWorker: holds the policy in a rollout engine and samples completions.

The logic is this plain class (tests build it without Ray); ``RolloutActor`` is its Ray actor.
"""

from __future__ import annotations

import os
import time

import ray
import torch

from rl.config import RolloutConfig
from rl.models import load_model, load_tokenizer
from rl.rollout.hf import HFEngine
from rl.types import Rollout, SamplingParams

ENGINES = {"hf": HFEngine}


class RolloutWorker:
    """One rollout engine replica."""

    def __init__(self, model_path: str, cfg: RolloutConfig, dtype: str = "float32", threads: int = 0):
        # Ray pins a 1-CPU actor to one thread (OMP_NUM_THREADS=1); roles run one at a time, so use the cores.
        torch.set_num_threads(threads or os.cpu_count() or 1)
        if cfg.engine not in ENGINES:
            raise ValueError(f"unknown rollout.engine {cfg.engine!r}; valid: {', '.join(ENGINES)}")
        model = load_model(model_path, dtype)
        self.engine = ENGINES[cfg.engine](
            model, load_tokenizer(model_path), max_batch_size=cfg.max_batch_size
        )

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Rollout]:
        """One completion per prompt (token ids, sampling log-probs, finish reason, text)."""
        return self.engine.generate(prompts, params)

    def load_weights(self, state_dict: dict[str, torch.Tensor]) -> tuple[float, int]:
        """Take new policy weights; returns (seconds the load took, bytes received)."""
        start = time.perf_counter()
        self.engine.load_weights(state_dict)
        return time.perf_counter() - start, sum(t.numel() * t.element_size() for t in state_dict.values())

    def ready(self) -> bool:
        return True


RolloutActor = ray.remote(RolloutWorker)
