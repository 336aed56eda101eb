"""Packing rollouts into a TrainBatch, and the resumable task stream."""

from __future__ import annotations

import pytest
import torch

from rl.batching import TaskStream, build_train_batch
from rl.types import Rollout, Task


def test_build_train_batch_by_hand() -> None:
    r1 = Rollout((5, 6), (7, 8, 9), (-0.1, -0.2, -0.3), "eos", "x")
    r2 = Rollout((5,), (7,), (-0.5,), "length", "y")
    b = build_train_batch([r1, r2], [1.5, -2.0], pad_id=0)
    assert b.input_ids_BT.tolist() == [[5, 6, 7, 8, 9], [5, 7, 0, 0, 0]]
    assert b.attention_mask_BT.tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert b.loss_mask_BT.tolist() == [[0, 0, 1, 1, 1], [0, 1, 0, 0, 0]]
    assert b.advantages_BT.tolist() == [[0, 0, 1.5, 1.5, 1.5], [0, -2.0, 0, 0, 0]]
    torch.testing.assert_close(b.rollout_logprobs_BT[0, 2:], torch.tensor([-0.1, -0.2, -0.3]))
    assert b.num_tokens == 4 and b.num_sequences == 2
    assert b.select(slice(1, 2)).input_ids_BT.tolist() == [[5, 7, 0, 0, 0]]


def _tasks(n: int) -> list[Task]:
    return [Task(f"t{i}", "math", f"p{i}", str(i), "test") for i in range(n)]


def test_stream_covers_each_epoch_once_and_resumes_exactly() -> None:
    stream = TaskStream(_tasks(5), seed=1)
    first_epoch = stream.take(5)
    assert sorted(t.uid for t in first_epoch) == [f"t{i}" for i in range(5)]
    stream.take(2)
    position = stream.position()
    assert position == {"epoch": 1, "index": 2}
    expected = stream.take(6)
    resumed = TaskStream(_tasks(5), seed=1)
    resumed.seek(**position)
    assert resumed.take(6) == expected


def test_empty_stream_is_an_error() -> None:
    with pytest.raises(ValueError, match="task list is empty"):
        TaskStream([], seed=0)
