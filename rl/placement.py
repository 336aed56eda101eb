"""One Ray placement group per role, with a resource check that names what is missing before actors start."""

from __future__ import annotations

import uuid

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy


class ResourceError(RuntimeError):
    """The cluster cannot hold a role's actors."""


def check_resources(needs: dict[str, dict[str, float]]) -> None:
    """Fail with one message naming every role whose total need exceeds the cluster's resources."""
    total = ray.cluster_resources()
    wanted: dict[str, float] = {}
    for bundle in needs.values():
        for key, amount in bundle.items():
            wanted[key] = wanted.get(key, 0.0) + amount
    short = [
        f"{key}: need {amount:g}, cluster has {total.get(key, 0.0):g}"
        for key, amount in wanted.items()
        if amount > total.get(key, 0.0) + 1e-9
    ]
    if short:
        roles = "; ".join(f"{role} needs {need}" for role, need in needs.items())
        raise ResourceError(f"not enough cluster resources ({', '.join(short)}); {roles}")


def role_placement_group(
    role: str, bundles: list[dict[str, float]], timeout_s: float = 60.0
) -> PlacementGroup:
    """A PACK placement group for one role, ready or a ResourceError after ``timeout_s``."""
    group = placement_group(bundles, strategy="PACK", name=f"distillery-{role}-{uuid.uuid4().hex[:8]}")
    ready, _ = ray.wait([group.ready()], timeout=timeout_s)
    if not ready:
        remove_placement_group(group)
        raise ResourceError(f"{role}: placement group {bundles} not ready after {timeout_s:.0f}s")
    return group


def in_group(group: PlacementGroup, index: int) -> PlacementGroupSchedulingStrategy:
    return PlacementGroupSchedulingStrategy(placement_group=group, placement_group_bundle_index=index)
