"""Shared fixtures: a quickly built tiny base (real tokenizer + Qwen3 + short SFT) and a local Ray."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny base built by the real make_base path with a short recipe (about 20 s on 2 cores)."""
    from jobs.make_base import ensure_base
    from rl.config import BaseRecipe

    recipe = BaseRecipe(num_demos=2000, num_code_demos=400, num_agent_demos=400, max_steps=30, eval_every=30,
                        num_eval_tasks=16, target_pass_at_1=1.0)  # fmt: skip
    return ensure_base(recipe, output=str(tmp_path_factory.mktemp("base") / "tiny"))


@pytest.fixture(scope="session")
def ray_local():
    """An in-process local Ray with 2 CPUs, shared by the tests that build actors directly."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def job_env(tmp_path: Path) -> dict[str, str]:
    """Environment for running a job as a subprocess, the way a user would from the repo root."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "WANDB_"))}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    env["DISTILLERY_CACHE"] = str(tmp_path / "cache")
    env["WANDB_SILENT"] = "true"
    return env
