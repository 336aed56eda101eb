"""What a trainer rank optimizes: an objective, a plain class the trainer engine calls without knowing which.

``PolicyObjective`` (``rl/algorithms/objective.py``: the policy-gradient loss of RL) and ``OPDObjective``
(``distill/objective.py``: on-policy distillation against teachers' hidden states) both meet this contract;
the engine (``rl/trainer/torch_backend.py``) owns the model, optimizer, data parallelism, accumulation and the
optimizer step. An objective travels to its trainer actors pickled, and is attached there once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

import torch


class Objective(Protocol):
    def attach(self, trainer: Any) -> None:
        """Once, in the trainer's process: load what the loss needs beside the policy (e.g. a reference model)."""
        ...

    @property
    def micro_batches(self) -> Callable[..., Iterable[Any]]:
        """``(trainer, *work)``: ``work`` (what one ``train_step`` call carries) split into what one
        forward-backward takes."""
        ...

    def loss(self, trainer: Any, micro: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """The micro-batch's scalar loss to backpropagate (already scaled for data parallelism) and its metric
        sums (``train/loss`` among them: what the non-finite check reads)."""
        ...

    def finish(self, sums: dict[str, float]) -> dict[str, float]:
        """The step's metrics from the micro-batches' summed ones."""
        ...
