"""TrainerWorker: one data-parallel training rank as a Ray actor over the plain ``TorchTrainer``."""

from __future__ import annotations

import ray

from rl.trainer.torch_backend import TorchTrainer

BACKENDS = {"torch": TorchTrainer}

TrainerActor = ray.remote(TorchTrainer)
