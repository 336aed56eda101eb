"""Fault injection for the fault tests: a real ``kill -9`` of a worker's own process at a chosen call.

Every mode is read from the environment (jobs forward ``DISTILLERY_*`` to their actors); unset, a call costs a
few dictionary lookups. Roles and the calls they count: ``rollout`` (RolloutWorker.generate), ``teacher``
(Teacher.hidden_states), ``trainer`` (train steps, OPD steps included), ``checkpoint`` (the job's own process,
while writing a checkpoint: weights written, nothing renamed yet).

- ``DISTILLERY_FAULT_KILL=<role>:<N>:<marker file>``: the N-th call of ``<role>`` in a process sends SIGKILL to
  that process, once -- the marker file is created first, so the replacement process runs normally.
- ``DISTILLERY_FAULT_PAUSE=<role>:<N>:<marker file>``: the N-th call of ``<role>`` in a process creates the marker
  and sleeps, so a test can kill the process's node while it is mid-call; a replacement finds the marker and
  does not pause.
- ``DISTILLERY_FAULT_RAISE=<role>:<N>``: the N-th call of ``<role>`` in a process raises ``INJECTED`` (a CUDA
  error's text, as a GPU fault inside an actor reads), so a test sees what the job makes of it.
- ``DISTILLERY_FAULT_CHAOS=<seed>:<count>:<state dir>``: ``count`` kills spread over the rollout, teacher and
  trainer roles at call numbers drawn from ``seed`` (``chaos_schedule``). Calls are counted per role across every
  process and every attempt of a job (``<state dir>/calls-<role>``, under a file lock), so a restarted actor or a
  resubmitted job continues the count instead of repeating a kill; kill ``j`` writes ``<state dir>/kill-<j>``
  (role, call number, pid) before the signal.
"""

from __future__ import annotations

import fcntl
import os
import random
import signal
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CHAOS_ROLES = ("rollout", "teacher", "trainer")
# A role's killed call is redone as its next call (a replaced worker, or the resumed job's step); a gap of at
# least 2 between a role's kills lets every redo survive, so each kill costs one redo and never a failed job.
CHAOS_MIN_GAP = 2
CHAOS_MAX_GAP = 3
PAUSE_S = 300.0  # longer than any test waits for the node to die

_calls: Counter[str] = Counter()
INJECTED = "CUDA error: an illegal memory access was encountered (injected by DISTILLERY_FAULT_RAISE)"


def maybe_kill(role: str) -> None:
    """A fault point: one call of ``role``'s work method, which every mode above counts."""
    _calls[role] += 1
    if spec := os.environ.get("DISTILLERY_FAULT_KILL"):
        who, at, marker = spec.split(":", 2)
        if who == role and _calls[role] == int(at) and not Path(marker).exists():
            Path(marker).touch()
            os.kill(os.getpid(), signal.SIGKILL)
    if spec := os.environ.get("DISTILLERY_FAULT_RAISE"):
        who, at = spec.split(":", 1)
        if who == role and _calls[role] == int(at):
            raise RuntimeError(INJECTED)
    if spec := os.environ.get("DISTILLERY_FAULT_PAUSE"):
        who, at, marker = spec.split(":", 2)
        if who == role and _calls[role] == int(at) and not Path(marker).exists():
            Path(marker).write_text(f"{os.getpid()}\n")  # the test checks which node's process this is
            time.sleep(PAUSE_S)
    if (spec := os.environ.get("DISTILLERY_FAULT_CHAOS")) and role in CHAOS_ROLES:
        seed, count, state = spec.split(":", 2)
        if chaos_hit(Path(state), chaos_schedule(int(seed), int(count)), role):
            os.kill(os.getpid(), signal.SIGKILL)


def chaos_schedule(
    seed: int, count: int, roles: tuple[str, ...] = CHAOS_ROLES, max_gap: int = CHAOS_MAX_GAP
) -> list[tuple[str, int]]:
    """``count`` kills as (role, n): the role's n-th call (counted over the whole job) dies.

    Every role is killed at least once when ``count >= len(roles)``, the rest go to roles drawn at random; a
    role's kills are ``CHAOS_MIN_GAP..max_gap`` of its calls apart (its first at call 2 or later).
    """
    rng = random.Random(seed)
    picks = list(roles[:count]) + [rng.choice(roles) for _ in range(count - len(roles))]
    rng.shuffle(picks)
    last = dict.fromkeys(roles, 0)
    schedule = []
    for role in picks:
        last[role] += rng.randint(CHAOS_MIN_GAP, max_gap)
        schedule.append((role, last[role]))
    return schedule


def chaos_hit(state: Path, schedule: list[tuple[str, int]], role: str) -> bool:
    """Count one call of ``role`` in ``state``; True (with ``kill-<j>`` written) when the schedule kills it."""
    state.mkdir(parents=True, exist_ok=True)
    with _locked(state / "lock"):
        counter = state / f"calls-{role}"
        n = int(counter.read_text()) + 1 if counter.exists() else 1
        tmp = state / f".calls-{role}.tmp"
        tmp.write_text(str(n))
        os.replace(
            tmp, counter
        )  # a process killed from outside mid-write leaves the old count, never a torn one
        if (role, n) not in schedule:
            return False
        j = schedule.index((role, n))
        (state / f"kill-{j:02d}").write_text(f"{role} {n} {os.getpid()}\n")
        return True


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(
            handle, fcntl.LOCK_EX
        )  # released when the handle closes, or when a killed holder's process ends
        yield
