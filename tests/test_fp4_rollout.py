"""FP4 end to end: QAT trainer -> packed export -> packed rollout worker, bitwise, through real Ray actors."""

from __future__ import annotations

from pathlib import Path

import pytest
import ray
import torch

from rl.algorithms.objective import PolicyObjective
from rl.config import AlgorithmConfig, ClusterConfig, RolloutConfig, TrainerConfig
from rl.fp4.formats import dequantize, fake_quant, quantize
from rl.fp4.packed import PackedFP4Linear
from rl.fp4.qat import apply_qat, ste_fake_quant
from rl.models import load_model
from rl.rollout.group import RolloutGroup
from rl.trainer.group import TrainerGroup
from rl.trainer.spec import TrainerSpec
from rl.types import SamplingParams, TrainBatch
from tests.test_trainer import batch  # noqa: F401  (module fixture: a real rollout batch)


def test_ste_forward_is_fake_quant_and_backward_is_identity() -> None:
    w = torch.randn(8, 64, requires_grad=True)
    out = ste_fake_quant(w, "mxfp4")
    assert torch.equal(out.detach(), fake_quant(w.detach(), "mxfp4"))
    (out * torch.arange(64.0)).sum().backward()
    assert torch.equal(w.grad, torch.arange(64.0).expand(8, 64))  # type: ignore[arg-type]


def test_qat_targets_block_linears_only(tiny_base: Path) -> None:
    model = load_model(str(tiny_base))
    names = apply_qat(model, "mxfp4")
    assert names and all(".layers." in f".{n}" for n in names)
    assert not any("lm_head" in n or "embed" in n for n in names)
    assert {n.rsplit(".", 1)[-1] for n in names} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                     "down_proj"}  # fmt: skip


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
def test_packed_linear_matches_the_fake_quant_linear(fmt: str) -> None:
    linear = torch.nn.Linear(64, 16)
    packed = PackedFP4Linear(quantize(linear.weight.detach(), fmt), linear.bias)
    x = torch.randn(3, 64)
    expected = torch.nn.functional.linear(x, fake_quant(linear.weight.detach(), fmt), linear.bias)
    assert torch.equal(packed(x).detach(), expected.detach())
    assert not any(p.dtype.is_floating_point and p.numel() >= 64 * 16 for p in packed.buffers())


def test_a_packed_linear_on_cpu_dequantizes_once_per_weight_update() -> None:
    """The CPU path keeps dequant(codes) between updates; an update (or another activation dtype) replaces it."""
    first, second = torch.randn(16, 64), torch.randn(16, 64)
    packed = PackedFP4Linear(quantize(first, "mxfp4"), None)
    x = torch.randn(3, 64)
    assert torch.equal(packed(x), x @ fake_quant(first, "mxfp4").T)
    kept = packed._dequantized
    packed(x)
    assert packed._dequantized is kept  # the second token did not dequantize again
    packed.load_quantized(quantize(second, "mxfp4"))
    assert torch.equal(packed(x), x @ fake_quant(second, "mxfp4").T)  # the new weights, not the kept ones
    bf16 = packed(x.bfloat16())
    assert bf16.dtype == torch.bfloat16 and torch.equal(
        bf16, x.bfloat16() @ fake_quant(second, "mxfp4").bfloat16().T
    )


def fp4_actors(model_dir: Path, fmt: str) -> tuple[TrainerGroup, RolloutGroup]:
    """A QAT trainer rank and a packed rollout worker of ``model_dir`` as Ray actors (CPU, float32)."""
    cluster = ClusterConfig(actor_cpus=0.5, torch_threads=1)
    trainer = TrainerGroup(TrainerSpec(str(model_dir), TrainerConfig(lr=1e-3), 10, fp4=fmt),
                           PolicyObjective(AlgorithmConfig()), cluster, {})  # fmt: skip
    return trainer, RolloutGroup(str(model_dir), RolloutConfig(), cluster, {}, fp4=fmt, dtype="float32")


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
def test_rollout_weights_bitwise_equal_trainer_fake_quant_after_a_step(
    tiny_base: Path,
    batch: TrainBatch,  # noqa: F811
    ray_local,
    fmt: str,
) -> None:
    trainer, rollout = fp4_actors(tiny_base, fmt)
    try:
        trainer.train_step(batch, max_response_tokens=12)
        sync = rollout.push_weights(trainer.export_weights())
        worker, rank0 = rollout.workers[0], trainer.ranks[0]
        served = ray.get(worker.dequantized_weights.remote())
        trained = ray.get(rank0.fake_quant_weights.remote())
        assert served.keys() == trained.keys() and len(served) == 4 * 7
        for name in trained:
            assert torch.equal(served[name], trained[name]), name
        # the step changed the weights (so equality is not the untouched base's)
        before = {
            k: fake_quant(v, fmt) for k, v in load_model(str(tiny_base)).state_dict().items() if k in trained
        }
        assert any(not torch.equal(before[k], trained[k]) for k in trained)
        # memory and wire: the quantized layers take <= 30% of their bf16 size
        memory = ray.get(worker.memory_report.remote())
        assert memory["packed_bytes"] <= 0.30 * memory["bf16_bytes"]
        exported = ray.get(trainer.export_weights())
        quantized_bytes = sum(q.nbytes for k, q in exported.items() if k in trained)
        assert quantized_bytes <= 0.30 * sum(2 * trained[k].numel() for k in trained)
        assert sync["perf/weight_sync_bytes"] < sum(4 * v.numel() for v in exported.values() if torch.is_tensor(v)) + \
            sum(4 * trained[k].numel() for k in trained)  # fmt: skip
        # the packed worker still generates
        (out,) = ray.get(worker.generate.remote([[1, 2, 3]], SamplingParams(max_new_tokens=4, temperature=0)))
        assert len(out.response_ids) >= 1
        assert torch.equal(dequantize(exported[next(iter(trained))]), trained[next(iter(trained))])
    finally:
        trainer.shutdown()
        rollout.shutdown()


@pytest.mark.parametrize(
    ("model_dtype", "rollout_dtype", "served_dtype"),
    [("bfloat16", "", "bfloat16"), ("float32", "bfloat16", "bfloat16")],
)
def test_the_jobs_rollout_workers_serve_in_the_models_dtype(
    tiny_base: Path, ray_local, model_dtype: str, rollout_dtype: str, served_dtype: str
) -> None:
    """A bfloat16 run's rollout workers hold bfloat16 weights, like its trainer ranks. They once stayed float32
    whatever model.dtype said: sampled != trained in precision, and on a GPU the FP4 linears then missed the Triton
    kernel (the job's rollouts 3-5x slower than the plain classes' on an H100). rollout.dtype=bfloat16 serves a
    float32-trained model (a real model's small LR vanishes in bfloat16 master weights) at bfloat16."""
    from jobs.train_specialist import start_workers
    from rl.config import ModelConfig, SpecialistRunConfig

    cfg = SpecialistRunConfig(model=ModelConfig(dtype=model_dtype), rollout=RolloutConfig(dtype=rollout_dtype),
                              cluster=ClusterConfig(actor_cpus=0.5, torch_threads=1))  # fmt: skip
    trainer, rollout = start_workers(cfg, str(tiny_base))
    try:
        served = ray.get([w.__ray_call__.remote(lambda w: {str(p.dtype) for p in w.engine.model.parameters()})
                          for w in rollout.workers])  # fmt: skip
        trained = ray.get(
            trainer.ranks[0].__ray_call__.remote(lambda t: {str(p.dtype) for p in t.model.parameters()})
        )
        assert served == [{f"torch.{served_dtype}"}] and trained == {f"torch.{model_dtype}"}
    finally:
        trainer.shutdown()
        rollout.shutdown()
