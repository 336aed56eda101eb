"""rl.episodes' small pure helpers, hand-worked."""

from __future__ import annotations

from rl.episodes import lenient_pass_at_1, pass_at_1_by_level, rollout_seed
from rl.types import Rollout, Task
from specialists import code, math


def _task(uid: str, level: int) -> Task:
    return Task(uid, "math", "q", "a", "synthetic", level)


def test_pass_at_1_by_level_averages_each_levels_scores_and_skips_unlevelled_tasks() -> None:
    tasks = [_task("a", 1), _task("b", 2), _task("c", 1), _task("d", 0)]
    assert pass_at_1_by_level(tasks, [1.0, 0.0, 0.0, 1.0], "eval/pass@1") == {
        "eval/pass@1/level_1": 0.5,
        "eval/pass@1/level_2": 0.0,
    }
    assert pass_at_1_by_level([_task("d", 0)], [1.0], "eval/x") == {}


def test_rollout_seeds_depend_on_the_run_seed_step_and_part_only() -> None:
    assert rollout_seed(0, 1, 0) == 101 and rollout_seed(1, 1, 2) == 100_003 + 101 + 2
    assert len({rollout_seed(s, step, p) for s in range(3) for step in range(1, 4) for p in range(3)}) == 27


def _rollout(text: str) -> Rollout:
    return Rollout((), (), (), "eos", text)


def test_the_lenient_reading_rescores_only_what_it_reads_differently() -> None:
    """Math: only responses with nothing boxed are read again (their last number); for the others the strict
    scores given stand as given -- here a deliberately wrong 1.0 for the boxed 70, which a rescoring would undo."""
    tasks = [Task(f"t{i}", "math", "q", "72", "gsm8k") for i in range(4)]
    texts = ["\\boxed{72}", "\\boxed{70}", "so 48 + 24 = 72.", "so the answer is 70."]
    rollouts = [_rollout(t) for t in texts]
    assert [math.unboxed(r) for r in rollouts] == [False, False, True, True]
    strict = [1.0, 1.0, 0.0, 0.0]
    assert lenient_pass_at_1(math.SPECIALIST, tasks, rollouts, strict, timeout_s=30) == 3 / 4
    # code: the first block is read only where it is not the block the reward runs
    first_is_run = _rollout("```python\ndef f():\n    return 1\n```")
    another_first = _rollout("```bash\nls\n```\n```python\ndef f():\n    return 1\n```")
    assert not code.another_block_first(first_is_run) and code.another_block_first(another_first)
