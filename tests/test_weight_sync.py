"""The shared-buffer weight path (rl/weight_sync.py): layout, pack/unpack bitwise, and which path a job takes.

The CUDA IPC itself needs a GPU: tests/test_weight_sync_gpu.py runs it between real Ray actors.
"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import pytest
import torch

from rl.config import ClusterConfig
from rl.fp4.qat import apply_qat, export_weights
from rl.models import load_model
from rl.weight_sync import ALIGN, Slot, choose, layout_of, pack, unpack


def test_each_tensor_starts_at_the_next_aligned_byte():
    # hand-worked: 3 float32 = 12 bytes at 0; the next starts at 256; 2x5 uint8 = 10 bytes at 256; 512 in all
    state = {"a": torch.zeros(3), "b": torch.zeros(2, 5, dtype=torch.uint8)}
    layout = layout_of(state)
    assert layout.slots == (Slot("a", "", "float32", (3,), 0), Slot("b", "", "uint8", (2, 5), ALIGN))
    assert layout.nbytes == 2 * ALIGN and layout.entries == {}


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
def test_a_trainer_export_goes_through_one_buffer_bitwise(tiny_base: Path, fmt: str):
    model = load_model(str(tiny_base))
    names = apply_qat(model, fmt)
    state = export_weights(model, names, fmt)
    layout = layout_of(state)
    buffer = torch.full((layout.nbytes,), 0xAB, dtype=torch.uint8)
    pack(state, buffer, layout)
    back = unpack(buffer, layout)
    assert list(back) == list(state)  # same keys, same order
    for key, value in state.items():
        got = back[key]
        if isinstance(value, torch.Tensor):
            assert got.dtype == value.dtype and torch.equal(got.view(torch.uint8), value.view(torch.uint8)), (
                key
            )
            continue
        assert type(got) is type(value), key
        for f in dataclasses.fields(value):
            a, b = getattr(value, f.name), getattr(got, f.name)
            if isinstance(a, torch.Tensor):
                assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), (key, f.name)
            else:
                assert a == b, (key, f.name)
    spans = sorted((s.offset, s.offset + s.nbytes) for s in layout.slots)
    assert all(start % ALIGN == 0 for start, _ in spans)
    assert all(end <= nxt for (_, end), (nxt, _) in itertools.pairwise(spans))  # no overlap
    assert len(layout.entries) == len(names)


@pytest.mark.parametrize(
    ("mode", "trainer", "workers", "path"),
    [
        ("auto", "GPU-1", ["GPU-1", "GPU-1"], "cuda_ipc"),  # every worker on the trainer's GPU
        ("auto", "GPU-1", ["GPU-1", "GPU-2"], "object_store"),  # one worker elsewhere
        ("auto", "", [""], "object_store"),  # CPU
        ("object_store", "GPU-1", ["GPU-1"], "object_store"),  # asked for
        ("cuda_ipc", "GPU-1", ["GPU-1"], "cuda_ipc"),
    ],
)
def test_the_path_follows_where_the_actors_are(mode: str, trainer: str, workers: list[str], path: str):
    assert choose(mode, trainer, workers) == path


def test_cuda_ipc_where_the_actors_do_not_share_a_gpu_is_refused():
    with pytest.raises(ValueError, match="rank 0 is on GPU-1, the workers on GPU-1, GPU-2"):
        choose("cuda_ipc", "GPU-1", ["GPU-1", "GPU-2"])
    with pytest.raises(ValueError, match=r"cluster.weight_sync='nccl'; valid: auto, object_store, cuda_ipc"):
        choose("nccl", "GPU-1", ["GPU-1"])


def test_the_config_refuses_cuda_ipc_without_gpus_and_unknown_paths():
    with pytest.raises(ValueError, match=r"cuda_ipc needs the actors on a GPU \(cluster.actor_gpus > 0\)"):
        ClusterConfig(weight_sync="cuda_ipc", actor_gpus=0)
    with pytest.raises(ValueError, match="weight_sync"):
        ClusterConfig(weight_sync="nccl")
    assert ClusterConfig(weight_sync="cuda_ipc", actor_gpus=0.5).weight_sync == "cuda_ipc"
