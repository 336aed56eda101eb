"""What each actor holds on its GPU at the least, checked against its share of the GPU before any actor starts.

The figures are lower bounds (activations, the CUDA context and allocator slack come on top), so a job this
check refuses could not have run; one it lets through can still run out of memory later.

- trainer rank: weights + gradients (the model's dtype) + AdamW's two moments (kept in the weights' dtype)
  + a frozen reference model when ``algorithm.kl_coef`` > 0;
- rollout worker: weights (FP4 linears packed: half a byte per weight plus one scale byte per block)
  + the KV cache of one decode batch (``min(rollout.max_batch_size, sequences per worker)`` x the response
  budget x every layer's keys and values);
- teacher: its weights, packed as the rollout's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rl.config import FP4

GiB = 2**30
DTYPE_BYTES = {"float32": 4, "bfloat16": 2}
SCALE_BLOCK = {"mxfp4": 32, "nvfp4": 16}  # weights per one-byte scale


@dataclass(frozen=True)
class ModelShape:
    """What memory depends on: parameter counts and the KV cache's bytes per token per element size."""

    params: int  # every parameter
    fp4_params: int  # those in the linears FP4 packs (QAT targets)
    kv_per_token: int  # layers x 2 (keys, values) x kv heads x head dim

    @classmethod
    def of(cls, model_path: str, fmt: FP4 | None) -> ModelShape:
        """Counted on the meta device from the model's config (nothing is allocated or read)."""
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        from rl.fp4.qat import qat_linear_names

        config = AutoConfig.from_pretrained(model_path)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        modules = dict(model.named_modules())
        fp4 = sum(modules[n].weight.numel() for n in qat_linear_names(model, fmt)) if fmt else 0
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        params = sum(p.numel() for p in model.parameters())
        return cls(params, fp4, config.num_hidden_layers * 2 * kv_heads * head_dim)


def packed_weights(shape: ModelShape, dtype: str, fmt: FP4 | None) -> int:
    """Bytes of the weights with the FP4 linears packed (codes + one-byte scales), the rest in ``dtype``."""
    dense = (shape.params - shape.fp4_params) * DTYPE_BYTES[dtype]
    return dense + (shape.fp4_params // 2 + shape.fp4_params // SCALE_BLOCK[fmt] if fmt else 0)


def trainer_needs(shape: ModelShape, dtype: str, reference: bool) -> dict[str, int]:
    weights = shape.params * DTYPE_BYTES[dtype]
    return {"weights": weights, "gradients": weights, "AdamW moments": 2 * weights,
            "reference model": weights if reference else 0}  # fmt: skip


def rollout_needs(shape: ModelShape, dtype: str, fmt: FP4 | None, batch: int, tokens: int) -> dict[str, int]:
    return {"weights": packed_weights(shape, dtype, fmt), "KV cache": batch * tokens * shape.kv_per_token *
            DTYPE_BYTES[dtype]}  # fmt: skip


def check_gpu_memory(needs: dict[str, dict[str, int]], share: float, gpu_bytes: int, gpu_name: str) -> None:
    """Fail with one line naming each actor whose lower bound exceeds its share (``share`` x ``gpu_bytes``)."""
    have = share * gpu_bytes
    short = [
        f"the {actor} needs at least {sum(parts.values()) / GiB:.1f} GiB ("
        + " + ".join(f"{k} {v / GiB:.1f}" for k, v in parts.items() if v)
        + ")"
        for actor, parts in needs.items()
        if sum(parts.values()) > have
    ]
    if short:
        raise ValueError(
            f"not enough GPU memory: {'; '.join(short)}, but its share is {have / GiB:.1f} GiB "
            f"(cluster.actor_gpus={share:g} of the {gpu_name}'s {gpu_bytes / GiB:.1f} GiB); give it a larger "
            "cluster.actor_gpus, or a smaller rollout.max_batch_size / rollout.max_new_tokens"
        )


def local_gpu() -> tuple[int, str] | None:
    """(bytes, name) of this machine's first GPU, or None without one (the check is then left to the actors)."""
    import torch

    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return int(props.total_memory), str(props.name)


def peak_gpu_gib() -> float:
    """The most GPU memory this process's allocator has held so far, in GiB (0 without CUDA): what an actor
    took of its share (the CUDA context, ~0.5 GiB, comes on top)."""
    import torch

    return torch.cuda.max_memory_reserved() / GiB if torch.cuda.is_available() else 0.0


def gpu_memory(groups: dict[str, Any]) -> dict[str, float]:
    """``memory/<role>_peak_gib`` for each actor group (``peak_gpu_gib()``: its largest actor) that has held
    GPU memory; nothing on CPU."""
    peaks = {role: group.peak_gpu_gib() for role, group in groups.items()}
    return {f"memory/{role}_peak_gib": round(gib, 3) for role, gib in peaks.items() if gib > 0}
