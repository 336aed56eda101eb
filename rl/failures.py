"""An exception inside an actor (a CUDA error in a rollout worker, say) as one line naming the actor, its
method and the step, with the checkpoint a resume continues from -- instead of Ray's nested tracebacks."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ray.exceptions import RayTaskError

GPU_FAULTS = ("CUDA error", "CUDA out of memory", "cuDNN error", "CUBLAS_STATUS", "NCCL error")


class ActorFailedError(RuntimeError):
    """An actor's method raised; the job stops. ``retryable``: a GPU fault, which a resubmitted job (resume=true
    from the last checkpoint) can get past; any other exception would only raise again."""

    def __init__(self, message: str, retryable: bool):
        super().__init__(message)
        self.retryable = retryable


def describe(err: RayTaskError) -> tuple[str, str]:
    """(``Class.method`` of the actor call that raised, ``ExceptionType: first line`` of what it raised)."""
    # what Ray raises is a RayTaskError(<cause's class>) holding only the cause; its text starts with the
    # worker's process title, ray::<Class>.<method>()
    title = re.search(r"ray::([\w.]+)\(", str(err))
    where = title.group(1) if title else "an actor"
    cause = getattr(err, "cause", None) or err
    first = next((line for line in str(cause).splitlines() if line.strip()), "")
    return where, f"{type(cause).__name__}: {first}".rstrip(": ")


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with where it stopped: the loop's step and last checkpoint (``None`` outside a loop) and the
    pipeline stage; the job prints it as one line (``jobs.cli.interrupted_line``)."""

    def __init__(self, step: int | None, checkpoint: str | None, stage: str = ""):
        super().__init__(step, checkpoint, stage)
        self.step, self.checkpoint, self.stage = step, checkpoint, stage

    @classmethod
    def within(cls, err: KeyboardInterrupt, stage: str) -> Interrupted:
        """``err`` (an ``Interrupted`` or a bare Ctrl-C) inside ``stage``."""
        return cls(getattr(err, "step", None), getattr(err, "checkpoint", None), stage)

    def __str__(self) -> str:
        parts = [f"in {self.stage}"] if self.stage else []
        if self.step is not None:
            parts.append(f"at step {self.step}" if self.step else "in the start eval")
            parts.append(f"(last checkpoint {self.checkpoint})" if self.checkpoint else "(no checkpoint yet)")
        return " ".join(parts)


@contextmanager
def named_actor_failures(step: Callable[[], int], checkpoint: Callable[[], str | None]) -> Iterator[None]:
    """Inside a controller's loop: a ``RayTaskError`` leaves as one ``ActorFailedError``, Ctrl-C as an
    ``Interrupted`` (``step()`` and ``checkpoint()`` are read when it happens)."""
    try:
        yield
    except Interrupted:
        raise
    except KeyboardInterrupt:
        raise Interrupted(step(), checkpoint()) from None
    except RayTaskError as err:
        where, what = describe(err)
        last = checkpoint()
        resume = (
            f"the last good checkpoint is {last} (resume=true continues from it)"
            if last
            else "no checkpoint yet"
        )
        at = f"at step {step()}" if step() else "in the start eval"
        raise ActorFailedError(
            f"{where} failed {at}: {what}; {resume}", any(f in what for f in GPU_FAULTS)
        ) from None
