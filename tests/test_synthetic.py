"""Procedural math tasks: seeded, levelled, split-disjoint, and their demos earn the reward they teach."""

from __future__ import annotations

import pytest

from rewards.math import score_math
from specialists import synthetic


def test_seeded_and_deterministic() -> None:
    assert synthetic.math_tasks(50, "train", seed=3) == synthetic.math_tasks(50, "train", seed=3)
    assert synthetic.math_tasks(50, "train", seed=3) != synthetic.math_tasks(50, "train", seed=4)


def test_train_and_heldout_never_share_a_prompt() -> None:
    train = {t.prompt for t in synthetic.math_tasks(3000, "train")}
    heldout = {t.prompt for t in synthetic.math_tasks(600, "heldout")}
    assert train and heldout and not (train & heldout)


def test_levels_are_respected_and_all_present() -> None:
    tasks = synthetic.math_tasks(300, "train", levels=(1, 2, 3))
    assert {t.level for t in tasks} == {1, 2, 3}
    assert {t.level for t in synthetic.math_tasks(40, "train", levels=(2,))} == {2}


def test_every_boxed_demo_scores_one() -> None:
    for demo in synthetic.math_demos(200, "train"):
        assert score_math(demo.solution, demo.task.answer).score == 1.0, demo


def test_boxed_share_mixes_formats_without_changing_the_tasks() -> None:
    mixed = synthetic.math_demos(1000, "train", boxed_share=0.5)
    assert [d.task for d in mixed] == [d.task for d in synthetic.math_demos(1000, "train")]
    boxed = [d for d in mixed if "\\boxed{" in d.solution]
    assert 400 < len(boxed) < 600
    for demo in mixed:
        reward = score_math(demo.solution, demo.task.answer)
        if demo in boxed:
            assert reward.score == 1.0
        else:  # right arithmetic, unrewarded format: the verifier says why
            assert demo.solution.endswith(f"The answer is {demo.task.answer}.")
            assert (reward.score, reward.reason) == (0.0, "no_boxed_answer")
    assert all("\\boxed{" not in d.solution for d in synthetic.math_demos(50, boxed_share=0.0))
    with pytest.raises(ValueError, match=r"format share must be in \[0, 1\]"):
        synthetic.math_demos(1, boxed_share=1.5)


def test_level3_is_two_steps_with_the_right_answer() -> None:
    demo = next(d for d in synthetic.math_demos(50, "train", levels=(3,)))
    lines = demo.solution.splitlines()
    assert len(lines) == 3 and lines[-1] == f"\\boxed{{{demo.task.answer}}}"
    first = lines[0].split(" = ")
    a, b = (int(x) for x in first[0].split(" + "))
    assert int(first[1]) == a + b


def test_bad_split_and_level_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="unknown split 'test'"):
        synthetic.math_tasks(1, "test")
    with pytest.raises(ValueError, match=r"levels \[7\]"):
        synthetic.math_tasks(1, "train", levels=(7,))
