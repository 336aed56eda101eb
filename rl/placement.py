"""One Ray placement group per role, with a resource check that names what is missing before actors start."""

from __future__ import annotations

import dataclasses
import math
import os
import uuid

import ray
from ray.exceptions import GetTimeoutError, RayActorError
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from rl.config import ClusterConfig

PREFER_NODE_ENV = "DISTILLERY_PREFER_NODE"
REDOS = 3  # how many times a rollout or teacher batch is redone when its workers die under it


class ResourceError(RuntimeError):
    """The cluster cannot hold a role's actors."""


def share_gpus(cluster: ClusterConfig, actors: int, total: dict[str, float] | None = None) -> ClusterConfig:
    """``cluster`` with ``actor_gpus`` decided: as given, or (``None``, the default) the cluster's GPUs shared
    evenly by the job's ``actors``, at most one each, 0 on a cluster without GPUs (e.g. 2 actors on 1 GPU: 0.5)."""
    if cluster.actor_gpus is not None:
        return cluster
    gpus = float((ray.cluster_resources() if total is None else total).get("GPU", 0.0))
    share = math.floor(min(1.0, gpus / actors) * 10_000) / 10_000  # Ray takes GPU fractions to 4 decimals
    if share:
        print(f"cluster.actor_gpus={share:g}: {actors} actors share {gpus:g} GPU(s) (set cluster.actor_gpus to "
              "choose)", flush=True)  # fmt: skip
    return dataclasses.replace(cluster, actor_gpus=share)


def split_threads(
    cluster: ClusterConfig, concurrent: int, total: dict[str, float] | None = None, why: str = ""
) -> ClusterConfig:
    """``cluster`` with ``torch_threads`` decided for CPU actors of which ``concurrent`` compute at the same time
    (e.g. a rollout worker sampling ahead while a trainer rank trains): as given, or (0, the default: all cores
    each, right when they take turns) the cluster's CPUs split between them, so they do not oversubscribe the
    cores (two actors of two threads each on 2 cores ran each step 2-3x slower)."""
    if cluster.torch_threads or cluster.actor_gpus or concurrent < 2:
        return cluster
    cpus = float((ray.cluster_resources() if total is None else total).get("CPU", 0.0))
    threads = max(1, int(cpus // concurrent))
    print(f"cluster.torch_threads={threads}: {concurrent} actors compute at once{why} on {cpus:g} CPUs (set "
          "cluster.torch_threads to choose)", flush=True)  # fmt: skip
    return dataclasses.replace(cluster, torch_threads=threads)


def actor_bundle(cluster: ClusterConfig) -> dict[str, float]:
    """The resources one actor reserves (GPU only when asked for)."""
    bundle = {"CPU": cluster.actor_cpus}
    if cluster.actor_gpus:
        bundle["GPU"] = cluster.actor_gpus
    return bundle


def role_needs(count: int, cluster: ClusterConfig) -> dict[str, float]:
    """What ``count`` actors of one role reserve in all."""
    return {key: count * amount for key, amount in actor_bundle(cluster).items()}


def _units(key: str, amount: float) -> str:
    return f"{amount:g} {key}{'s' if key in ('CPU', 'GPU') and amount != 1 else ''}"


def check_resources(needs: dict[str, dict[str, float]], total: dict[str, float] | None = None) -> None:
    """Fail, before any actor starts, with one message naming what each role needs and the cluster lacks.

    ``needs`` maps a role to its total resources; e.g. "trainer needs 2 GPUs, cluster has 1". Roles share
    the cluster, so a resource can be short in sum although each role alone would fit.
    """
    have = dict(ray.cluster_resources() if total is None else total)
    problems = [
        f"{role} needs {_units(key, amount)}, cluster has {have.get(key, 0.0):g}"
        for role, bundle in needs.items()
        for key, amount in bundle.items()
        if amount > have.get(key, 0.0) + 1e-9
    ]
    if not problems:  # each role fits alone; do they fit together?
        wanted: dict[str, float] = {}
        for bundle in needs.values():
            for key, amount in bundle.items():
                wanted[key] = wanted.get(key, 0.0) + amount
        problems = [
            f"{' + '.join(needs)} need {_units(key, amount)} together, cluster has {have.get(key, 0.0):g}"
            for key, amount in wanted.items()
            if amount > have.get(key, 0.0) + 1e-9
        ]
    if problems:
        raise ResourceError("not enough cluster resources: " + "; ".join(problems))


def node_preferences(spec: str) -> dict[str, str]:
    """``"rollout=node2,trainer=head"`` -> ``{"rollout": "node2", "trainer": "head"}`` (role -> node resource)."""
    pairs = [item.split("=", 1) for item in spec.split(",") if item]
    if any(len(pair) != 2 or not all(pair) for pair in pairs):
        raise ValueError(
            f"{PREFER_NODE_ENV}={spec!r}: expected <role>=<node resource>[,<role>=<node resource>]"
        )
    return dict(pairs)  # type: ignore[arg-type]  # pairs of two, checked above


def node_with(resource: str, nodes: list[dict]) -> str | None:
    """The id of the first live node (``ray.nodes()`` rows) that has the custom ``resource``."""
    return next((n["NodeID"] for n in nodes if n["Alive"] and n["Resources"].get(resource, 0) > 0), None)


def role_placement_group(
    role: str, bundles: list[dict[str, float]], timeout_s: float = 60.0
) -> PlacementGroup:
    """A PACK placement group for one role, ready or a ResourceError after ``timeout_s``.

    ``DISTILLERY_PREFER_NODE=<role>=<resource>,...`` (fault tests, until the cluster config has a field for it)
    starts a role's actors on the live node that has that custom resource: the group is packed onto one node
    with a soft target, so when that node is lost Ray moves the group, and its replaced actors, to another.
    """
    name, target = f"distillery-{role}-{uuid.uuid4().hex[:8]}", None
    if resource := node_preferences(os.environ.get(PREFER_NODE_ENV, "")).get(role):
        target = node_with(resource, ray.nodes())
        if target is None:
            raise ResourceError(f"{role}: no live node has the resource {resource!r} ({PREFER_NODE_ENV})")
    if target is None:
        group = placement_group(bundles, strategy="PACK", name=name)
    else:
        group = placement_group(bundles, strategy="STRICT_PACK", name=name, _soft_target_node_id=target)
    ready, _ = ray.wait([group.ready()], timeout=timeout_s)
    if not ready:
        remove_placement_group(group)
        raise ResourceError(f"{role}: placement group {bundles} not ready after {timeout_s:.0f}s")
    return group


def in_group(group: PlacementGroup, index: int) -> PlacementGroupSchedulingStrategy:
    return PlacementGroupSchedulingStrategy(placement_group=group, placement_group_bundle_index=index)


def unresponsive(actors: list, timeout_s: float = 60.0) -> list[int]:
    """Indices of ``actors`` that do not answer ``ready()`` within ``timeout_s`` (dead or hung)."""
    dead = []
    for i, actor in enumerate(actors):
        try:
            ray.get(actor.ready.remote(), timeout=timeout_s)
        except (RayActorError, GetTimeoutError):
            dead.append(i)
    return dead
