"""Procedural code tasks: disjoint splits, reference solutions that pass their hidden tests in the sandbox."""

from __future__ import annotations

import pytest

from rewards.code import make_answer, score_code_batch
from rewards.sandbox import SandboxPool
from specialists.synthetic_code import code_demos, code_problems, fenced


def test_splits_are_disjoint_and_levels_as_asked() -> None:
    train = {p.prompt for p in code_problems(300, "train", seed=1)}
    heldout = {p.prompt for p in code_problems(100, "heldout", seed=1)}
    assert not train & heldout
    assert {p.level for p in code_problems(30, "train", levels=(2,))} == {2}
    with pytest.raises(ValueError, match=r"unknown synthetic code levels \[4\]"):
        code_problems(3, "train", levels=(4,))
    with pytest.raises(ValueError, match=r"format share must be in \[0, 1\]"):
        code_demos(3, "train", 0, make_answer, fenced_share=1.5)


def test_reference_solutions_pass_and_only_fenced_code_is_extracted() -> None:
    demos = code_demos(60, "heldout", 0, make_answer, fenced_share=0.5)
    bare = [d.solution.removeprefix("```python\n").removesuffix("\n```") for d in demos]
    pool = SandboxPool()
    try:
        fenced_refs = score_code_batch(
            [(fenced(b), d.task.answer) for b, d in zip(bare, demos, strict=True)], pool
        )
        as_given = score_code_batch([(d.solution, d.task.answer) for d in demos], pool)
    finally:
        pool.close()
    assert all(r.score == 1.0 for r in fenced_refs), [r.reason for r in fenced_refs if r.score < 1]
    for demo, reward in zip(demos, as_given, strict=True):  # bare demos are the unrewarded format
        assert reward.score == float(demo.solution.startswith("```python")), (demo.solution, reward)
        assert reward.score == 1.0 or reward.reason == "no_code_block"
    assert 0 < sum(r.score for r in as_given) < len(demos)
