"""Losing a node: a real two-node Ray cluster (`ray start --head` and a second `ray start --address ...` with its own
resources), the distillation job's rollout worker and teacher on the second node, and that node killed (SIGKILL of
every one of its processes) while the rollout worker is mid-generation. Ray moves their placement groups to the
head, the groups replace the actors there, and the run ends like the undisturbed one."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from rl.placement import node_preferences, node_with
from tests.conftest import ROOT, free_port, run_temp
from tests.faults.test_chaos import DISTILL, assert_one_run_like, job_env, reference_run, register_teacher
from tests.test_job_e2e import metrics

# GCS declares a node dead after 3 missed 1 s health checks (Ray's default is 5 of 3 s each)
FAST_DEATH = {"RAY_health_check_initial_delay_ms": "0", "RAY_health_check_period_ms": "1000",
              "RAY_health_check_timeout_ms": "1000", "RAY_health_check_failure_threshold": "3"}  # fmt: skip


def test_node_preferences_and_the_node_that_has_a_resource() -> None:
    assert node_preferences("") == {}
    assert node_preferences("rollout=node2,trainer=head") == {"rollout": "node2", "trainer": "head"}
    assert node_preferences("rollout=node2,") == {"rollout": "node2"}  # an empty item is nothing
    for bad in ("rollout", "rollout=", "=node2", "rollout=node2,trainer"):
        with pytest.raises(ValueError, match="DISTILLERY_PREFER_NODE"):
            node_preferences(bad)
    nodes = [
        {"NodeID": "a", "Alive": True, "Resources": {"CPU": 2.0, "head": 1.0}},
        {"NodeID": "b", "Alive": False, "Resources": {"CPU": 1.0, "node2": 1.0}},
        {"NodeID": "c", "Alive": True, "Resources": {"CPU": 1.0, "node2": 1.0}},
    ]
    assert (
        node_with("head", nodes) == "a"
        and node_with("node2", nodes) == "c"
        and node_with("gpu", nodes) is None
    )


def tree(pid: int) -> list[int]:
    """``pid`` and every process below it (Ray's workers start their own sessions, so a process group misses them)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        out.append(todo.pop())
        todo += children.get(out[-1], [])
    return out


def kill_tree(pid: int) -> None:
    for p in tree(pid):
        with contextlib.suppress(ProcessLookupError):  # ended meanwhile
            os.kill(p, signal.SIGKILL)


@dataclass
class TwoNodes:
    address: str  # the GCS, for cluster.address
    env: dict[str, str]  # a client's environment: the cluster's auth token, a private cache
    head: subprocess.Popen
    node2: subprocess.Popen


def ray_start(env: dict[str, str], temp: Path, log: Path, *args: str) -> subprocess.Popen:
    """`ray start --block` with every port of its own (other Rays run on this machine), logging to ``log``."""
    ports = ["--node-manager-port", "--object-manager-port", "--metrics-export-port", "--runtime-env-agent-port",
             "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port"]  # fmt: skip
    cmd = [str(Path(sys.executable).parent / "ray"), "start", "--block", "--node-ip-address=127.0.0.1",
           "--disable-usage-stats", f"--temp-dir={temp}", *[f"{p}={free_port()}" for p in ports], *args]  # fmt: skip
    return subprocess.Popen(
        cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
    )


def wait_started(log: Path, proc: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while "Ray runtime started" not in log.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.5)


@pytest.fixture
def two_nodes(tmp_path: Path) -> Iterator[TwoNodes]:
    """A head (2 CPUs, resource ``head``) and a second node (1 CPU, resource ``node2``) on 127.0.0.1, each with its
    own ports and temp dir; both killed, by process id, whatever the test did."""
    # Ray 2.60 turns token auth on for a head when ~/.ray/auth_token exists, but not for a joining node: say it
    env = (
        job_env(tmp_path / "cache")
        | FAST_DEATH
        | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    )
    temp = Path(tempfile.mkdtemp(prefix="rayn", dir="/tmp"))  # short: Ray's unix sockets live here
    port = free_port()
    started: list[subprocess.Popen] = []
    try:
        started.append(ray_start(env, temp / "head", tmp_path / "head.log", "--head", f"--port={port}",
                                 "--num-cpus=2", '--resources={"head": 1}', "--include-dashboard=false",
                                 f"--dashboard-port={free_port()}", f"--ray-client-server-port={free_port()}"))  # fmt: skip
        wait_started(tmp_path / "head.log", started[0])
        started.append(ray_start(env, temp / "node2", tmp_path / "node2.log", f"--address=127.0.0.1:{port}",
                                 "--num-cpus=1", '--resources={"node2": 1}'))  # fmt: skip
        wait_started(tmp_path / "node2.log", started[1])
        yield TwoNodes(f"127.0.0.1:{port}", env, *started)
    finally:
        for proc in reversed(started):
            kill_tree(proc.pid)
            proc.wait(timeout=30)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def reference(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The undisturbed run, shared with test_chaos (the same job, settings and seed)."""
    return reference_run(tiny_base, run_temp(tmp_path_factory) / "distill-reference")


@pytest.mark.slow
def test_losing_the_node_of_the_rollout_worker_and_the_teacher_mid_generation_loses_no_step(
    tiny_base: Path, tmp_path: Path, reference: Path, two_nodes: TwoNodes
) -> None:
    runs, paused = tmp_path / "runs", tmp_path / "paused"
    register_teacher(runs, tiny_base)
    # rollout worker and teacher start on node2, the trainer on the head; the student's rollout worker stops in
    # its 3rd generation (step 2: eval, step 1, step 2) and says so, for the node to die under it
    env = two_nodes.env | {"DISTILLERY_PREFER_NODE": "rollout=node2,teacher=node2,trainer=head",
                           "DISTILLERY_FAULT_PAUSE": f"rollout:3:{paused}"}  # fmt: skip
    cmd = [sys.executable, "-m", "jobs.distill", *DISTILL, f"model.path={tiny_base}", f"runs_root={runs}",
           "run_name=lost", f"cluster.address={two_nodes.address}"]  # fmt: skip
    stdout, stderr = tmp_path / "job.out", tmp_path / "job.err"  # files: a full pipe would stall the job
    with stdout.open("w") as out_file, stderr.open("w") as err_file:
        job = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out_file, stderr=err_file, text=True)
    try:
        deadline = time.monotonic() + 400
        while not paused.exists() or not paused.read_text():
            assert job.poll() is None and time.monotonic() < deadline, stderr.read_text()[-5000:]
            time.sleep(0.5)
        assert int(paused.read_text()) in tree(two_nodes.node2.pid)  # the generating worker is node2's
        kill_tree(two_nodes.node2.pid)  # the node is gone: raylet, agents, workers, all at once
        job.wait(timeout=600)
    finally:
        job.kill()
    out = stdout.read_text()
    assert job.returncode == 0, out[-3000:] + stderr.read_text()[-5000:]
    assert "rollout worker(s) [0] died" in out and "teacher 'm' died" in out
    lines = metrics(runs / "lost")
    assert lines[-1]["rollout/worker_restarts"] == 1.0 and lines[-1]["opd/teacher_restarts"] == 1.0
    assert all(m["rollout/worker_restarts"] == (m["step"] >= 2) for m in lines[1:])  # replaced during step 2
    assert_one_run_like(runs / "lost", reference)
