"""TrainerWorker: one data-parallel training rank as a Ray actor over a plain backend class."""

from __future__ import annotations

import ray

from rl.trainer.backends import BACKENDS

ACTORS = {name: ray.remote(cls) for name, cls in BACKENDS.items()}
