"""Trainer backends by name (``trainer.backend``); importable without Ray, for scripts that run ranks directly."""

from __future__ import annotations

from rl.trainer.deepspeed_backend import DeepSpeedTrainer
from rl.trainer.torch_backend import TorchTrainer

BACKENDS: dict[str, type[TorchTrainer]] = {"torch": TorchTrainer, "deepspeed": DeepSpeedTrainer}
