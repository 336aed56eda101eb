"""An exception raised inside an actor leaves the controller as one line (rl/failures.py).

The job-level path (exit 3, the line on stderr, a resume from the named checkpoint) runs in
tests/faults/test_worker_death.py with an injected CUDA error in a real rollout worker.
"""

from __future__ import annotations

import pytest
from ray.exceptions import RayTaskError

from rl.failures import ActorFailedError, describe, named_actor_failures


def task_error(cause: Exception) -> RayTaskError:
    """What ``ray.get`` raises for an exception in an actor method: a RayTaskError(<cause's class>)."""
    err = RayTaskError("generate", "Traceback ...", cause, proctitle="ray::RolloutWorker.generate()")
    return err.as_instanceof_cause()


def test_the_actor_method_and_the_first_line_of_the_cause() -> None:
    err = task_error(
        RuntimeError("CUDA error: device-side assert triggered\nCompile with TORCH_USE_CUDA_DSA")
    )
    assert describe(err) == (
        "RolloutWorker.generate",
        "RuntimeError: CUDA error: device-side assert triggered",
    )


@pytest.mark.parametrize(
    ("cause", "retryable"),
    [(RuntimeError("CUDA error: an illegal memory access was encountered"), True),
     (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
     (ValueError("shapes do not match"), False)],
)  # fmt: skip
def test_a_failure_names_the_step_and_the_checkpoint(cause: Exception, retryable: bool) -> None:
    with (
        pytest.raises(ActorFailedError) as got,
        named_actor_failures(lambda: 7, lambda: "runs/x/step_000005"),
    ):
        raise task_error(cause)
    first = str(cause).splitlines()[0]
    assert str(got.value) == (
        f"RolloutWorker.generate failed at step 7: {type(cause).__name__}: {first}; the last good checkpoint is "
        "runs/x/step_000005 (resume=true continues from it)"
    )
    assert got.value.retryable is retryable


def test_a_failure_in_the_start_eval_has_no_checkpoint_yet() -> None:
    expected = r"failed in the start eval: .*; no checkpoint yet$"
    with pytest.raises(ActorFailedError, match=expected), named_actor_failures(lambda: 0, lambda: None):
        raise task_error(RuntimeError("CUDA error: x"))
