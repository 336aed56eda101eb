"""rl.episodes' small pure helpers, hand-worked."""

from __future__ import annotations

from rl.episodes import pass_at_1_by_level, rollout_seed
from rl.types import Task


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
