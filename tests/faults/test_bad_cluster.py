"""A Ray address that does not answer fails within a bounded time, naming the address."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest

from jobs.common import ClusterUnreachableError, check_reachable
from tests.conftest import ROOT


def test_a_refused_address_fails_at_once() -> None:
    started = time.monotonic()
    with pytest.raises(
        ClusterUnreachableError, match=re.escape("cluster.address=127.0.0.1:1 does not answer")
    ):
        check_reachable("127.0.0.1:1", timeout_s=0.5)
    assert time.monotonic() - started < 1.0


def test_an_address_that_is_not_a_ray_cluster_fails_within_a_bound() -> None:
    # 10.255.255.1 is a black hole on an open network (the TCP check times out) and, on a machine behind a
    # transparent proxy, answers TCP but not Ray's protocol (Ray gives up): either way a bounded, named failure
    code = ("from jobs.common import init_ray; from rl.config import ClusterConfig; "
            "init_ray(ClusterConfig(address='10.255.255.1:6379'))")  # fmt: skip
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert time.monotonic() - started < 60
    assert proc.returncode != 0
    assert (
        "ClusterUnreachableError: Ray cluster at cluster.address=10.255.255.1:6379 does not answer"
        in proc.stderr
    )


def test_a_malformed_address_is_named() -> None:
    with pytest.raises(ValueError, match=r"cluster\.address 'headnode' is not host:port"):
        check_reachable("headnode")
    check_reachable("auto")  # left to Ray


def test_a_stale_ray_address_file_does_not_stop_a_local_job() -> None:
    """A killed `ray start --head` leaves <tmp>/ray/ray_current_cluster behind: a job without cluster.address
    starts its own local Ray instead of trying to join it (and refusing num_cpus)."""
    import os
    import shutil
    import tempfile
    from pathlib import Path

    tmp_path = Path(tempfile.mkdtemp(prefix="r", dir="/tmp"))  # Ray's socket paths must stay under 107 bytes
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text("127.0.0.1:1\n")
    code = ("from jobs.common import init_ray; from rl.config import ClusterConfig; import ray; "
            "init_ray(ClusterConfig(num_cpus=1)); print('cpus', ray.cluster_resources()['CPU'])")  # fmt: skip
    env = {**os.environ, "RAY_TMPDIR": str(tmp_path)}
    try:
        proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                              timeout=120, env=env)  # fmt: skip
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "cpus 1.0" in proc.stdout
