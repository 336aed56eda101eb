"""The entry point every job shares: compose the command line into its typed config, check it, then let Hydra run
the job; bad input is one ``error:`` line and exit 2 (``job_main``, ``user_errors``).

Nothing heavy is imported at module level (torch, Ray, transformers, W&B load inside the functions that use
them): ``job_main`` rejects bad input before they load, within about a second of the process starting.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import functools
import os
import re
import shlex
import shutil
import sys
import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from jobs.common import SCAFFOLDING, ClusterUnreachableError, InputError
from jobs.config import register_configs
from rl.config import CONFIGS

if typing.TYPE_CHECKING:
    from omegaconf import DictConfig

T = TypeVar("T")
BAD_INPUT_EXIT, RETRYABLE_EXIT = 2, 3  # jobs.submit resubmits 3 (with resume=true), never 2


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


INTERRUPTED_EXIT = 130  # the shell's code for a process ended by SIGINT


def resume_command(module: str, argv: list[str], **pins: Any) -> str:
    """``python -m module`` with this command line again, ``pins`` (the run name, where runs go) spelled out and
    ``resume=true``: what an interrupted or failed job prints for the user to continue it."""
    kept = [a for a in argv if a.split("=", 1)[0].lstrip("+~") not in ("resume", "hydra.run.dir", *pins)]
    return shlex.join(["python", "-m", module, *kept, *(f"{k}={override_value(v)}" for k, v in pins.items()),
                       "resume=true"])  # fmt: skip


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


# TQDM_DISABLE: bars of libraries that use tqdm directly (transformers' GGUF conversion), read when tqdm is imported
QUIET_ENV = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "WANDB_SILENT": "true", "TQDM_DISABLE": "1"}
_quieted: set[str] = set()  # the variables quiet_libraries set (a user's own settings are left alone)


def quiet_libraries(verbose: bool = False) -> None:
    """Library progress bars (transformers' "Loading weights", "Writing model shards" at every actor start and
    checkpoint, "Converting and de-quantizing GGUF tensors") and W&B's info lines ("Generating checksum ..." for every artifact; they go to W&B's own log in
    the run directory) off, in this process and, through the forwarded ``HF_*`` / ``WANDB_*`` environment, in
    every actor; the step lines are the job's progress. ``verbose=true`` (or ``DISTILLERY_VERBOSE=1``) keeps
    them: called again with ``verbose`` once the config is read, it undoes what it set."""
    if verbose:
        os.environ["DISTILLERY_VERBOSE"] = "1"
    if os.environ.get("DISTILLERY_VERBOSE", "") in ("1", "true"):
        for key in _quieted:
            os.environ.pop(key, None)
        _quieted.clear()
        return
    for key, value in QUIET_ENV.items():
        if key not in os.environ:
            os.environ[key] = value
            _quieted.add(key)


class Tee:
    """A text stream that also appends what it is given to a log file: the job's console (its own lines and
    what Ray forwards from the actors) kept in the run directory beside Hydra's log."""

    def __init__(self, stream: Any, log: Any):
        self.stream, self.log = stream, log

    def write(self, text: str) -> int:
        with contextlib.suppress(
            OSError, ValueError
        ):  # a full disk or a closed log never stops the job's output
            self.log.write(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()
        with contextlib.suppress(OSError, ValueError):
            self.log.flush()

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, encoding, ...: the console's
        return getattr(self.stream, name)


def keep_console(log_path: Path) -> None:
    """From here on, stdout and stderr also go to ``log_path`` (appended; Hydra's ``<job>.log`` in the run
    directory, which otherwise holds only what the logging module wrote)."""
    log = open(log_path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 -- open for the process's life
    if isinstance(sys.stdout, Tee) and isinstance(sys.stderr, Tee):  # the next member of a -m sweep
        sys.stdout.log.close()
        sys.stdout.log = sys.stderr.log = log
    else:
        sys.stdout, sys.stderr = Tee(sys.stdout, log), Tee(sys.stderr, log)


def job_main(
    config_name: str, schema: type[T], check: Callable[[T], None]
) -> Callable[[Callable[[T], None]], Callable[[], None]]:
    """Decorate a job's ``main(cfg)``: the command line is composed into ``schema`` and ``check``-ed (paths, the
    checkpoint to resume, the cluster) before anything runs; bad input is one ``error:`` line and exit 2, with
    no run directory, base build or Ray. Then Hydra runs ``main`` as usual. A ``-m`` sweep has every member
    checked first; ``--help`` prints the groups and settings from the schemas (``jobs.help``); ``--cfg``,
    ``--hydra-help`` and Hydra's other flags go to Hydra unchecked."""
    import hydra

    register_configs()  # the schemas Hydra composes the YAML onto

    def wrap(task: Callable[[T], None]) -> Callable[[], None]:
        state: dict[str, Any] = {"checked": False, "created": None, "resume": None}

        @functools.wraps(task)  # Hydra names the job and finds its configs from the wrapped function
        def hydra_task(dcfg: DictConfig) -> None:
            from hydra.core.hydra_config import HydraConfig

            from rl.config import to_typed

            hydra_cfg = HydraConfig.get()
            keep_console(Path(hydra_cfg.runtime.output_dir) / f"{hydra_cfg.job.name}.log")
            with user_errors(created=state["created"], resume=lambda: state["resume"]):
                cfg = to_typed(dcfg, schema)
                quiet_libraries(verbose=getattr(cfg, "verbose", False))
                if hasattr(cfg, "runs_root"):  # a job with runs: Ctrl-C prints how to continue it
                    module = getattr(sys.modules["__main__"].__spec__, "name", f"jobs.{config_name}")
                    pins = {k: getattr(cfg, k) for k in ("run_name", "runs_root")}
                    state["resume"] = resume_command(module, sys.argv[1:], **pins)
                if not state["checked"]:
                    check(cfg)
                task(cfg)

        run_hydra = hydra.main(config_path=str(CONFIGS), config_name=config_name, version_base="1.3")(
            hydra_task
        )

        def main() -> None:
            argv = sys.argv[1:]
            quiet_libraries()
            if any(arg in ("--help", "-h") for arg in argv):  # from the schemas; Hydra's: --hydra-help
                from jobs.help import print_help

                with user_errors():
                    print_help(config_name, schema, compose(config_name, []))
                return
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
    "rl.loop:NonFiniteLossError",
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


def interrupted_line(err: KeyboardInterrupt, resume: str | None) -> str:
    """``interrupted [in <stage>] [at step N (last checkpoint ...)]; continue with: <command>``: the where is
    ``rl.failures.Interrupted``'s (a bare Ctrl-C, outside any loop, has none)."""
    where = str(err) if isinstance(err, _loaded(("rl.failures:Interrupted",))) else ""
    return "interrupted" + (f" {where}" if where else "") + (f"; continue with: {resume}" if resume else "")


@contextmanager
def user_errors(
    created: Path | None = None, resume: Callable[[], str | None] = lambda: None
) -> Iterator[None]:
    """Inside an entry point: a bad-input error prints one line naming the problem and exits 2; Ctrl-C one
    line saying where the job stopped and the command that continues it (``resume()``), exit 130.

    ``created``: the run directory this process created (Hydra does, before the job runs); a rejected run
    removes it when nothing but its scaffolding is in it, so a rejection leaves nothing behind.
    """
    try:
        yield
    except KeyboardInterrupt as err:
        print(interrupted_line(err, resume()), file=sys.stderr, flush=True)
        sys.exit(INTERRUPTED_EXIT)
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
