"""What a trainer role is built from: one ``TrainerSpec`` per role (a specialist's policy, the distilled student),
made once by the job and passed down unchanged (``TrainerGroup`` -> each rank's actor -> ``TorchTrainer``)."""

from __future__ import annotations

from dataclasses import dataclass

from rl.config import FP4, TrainerConfig


@dataclass(frozen=True)
class TrainerSpec:
    model_path: str  # the weights every rank starts from
    cfg: TrainerConfig
    total_steps: (
        int  # the run's steps: the LR schedule spans total_steps * cfg.num_minibatches optimizer steps
    )
    dtype: str = "float32"  # master weights
    seed: int = 0
    temperature: float = 1.0  # the rollouts' sampling temperature: the PPO ratio compares that distribution
    fp4: FP4 | None = None  # QAT format of the block linears (rl.config.fp4_of); None: no QAT
