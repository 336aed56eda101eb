"""Prompt streams with a resumable position, and rollouts packed into a ``TrainBatch``."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rl.moe import NOT_ROUTED, ROUTING_DTYPE
from rl.types import Rollout, Task, TrainBatch


@dataclass
class TaskStream:
    """Endless seeded passes over ``tasks``, reshuffled each epoch; ``(epoch, index)`` is its position."""

    tasks: Sequence[Task]
    seed: int
    epoch: int = 0
    index: int = 0

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ValueError("the task list is empty: nothing to train on")
        self._order = self._shuffled(self.epoch)

    def _shuffled(self, epoch: int) -> list[int]:
        order = list(range(len(self.tasks)))
        random.Random(f"{self.seed}/{epoch}").shuffle(order)
        return order

    def take(self, n: int) -> list[Task]:
        out = []
        for _ in range(n):
            if self.index == len(self._order):
                self.epoch, self.index = self.epoch + 1, 0
                self._order = self._shuffled(self.epoch)
            out.append(self.tasks[self._order[self.index]])
            self.index += 1
        return out

    def position(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}

    def seek(self, epoch: int, index: int) -> None:
        self.epoch, self.index = epoch, index
        self._order = self._shuffled(epoch)


def build_train_batch(rollouts: Sequence[Rollout], advantages: Sequence[float], pad_id: int) -> TrainBatch:
    """Right-padded prompt+response rows; trained response tokens (observations excluded) carry the mask,
    advantage and sampler log-prob."""
    width = max(len(r.prompt_ids) + len(r.response_ids) for r in rollouts)
    rows = len(rollouts)
    ids = torch.full((rows, width), pad_id, dtype=torch.long)
    attention = torch.zeros((rows, width), dtype=torch.long)
    mask = torch.zeros((rows, width))
    adv = torch.zeros((rows, width))
    logprobs = torch.zeros((rows, width))
    for b, (r, a) in enumerate(zip(rollouts, advantages, strict=True)):
        p, n = len(r.prompt_ids), len(r.response_ids)
        ids[b, : p + n] = torch.tensor(r.prompt_ids + r.response_ids)
        attention[b, : p + n] = 1
        mask[b, p : p + n] = torch.tensor(r.trained_mask(), dtype=torch.float32)
        adv[b, p : p + n] = a * mask[b, p : p + n]
        logprobs[b, p : p + n] = torch.tensor(r.logprobs)
    return TrainBatch(ids, attention, mask, adv, logprobs, routing_BTLK=routing_batch(rollouts, width))


def routing_batch(rollouts: Sequence[Rollout], width: int) -> torch.Tensor | None:
    """The rollouts' recorded experts right-padded with -1 to [B, width, L, K]; None unless every rollout has them."""
    if not rollouts or any(r.routing is None for r in rollouts):
        return None
    first = rollouts[0].routing
    assert first is not None
    out = torch.full((len(rollouts), width, *first.shape[1:]), NOT_ROUTED, dtype=ROUTING_DTYPE)
    for b, r in enumerate(rollouts):
        assert r.routing is not None and len(r.routing) == len(r.prompt_ids) + len(r.response_ids), b
        out[b, : len(r.routing)] = r.routing
    return out
