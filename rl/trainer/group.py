"""The controller's handle on the TrainerWorker ranks: shard batches, average metrics, save and export."""

from __future__ import annotations

import contextlib
from typing import Any

import ray
import torch
from ray.exceptions import GetTimeoutError, RayActorError
from ray.util.placement_group import remove_placement_group

from rl.algorithms.objective import merge_policy_metrics
from rl.config import ClusterConfig
from rl.placement import actor_bundle, in_group, role_placement_group, unresponsive
from rl.trainer.backends import BACKENDS
from rl.trainer.objective import Objective
from rl.trainer.spec import TrainerSpec
from rl.trainer.torch_backend import DistInfo, free_port
from rl.trainer.worker import ACTORS
from rl.types import LossNormalizer, TrainBatch
from rl.weight_sync import choose


class TrainerDiedError(RuntimeError):
    """A trainer rank's process died: the run stops (its optimizer state is gone) and resumes from a checkpoint."""


class TrainerGroup:
    """``num_ranks`` data-parallel trainer actors in one placement group; rank 0 exports and saves."""

    def __init__(self, spec: TrainerSpec, objective: Objective, cluster: ClusterConfig, env: dict[str, str]):
        cfg = spec.cfg
        if cfg.backend not in BACKENDS:
            raise ValueError(f"unknown trainer.backend {cfg.backend!r}; valid: {', '.join(BACKENDS)}")
        self.cfg = cfg
        self.weight_sync = (
            "object_store"  # or cuda_ipc: set by connect_weights once the rollout workers exist
        )
        self.group = role_placement_group("trainer", [actor_bundle(cluster) for _ in range(cfg.num_ranks)])
        port = free_port()
        # put once, however many ranks (an OPD objective carries the teachers' heads)
        objective_ref = ray.put(objective)
        self.ranks = [
            ACTORS[cfg.backend]
            .options(  # type: ignore[attr-defined]
                num_cpus=cluster.actor_cpus,
                num_gpus=cluster.actor_gpus,
                scheduling_strategy=in_group(self.group, rank),
                runtime_env={"env_vars": env},
            )
            .remote(
                spec,
                objective_ref,
                DistInfo(rank=rank, world_size=cfg.num_ranks, master_port=port),
                cluster.torch_threads,
            )
            for rank in range(cfg.num_ranks)
        ]

    def _get(self, refs: list[ray.ObjectRef]) -> list[Any]:
        """``ray.get`` that turns a dead rank into one error naming it (the job stops; ``resume=true`` or a
        ``jobs.submit`` retry continues from the last checkpoint)."""
        try:
            return ray.get(refs)
        except RayActorError as err:
            dead = unresponsive(self.ranks, timeout_s=30)
            raise TrainerDiedError(
                f"trainer rank(s) {dead or '?'} of {len(self.ranks)} died ({type(err).__name__}); resubmit with "
                "resume=true to continue from the last checkpoint"
            ) from None

    def shards(self, batch: TrainBatch) -> list[TrainBatch]:
        """``batch`` split into one contiguous row range per rank."""
        n = len(self.ranks)
        bounds = [batch.num_sequences * i // n for i in range(n + 1)]
        return [batch.select(slice(bounds[i], bounds[i + 1])) for i in range(n)]

    def forward_logprobs(self, batch: TrainBatch, replay: bool = False) -> torch.Tensor:
        parts = self._get(
            [
                r.forward_logprobs.remote(s, replay)
                for r, s in zip(self.ranks, self.shards(batch), strict=True)
            ]
        )
        return torch.cat(parts)

    def train_step(self, batch: TrainBatch, max_response_tokens: int) -> dict[str, float]:
        """One policy-gradient optimizer step over ``batch`` split across ranks; metrics token-weighted across
        ranks."""
        norm = LossNormalizer(batch.num_tokens, batch.num_sequences, max_response_tokens)
        results = self.step([(shard, norm) for shard in self.shards(batch)])
        return merge_policy_metrics(results, batch.num_sequences)

    def step(self, work_by_rank: list[tuple[Any, ...]]) -> list[dict[str, float]]:
        """One optimizer step of the ranks' objective: rank ``r`` trains on ``work_by_rank[r]`` (object references
        in it are resolved in the rank's process); each rank's metrics."""
        return self._get(
            [r.train_step.remote(*work) for r, work in zip(self.ranks, work_by_rank, strict=True)]
        )

    def export_weights(self) -> ray.ObjectRef:
        """A reference to rank 0's weights in the object store (no copy through the controller), or, with
        ``weight_sync == "cuda_ipc"``, to the IPC handle of the CUDA buffer rank 0 packed them into.

        Every rank takes part (a sharded backend gathers the full weights collectively); the others return {}.
        """
        shared = self.weight_sync == "cuda_ipc"
        refs = [(r.export_shared if shared else r.export_weights).remote() for r in self.ranks]
        return refs[0]

    def peak_gpu_gib(self) -> float:
        """The most GPU memory any rank has held, in GiB (0 on CPU)."""
        return max(self._get([r.peak_gpu_gib.remote() for r in self.ranks]))

    def connect_weights(self, mode: str, worker_uuids: list[str]) -> str:
        """Pick the weight path for ``cluster.weight_sync=mode`` given the rollout workers' GPUs; returns it."""
        self.weight_sync = choose(mode, self._get([self.ranks[0].device_uuid.remote()])[0], worker_uuids)
        return self.weight_sync

    def fake_quant_weights(self) -> dict[str, torch.Tensor]:
        """Rank 0's fake-quantized QAT weights (every rank takes part, as in ``export_weights``)."""
        return self._get([r.fake_quant_weights.remote() for r in self.ranks])[0]

    def save(self, path: str) -> None:
        self._get([r.save.remote(path) for r in self.ranks])

    def load(self, path: str) -> None:
        self._get([r.load.remote(path) for r in self.ranks])

    def shutdown(self) -> None:
        """Leave the process group, stop the actors and free the placement group."""
        for rank in self.ranks:  # a dead rank has nothing left to shut down; it is killed below either way
            with contextlib.suppress(RayActorError, GetTimeoutError):
                ray.get(rank.shutdown.remote(), timeout=60)
        for rank in self.ranks:
            ray.kill(rank)  # type: ignore[arg-type]
        remove_placement_group(self.group)
