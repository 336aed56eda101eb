"""Weights from the trainer to rollout workers on the same GPU through one shared CUDA buffer (CUDA IPC).

The object-store path copies every weight device -> pinned host -> object store -> host -> device. When the
trainer's rank 0 and every rollout worker hold fractions of one GPU (``cluster.actor_gpus`` < 1), rank 0
instead packs the export into one CUDA buffer it keeps, and sends a ``SharedWeights``: the buffer's IPC handle
and where each tensor lies in it (a few kB). A worker maps the buffer once (``cudaIpcOpenMemHandle``, cached
while the handle stays the same) and copies the views into its own weights, device to device.

Ordering needs no extra locks: rank 0 synchronizes after packing, before its call returns; a worker
synchronizes after copying, before ``load_weights`` returns; the controller waits for both before the
trainer's next export overwrites the buffer.

``cluster.weight_sync``: ``auto`` (CUDA IPC when rank 0 and every worker report the same GPU, else the object
store), ``object_store``, or ``cuda_ipc`` (an error, before any step, where the actors do not share a GPU).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from rl.config import WEIGHT_SYNC_MODES as MODES

ALIGN = 256  # bytes; every tensor starts at a multiple (CUDA allocations are 256-byte aligned)


@dataclass(frozen=True)
class Slot:
    """Where one tensor lies in the shared buffer: ``key`` (and ``field`` of an FP4 entry, "" for a dense
    tensor), dtype name, shape, byte offset."""

    key: str
    field: str
    dtype: str
    shape: tuple[int, ...]
    offset: int

    @property
    def nbytes(self) -> int:
        return _numel(self.shape) * getattr(torch, self.dtype).itemsize


@dataclass(frozen=True)
class Layout:
    """Every tensor of a weight payload in one buffer, plus what FP4 entries hold besides tensors."""

    slots: tuple[Slot, ...]
    entries: dict[str, tuple[type, dict[str, Any]]]  # FP4 entry key -> (its class, its non-tensor fields)
    nbytes: int


@dataclass(frozen=True)
class SharedWeights:
    """What crosses Ray instead of the weights: the buffer's IPC handle (``reduce_tensor``'s arguments), its
    GPU's UUID and the layout."""

    handle: tuple
    device_uuid: str
    layout: Layout

    @property
    def nbytes(self) -> int:
        return self.layout.nbytes


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _tensors(state: dict[str, Any]) -> list[tuple[str, str, torch.Tensor]]:
    """(key, field, tensor) for every tensor of a payload, in order; field is "" for a dense tensor."""
    out = []
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            out.append((key, "", value))
        else:
            out += [(key, f.name, getattr(value, f.name)) for f in dataclasses.fields(value)
                    if isinstance(getattr(value, f.name), torch.Tensor)]  # fmt: skip
    return out


def layout_of(state: dict[str, Any]) -> Layout:
    """Where each tensor of ``state`` goes: in order, each at the next ``ALIGN``-byte boundary."""
    slots, offset = [], 0
    for key, field, t in _tensors(state):
        slots.append(Slot(key, field, str(t.dtype).removeprefix("torch."), tuple(t.shape), offset))
        offset += -(-slots[-1].nbytes // ALIGN) * ALIGN
    entries = {
        key: (type(v), {f.name: getattr(v, f.name) for f in dataclasses.fields(v)
                        if not isinstance(getattr(v, f.name), torch.Tensor)})
        for key, v in state.items()
        if not isinstance(v, torch.Tensor)
    }  # fmt: skip
    return Layout(tuple(slots), entries, offset)


def view(buffer: torch.Tensor, slot: Slot) -> torch.Tensor:
    """The tensor ``slot`` describes, as a view into the uint8 ``buffer`` (no copy)."""
    raw = buffer[slot.offset : slot.offset + slot.nbytes]
    return raw.view(getattr(torch, slot.dtype)).view(slot.shape)


def pack(state: dict[str, Any], buffer: torch.Tensor, layout: Layout) -> None:
    """Copy every tensor of ``state`` into its place in ``buffer`` (queued; the caller synchronizes)."""
    for (_, _, t), slot in zip(_tensors(state), layout.slots, strict=True):
        view(buffer, slot).copy_(t, non_blocking=True)


def unpack(buffer: torch.Tensor, layout: Layout) -> dict[str, Any]:
    """The payload ``pack`` wrote, its tensors views into ``buffer``, keys in the original order."""
    dense: dict[str, Any] = {}
    fields: dict[str, dict[str, Any]] = {key: dict(static) for key, (_, static) in layout.entries.items()}
    for slot in layout.slots:
        if slot.field:
            fields[slot.key][slot.field] = view(buffer, slot)
        else:
            dense[slot.key] = view(buffer, slot)
    out: dict[str, Any] = {}
    for slot in layout.slots:  # first appearance of each key, as in the exported dict
        if slot.key not in out:
            out[slot.key] = dense[slot.key] if not slot.field else None
    for key, (cls, _) in layout.entries.items():
        out[key] = cls(**fields[key])
    return out


def device_uuid() -> str:
    """The UUID of this process's current CUDA device, or "" without CUDA."""
    if not torch.cuda.is_available():
        return ""
    return str(torch.cuda.get_device_properties(torch.cuda.current_device()).uuid)


def choose(mode: str, trainer_uuid: str, worker_uuids: list[str]) -> str:
    """The weight path ``cluster.weight_sync=mode`` resolves to, given the GPU each side reports ("" = CPU)."""
    if mode not in MODES:
        raise ValueError(f"cluster.weight_sync={mode!r}; valid: {', '.join(MODES)}")
    shared = bool(trainer_uuid) and all(u == trainer_uuid for u in worker_uuids)
    if mode == "cuda_ipc" and not shared:
        where = ", ".join(u or "CPU" for u in worker_uuids)
        raise ValueError(
            f"cluster.weight_sync=cuda_ipc needs trainer rank 0 and every rollout worker on one GPU; rank 0 "
            f"is on {trainer_uuid or 'CPU'}, the workers on {where} (use auto or object_store)"
        )
    return "cuda_ipc" if mode == "cuda_ipc" or (mode == "auto" and shared) else "object_store"


class SharedExport:
    """Trainer side: one CUDA buffer kept across exports (reallocated if the payload's size changes)."""

    def __init__(self) -> None:
        self.buffer: torch.Tensor | None = None
        self.handle: tuple | None = None

    def export(self, state: dict[str, Any]) -> SharedWeights:
        from torch.multiprocessing.reductions import reduce_tensor

        layout = layout_of(state)
        device = next(t for _, _, t in _tensors(state)).device
        if self.buffer is None or self.buffer.numel() != layout.nbytes or self.buffer.device != device:
            self.buffer = torch.empty(layout.nbytes, dtype=torch.uint8, device=device)
            self.handle = reduce_tensor(self.buffer)[1]
        pack(state, self.buffer, layout)
        torch.cuda.synchronize(device)
        assert self.handle is not None
        return SharedWeights(self.handle, device_uuid(), layout)


class SharedImport:
    """Rollout side: the trainer's buffer mapped once per handle; ``open`` gives the payload as views."""

    def __init__(self) -> None:
        self.key: bytes | None = None
        self.buffer: torch.Tensor | None = None

    def open(self, shared: SharedWeights) -> dict[str, Any]:
        from torch.multiprocessing.reductions import rebuild_cuda_tensor

        if shared.device_uuid != device_uuid():
            raise RuntimeError(
                f"shared weights live on GPU {shared.device_uuid}, this worker is on {device_uuid() or 'CPU'}"
            )
        key = repr(shared.handle).encode()
        if key != self.key:
            args = list(shared.handle)
            args[6] = torch.cuda.current_device()  # storage_device: the same GPU under this process's index
            self.buffer, self.key = rebuild_cuda_tensor(*args), key
        assert self.buffer is not None
        return unpack(self.buffer, shared.layout)
