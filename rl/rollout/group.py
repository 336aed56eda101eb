"""The controller's handle on all RolloutWorker actors: fan prompts out, gather rollouts, push weights."""

from __future__ import annotations

import time
from dataclasses import replace

import ray
from ray.util.placement_group import remove_placement_group

from rl.config import ClusterConfig, RolloutConfig
from rl.placement import actor_bundle, in_group, role_placement_group
from rl.rollout.worker import RolloutActor
from rl.types import Rollout, SamplingParams


class RolloutGroup:
    """``num_workers`` rollout actors in one placement group."""

    def __init__(
        self,
        model_path: str,
        cfg: RolloutConfig,
        cluster: ClusterConfig,
        env: dict[str, str],
        fp4: str = "none",
    ):
        bundles = [actor_bundle(cluster) for _ in range(cfg.num_workers)]
        self.group = role_placement_group("rollout", bundles)
        self.workers = [
            RolloutActor.options(  # type: ignore[attr-defined]
                num_cpus=cluster.actor_cpus,
                num_gpus=cluster.actor_gpus,
                scheduling_strategy=in_group(self.group, i),
                runtime_env={"env_vars": env},
            ).remote(model_path, cfg, threads=cluster.torch_threads, fp4=fp4)
            for i in range(cfg.num_workers)
        ]
        ray.get([w.ready.remote() for w in self.workers])
        self.fp4_mode: str = ray.get(self.workers[0].fp4_mode.remote())  # packed | simulated | none

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Rollout]:
        """Completions for ``prompts`` in order; each worker gets a contiguous slice and its own seed."""
        n = len(self.workers)
        bounds = [len(prompts) * i // n for i in range(n + 1)]
        futures = [
            w.generate.remote(
                prompts[bounds[i] : bounds[i + 1]], replace(params, seed=params.seed * 1009 + i)
            )
            for i, w in enumerate(self.workers)
            if bounds[i + 1] > bounds[i]
        ]
        return [r for part in ray.get(futures) for r in part]

    def push_weights(self, weights_ref: ray.ObjectRef) -> dict[str, float]:
        """Load the weights behind ``weights_ref`` into every worker; returns perf metrics."""
        start = time.perf_counter()
        loads = ray.get([w.load_weights.remote(weights_ref) for w in self.workers])
        return {
            "perf/weight_sync_s": time.perf_counter() - start,
            "perf/weight_load_s": max(seconds for seconds, _ in loads),
            "perf/weight_sync_bytes": float(sum(nbytes for _, nbytes in loads)),
        }

    def shutdown(self) -> None:
        """Stop the actors and free the placement group."""
        for worker in self.workers:
            ray.kill(worker)  # type: ignore[arg-type]
        remove_placement_group(self.group)
