"""Shared fixtures: a quickly built tiny base (real tokenizer + Qwen3 + short SFT) and a local Ray."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.pop("DISTILLERY_VERBOSE", None)  # the console tests check the quieted console a job has by default


def run_temp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This run's temporary root, shared by its xdist workers (each has a folder of its own below it)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny base built by the real make_base path with a short recipe (about 20 s on 2 cores), once per run:
    the first xdist worker to need it builds it, the other waits on ensure_base's lock and finds it built."""
    from jobs.make_base import ensure_base
    from rl.config import BaseRecipe

    recipe = BaseRecipe(num_demos=2000, num_code_demos=400, num_agent_demos=400, max_steps=30, eval_every=30,
                        num_eval_tasks=16, target_pass_at_1=1.0)  # fmt: skip
    return ensure_base(recipe, output=str(run_temp(tmp_path_factory) / "base" / "tiny"))


@pytest.fixture(scope="session")
def moe_dir(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny base's tokenizer and shape as an untrained Qwen3-MoE (8 experts of width 128, top-2)."""
    import torch
    from transformers import Qwen3MoeForCausalLM

    from rl.models import load_model, load_tokenizer, save_model, tiny_qwen3_moe_config

    torch.manual_seed(0)
    config = tiny_qwen3_moe_config(load_model(str(tiny_base)).config, 8, 2, 128)  # type: ignore[arg-type]
    out = tmp_path_factory.mktemp("moe") / "tiny-moe"
    save_model(Qwen3MoeForCausalLM(config), load_tokenizer(str(tiny_base)), out)
    return out


@pytest.fixture(scope="session")
def ray_local():
    """An in-process local Ray with 2 CPUs, shared by the tests that build actors directly."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def job_environment(cache: Path) -> dict[str, str]:
    """Environment for running a job as a subprocess, the way a user would from the repo root."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "WANDB_"))}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    env["DISTILLERY_CACHE"] = str(cache)
    env["WANDB_SILENT"] = "true"
    return env


@pytest.fixture
def job_env(tmp_path: Path) -> dict[str, str]:
    return job_environment(tmp_path / "cache")


@pytest.fixture(scope="session")
def default_run(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny specialist job (tests/test_job_e2e.py's settings) with the default backends, 3 steps, run once
    per session: the other backends' runs, the killed and resumed runs and a refused rerun are compared to it
    (about 40 s a job on 2 cores). Tests that write into it copy it first."""
    from tests.test_job_e2e import run_job

    root = tmp_path_factory.mktemp("default-run")
    run_job(job_environment(root / "cache"), f"model.path={tiny_base}", f"runs_root={root}", "run_name=default",
            "steps=3")  # fmt: skip
    return root / "default"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError:  # it answers (Ray 2.60 asks for its auth token, which clients send)
            return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"{url} did not answer within {timeout_s:.0f}s")


@dataclass
class RayHead:
    address: str  # the dashboard (Ray Jobs API)
    env: dict[str, str]  # what a client needs: the cluster's auth token


@pytest.fixture(scope="session")
def ray_head() -> object:
    """A real `ray start --head` (dashboard + job agent, 4 logical CPUs) for the Ray Jobs tests, as users run
    one; Ray 2.60 clusters require a token, which head and clients share."""
    bin_dir = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "WANDB_"))}
    env |= {"PATH": f"{bin_dir}:{env.get('PATH', '')}", "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": secrets.token_hex(32)}  # fmt: skip
    dashboard_port = free_port()
    ray_tmp = tempfile.mkdtemp(
        prefix="ray", dir="/tmp"
    )  # short: Ray's unix sockets live here (~107 chars max)
    head = subprocess.Popen(
        [str(bin_dir / "ray"), "start", "--head", "--block", f"--port={free_port()}", "--num-cpus=4",
         "--include-dashboard=true", f"--dashboard-port={dashboard_port}", "--disable-usage-stats",
         # the agents' default ports would clash with another Ray on this machine (the session's local Ray)
         f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
         f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
         f"--temp-dir={ray_tmp}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    address = f"http://127.0.0.1:{dashboard_port}"
    try:
        wait_http(f"{address}/api/version", timeout_s=120)
        wait_for_job_agent(address, env)
        yield RayHead(address, env)
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def wait_for_job_agent(address: str, env: dict[str, str], timeout_s: float = 120) -> None:
    """The job agent can come up after the dashboard answers; a trivial job tells when jobs can run."""
    bin_dir = Path(sys.executable).parent
    deadline = time.monotonic() + timeout_s
    while True:
        proc = subprocess.run([str(bin_dir / "ray"), "job", "submit", "--address", address, "--", "true"],
                              env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
        if proc.returncode == 0 or time.monotonic() > deadline:
            assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
            return
        time.sleep(3)


def wandb_records(run_dir: Path) -> list[dict]:
    """Every record of the run's offline .wandb files (one per attempt of a resumed run, in order), through
    `wandb leet inspect --json`."""
    files = sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert files, f"no offline W&B run under {run_dir}"
    wandb_cli = Path(sys.executable).parent / "wandb"
    records = []
    for wandb_file in files:
        out = subprocess.run([str(wandb_cli), "leet", "inspect", "--json", str(wandb_file)],
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
        records += [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return records


# `pytest tests -n 2 --dist loadgroup` runs the suite on two xdist workers. Tests that share an expensive fixture go
# to one worker, so that it is built once: a session fixture below (a `ray start --head`; the default specialist run),
# or any module-scoped one (the bad-input cases, a module's model or actors): the whole module then.
SHARED_FIXTURES = ("ray_head", "default_run")


def xdist_group(item: pytest.Item) -> str | None:
    names = getattr(item, "fixturenames", ())
    for name in SHARED_FIXTURES:
        if name in names:
            return name
    definitions = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
    if any(defs and defs[-1].scope == "module" for defs in definitions.values()):
        return item.nodeid.split("::")[0]
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if (group := xdist_group(item)) is not None:
            item.add_marker(pytest.mark.xdist_group(group))
