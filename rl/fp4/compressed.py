"""Export QAT'd FP4 linears as a compressed-tensors checkpoint, the layout vLLM runs weight-only (W4A16) on Hopper.

Layout (compressed-tensors 0.17.0 formats ``mxfp4-pack-quantized`` / ``nvfp4-pack-quantized``; vLLM 0.32 reads
them with ``CompressedTensorsW4A4Mxfp4`` / ``CompressedTensorsW4A4Fp4(use_a16=True)``, Marlin kernels on SM90):

* ``<linear>.weight_packed`` uint8 [N, K/2]: E2M1 codes, element 2i in the low nibble, sign in bit 3, code c
  meaning the same value as ours. Our packed bytes are stored as they are.
* MXFP4: ``<linear>.weight_scale`` uint8 [N, K/32], the E8M0 biased exponents (scale 2^(e-127)): our bytes.
* NVFP4: ``<linear>.weight_scale`` float8_e4m3fn [N, K/16] (our block-scale bits, viewed as E4M3) and
  ``<linear>.weight_global_scale`` float32 [1]. The global scale is a *divisor*: compressed-tensors dequantizes
  x_q * (weight_scale / weight_global_scale) and vLLM inverts it once (1 / weight_global_scale, float32), then
  applies it per tensor. We store g = fl32(1 / tensor_scale): fl32(1 / g) == tensor_scale for about 5 in 6
  float32 values; for the rest no float32 g gives it back and vLLM's tensor scale is off by one float32 ulp.

Exactness: MXFP4 is bitwise (compressed-tensors' own decompression, in bf16, equals ``fake_quant`` in float32:
every MXFP4 value fits bf16). NVFP4 codes and block scales are bitwise, so vLLM's per-element weight
(E2M1 * block scale, exact in bf16) times its tensor scale is the trainer's weight up to the trainer's own float32
rounding of that product (and the 1-ulp tensor-scale case above). compressed-tensors' decompression divides
first (x_q * fl32(bs / g), then bf16), which differs from ours by about one float32 ulp before its cast to bf16.

vLLM fuses q/k/v and gate/up into one layer and uses the *max* of their global scales for all shards, so NVFP4
shards of one fused layer must share one tensor scale; ``save_compressed`` refuses them otherwise.
This module imports neither compressed_tensors nor vLLM at load time; only ``load_compressed_dequantized`` does.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from rl.fp4.formats import MXFP4Tensor, NVFP4Tensor, get_format

CT_VERSION = "0.17.0"  # the compressed-tensors release whose layout and config this mirrors
WEIGHTS_NAME = "model.safetensors"
# vLLM's packed_modules_mapping for Llama/Qwen-style models: one fused layer per key, shards in order.
VLLM_FUSED_SHARDS: dict[str, tuple[str, ...]] = {
    "qkv_proj": ("q_proj", "k_proj", "v_proj"),
    "gate_up_proj": ("gate_proj", "up_proj"),
}
# Per format: compressed-tensors format name and the weight args of its A16 preset (MXFP4A16 / NVFP4A16),
# as ``QuantizationConfig.model_dump`` writes them.
_CT_FORMATS: dict[str, str] = {"mxfp4": "mxfp4-pack-quantized", "nvfp4": "nvfp4-pack-quantized"}
_CT_WEIGHT_ARGS: dict[str, dict[str, Any]] = {
    "mxfp4": {"group_size": 32, "strategy": "group", "scale_dtype": "torch.uint8"},
    "nvfp4": {"group_size": 16, "strategy": "tensor_group", "scale_dtype": "torch.float8_e4m3fn"},
}


# ---------------------------------------------------------------------------------------------------------------
# Tensors


def nvfp4_global_scale(tensor_scale: torch.Tensor) -> torch.Tensor:
    """float32 [1]: compressed-tensors' divisor form of our NVFP4 tensor scale, fl32(1 / tensor_scale).

    No other float32 g brings fl32(1 / g) closer to ``tensor_scale`` (checked on 2M random scales with the 8
    neighbours either side): it is exact for ~83% of values and one ulp off for the rest.
    """
    return (1.0 / tensor_scale.to(torch.float32)).reshape(1)


def compressed_linear_tensors(name: str, q: MXFP4Tensor | NVFP4Tensor) -> dict[str, torch.Tensor]:
    """The checkpoint tensors of linear ``name`` (its module name) for one quantized weight."""
    if len(q.shape) != 2:
        raise ValueError(f"{name}: compressed-tensors packs 2-D linear weights, got shape {q.shape}")
    if isinstance(q, MXFP4Tensor):
        return {f"{name}.weight_packed": q.packed, f"{name}.weight_scale": q.scales}
    return {
        f"{name}.weight_packed": q.packed,
        f"{name}.weight_scale": q.block_scales,
        f"{name}.weight_global_scale": nvfp4_global_scale(q.tensor_scale),
    }


def compressed_state_dict(state: dict[str, Any], fmt: str) -> dict[str, torch.Tensor]:
    """``rl.fp4.qat.export_weights``'s dict in compressed-tensors names: FP4 ``<linear>.weight`` entries become
    ``weight_packed`` / ``weight_scale`` (/ ``weight_global_scale``); dense tensors pass through unchanged."""
    expected = MXFP4Tensor if get_format(fmt).name == "mxfp4" else NVFP4Tensor
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            out[key] = value
        elif isinstance(value, MXFP4Tensor | NVFP4Tensor):
            if not isinstance(value, expected) or not key.endswith(".weight"):
                raise ValueError(
                    f"{key}: a {type(value).__name__} cannot be stored as {fmt} (need {expected.__name__} "
                    "under a '<linear>.weight' key)"
                )
            out.update(compressed_linear_tensors(key.removesuffix(".weight"), value))
        else:
            raise ValueError(f"{key}: expected a tensor or an FP4 tensor, got {type(value).__name__}")
    return out


def unshared_global_scales(tensors: dict[str, torch.Tensor]) -> list[str]:
    """vLLM fused layers (``...qkv_proj``, ``...gate_up_proj``) whose shards' NVFP4 global scales differ.

    vLLM loads one global scale per shard but multiplies by their max for the whole fused layer, which scales
    the other shards' weights by the wrong factor.
    """
    scales_by_fused: dict[str, set[float]] = {}
    for key, value in tensors.items():
        if not key.endswith(".weight_global_scale"):
            continue
        parent, _, leaf = key.removesuffix(".weight_global_scale").rpartition(".")
        for fused, shards in VLLM_FUSED_SHARDS.items():
            if leaf in shards:
                scales_by_fused.setdefault(f"{parent}.{fused}", set()).add(float(value))
    return sorted(name for name, scales in scales_by_fused.items() if len(scales) > 1)


# ---------------------------------------------------------------------------------------------------------------
# Config


def quantization_config(fmt: str, ignore: Sequence[str] = ("lm_head",)) -> dict[str, Any]:
    """The ``quantization_config`` block of config.json: every ``Linear`` quantized except ``ignore``.

    Mirrors what compressed-tensors' ``ModelCompressor.update_config`` writes for the MXFP4A16 / NVFP4A16
    presets (weight-only, symmetric, static scales), with status ``compressed``.
    """
    name = get_format(fmt).name
    weights = {
        "num_bits": 4,
        "type": "float",
        "symmetric": True,
        "block_structure": None,
        "dynamic": False,
        "actorder": None,
        "zp_dtype": None,
        "observer": "memoryless_minmax",
        "observer_kwargs": {},
        **_CT_WEIGHT_ARGS[name],
    }
    group = {
        "targets": ["Linear"],
        "weights": weights,
        "input_activations": None,
        "output_activations": None,
        "format": None,
    }
    return {
        "version": CT_VERSION,
        "quant_method": "compressed-tensors",
        "sparsity_config": {},
        "transform_config": {},
        "config_groups": {"group_0": group},
        "kv_cache_scheme": None,
        "format": _CT_FORMATS[name],
        "quantization_status": "compressed",
        "global_compression_ratio": None,
        "ignore": list(ignore),
    }


def unquantized_linears(model: nn.Module, qat_names: Sequence[str]) -> list[str]:
    """Names of the model's ``nn.Linear`` modules outside ``qat_names`` (the LM head among them)."""
    quantized = set(qat_names)
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n not in quantized]


def model_config_dict(model: nn.Module, dtype: torch.dtype, quant_config: dict[str, Any]) -> dict[str, Any]:
    """The model's HF config as a dict, with architectures, dtype and ``quantization_config`` filled in."""
    config = model.config.to_dict()  # type: ignore[operator]
    config["architectures"] = config.get("architectures") or [type(model).__name__]
    config["dtype"] = str(dtype).removeprefix("torch.")
    config["quantization_config"] = quant_config
    return config


# ---------------------------------------------------------------------------------------------------------------
# Checkpoint directory


def _tied_duplicates(model: nn.Module, keys: Sequence[str]) -> set[str]:
    """State-dict keys that are a tied copy of another (the LM head of a tied-embedding model), left out.

    Read from the config, not from storage sharing: under ZeRO-3 the module's parameters are empty shards.
    """
    tied = getattr(getattr(model, "config", None), "tie_word_embeddings", False)
    return {"lm_head.weight"} & set(keys) if tied else set()


def save_compressed(
    out_dir: str | Path,
    model: nn.Module,
    qat_names: Sequence[str],
    fmt: str,
    tokenizer: Any = None,
    dense_dtype: torch.dtype | None = None,
    allow_unshared_global_scales: bool = False,
) -> Path:
    """Write an HF checkpoint directory with the QAT linears in compressed-tensors FP4; returns its path.

    Files: config.json (with ``quantization_config``), model.safetensors (one shard), generation_config.json and
    the tokenizer's files when given. ``dense_dtype`` casts the high-precision tensors (None keeps the model's):
    vLLM's Marlin path needs bf16/fp16 activations, so for an fp32 master pass torch.bfloat16 or run vLLM with
    ``--dtype bfloat16``. NVFP4 shards of a vLLM fused layer with different global scales are a ValueError
    unless ``allow_unshared_global_scales`` (such a file loads, but vLLM computes those layers wrong).
    """
    from rl.fp4.qat import export_weights

    state = export_weights(model, list(qat_names), fmt)
    return save_compressed_state(out_dir, state, model, qat_names, fmt, tokenizer, dense_dtype,
                                 allow_unshared_global_scales)  # fmt: skip


def save_compressed_state(
    out_dir: str | Path,
    state: dict[str, Any],
    model: nn.Module,
    qat_names: Sequence[str],
    fmt: str,
    tokenizer: Any = None,
    dense_dtype: torch.dtype | None = None,
    allow_unshared_global_scales: bool = False,
) -> Path:
    """``save_compressed`` from an export payload already taken (``TorchTrainer.export_weights``, which under
    ZeRO-3 gathers the full weights); ``model`` supplies the config and module types only."""
    tensors = compressed_state_dict(state, fmt)
    unshared = unshared_global_scales(tensors)
    if unshared and not allow_unshared_global_scales:
        raise ValueError(
            f"NVFP4 export: shards of vLLM fused layers have different global scales ({', '.join(unshared[:4])}"
            f"{', ...' if len(unshared) > 4 else ''}); vLLM would use their max for every shard. Quantize each "
            "fused group (q/k/v, gate/up) with one shared tensor scale, or pass allow_unshared_global_scales=True"
        )
    for key in _tied_duplicates(model, list(tensors)):
        tensors.pop(key)
    dtype = dense_dtype or next(model.parameters()).dtype
    if dense_dtype is not None:
        tensors = {k: v.to(dense_dtype) if _is_dense_float(k, v) else v for k, v in tensors.items()}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, out / WEIGHTS_NAME, metadata={"format": "pt"})
    config = model_config_dict(model, dtype, quantization_config(fmt, unquantized_linears(model, qat_names)))
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None:
        generation_config.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out


def _is_dense_float(key: str, tensor: torch.Tensor) -> bool:
    """A high-precision model tensor (not one of the compressed FP4 parts)."""
    fp4_parts = (".weight_packed", ".weight_scale", ".weight_global_scale")
    return tensor.is_floating_point() and not key.endswith(fp4_parts)


# ---------------------------------------------------------------------------------------------------------------
# Reading back with compressed-tensors (the independent check)


def load_compressed_dequantized(path: str | Path) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors with each FP4 linear decompressed by compressed-tensors itself.

    Uses the library's ``QuantizationConfig``, its target/ignore matching and the format's registered
    compressor's ``decompress`` -- not our dequantizer. FP4 weights come back as ``<linear>.weight`` in the
    compressor's dtype (bf16); dense tensors as stored. Needs the ``compressed-tensors`` package.
    """
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.quantization import QuantizationConfig

    path = Path(path)
    quant_config = QuantizationConfig.model_validate(
        json.loads((path / "config.json").read_text())["quantization_config"]
    )
    compressor = BaseCompressor.get_value_from_registry(quant_config.format)
    tensors = load_file(path / WEIGHTS_NAME)
    linears = sorted(k.removesuffix(".weight_packed") for k in tensors if k.endswith(".weight_packed"))
    out = {k: v for k, v in tensors.items() if not k.startswith(tuple(f"{n}." for n in linears))}
    for name in linears:
        local: dict[str, torch.Tensor | None] = {
            k.removeprefix(f"{name}."): v for k, v in tensors.items() if k.startswith(f"{name}.")
        }
        decompressed = compressor.decompress(local, _scheme_for(name, quant_config))
        # Keep the module's parameters (weight, bias); drop the decompressed scales the library also returns.
        out.update(
            {f"{name}.{k}": v for k, v in decompressed.items() if k in ("weight", "bias") and v is not None}
        )
    return out


def _scheme_for(name: str, quant_config: Any) -> Any:
    """The compressed-tensors scheme whose targets match linear ``name`` (and whose ignore list does not)."""
    from compressed_tensors.utils.match import is_match

    # Matching by class ("Linear") needs a module; every tensor with ``weight_packed`` belongs to a linear.
    stand_in = nn.Linear(1, 1, device="meta")
    for scheme in quant_config.config_groups.values():
        if is_match(name, stand_in, scheme.targets, quant_config.ignore or []):
            return scheme
    raise ValueError(f"{name}: packed FP4 weights, but no config group targets it (or it is ignored)")
