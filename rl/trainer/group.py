"""The controller's handle on the TrainerWorker ranks: shard batches, average metrics, save and export."""

from __future__ import annotations

import contextlib
from typing import Any

import ray
import torch
from ray.exceptions import GetTimeoutError, RayActorError
from ray.util.placement_group import remove_placement_group

from rl.config import AlgorithmConfig, ClusterConfig, TrainerConfig
from rl.placement import actor_bundle, in_group, role_placement_group, unresponsive
from rl.trainer.backends import BACKENDS
from rl.trainer.torch_backend import DistInfo, free_port
from rl.trainer.worker import ACTORS
from rl.types import DistillPart, LossNormalizer, TrainBatch
from rl.weight_sync import choose


class TrainerDiedError(RuntimeError):
    """A trainer rank's process died: the run stops (its optimizer state is gone) and resumes from a checkpoint."""


class TrainerGroup:
    """``num_ranks`` data-parallel trainer actors in one placement group; rank 0 exports and saves."""

    def __init__(
        self,
        model_path: str,
        cfg: TrainerConfig,
        algo: AlgorithmConfig,
        cluster: ClusterConfig,
        total_steps: int,
        dtype: str,
        seed: int,
        env: dict[str, str],
        temperature: float = 1.0,
        fp4: str = "none",
    ):
        if cfg.backend not in BACKENDS:
            raise ValueError(f"unknown trainer.backend {cfg.backend!r}; valid: {', '.join(BACKENDS)}")
        self.cfg = cfg
        self.weight_sync = (
            "object_store"  # or cuda_ipc: set by connect_weights once the rollout workers exist
        )
        self.group = role_placement_group("trainer", [actor_bundle(cluster) for _ in range(cfg.num_ranks)])
        port = free_port()
        self.ranks = [
            ACTORS[cfg.backend]
            .options(  # type: ignore[attr-defined]
                num_cpus=cluster.actor_cpus,
                num_gpus=cluster.actor_gpus,
                scheduling_strategy=in_group(self.group, rank),
                runtime_env={"env_vars": env},
            )
            .remote(
                model_path,
                cfg,
                algo,
                total_steps,
                dtype,
                DistInfo(rank=rank, world_size=cfg.num_ranks, master_port=port),
                seed,
                cluster.torch_threads,
                temperature,
                fp4,
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

    def forward_logprobs(self, batch: TrainBatch) -> torch.Tensor:
        parts = self._get(
            [r.forward_logprobs.remote(s) for r, s in zip(self.ranks, self.shards(batch), strict=True)]
        )
        return torch.cat(parts)

    def train_step(self, batch: TrainBatch, max_response_tokens: int) -> dict[str, float]:
        """One optimizer step over ``batch`` split across ranks; metrics token-weighted across ranks."""
        norm = LossNormalizer(batch.num_tokens, batch.num_sequences, max_response_tokens)
        results = self._get(
            [r.train_step.remote(s, norm) for r, s in zip(self.ranks, self.shards(batch), strict=True)]
        )
        tokens = sum(m["train/tokens"] for m in results)
        merged = {k: sum(m[k] * m["train/tokens"] for m in results) / tokens for k in results[0]}
        merged.update({k: results[0][k] for k in ("train/grad_norm", "train/lr", "train/nonfinite")})
        merged["train/loss"] = sum(m["train/loss"] for m in results)
        merged["train/tokens"] = tokens
        merged["train/sequences"] = float(batch.num_sequences)
        return merged

    def set_teacher_heads(self, heads: dict[str, torch.Tensor], objective: Any) -> None:
        """Every rank gets the teachers' LM heads and the OPD objective (``distill.losses.OPDObjective``)."""
        heads_ref = ray.put(heads)
        self._get([r.set_teacher_heads.remote(heads_ref, objective) for r in self.ranks])

    def distill_step(
        self,
        parts_by_rank: list[list[DistillPart]],
        hidden_by_rank: list[list[ray.ObjectRef]],
        total_tokens: int,
    ) -> dict[str, float]:
        """One OPD optimizer step: rank ``r`` trains on ``parts_by_rank[r]`` with the teacher hidden states
        behind ``hidden_by_rank[r]`` (Ray resolves them in the rank's process). Per-teacher KL is token-weighted
        over ranks: ``opd/kl/<teacher>``, ``opd/tokens/<teacher>``."""
        results = self._get([r.distill_step.remote(parts, total_tokens, *hidden)
                           for r, parts, hidden in zip(self.ranks, parts_by_rank, hidden_by_rank, strict=True)])  # fmt: skip
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
