"""Sampling ahead of training (``algorithm.max_staleness = k``): step ``s``'s batch is sampled while step
``s - k`` trains, on one background thread, with the weights the rollout workers hold then.

The loop keeps one rule that makes the versions deterministic: every sample submitted before step ``t`` trains
finishes before the trainer's weights for ``t`` are pushed. So step ``s``'s batch comes from the weights of step
``max(s - 1 - k, r)`` (``r``: the step the run started or resumed from), its staleness is ``min(k, s - 1 - r)``,
and a run is reproducible from its seeds as a synchronous one is. Generation then overlaps training one step in
``k``-deep flight: the rollout workers generate step ``t + k`` while the trainer trains step ``t``.

Each batch carries the version it was sampled with and the data stream's position after it (what a checkpoint
of that step records), so a resumed run samples the next step afresh, from the checkpoint's weights.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any


@dataclass
class Sampled:
    """One step's batch as the sampler returns it."""

    batch: Any
    metrics: dict[str, float]
    version: int  # the step whose weights sampled it (0: the start weights)
    position: dict[str, Any]  # the data stream's position after it
    seconds: float  # how long sampling it took


def staleness(step: int, version: int) -> int:
    """Weight versions between the batch's sampler and the trainer that trains it at ``step`` (which holds the
    weights of step ``step - 1``): 0 is on-policy."""
    return step - 1 - version


class SampleAhead:
    """Runs ``sample(step)`` calls in submission order on one daemon thread (a daemon: a Ctrl-C or an error in
    the loop never waits on a generation in flight)."""

    def __init__(self, sample: Callable[[int], tuple[Any, dict[str, float]]], position: Callable[[], dict]):
        self._sample, self._position = sample, position
        self._futures: dict[int, Future[Sampled]] = {}
        self._busy_s, self._busy_lock = 0.0, threading.Lock()
        self._jobs: queue.SimpleQueue[tuple[int, int, Future[Sampled]] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name="sample-ahead", daemon=True)
        self._thread.start()

    def submit(self, step: int, version: int) -> None:
        """Sample ``step`` with the weights of step ``version`` (those the rollout workers hold now)."""
        if step in self._futures:
            raise ValueError(f"step {step} was submitted already")
        future: Future[Sampled] = Future()
        self._futures[step] = future
        self._jobs.put((step, version, future))

    def submitted(self, step: int) -> bool:
        return step in self._futures

    def take(self, step: int) -> Sampled:
        """``step``'s batch, waiting for it; its error, raised here, if sampling it failed."""
        return self._futures.pop(step).result()

    def wait_all(self) -> float:
        """Wait until every submitted sample has finished (before the weights change); the seconds waited."""
        started = time.perf_counter()
        for future in list(self._futures.values()):
            future.exception()  # waits; an error is raised by take()
        return time.perf_counter() - started

    def drain_busy(self) -> float:
        """Seconds spent sampling (batches finished) since the last call."""
        with self._busy_lock:
            busy, self._busy_s = self._busy_s, 0.0
        return busy

    def close(self) -> None:
        self._jobs.put(None)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            step, version, future = job
            if not future.set_running_or_notify_cancel():
                continue
            started = time.perf_counter()
            try:
                batch, metrics = self._sample(step)
                sampled = Sampled(batch, metrics, version, self._position(), time.perf_counter() - started)
            except BaseException as err:  # handed to the loop's thread, which raises it in take()
                future.set_exception(err)
            else:
                with self._busy_lock:
                    self._busy_s += sampled.seconds
                future.set_result(sampled)
