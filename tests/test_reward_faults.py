"""A reward that raises or hangs gives 0 with the reason recorded; the step goes on; too many stop the run."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from rewards.guard import RewardErrorRateError, check_error_rate, guarded_scores, is_reward_error
from rl.episodes import specialist_scores
from rl.types import Reward


def flaky(task: int, rollout: str) -> Reward:
    if task == 2:
        raise KeyError("no such answer")
    if task == 3:
        time.sleep(30)  # hangs far past the limit
    return Reward(1.0, "correct")


def test_raise_and_hang_become_zero_with_their_reasons_within_the_time_bound() -> None:
    started = time.monotonic()
    rewards = guarded_scores(flaky, [0, 1, 2, 3, 4], ["a"] * 5, timeout_s=0.5)
    assert time.monotonic() - started < 2.0  # 5 samples on 4 workers: deadline 2 x 0.5 s
    assert [r.score for r in rewards] == [1.0, 1.0, 0.0, 0.0, 1.0]
    assert rewards[2].reason == "reward_error: KeyError: 'no such answer'"
    assert rewards[3].reason == "reward_error: timeout after 0.5s"
    assert [is_reward_error(r) for r in rewards] == [False, False, True, True, False]


def test_error_rate_limit_names_the_first_failure() -> None:
    rewards = [
        Reward(1.0, "correct"),
        Reward(0.0, "reward_error: ValueError: bad"),
        Reward(0.0, "wrong_answer"),
    ]
    assert check_error_rate(rewards, 0.5, "step 3") == pytest.approx(1 / 3)
    with pytest.raises(
        RewardErrorRateError,
        match=r"step 3: 1 of 3 rewards failed \(33%\).*first: reward_error: ValueError: bad",
    ):
        check_error_rate(rewards, 0.25, "step 3")


def test_a_batch_scorer_that_raises_is_scored_sample_by_sample(capsys: pytest.CaptureFixture[str]) -> None:
    def score_batch(tasks, rollouts):
        raise RuntimeError("sandbox pool broke")

    specialist = SimpleNamespace(domain="code", score_batch=score_batch, score=flaky)
    rewards = specialist_scores(specialist, [0, 2], ["a", "b"], timeout_s=0.5)  # type: ignore[arg-type]
    assert [r.reason for r in rewards] == ["correct", "reward_error: KeyError: 'no such answer'"]
    assert (
        "the code specialist's score_batch raised RuntimeError: sandbox pool broke; scoring the batch sample by sample"
        in (capsys.readouterr().out)
    )  # said, not swallowed


def test_injected_faults_and_their_spec(monkeypatch) -> None:
    monkeypatch.setenv("DISTILLERY_FAULT_REWARD", "raise:2")
    rewards = guarded_scores(lambda t, r: Reward(1.0, "correct"), [0, 1, 2, 3], ["a"] * 4, timeout_s=1.0)
    assert sum(is_reward_error(r) for r in rewards) == 2
    monkeypatch.setenv("DISTILLERY_FAULT_REWARD", "explode")
    with pytest.raises(ValueError, match="raise:K or hang:K"):
        guarded_scores(lambda t, r: Reward(1.0, "correct"), [0], ["a"], timeout_s=1.0)
