"""CUDA IPC weight sync between a real trainer actor and a real rollout worker sharing one GPU (``pytest -m gpu``).

After a training step the trainer's export reaches the worker through its shared CUDA buffer; what the worker
then serves is bitwise the trainer's fake-quantized weights, it samples exactly what the same weights pushed
through the object store sample, and it takes a fraction of the object store's time.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import ray
import torch

from rl.algorithms.objective import PolicyObjective
from rl.config import AlgorithmConfig, ClusterConfig, RolloutConfig, TrainerConfig
from rl.models import load_tokenizer
from rl.rollout.group import RolloutGroup
from rl.sft import chat_prompt_ids
from rl.trainer.group import TrainerGroup
from rl.trainer.spec import TrainerSpec
from rl.types import SamplingParams
from specialists.synthetic import math_tasks
from tests.test_trainer import batch  # noqa: F401  (module fixture: a real rollout batch)

pytestmark = pytest.mark.gpu

HALF = ClusterConfig(actor_cpus=1, actor_gpus=0.5, torch_threads=1)


@pytest.fixture(scope="module")
def ray_gpu():
    ray.init(num_cpus=4, num_gpus=1, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_weights_cross_by_cuda_ipc_bitwise_and_faster(tiny_base: Path, batch, ray_gpu) -> None:  # noqa: F811
    trainer = TrainerGroup(TrainerSpec(str(tiny_base), TrainerConfig(lr=1e-3), 10, "bfloat16", fp4="mxfp4"),
                           PolicyObjective(AlgorithmConfig()), HALF, {})  # fmt: skip
    rollout = RolloutGroup(str(tiny_base), RolloutConfig(), HALF, {}, fp4="mxfp4", dtype="bfloat16")
    tokenizer = load_tokenizer(str(tiny_base))
    prompts = [chat_prompt_ids(tokenizer, t.prompt) for t in math_tasks(8, "heldout")]
    greedy = SamplingParams(max_new_tokens=16, temperature=0.0)
    try:
        assert rollout.fp4_mode == "packed"
        assert trainer.connect_weights("auto", rollout.device_uuids()) == "cuda_ipc"
        trainer.train_step(batch, max_response_tokens=12)
        times = {}
        for path in ("object_store", "cuda_ipc", "object_store", "cuda_ipc"):  # second round: warm
            trainer.weight_sync = path
            times[path] = rollout.push_weights(trainer.export_weights())["perf/weight_sync_s"]
            served = ray.get(rollout.workers[0].dequantized_weights.remote())
            trained = trainer.fake_quant_weights()
            assert served.keys() == trained.keys()
            assert all(torch.equal(served[k], trained[k]) for k in trained), path
            texts = [r.response_ids for r in rollout.generate(prompts, greedy)]
            if path == "object_store":
                expected = texts
            assert texts == expected, path
        print(f"weight sync: object store {times['object_store'] * 1e3:.1f} ms, "
              f"CUDA IPC {times['cuda_ipc'] * 1e3:.1f} ms")  # fmt: skip
        assert times["cuda_ipc"] < times["object_store"]
    finally:
        trainer.shutdown()
        rollout.shutdown()
