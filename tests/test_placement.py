"""The resource check names, per role, what the cluster lacks -- before any actor starts."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from rl.config import ClusterConfig
from rl.placement import ResourceError, actor_bundle, check_resources, role_needs, share_gpus


def test_bundles_ask_for_gpus_only_when_configured() -> None:
    assert actor_bundle(ClusterConfig(actor_cpus=0.5)) == {"CPU": 0.5}
    assert actor_bundle(ClusterConfig(actor_cpus=1, actor_gpus=0.5)) == {"CPU": 1, "GPU": 0.5}
    assert role_needs(3, ClusterConfig(actor_cpus=1, actor_gpus=0.5)) == {"CPU": 3, "GPU": 1.5}


@pytest.mark.parametrize(
    ("given", "actors", "gpus", "share"),
    [
        (None, 2, 1.0, 0.5),  # trainer + rollout worker on one GPU
        (None, 3, 1.0, 0.3333),  # rounded down to Ray's 4 decimals: 3 x 0.3333 fits
        (None, 5, 1.0, 0.2),  # distillation: trainer, rollout worker, 3 teachers
        (None, 2, 8.0, 1.0),  # never more than one GPU per actor
        (None, 2, 0.0, 0.0),  # a CPU cluster: CPU actors
        (0.25, 2, 1.0, 0.25),  # given: kept
        (0.0, 2, 1.0, 0.0),  # CPU actors asked for on a GPU cluster
    ],
)
def test_the_default_shares_the_gpus_among_the_jobs_actors(
    given: float | None, actors: int, gpus: float, share: float
) -> None:
    cluster = share_gpus(ClusterConfig(actor_gpus=given), actors, total={"CPU": 8.0, "GPU": gpus})
    assert cluster.actor_gpus == share
    assert role_needs(actors, cluster).get("GPU", 0.0) <= gpus


def test_a_role_that_alone_exceeds_the_cluster_is_named() -> None:
    needs = {"rollout": {"CPU": 1.0, "GPU": 1.0}, "trainer": {"CPU": 2.0, "GPU": 2.0}}
    with pytest.raises(
        ResourceError, match=r"^not enough cluster resources: trainer needs 2 GPUs, cluster has 1$"
    ):
        check_resources(needs, total={"CPU": 16.0, "GPU": 1.0})


def test_roles_that_fit_alone_but_not_together_are_named_together() -> None:
    needs = {"rollout": {"CPU": 2.0}, "trainer": {"CPU": 2.0}}
    with pytest.raises(ResourceError, match=r"rollout \+ trainer need 4 CPUs together, cluster has 3"):
        check_resources(needs, total={"CPU": 3.0})
    check_resources(needs, total={"CPU": 4.0})  # fits exactly: no error


def test_distillation_counts_each_teachers_gpu_share() -> None:
    """Three teachers at a quarter GPU each beside a trainer and a rollout worker ask for 1.25 GPUs: named
    before any actor starts (the check once counted only the teachers' CPUs, so the job waited 60 s for a
    placement group that could never be placed)."""
    from types import SimpleNamespace

    from distill.config import DistillRunConfig
    from jobs.distill import resource_needs

    cfg = DistillRunConfig(cluster=ClusterConfig(actor_cpus=1, actor_gpus=0.25))
    routes = [SimpleNamespace(teacher=SimpleNamespace(name=n)) for n in ("m", "c", "a", "a")]  # a serves two
    needs = resource_needs(cfg, routes)  # type: ignore[arg-type]
    assert needs["teacher"] == {"CPU": 3 * cfg.distill.teacher_cpus, "GPU": 0.75}
    with pytest.raises(
        ResourceError, match=r"rollout \+ trainer \+ teacher need 1.25 GPUs together, cluster has 1"
    ):
        check_resources(needs, total={"CPU": 16.0, "GPU": 1.0})
    check_resources(resource_needs(DistillRunConfig(cluster=ClusterConfig(actor_cpus=1, actor_gpus=0.2)), routes),  # type: ignore[arg-type]
                    total={"CPU": 16.0, "GPU": 1.0})  # fmt: skip


def test_a_rendezvous_port_is_drawn_outside_the_kernels_ephemeral_range(tmp_path: Path) -> None:
    """bind(0) returns an ephemeral port, which any connection opened before rank 0 binds it can take (two jobs
    on one machine hit EADDRINUSE so); ours come from below the ephemeral range and above Ray's worker ports."""
    from rl.trainer.torch_backend import free_port, rendezvous_ports

    (tmp_path / "range").write_text("32768\t60999\n")
    assert rendezvous_ports(str(tmp_path / "range")) == range(20000, 32768)
    (tmp_path / "range").write_text("25000 60999\n")
    assert rendezvous_ports(str(tmp_path / "range")) == range(20000, 25000)
    assert rendezvous_ports(str(tmp_path / "missing")) == range(20000, 32768)
    ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    assert all(20000 <= free_port() < ephemeral for _ in range(20))
    with socket.socket() as taken:  # the only candidate is in use: the kernel's choice instead
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        assert free_port(range(port, port + 1)) != port


def test_cpu_actors_that_compute_at_once_split_the_cores_unless_told() -> None:
    from rl.placement import split_threads

    cpus = {"CPU": 8.0}
    assert split_threads(ClusterConfig(), 2, cpus).torch_threads == 4  # sampling ahead: rollout + trainer
    assert split_threads(ClusterConfig(), 3, {"CPU": 2.0}).torch_threads == 1  # at least one each
    assert split_threads(ClusterConfig(torch_threads=3), 2, cpus).torch_threads == 3  # as given
    assert split_threads(ClusterConfig(), 1, cpus).torch_threads == 0  # alone: all cores (torch's default)
    assert split_threads(ClusterConfig(actor_gpus=0.5), 2, cpus).torch_threads == 0  # GPU actors: untouched
