"""The DeepSpeed ZeRO backend through real Ray actors over gloo: same step as the torch backend at every stage,
QAT under ZeRO-3 with gathered FP4 export, non-finite skip, DeepSpeed checkpoint/resume, config merging."""

from __future__ import annotations

from pathlib import Path

import pytest
import ray
import torch

from rl.algorithms.objective import PolicyObjective
from rl.config import FP4, AlgorithmConfig, ClusterConfig, TrainerConfig
from rl.fp4.formats import FP4Tensor, dequantize
from rl.trainer.deepspeed_backend import deep_merge, deepspeed_config
from rl.trainer.group import TrainerGroup
from rl.trainer.spec import TrainerSpec
from rl.trainer.torch_backend import TorchTrainer
from rl.types import LossNormalizer, TrainBatch
from tests.test_trainer import batch  # noqa: F401  (module fixture: a real rollout batch)

CLUSTER = ClusterConfig(actor_cpus=0.5, torch_threads=1)
# partition every tensor under ZeRO-3 (the tiny model's tensors are all below DeepSpeed's 1e5 default)
ALL_PARTITIONED = {"zero_optimization": {"stage3_param_persistence_threshold": 0}}


def deepspeed_group(
    base: Path, stage: int, ranks: int, fp4: FP4 | None = None, env: dict | None = None
) -> TrainerGroup:
    cfg = TrainerConfig(lr=1e-3, micro_batch_size=3, num_ranks=ranks, backend="deepspeed", zero_stage=stage,
                        deepspeed=ALL_PARTITIONED)  # fmt: skip
    return TrainerGroup(
        TrainerSpec(str(base), cfg, 10, fp4=fp4), PolicyObjective(AlgorithmConfig()), CLUSTER, env or {}
    )


def reference_step(base: Path, batch: TrainBatch, fp4: FP4 | None) -> tuple[dict[str, float], TorchTrainer]:  # noqa: F811
    trainer = TorchTrainer(TrainerSpec(str(base), TrainerConfig(lr=1e-3, micro_batch_size=8), total_steps=10, fp4=fp4),
                           PolicyObjective(AlgorithmConfig()))  # fmt: skip
    return trainer.train_step(batch, LossNormalizer(batch.num_tokens, batch.num_sequences, 12)), trainer


def dense(state: dict) -> dict[str, torch.Tensor]:
    return {k: v if isinstance(v, torch.Tensor) else dequantize(v) for k, v in state.items()}


def test_config_from_the_trainer_config_and_merged_extras() -> None:
    cfg = TrainerConfig(lr=3e-4, grad_clip=0.5, micro_batch_size=4, zero_stage=3,
                        deepspeed={"zero_optimization": {"overlap_comm": True}, "bf16": {"enabled": True}})  # fmt: skip
    ds = deepspeed_config(cfg, "float32", world_size=2)
    assert ds["zero_optimization"] == {"stage": 3, "overlap_comm": True}  # merged key by key, stage kept
    assert ds["bf16"] == {"enabled": True} and ds["gradient_clipping"] == 0.5
    assert ds["train_batch_size"] == 8 and ds["gradient_accumulation_steps"] == 1
    assert ds["optimizer"]["params"] == {
        "lr": 3e-4,
        "betas": [0.9, 0.99],
        "weight_decay": 0.0,
        "torch_adam": True,
    }
    assert deepspeed_config(TrainerConfig(grad_clip=0), "bfloat16", 1)["gradient_clipping"] == 0.0
    assert deepspeed_config(TrainerConfig(), "bfloat16", 1)["bf16"] == {"enabled": True}
    assert deep_merge({"a": {"b": 1, "c": 2}}, {"a": {"c": 3}, "d": 4}) == {"a": {"b": 1, "c": 3}, "d": 4}
    with pytest.raises(ValueError, match=r"trainer\.zero_stage must be one of \(1, 2, 3\), got 0"):
        deepspeed_config(TrainerConfig(zero_stage=0), "float32", 1)


@pytest.mark.parametrize(("stage", "ranks"), [(1, 1), (2, 2)])
def test_zero_step_equals_the_torch_step(
    tiny_base: Path,
    batch: TrainBatch,  # noqa: F811
    ray_local,
    stage: int,
    ranks: int,
) -> None:
    expected, reference = reference_step(tiny_base, batch, None)
    group = deepspeed_group(tiny_base, stage, ranks)
    try:
        got = group.train_step(batch, max_response_tokens=12)
        weights = ray.get(group.export_weights())
    finally:
        group.shutdown()
    assert got["train/grad_norm"] == pytest.approx(expected["train/grad_norm"], rel=1e-4)
    assert got["train/loss"] == pytest.approx(expected["train/loss"], rel=1e-4, abs=1e-6)
    assert got["train/lr"] == pytest.approx(expected["train/lr"]) and got["train/nonfinite"] == 0.0
    reference_weights = reference.export_weights()
    # Adam's first step moves every weight by ~lr (1e-3); a scaling or sharding bug shows at that size
    for key, value in reference_weights.items():
        torch.testing.assert_close(weights[key], value, rtol=1e-3, atol=1e-5)


def test_zero3_qat_step_export_and_resume(
    tiny_base: Path,
    batch: TrainBatch,  # noqa: F811
    ray_local,
    tmp_path: Path,
) -> None:
    expected, reference = reference_step(tiny_base, batch, "mxfp4")
    group = deepspeed_group(tiny_base, 3, 2, fp4="mxfp4")
    try:
        got = group.train_step(batch, max_response_tokens=12)
        exported = ray.get(group.export_weights())
        fake_quant = group.fake_quant_weights()
        group.save(str(tmp_path))
        second = group.train_step(batch, max_response_tokens=12)
        after_second = ray.get(group.export_weights())
    finally:
        group.shutdown()
    assert got["train/grad_norm"] == pytest.approx(expected["train/grad_norm"], rel=1e-4)
    # the export gathers full weights from both partitions; QAT linears go packed, as the torch backend's do
    reference_export = reference.export_weights()
    assert exported.keys() == reference_export.keys()
    packed = [k for k, v in exported.items() if isinstance(v, FP4Tensor)]
    assert len(packed) == 4 * 7 and all(exported[k].shape == reference_export[k].shape for k in packed)
    assert all(torch.equal(dequantize(exported[k]), fake_quant[k]) for k in packed)
    for key, value in dense(reference_export).items():
        torch.testing.assert_close(
            dense(exported)[key], value, rtol=1e-3, atol=2e-2 if key in packed else 1e-5
        )
    # DeepSpeed's own checkpoint (every rank's partition + optimizer + schedule) resumes the next step
    assert (tmp_path / "deepspeed" / "state").is_dir() and (tmp_path / "model.safetensors").exists()
    resumed = deepspeed_group(tiny_base, 3, 2, fp4="mxfp4")
    try:
        resumed.load(str(tmp_path))
        again = resumed.train_step(batch, max_response_tokens=12)
        after_again = ray.get(resumed.export_weights())
    finally:
        resumed.shutdown()
    assert again["train/loss"] == pytest.approx(second["train/loss"], rel=1e-6, abs=1e-9)
    assert again["train/grad_norm"] == pytest.approx(second["train/grad_norm"], rel=1e-6)
    for key, value in dense(after_second).items():
        torch.testing.assert_close(dense(after_again)[key], value, rtol=0, atol=0)


def test_nonfinite_loss_skips_the_update_under_zero(
    tiny_base: Path,
    batch: TrainBatch,  # noqa: F811
    ray_local,
) -> None:
    group = deepspeed_group(tiny_base, 2, 1, env={"DISTILLERY_FAULT_NAN_AFTER": "0"})
    try:
        before = ray.get(group.export_weights())
        metrics = group.train_step(batch, max_response_tokens=12)
        after = ray.get(group.export_weights())
    finally:
        group.shutdown()
    assert metrics["train/nonfinite"] == 1.0
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert metrics["train/lr"] == pytest.approx(1e-3)  # the schedule did not advance either
