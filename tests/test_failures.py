"""An exception raised inside an actor leaves the controller as one line (rl/failures.py).

The job-level path (exit 3, the line on stderr, a resume from the named checkpoint) runs in
tests/faults/test_worker_death.py with an injected CUDA error in a real rollout worker.
"""

from __future__ import annotations

import pytest
from ray.exceptions import RayTaskError

from jobs.cli import interrupted_line, resume_command
from rl.failures import ActorFailedError, Interrupted, describe, named_actor_failures


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


def test_ctrl_c_names_the_step_and_the_checkpoint() -> None:
    with pytest.raises(Interrupted) as got, named_actor_failures(lambda: 7, lambda: "runs/x/step_000005"):
        raise KeyboardInterrupt
    assert str(got.value) == "at step 7 (last checkpoint runs/x/step_000005)"
    with pytest.raises(Interrupted) as got, named_actor_failures(lambda: 0, lambda: None):
        raise KeyboardInterrupt
    assert str(got.value) == "in the start eval (no checkpoint yet)"


def test_the_interrupt_line_names_the_stage_step_and_how_to_continue() -> None:
    inner = Interrupted(4, "runs/p/code/checkpoints/step_000002")
    err = Interrupted.within(
        inner, "stage 3/6: code specialist 'code' (10 RL steps)"
    )  # jobs.pipeline.run_stage
    cmd = resume_command("jobs.pipeline", ["steps=3", "run_name=old", "resume=false", "hydra.run.dir=x"],
                         run_name="p", runs_root="/tmp/r")  # fmt: skip
    assert cmd == "python -m jobs.pipeline steps=3 run_name=p runs_root=/tmp/r resume=true"
    assert interrupted_line(err, cmd) == (
        "interrupted in stage 3/6: code specialist 'code' (10 RL steps) at step 4 (last checkpoint "
        "runs/p/code/checkpoints/step_000002); continue with: python -m jobs.pipeline steps=3 run_name=p "
        "runs_root=/tmp/r resume=true"
    )
    assert interrupted_line(KeyboardInterrupt(), None) == "interrupted"  # before any run: nothing to continue
    assert (
        str(Interrupted.within(KeyboardInterrupt(), "stage 1/6: base tiny-all"))
        == "in stage 1/6: base tiny-all"
    )
