"""TeacherWorker: a frozen specialist that prefills the student's sequences and returns last-layer hidden states.

The teacher serves the weights its specialist was trained toward: with FP4 QAT, every quantized linear holds
its fake-quantized (FP4-grid) values, the same numbers its rollout workers multiplied by (reference §1.3: V4
runs teacher forwards in FP4). It returns hidden states after the final norm for the positions that predict
the student's trained tokens -- D floats per token instead of V logits -- and hands its LM head to the trainer
once, which rebuilds the teacher's logits inside the fused loss.

``Teacher`` is the plain class (tests and GPU scripts use it directly); ``TeacherWorker`` is its Ray actor;
``TeacherGroup`` holds one actor per teacher.
"""

from __future__ import annotations

import os
import time
from typing import Any

import ray
import torch
from ray.exceptions import RayActorError
from ray.util.placement_group import remove_placement_group

from rl.config import FP4, ClusterConfig
from rl.faults import maybe_kill
from rl.fp4.qat import fake_quant_weights, qat_linear_names
from rl.memory import peak_gpu_gib
from rl.models import hidden_size, lm_head_weight, load_model, model_context
from rl.placement import REDOS, in_group, role_placement_group
from rl.types import TrainBatch, predicting_mask


class Teacher:
    """One frozen teacher model on this process's device."""

    def __init__(self, path: str, fp4: FP4 | None = None, dtype: str = "float32", threads: int = 0):
        torch.set_num_threads(threads or os.cpu_count() or 1)
        self.device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else None
        self.model = load_model(path, dtype).eval().requires_grad_(False)
        if fp4:  # bake the FP4 grid into the weights: the forward is then the served teacher's
            names = qat_linear_names(self.model, fp4)
            quantized = fake_quant_weights(self.model, names, fp4)
            self.model.load_state_dict(quantized, strict=False)
        if self.device is not None:
            self.model.to(self.device)
        self.path, self.fp4 = path, fp4
        self.context = model_context(path)

    def peak_gpu_gib(self) -> float:
        """The most GPU memory this teacher has held (0 on CPU)."""
        return peak_gpu_gib()

    def ready(self) -> bool:
        return True

    def head(self) -> torch.Tensor:
        """The LM head weight [V, D] on CPU (tied to the embeddings or not)."""
        return lm_head_weight(self.model).detach().cpu()

    @torch.no_grad()
    def hidden_states(self, batch: TrainBatch, micro_batch_size: int = 64) -> tuple[torch.Tensor, float]:
        """[N, D] last-layer hidden states at the positions predicting ``batch``'s trained tokens (row-major
        order, see ``rl.types.DistillPart``), on CPU; and the seconds it took."""
        maybe_kill("teacher")
        started = time.perf_counter()
        out = []
        for start in range(0, batch.num_sequences, micro_batch_size):
            micro = batch.select(slice(start, start + micro_batch_size))
            if self.device is not None:
                micro = micro.to(self.device)
            if micro.input_ids_BT.shape[1] > self.context:
                raise ValueError(f"sequence of {micro.input_ids_BT.shape[1]} tokens exceeds the teacher's "
                                 f"context of {self.context} ({self.path})")  # fmt: skip
            hidden = self.model(input_ids=micro.input_ids_BT, attention_mask=micro.attention_mask_BT,
                                output_hidden_states=True, logits_to_keep=1).hidden_states[-1]  # fmt: skip
            out.append(hidden[:, :-1][predicting_mask(micro.loss_mask_BT)].cpu())
        hidden_ND = torch.cat(out) if out else torch.zeros(0, hidden_size(self.model))
        return hidden_ND, time.perf_counter() - started


TeacherWorker = ray.remote(Teacher)


class TeacherGroup:
    """One TeacherWorker per teacher (by registry name), in one placement group; a dead one is restarted."""

    def __init__(self, teachers: dict[str, tuple[str, FP4 | None]], dtype: str, cluster: ClusterConfig, cpus: float,
                 env: dict[str, str]):  # fmt: skip
        """``teachers``: registry name -> (checkpoint path, FP4 format or None)."""
        bundle = {"CPU": cpus, **({"GPU": cluster.actor_gpus} if cluster.actor_gpus else {})}
        self.group = role_placement_group("teacher", [dict(bundle) for _ in teachers])
        self.teachers, self.index = teachers, {name: i for i, name in enumerate(teachers)}
        self._spawn_args = (dtype, cluster, cpus, env)
        self.workers: dict[str, Any] = {name: self._spawn(name) for name in teachers}
        ray.get([w.ready.remote() for w in self.workers.values()])
        self.restarts = 0

    def _spawn(self, name: str) -> Any:
        dtype, cluster, cpus, env = self._spawn_args
        path, fp4 = self.teachers[name]
        return TeacherWorker.options(  # type: ignore[attr-defined]
            num_cpus=cpus, num_gpus=cluster.actor_gpus, scheduling_strategy=in_group(self.group, self.index[name]),
            runtime_env={"env_vars": env},
        ).remote(path, fp4, dtype, cluster.torch_threads)  # fmt: skip

    def peak_gpu_gib(self) -> float:
        """The most GPU memory any teacher has held, in GiB (0 on CPU)."""
        return max(ray.get([w.peak_gpu_gib.remote() for w in self.workers.values()]))

    def heads(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.workers, ray.get([w.head.remote() for w in self.workers.values()]), strict=True))

    def hidden_states(self, teacher: str, batch: TrainBatch) -> tuple[ray.ObjectRef, ray.ObjectRef]:
        """References to ``batch``'s hidden states [N, D] from ``teacher`` and to the seconds it took: the
        trainer takes the first straight from the object store, the controller only reads the second."""
        return self.workers[teacher].hidden_states.options(num_returns=2).remote(batch)

    def prefill(self, teacher: str, shards: list[TrainBatch]) -> tuple[list[ray.ObjectRef], float]:
        """Hidden-state references for each of ``shards`` and the teacher's seconds; a teacher that dies on the
        way (its process, or its node) is restarted (same bundle, which Ray moves to a live node; its weights are
        frozen, so nothing else to restore) and the batch redone, up to ``REDOS`` times."""
        for redo in range(REDOS + 1):
            calls = [self.hidden_states(teacher, shard) for shard in shards]
            try:
                return [hidden for hidden, _ in calls], sum(ray.get([seconds for _, seconds in calls]))
            except RayActorError as err:
                if redo == REDOS:
                    raise
                print(
                    f"teacher {teacher!r} died ({type(err).__name__}); restarted, redoing its batch",
                    flush=True,
                )
                ray.kill(self.workers[teacher])
                self.workers[teacher] = self._spawn(teacher)
                self.restarts += 1
        raise AssertionError("unreachable")

    def shutdown(self) -> None:
        for worker in self.workers.values():
            ray.kill(worker)
        remove_placement_group(self.group)
