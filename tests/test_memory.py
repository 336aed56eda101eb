"""The GPU memory check (rl/memory.py): hand-worked lower bounds and the one-line refusal naming the actor.

The job runs it only where the driver sees a GPU; tests/test_jobs_gpu.py runs a refused job there.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoConfig

from rl.fp4.qat import qat_linear_names
from rl.memory import (
    GiB,
    ModelShape,
    check_gpu_memory,
    gpu_memory,
    packed_weights,
    peak_gpu_gib,
    rollout_needs,
    trainer_needs,
)
from rl.models import load_model


def test_the_shape_is_counted_from_the_config_as_the_loaded_model_has_it(tiny_base: Path) -> None:
    model = load_model(str(tiny_base))
    config = AutoConfig.from_pretrained(tiny_base)
    shape = ModelShape.of(str(tiny_base), "mxfp4")
    modules = dict(model.named_modules())
    assert shape.params == sum(p.numel() for p in model.parameters())
    assert shape.fp4_params == sum(modules[n].weight.numel() for n in qat_linear_names(model, "mxfp4")) > 0
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    assert shape.kv_per_token == config.num_hidden_layers * 2 * config.num_key_value_heads * head_dim
    assert ModelShape.of(str(tiny_base), None).fp4_params == 0


def test_hand_worked_bounds() -> None:
    shape = ModelShape(params=1000, fp4_params=640, kv_per_token=8)
    # 360 dense float32 weights (1440 B) + 640 codes at half a byte (320 B) + one scale byte per 32 (20 B)
    assert packed_weights(shape, "float32", "mxfp4") == 1780
    assert packed_weights(shape, "float32", "nvfp4") == 1800  # a scale per 16: 40 B
    assert packed_weights(ModelShape(1000, 0, 8), "bfloat16", None) == 2000
    assert trainer_needs(shape, "bfloat16", reference=False) == {
        "weights": 2000, "gradients": 2000, "AdamW moments": 4000, "reference model": 0
    }  # fmt: skip
    assert trainer_needs(shape, "bfloat16", reference=True)["reference model"] == 2000
    # 4 sequences x 10 tokens x 8 elements x 4 bytes
    assert rollout_needs(shape, "float32", "mxfp4", batch=4, tokens=10) == {"weights": 1780, "KV cache": 1280}


def test_an_actor_over_its_share_is_named_with_the_figures() -> None:
    needs = {
        "trainer rank": {
            "weights": 2 * GiB,
            "gradients": 2 * GiB,
            "AdamW moments": 4 * GiB,
            "reference model": 0,
        },
        "rollout worker": {"weights": GiB, "KV cache": GiB},
    }
    with pytest.raises(ValueError) as err:
        check_gpu_memory(needs, 0.25, 16 * GiB, "H")
    assert str(err.value) == (
        "not enough GPU memory: the trainer rank needs at least 8.0 GiB (weights 2.0 + gradients 2.0 + AdamW "
        "moments 4.0), but its share is 4.0 GiB (cluster.actor_gpus=0.25 of the H's 16.0 GiB); give it a larger "
        "cluster.actor_gpus, or a smaller rollout.max_batch_size / rollout.max_new_tokens"
    )
    check_gpu_memory(needs, 0.5, 16 * GiB, "H")  # 8 GiB each: fits exactly


class Held:
    """An actor group that reports the most GPU memory its actors held."""

    def __init__(self, gib: float) -> None:
        self.gib = gib

    def peak_gpu_gib(self) -> float:
        return self.gib


def test_the_summary_names_each_role_that_held_gpu_memory_and_nothing_on_cpu() -> None:
    held = gpu_memory({"trainer": Held(3.14159), "rollout": Held(0.5), "teacher": Held(0.0)})
    assert held == {"memory/trainer_peak_gib": 3.142, "memory/rollout_peak_gib": 0.5}
    assert peak_gpu_gib() == 0.0  # this process has no GPU
