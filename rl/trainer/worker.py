"""TrainerWorker: one data-parallel training rank as a Ray actor over a plain backend class."""

from __future__ import annotations

import ray

from rl.trainer.deepspeed_backend import DeepSpeedTrainer
from rl.trainer.torch_backend import TorchTrainer

BACKENDS: dict[str, type[TorchTrainer]] = {"torch": TorchTrainer, "deepspeed": DeepSpeedTrainer}

ACTORS = {name: ray.remote(cls) for name, cls in BACKENDS.items()}
