"""The controller's handle on all RolloutWorker actors: fan prompts out, gather rollouts, push weights."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import ray
from ray.exceptions import RayActorError
from ray.util.placement_group import remove_placement_group

from rl.config import FP4, ClusterConfig, RolloutConfig
from rl.placement import REDOS, actor_bundle, in_group, role_placement_group, unresponsive
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
        fp4: FP4 | None = None,
        *,
        dtype: str,
    ):
        """``dtype`` is the model's (``model.dtype``), named at every call: the workers serve the weights in the
        trainer's precision (on a GPU, bf16 is also what sends FP4 linears through the Triton kernel; a float32
        default once kept every job's rollouts off it)."""
        bundles = [actor_bundle(cluster) for _ in range(cfg.num_workers)]
        self.group = role_placement_group("rollout", bundles)
        self._spawn_args = (model_path, cfg, cluster, env, fp4, dtype)
        self.workers = [self._spawn(i) for i in range(cfg.num_workers)]
        ray.get([w.ready.remote() for w in self.workers])
        self.fp4_mode: str = ray.get(self.workers[0].fp4_mode.remote())  # packed | simulated | none
        self._weights: ray.ObjectRef | None = None  # the last pushed weights, for a restarted worker
        self.restarts = 0

    def _spawn(self, index: int) -> Any:
        model_path, cfg, cluster, env, fp4, dtype = self._spawn_args
        return RolloutActor.options(  # type: ignore[attr-defined]
            num_cpus=cluster.actor_cpus,
            num_gpus=cluster.actor_gpus,
            scheduling_strategy=in_group(self.group, index),
            runtime_env={"env_vars": env},
        ).remote(model_path, cfg, dtype, threads=cluster.torch_threads, fp4=fp4)

    def _replace_dead(self) -> list[int]:
        """Start a new worker, with the current weights, in the bundle of each one that no longer answers."""
        dead = unresponsive(self.workers)
        for i in dead:
            ray.kill(self.workers[i])  # type: ignore[arg-type]
            self.workers[i] = self._spawn(i)
            if self._weights is not None:
                ray.get(self.workers[i].load_weights.remote(self._weights))
        self.restarts += len(dead)
        return dead

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Rollout]:
        """Completions for ``prompts`` in order; each worker gets a contiguous slice and its own seed.

        A worker that dies mid-generation (its process, or its node) is replaced (same bundle, which Ray moves
        to a live node; current weights) and the whole call redone, up to ``REDOS`` times: seeds are per call,
        so the redone batch is the one the dead worker would have returned.
        """
        for redo in range(REDOS + 1):
            try:
                return self._generate(prompts, params)
            except RayActorError as err:
                if redo == REDOS:
                    raise
                dead = self._replace_dead()
                print(f"rollout worker(s) {dead} died ({type(err).__name__}); restarted with the current "
                      "weights, redoing the batch", flush=True)  # fmt: skip
        raise AssertionError("unreachable")

    def _generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Rollout]:
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

    def device_uuids(self) -> list[str]:
        """Each worker's GPU ("" on CPU)."""
        return ray.get([w.device_uuid.remote() for w in self.workers])

    def peak_gpu_gib(self) -> float:
        """The most GPU memory any worker has held, in GiB (0 on CPU)."""
        return max(ray.get([w.peak_gpu_gib.remote() for w in self.workers]))

    def push_weights(self, weights_ref: ray.ObjectRef) -> dict[str, float]:
        """Load the weights behind ``weights_ref`` into every worker; returns perf metrics."""
        start = time.perf_counter()
        self._weights = weights_ref
        try:
            loads = ray.get([w.load_weights.remote(weights_ref) for w in self.workers])
        except RayActorError as err:  # a replacement takes the weights as it starts; the others load again
            dead = self._replace_dead()
            print(f"rollout worker(s) {dead} died ({type(err).__name__}) while loading weights; restarted with "
                  "them", flush=True)  # fmt: skip
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
