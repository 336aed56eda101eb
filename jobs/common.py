"""What every job does before its loop: check paths, data, the checkpoint to resume and the cluster; start
Ray; prepare the run directory. (The entry point that runs these checks first is ``jobs.cli.job_main``.)

Nothing heavy is imported at module level (torch, Ray, transformers, W&B load inside the functions that use
them), so bad input is rejected within about a second of the process starting.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import socket
import tempfile
import typing
from pathlib import Path
from typing import TypeVar

from rl.config import (
    BUILTIN_SOURCES,
    ClusterConfig,
    ModelConfig,
    SpecialistConfig,
    to_yaml,
)
from rl.model_files import check_gguf_file, check_model_dir, gguf_source, is_local

if typing.TYPE_CHECKING:
    pass

T = TypeVar("T")

# Only these variables reach actors: never the whole os.environ (it breaks Ray's runtime_env agent and
# leaks secrets into every worker).
FORWARDED_ENV_PREFIXES = ("DISTILLERY_", "WANDB_", "HF_")
# how long a cluster.address may take to accept a TCP connection: a reachable head answers in milliseconds,
# and bad input must be rejected within 5 s of the start
RAY_CONNECT_TIMEOUT_S = 3.0
BUILT_IN_MODELS = ("embedded:tiny", "embedded:tiny-all", "embedded:tiny-moe", "pypi:smollm2-135m")
# what Hydra and prepare_run_dir put into a run directory before any work: a rejected run that left only
# these created nothing worth keeping
SCAFFOLDING = {".hydra", "config.yaml"}
BAD_INPUT_EXIT, RETRYABLE_EXIT = 2, 3  # jobs.submit resubmits 3 (with resume=true), never 2


class RunDirError(ValueError):
    """The run directory conflicts with the request (e.g. checkpoints present but resume=false)."""


class InputError(ValueError):
    """Bad input found before any work: one line naming the key or path and what is wrong."""


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


# A job's own Ray starts no idle workers ahead of time: every actor of a job carries a runtime_env (its env_vars),
# so none could take one over, and each would cost an interpreter's start-up on the job's cores.
LOCAL_RAY_CONFIG = {"enable_worker_prestart": False, "prestart_worker_first_driver": False}


def init_ray(cluster: ClusterConfig) -> None:
    """Join ``cluster.address`` (or the Ray job's cluster), else start a local Ray of the job's own: also where a
    Ray head already runs on this machine, or a killed one left its address file behind (Ray would try to join
    either and refuse ``num_cpus``); join a running head with ``cluster.address=auto``."""
    import ray

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
    else:  # Ray's default token authentication, without its warning that it is on, at every start
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        ray.init(address="local", num_cpus=cluster.num_cpus or os.cpu_count(), include_dashboard=False,
                 log_to_driver=True, _system_config=LOCAL_RAY_CONFIG)  # fmt: skip


def prepare_run_dir(run_dir: Path, resume: bool, config: object) -> Path | None:
    """Create the run directory and record the resolved config; the checkpoint to resume from, if any."""
    from rl.checkpoint import latest_checkpoint

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


# ---- checks of the input, before any work (each cheap: no model load, no Ray) ----


def check_writable(path: Path, key: str) -> None:
    """``path`` can be created (or written into): a probe file is created and removed in its nearest existing
    ancestor, which is what mkdir will need; a file in the way or a read-only place fails here, by name."""
    ancestor = path.absolute()
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise InputError(f"{key}={path} cannot be created: {ancestor} is a file, not a directory")
    try:
        with tempfile.NamedTemporaryFile(dir=ancestor, prefix=".distillery-probe-"):
            pass
    except OSError as err:
        raise InputError(
            f"{key}={path} is not writable: cannot create files in {ancestor} ({err.strerror})"
        ) from None


def check_model_path(model: ModelConfig) -> None:
    """A built-in name, a GGUF file (its magic bytes), a local model directory with config, weights, tokenizer
    and chat template, or a hub id (left to the loader). The messages are rl.models' own."""
    path = Path(model.path).expanduser()
    if model.path.startswith(("embedded:", "pypi:")):
        if model.path not in BUILT_IN_MODELS:
            raise InputError(f"unknown model.path {model.path!r}; built-ins: {', '.join(BUILT_IN_MODELS)}")
        if model.gguf_file:
            raise InputError(
                f"model.gguf_file={model.gguf_file} names a file in a directory, not in {model.path}"
            )
        return
    if (gguf := gguf_source(model.path, model.gguf_file)) is not None:
        check_gguf_file(gguf)
        return
    if is_local(model.path):  # a hub id is left to the loader
        check_model_dir(path, tokenizer=True)


def check_verifiers_env(module: str, env_args: dict) -> None:
    """The verifiers environment loads, is one we can run, and has rows of both splits whose prompts we can
    write (loaded once: the run reuses it)."""
    if importlib.util.find_spec("verifiers") is None:
        raise InputError("specialist.train_data=verifiers needs the verifiers package: pip install "
                         "verifiers==0.1.10 (make installs it)")  # fmt: skip
    from specialists.verifiers_env import VerifiersEnvError, verifiers_tasks

    try:
        for split in ("train", "heldout"):
            verifiers_tasks(module, env_args, 0, split)
    except VerifiersEnvError as err:
        raise InputError(str(err)) from None


def check_data_files(spec: SpecialistConfig) -> None:
    """A file-based train / eval source names a file that exists (its rows are read and checked later)."""
    for key, source, path in (
        ("train", spec.train_data, spec.train_path),
        ("eval", spec.eval_data, spec.eval_path),
    ):
        if source == "bfcl" and importlib.util.find_spec("bfcl_eval") is None:
            raise InputError(f"specialist.{key}_data=bfcl needs the bfcl-eval package: "
                             "pip install --no-deps bfcl-eval==2026.3.23 (make installs it)")  # fmt: skip
        if source == "textworld" and importlib.util.find_spec("textworld") is None:
            raise InputError(f"specialist.{key}_data=textworld needs the textworld package: "
                             "pip install textworld==1.7.0 (make installs it)")  # fmt: skip
        if source == "env":
            from specialists.user_env import EnvClassError, env_class  # here: it imports torch

            try:
                env_class(spec.env)
            except EnvClassError as err:
                raise InputError(str(err)) from None
        if source == "verifiers":
            check_verifiers_env(spec.env, spec.env_args)
        if source in BUILTIN_SOURCES:
            continue
        if not path:
            raise InputError(f"specialist.{key}_data={source} needs a file: set specialist.{key}_path")
        if not Path(path).is_file():
            hint = ("; the datasets' folder is $DISTILLERY_DATA, else ../shared/data beside the checkout"
                    if path.startswith("../shared/data/") and not os.environ.get("DISTILLERY_DATA") else "")  # fmt: skip
            raise InputError(f"{source} file {path}: not found (specialist.{key}_path){hint}")


def check_resume(run_dir: Path, resume: bool) -> None:
    """``resume=true`` continues a run that exists, and a run with checkpoints is only continued, never
    overwritten. (A run directory without a checkpoint yet is a run killed early: jobs.submit resubmits it
    with resume=true, and it starts again from step 0.)"""
    if resume and not run_dir.is_dir():
        raise InputError(f"resume=true but there is no run {run_dir} to continue (no checkpoint); "
                         "check run_name and runs_root, or drop resume=true to start it")  # fmt: skip
    if not resume and run_dir.is_dir():
        from rl.checkpoint import latest_checkpoint

        if latest_checkpoint(run_dir) is not None:
            raise RunDirError(f"run directory {run_dir} already has checkpoints; pass resume=true to continue it "
                              "or choose another run_name")  # fmt: skip


def check_cluster(cluster: ClusterConfig) -> None:
    if cluster.address:
        check_reachable(cluster.address)
