"""Fault injection for the fault tests: a real ``kill -9`` of a worker's own process at a chosen call.

``DISTILLERY_FAULT_KILL=<role>:<N>:<marker file>``: the N-th call of ``<role>``'s work method in a process sends
SIGKILL to that process, once -- the marker file is created first, so the replacement process runs normally.
Roles: ``rollout`` (RolloutWorker.generate), ``teacher`` (Teacher.hidden_states), ``trainer`` (train steps),
``checkpoint`` (the job's own process, while writing a checkpoint: weights written, nothing renamed yet).
Unset, this costs one dictionary lookup per call.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from pathlib import Path

_calls: Counter[str] = Counter()


def maybe_kill(role: str) -> None:
    spec = os.environ.get("DISTILLERY_FAULT_KILL", "")
    if not spec:
        return
    who, at, marker = spec.split(":", 2)
    if who != role:
        return
    _calls[role] += 1
    if _calls[role] == int(at) and not Path(marker).exists():
        Path(marker).touch()
        os.kill(os.getpid(), signal.SIGKILL)
