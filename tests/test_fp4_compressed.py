"""compressed-tensors FP4 export: written by us, read back by compressed-tensors' own code, parsed by vLLM's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from compressed_tensors.compressors.nvfp4.helpers import unpack_fp4_from_uint8
from compressed_tensors.quantization import QuantizationConfig, preset_name_to_scheme
from safetensors.torch import load_file
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast, Qwen3ForCausalLM

from rl.fp4.compressed import (
    compressed_state_dict,
    load_compressed_dequantized,
    nvfp4_global_scale,
    quantization_config,
    save_compressed,
    unshared_global_scales,
)
from rl.fp4.formats import quantize
from rl.fp4.qat import apply_qat, fake_quant_weights
from rl.models import tiny_qwen3_config

FP4_SUFFIXES = (".weight_packed", ".weight_scale", ".weight_global_scale")


def qat_model(fmt: str, shared_amax: bool = True) -> tuple[Qwen3ForCausalLM, list[str]]:
    """A 2-layer tiny Qwen3 with QAT applied. ``shared_amax`` gives every QAT linear the same max |w|, so
    NVFP4 tensor scales agree across the shards of vLLM's fused layers (q/k/v, gate/up)."""
    torch.manual_seed(0)
    config = tiny_qwen3_config(64, hidden_size=64, num_layers=2, intermediate_size=128)
    model = Qwen3ForCausalLM(config)
    names = apply_qat(model, fmt)
    if shared_amax:
        modules = dict(model.named_modules())
        with torch.no_grad():
            for name in names:
                modules[name].weight[0, 0] = 0.5  # type: ignore[index]
    return model, names


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
def test_checkpoint_tensors_have_compressed_tensors_names_dtypes_and_shapes(tmp_path: Path, fmt: str) -> None:
    model, names = qat_model(fmt)
    tensors = load_file(save_compressed(tmp_path, model, names, fmt) / "model.safetensors")
    block, scale_dtype = {"mxfp4": (32, torch.uint8), "nvfp4": (16, torch.float8_e4m3fn)}[fmt]
    modules = dict(model.named_modules())
    for name in names:
        n, k = modules[name].weight.shape  # type: ignore[union-attr]
        assert tensors[f"{name}.weight_packed"].dtype == torch.uint8
        assert tensors[f"{name}.weight_packed"].shape == (n, k // 2)
        assert tensors[f"{name}.weight_scale"].dtype == scale_dtype
        assert tensors[f"{name}.weight_scale"].shape == (n, k // block)
        assert f"{name}.weight" not in tensors
        if fmt == "nvfp4":
            assert tensors[f"{name}.weight_global_scale"].dtype == torch.float32
            assert tensors[f"{name}.weight_global_scale"].shape == (1,)
        else:
            assert f"{name}.weight_global_scale" not in tensors


def test_mxfp4_round_trip_through_compressed_tensors_is_bitwise(tmp_path: Path) -> None:
    model, names = qat_model("mxfp4")
    loaded = load_compressed_dequantized(save_compressed(tmp_path, model, names, "mxfp4"))
    trained = fake_quant_weights(model, names, "mxfp4")
    assert len(trained) == 2 * 7
    for key, weight in trained.items():
        assert loaded[key].dtype == torch.bfloat16  # compressed-tensors' decompression dtype
        assert torch.equal(loaded[key].float(), weight), key


def test_nvfp4_codes_and_scales_are_bitwise_in_vllms_order(tmp_path: Path) -> None:
    """vLLM's Marlin path: (E2M1 * block scale) per element, times 1 / weight_global_scale per tensor."""
    model, names = qat_model("nvfp4")
    tensors = load_file(save_compressed(tmp_path, model, names, "nvfp4") / "model.safetensors")
    trained = fake_quant_weights(model, names, "nvfp4")
    modules = dict(model.named_modules())
    for name in names:
        packed = tensors[f"{name}.weight_packed"]
        values = unpack_fp4_from_uint8(packed, packed.shape[0], 2 * packed.shape[1], dtype=torch.float32)
        block_scales = tensors[f"{name}.weight_scale"].float().repeat_interleave(16, dim=1)
        tensor_scale = 1.0 / tensors[f"{name}.weight_global_scale"]  # vLLM inverts it in float32
        # This model's tensor scale is one that float32 reciprocals give back exactly (see the test below).
        assert tensor_scale == quantize(modules[name].weight.detach(), "nvfp4").tensor_scale  # type: ignore[arg-type]
        assert torch.equal(values * block_scales * tensor_scale, trained[f"{name}.weight"]), name


def test_nvfp4_compressed_tensors_decompression_is_within_one_bf16_ulp(tmp_path: Path) -> None:
    """compressed-tensors divides first (x_q * fl(bs / g)) and casts to bf16: rarely one bf16 ulp off ours."""
    model, names = qat_model("nvfp4")
    loaded = load_compressed_dequantized(save_compressed(tmp_path, model, names, "nvfp4"))
    trained = fake_quant_weights(model, names, "nvfp4")
    mismatched = total = 0
    for key, weight in trained.items():
        ours, theirs = weight.to(torch.bfloat16).float(), loaded[key].float()
        assert torch.all((theirs - ours).abs() <= ours.abs() * 2.0**-7), key
        mismatched += int((theirs != ours).sum())
        total += weight.numel()
    assert mismatched <= 1e-3 * total


def test_nvfp4_global_scale_is_the_float32_reciprocal_within_one_ulp() -> None:
    tensor_scales = torch.rand(100_000) * 1e-3 + 1e-7
    back = 1.0 / torch.cat([nvfp4_global_scale(s) for s in tensor_scales[:2000]])
    ulp = torch.nextafter(tensor_scales[:2000], torch.tensor(1.0)) - tensor_scales[:2000]
    assert torch.all((back - tensor_scales[:2000]).abs() <= ulp)
    assert (back == tensor_scales[:2000]).float().mean() > 0.75
    assert torch.equal(1.0 / nvfp4_global_scale(torch.tensor(2.0**-12)), torch.tensor([2.0**-12]))


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
def test_dense_tensors_pass_through_and_tied_head_is_left_out(tmp_path: Path, fmt: str) -> None:
    model, names = qat_model(fmt)
    out = save_compressed(tmp_path, model, names, fmt)
    tensors = load_file(out / "model.safetensors")
    dense = {k: v for k, v in model.state_dict().items() if k.removesuffix(".weight") not in names}
    assert "lm_head.weight" not in tensors  # tied to the embedding (tie_word_embeddings stays true)
    assert {k for k in tensors if not k.endswith(FP4_SUFFIXES)} == set(dense) - {"lm_head.weight"}
    for key in set(dense) - {"lm_head.weight"}:
        assert torch.equal(tensors[key], dense[key]), key
    loaded = load_compressed_dequantized(out)
    assert torch.equal(loaded["model.embed_tokens.weight"], dense["model.embed_tokens.weight"])
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["Qwen3ForCausalLM"] and config["tie_word_embeddings"] is True


def test_dense_dtype_casts_only_the_high_precision_tensors(tmp_path: Path) -> None:
    model, names = qat_model("nvfp4")
    out = save_compressed(tmp_path, model, names, "nvfp4", dense_dtype=torch.bfloat16)
    tensors = load_file(out / "model.safetensors")
    assert tensors["model.norm.weight"].dtype == torch.bfloat16
    assert tensors[f"{names[0]}.weight_global_scale"].dtype == torch.float32
    assert tensors[f"{names[0]}.weight_scale"].dtype == torch.float8_e4m3fn
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"


@pytest.mark.parametrize(("fmt", "preset"), [("mxfp4", "MXFP4A16"), ("nvfp4", "NVFP4A16")])
def test_quantization_config_is_what_compressed_tensors_writes(tmp_path: Path, fmt: str, preset: str) -> None:
    model, names = qat_model(fmt)
    out = save_compressed(tmp_path, model, names, fmt)
    written = json.loads((out / "config.json").read_text())["quantization_config"]
    assert QuantizationConfig.model_validate(written).format == f"{fmt}-pack-quantized"
    expected = QuantizationConfig(
        config_groups={"group_0": preset_name_to_scheme(preset, ["Linear"])},
        format=f"{fmt}-pack-quantized",
        ignore=["lm_head"],
        quantization_status="compressed",  # type: ignore[arg-type]
    ).model_dump(exclude={"quant_method"})
    extras = {"version", "quant_method", "sparsity_config", "transform_config"}
    assert {k: v for k, v in written.items() if k not in extras} == expected
    assert written["quant_method"] == "compressed-tensors"


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
def test_vllm_config_parser_picks_the_weight_only_fp4_scheme(
    monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    """vLLM's scheme selection on CPU; the kernels (Marlin) need CUDA, so their constructors are stubbed."""
    from vllm.model_executor.layers.quantization.compressed_tensors.compressed_tensors import (
        CompressedTensorsConfig,
    )
    from vllm.model_executor.layers.quantization.compressed_tensors.schemes import (
        compressed_tensors_w4a4_mxfp4,
        compressed_tensors_w4a4_nvfp4,
    )

    monkeypatch.setattr(compressed_tensors_w4a4_nvfp4, "init_nvfp4_linear_kernel", lambda use_a16: "stub")
    monkeypatch.setattr(compressed_tensors_w4a4_mxfp4, "init_mxfp4_linear_kernel", lambda **_: "stub")
    config = CompressedTensorsConfig.from_config(quantization_config(fmt, ignore=["lm_head"]))
    config.packed_modules_mapping = {"qkv_proj": ["q_proj", "k_proj", "v_proj"], "gate_up_proj": ["gate_proj", "up_proj"]}  # fmt: skip
    layer = torch.nn.Linear(64, 64)
    for name in ("model.layers.0.self_attn.qkv_proj", "model.layers.1.mlp.down_proj"):
        scheme = config.get_scheme(layer, name)
        if fmt == "nvfp4":
            assert (
                isinstance(scheme, compressed_tensors_w4a4_nvfp4.CompressedTensorsW4A4Fp4) and scheme.use_a16
            )
        else:
            assert isinstance(scheme, compressed_tensors_w4a4_mxfp4.CompressedTensorsW4A4Mxfp4)
    assert config.get_scheme(layer, "lm_head") is None


def test_nvfp4_fused_shards_with_different_tensor_scales_are_refused(tmp_path: Path) -> None:
    model, names = qat_model("nvfp4", shared_amax=False)
    with pytest.raises(ValueError, match=r"model\.layers\.0\.self_attn\.qkv_proj"):
        save_compressed(tmp_path, model, names, "nvfp4")
    out = save_compressed(tmp_path, model, names, "nvfp4", allow_unshared_global_scales=True)
    assert unshared_global_scales(load_file(out / "model.safetensors")) == [
        f"model.layers.{i}.{part}" for i in range(2) for part in ("mlp.gate_up_proj", "self_attn.qkv_proj")
    ]


def test_tokenizer_files_are_written(tmp_path: Path) -> None:
    model, names = qat_model("mxfp4")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel({"<unk>": 0, "a": 1}, "<unk>")))
    out = save_compressed(tmp_path, model, names, "mxfp4", tokenizer=tokenizer)
    assert (out / "tokenizer.json").exists() and (out / "config.json").exists()


def test_bad_inputs_name_what_is_valid(tmp_path: Path) -> None:
    model, names = qat_model("mxfp4")
    with pytest.raises(ValueError, match=r"unknown FP4 format 'fp8'; valid: \['mxfp4', 'nvfp4'\]"):
        save_compressed(tmp_path, model, names, "fp8")
    with pytest.raises(ValueError, match="valid"):
        quantization_config("int4")
    mx = quantize(torch.randn(8, 64), "mxfp4")
    with pytest.raises(ValueError, match="MXFP4Tensor cannot be stored as nvfp4"):
        compressed_state_dict({"a.weight": mx}, "nvfp4")
    with pytest.raises(ValueError, match=r"under a '<linear>\.weight' key"):
        compressed_state_dict({"a.bias": mx}, "mxfp4")
    with pytest.raises(ValueError, match="expected a tensor or an FP4 tensor"):
        compressed_state_dict({"a.weight": [1.0]}, "mxfp4")
