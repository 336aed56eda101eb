"""MoE models: FP4 on the routed experts (rl/fp4/experts.py), their QAT forward and packed rollout (rl/moe.py,
rl/fp4/qat.py, rl/fp4/packed.py), on a tiny Qwen3-MoE from transformers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import pytest
import ray
import torch
from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

from rl.fp4.experts import dequantize_experts, expert, fake_quant_experts, quantize_experts
from rl.fp4.formats import dequantize, fake_quant, quantize
from rl.fp4.packed import PackedFP4Experts, pack_linears
from rl.fp4.qat import apply_qat, export_weights, fake_quant_weights, qat_linear_names, skipped_experts
from rl.fp4.tensors import NVFP4Tensor
from rl.models import load_model
from rl.moe import dense_matmuls, experts_forward, is_experts
from rl.types import SamplingParams, TrainBatch
from tests.test_fp4_rollout import fp4_actors
from tests.test_trainer import batch  # noqa: F401  (module fixture: a real rollout batch)


def tiny_moe(moe_intermediate_size: int = 32, seed: int = 0) -> Qwen3MoeForCausalLM:
    torch.manual_seed(seed)
    config = Qwen3MoeConfig(vocab_size=96, hidden_size=32, intermediate_size=64, moe_intermediate_size=moe_intermediate_size,
                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                            num_experts=8, num_experts_per_tok=2, norm_topk_prob=True, decoder_sparse_step=1,
                            tie_word_embeddings=True)  # fmt: skip
    model = Qwen3MoeForCausalLM(config)
    with torch.no_grad():  # transformers leaves fused experts uninitialised outside from_pretrained
        for module in experts_of(model):
            module.gate_up_proj.normal_(0, 0.1)
            module.down_proj.normal_(0, 0.1)
    return model.eval()


def experts_of(model: torch.nn.Module) -> list[Any]:
    return [m for m in model.modules() if is_experts(m)]


def test_experts_forward_is_transformers_eager_forward() -> None:
    module = experts_of(tiny_moe())[0]
    hidden = torch.randn(10, 32)
    index = torch.tensor([[0, 3], [3, 7], [1, 2], [7, 0], [5, 5], [2, 6], [4, 1], [6, 3], [0, 1], [4, 2]])
    weights = torch.rand(10, 2)
    matmuls = dense_matmuls(module.gate_up_proj, module.down_proj)
    ours = experts_forward(hidden, index, weights, 8, *matmuls, module.act_fn)
    torch.testing.assert_close(ours, module(hidden, index, weights), rtol=0, atol=1e-6)
    index[9, 0] = 8  # transformers' padding id (num_experts): that slot adds nothing
    dropped = experts_forward(hidden, index, weights, 8, *matmuls, module.act_fn)
    alone = experts_forward(hidden[9:], index[9:, 1:], weights[9:, 1:], 8, *matmuls, module.act_fn)
    torch.testing.assert_close(dropped[9:], alone, rtol=0, atol=1e-6)
    torch.testing.assert_close(dropped[:9], ours[:9], rtol=0, atol=1e-6)


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
def test_each_expert_is_quantized_on_its_own(fmt: str) -> None:
    w = torch.randn(4, 6, 64)
    w[2] *= 1000  # one loud expert: under NVFP4 it must not coarsen the others' tensor scale
    q = quantize_experts(w, fmt)
    for e in range(4):
        alone = quantize(w[e], fmt)
        assert torch.equal(dequantize(expert(q, e)), dequantize(alone))
        assert torch.equal(dequantize_experts(q)[e], fake_quant(w[e], "mxfp4" if fmt == "mxfp4" else fmt))
    if isinstance(q, NVFP4Tensor):
        assert q.tensor_scale.shape == (4,) and q.tensor_scale[2] > 100 * q.tensor_scale[0]
    assert torch.equal(fake_quant_experts(w, fmt), dequantize_experts(q))
    assert torch.equal(
        fake_quant_experts(fake_quant_experts(w, fmt), fmt), fake_quant_experts(w, fmt)
    )  # idempotent


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
def test_qat_on_experts_only_and_its_forward_is_the_fake_quant_model(fmt: str) -> None:
    model, reference = tiny_moe(), tiny_moe()
    names = apply_qat(model, fmt)
    assert names == ["model.layers.0.mlp.experts", "model.layers.1.mlp.experts"]  # attention and router stay
    with torch.no_grad():
        for module in experts_of(reference):
            module.gate_up_proj.copy_(fake_quant_experts(module.gate_up_proj, fmt))
            module.down_proj.copy_(fake_quant_experts(module.down_proj, fmt))
            module.forward = PackedFP4Experts.forward.__get__(module)
    ids = torch.randint(0, 96, (3, 12))
    trained = model(ids).logits
    torch.testing.assert_close(trained, reference_forward(reference, ids, fmt), rtol=0, atol=0)
    trained.sum().backward()  # the straight-through estimator: gradients reach the master expert weights
    assert all(
        m.gate_up_proj.grad is not None and m.gate_up_proj.grad.abs().sum() > 0 for m in experts_of(model)
    )
    served = fake_quant_weights(model, names, fmt)
    assert sorted(served) == [
        f"model.layers.{i}.mlp.experts.{p}" for i in (0, 1) for p in ("down_proj", "gate_up_proj")
    ]


def reference_forward(model: torch.nn.Module, ids: torch.Tensor, fmt: str) -> torch.Tensor:
    """The model with fake-quantized expert weights, through rl.moe.experts_forward with dense matmuls."""
    for module in experts_of(model):
        gate_up, down = module.gate_up_proj, module.down_proj

        def forward(h, idx, w, gate_up=gate_up, down=down, act=module.act_fn):
            return experts_forward(h, idx, w, gate_up.shape[0], *dense_matmuls(gate_up, down), act)

        module.forward = forward
    return model(ids).logits


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
def test_packed_experts_serve_the_trainers_weights_bitwise_in_under_30_percent_of_bf16(fmt: str) -> None:
    trainer, rollout = (
        tiny_moe(),
        tiny_moe(seed=1),
    )  # the rollout starts from other weights: the sync must set them
    names = apply_qat(trainer, fmt)
    with torch.no_grad():
        for m in experts_of(trainer):
            m.gate_up_proj.add_(0.01)
    assert qat_linear_names(rollout, fmt) == names
    pack_linears(rollout, names, fmt)
    packed = [m for m in rollout.modules() if isinstance(m, PackedFP4Experts)]
    assert len(packed) == 2 and not experts_of(rollout)
    state = export_weights(trainer, names, fmt)
    for key in [k for k, v in state.items() if not isinstance(v, torch.Tensor)]:
        name, _, param = key.rpartition(".")
        cast(Any, rollout.get_submodule(name)).load_quantized(state[key], param)
    rollout.load_state_dict({k: v for k, v in state.items() if isinstance(v, torch.Tensor)}, strict=False)
    trained = fake_quant_weights(trainer, names, fmt)
    for key, weight in trained.items():
        name, _, param = key.rpartition(".")
        assert torch.equal(cast(Any, rollout.get_submodule(name)).served(param), weight), key
    for module in packed:
        assert module.weight_nbytes() <= 0.30 * module.bf16_nbytes()
    ids = torch.randint(0, 96, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(rollout(ids).logits, trainer(ids).logits, rtol=0, atol=1e-5)


def test_experts_whose_width_is_not_whole_blocks_stay_high_precision() -> None:
    model = tiny_moe(moe_intermediate_size=24)  # down_proj reduces over 24: not whole 16- or 32-blocks
    assert skipped_experts(model, "nvfp4") == ["model.layers.0.mlp.experts", "model.layers.1.mlp.experts"]
    assert qat_linear_names(model, "nvfp4") == []
    with pytest.raises(ValueError, match=r"no nn.Linear \(or MoE experts module\)"):
        apply_qat(model, "nvfp4")


def test_moe_trainer_and_rollout_actors_agree_bitwise_on_every_expert_after_a_step(
    moe_dir: Path,
    batch: TrainBatch,  # noqa: F811
    ray_local,
) -> None:
    fmt = "nvfp4"  # a tensor scale per expert; MXFP4's stacking is the plain quantizer (the unit tests above)
    trainer, rollout = fp4_actors(moe_dir, fmt)
    try:
        trainer.train_step(batch, max_response_tokens=12)
        sync = rollout.push_weights(trainer.export_weights())
        worker = rollout.workers[0]
        served = ray.get(worker.dequantized_weights.remote())
        trained = trainer.fake_quant_weights()
        assert (
            sorted(served)
            == sorted(trained)
            == sorted(
                f"model.layers.{i}.mlp.experts.{p}" for i in range(4) for p in ("gate_up_proj", "down_proj")
            )
        )
        for key in trained:
            assert torch.equal(served[key], trained[key]), key
        before = load_model(str(moe_dir)).state_dict()
        assert any(
            not torch.equal(fake_quant_experts(before[k], fmt), trained[k]) for k in trained
        )  # it moved
        memory = ray.get(worker.memory_report.remote())
        assert memory["packed_bytes"] <= 0.30 * memory["bf16_bytes"]  # the experts in the rollout
        assert sync["perf/weight_sync_bytes"] > 0
        (out,) = ray.get(worker.generate.remote([[1, 2, 3]], SamplingParams(max_new_tokens=4, temperature=0)))
        assert len(out.response_ids) >= 1
    finally:
        trainer.shutdown()
        rollout.shutdown()


def test_the_moe_decode_benchmark_runs_on_cpu(tmp_path: Path) -> None:
    from benchmarks.moe_decode import main

    out = tmp_path / "moe_decode.json"
    assert main(["--cpu", "--batch", "2", "--new", "4", "--layers", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["fp4_tokens_per_s"] > 0 and result["dense_tokens_per_s"] > 0
    assert result["fp4_bytes_ratio"] < 0.30 / 2  # packed NVFP4 against float32 experts (0.30 of bf16)
    assert 0.0 <= result["greedy_tokens_agreeing"] <= 1.0
