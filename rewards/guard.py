"""Rewards that raise or hang: the sample gets 0 with the reason recorded, and the step goes on.

``guarded_scores`` runs a per-sample reward function on a small thread pool. An exception becomes
``Reward(0.0, "reward_error: <Type>: <message>")``; a sample still unscored when the batch's deadline passes
becomes ``Reward(0.0, "reward_error: timeout after <s>s")``. The deadline is ``timeout_s`` per sample spread over
the pool's workers, so a batch of healthy rewards never meets it and a hung one costs at most that long. A hung
thread cannot be killed in Python: it is abandoned (its pool is shut down without waiting), and the caller's
error-rate limit stops a run whose rewards keep hanging (``RewardErrorRateError``).

Fault injection for tests, as real exceptions and hangs inside the reward call:
``DISTILLERY_FAULT_REWARD=raise:K`` (every K-th reward raises) or ``hang:K`` (every K-th sleeps an hour).
"""

from __future__ import annotations

import itertools
import math
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from typing import TypeVar

from rewards.types import Reward

REWARD_ERROR = "reward_error"
WORKERS = 4

T = TypeVar("T")
R = TypeVar("R")


class RewardErrorRateError(RuntimeError):
    """Too many rewards of one step raised or hung."""


def reward_error(reason: str) -> Reward:
    return Reward(0.0, f"{REWARD_ERROR}: {reason}")


def is_reward_error(reward: Reward) -> bool:
    return reward.reason.split(":", 1)[0] == REWARD_ERROR


def _with_fault(score: Callable[[T, R], Reward]) -> Callable[[T, R], Reward]:
    """``score`` with ``DISTILLERY_FAULT_REWARD`` applied (see the module doc); unchanged when it is unset."""
    spec = os.environ.get("DISTILLERY_FAULT_REWARD", "")
    if not spec:
        return score
    kind, _, every = spec.partition(":")
    if kind not in ("raise", "hang") or not every.isdigit() or int(every) < 1:
        raise ValueError(f"DISTILLERY_FAULT_REWARD must be raise:K or hang:K, got {spec!r}")
    counter = itertools.count(1)

    def faulty(task: T, rollout: R) -> Reward:
        if next(counter) % int(every) == 0:
            if kind == "raise":
                raise RuntimeError("injected reward fault")
            time.sleep(3600)
        return score(task, rollout)

    return faulty


def guarded_scores(
    score: Callable[[T, R], Reward], tasks: Sequence[T], rollouts: Sequence[R], timeout_s: float
) -> list[Reward]:
    """``score(task, rollout)`` for each pair, in order, never raising: errors and hangs become 0 with a reason."""
    if len(tasks) != len(rollouts):
        raise ValueError(f"{len(tasks)} tasks but {len(rollouts)} rollouts")
    fn = _with_fault(score)
    pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="reward")
    try:
        futures = [pool.submit(fn, t, r) for t, r in zip(tasks, rollouts, strict=True)]
        wait(futures, timeout=timeout_s * max(1, math.ceil(len(futures) / WORKERS)))
        rewards = []
        for future in futures:
            if not future.done():
                rewards.append(reward_error(f"timeout after {timeout_s:g}s"))
            elif (err := future.exception()) is not None:
                rewards.append(reward_error(f"{type(err).__name__}: {err}"[:200]))
            else:
                rewards.append(future.result())
        return rewards
    finally:
        pool.shutdown(wait=False, cancel_futures=True)  # a hung reward thread is abandoned, not awaited


def check_error_rate(rewards: Sequence[Reward], limit: float, where: str) -> float:
    """The share of ``rewards`` that are reward errors; past ``limit`` a clear error naming the first one."""
    errors = [r for r in rewards if is_reward_error(r)]
    rate = len(errors) / max(len(rewards), 1)
    if rate > limit:
        raise RewardErrorRateError(
            f"{where}: {len(errors)} of {len(rewards)} rewards failed ({rate:.0%}), more than "
            f"specialist.max_reward_error_rate={limit:g}; first: {errors[0].reason}"
        )
    return rate
