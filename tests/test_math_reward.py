"""rewards.math: boxed-answer extraction and math-verify scoring, in and out of the main thread."""

from __future__ import annotations

import threading

import pytest

import rewards.math as math_reward
from rewards.math import MATH_REASONS, extract_boxed, reason_kind, score_math
from rl.types import Reward

# ------------------------------------------------------------------------------------------- extract_boxed


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so \\boxed{72}.", "72"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("\\boxed{\\sqrt{\\frac{a}{b^{2}}}} done", "\\sqrt{\\frac{a}{b^{2}}}"),
        ("first \\boxed{1} then \\boxed{2}", "2"),
        ("\\fbox{5}", "5"),
        ("\\boxed {7}", "7"),
        ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),  # escaped braces do not close the box
        ("\\boxed{}", ""),
    ],
)
def test_extract_boxed_returns_last_balanced_content(text: str, expected: str):
    assert extract_boxed(text) == expected


@pytest.mark.parametrize(
    "text", ["no box here", "\\boxed{\\frac{1}{2}", "\\boxed{1} and \\boxed{2", "boxed{3}"]
)
def test_extract_boxed_none_without_a_closed_last_box(text: str):
    assert extract_boxed(text) is None


# ---------------------------------------------------------------------------------------------- score_math


@pytest.mark.parametrize(
    ("response", "answer"),
    [
        ("The answer is \\boxed{72}.", "72"),
        ("\\boxed{1,234}", "1234"),
        ("\\boxed{1234}", "1,234"),
        ("\\boxed{-3}", "-3"),
        ("\\boxed{0.5}", "\\frac{1}{2}"),
        ("\\boxed{\\dfrac12}", "0.5"),
        ("\\boxed{\\frac{1}{2}}", "\\dfrac12"),
        ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("wrong \\boxed{5} then fixed \\boxed{6}", "6"),
    ],
)
def test_equivalent_answers_are_correct(response: str, answer: str):
    assert score_math(response, answer) == Reward(1.0, "correct")


def test_wrong_number_is_wrong_answer():
    assert score_math("\\boxed{71}", "72") == Reward(0.0, "wrong_answer")


def test_last_box_wins_over_an_earlier_correct_one():
    assert score_math("\\boxed{72} no wait \\boxed{70}", "72") == Reward(0.0, "wrong_answer")


def test_no_box_is_no_boxed_answer():
    assert score_math("The answer is 72.", "72") == Reward(0.0, "no_boxed_answer")
    assert score_math("\\boxed{72", "72") == Reward(0.0, "no_boxed_answer")  # truncated box


@pytest.mark.parametrize("blank", ["", "  ", "\\text{}"])
def test_blank_box_is_unparsable_answer(blank: str):
    assert score_math(f"\\boxed{{{blank}}}", "72") == Reward(0.0, "unparsable_answer")


@pytest.mark.parametrize("garbage", ["hello", "a=", "\\frac", "\\left("])
def test_garbage_in_box_is_wrong_answer(garbage: str):
    # math-verify parses letters as symbols (hello -> E*h*l*l*o) and keeps LaTeX it cannot parse as a
    # string match (its first_match fallback), so garbage is "something that does not equal 72" rather
    # than an empty parse; only a box with nothing in it is unparsable_answer.
    assert score_math(f"\\boxed{{{garbage}}}", "72") == Reward(0.0, "wrong_answer")


def test_unparsable_reference_is_reported():
    assert score_math("\\boxed{72}", "") == Reward(0.0, "unparsable_reference")


def test_verifier_exception_is_recorded_not_silent(monkeypatch: pytest.MonkeyPatch):
    def broken_verify(*args, **kwargs):
        raise RuntimeError("sympy blew up")

    monkeypatch.setattr(math_reward, "verify", broken_verify)
    reward = score_math("\\boxed{72}", "72")
    assert reward == Reward(0.0, "verifier_error: RuntimeError: sympy blew up")
    assert reason_kind(reward.reason) == "verifier_error"


def test_main_thread_timeout_is_recorded(monkeypatch: pytest.MonkeyPatch):
    # Expanding (x+1)^9999 keeps sympy busy for minutes; the signal bound stops it. (9^{9^{9}} never reaches
    # sympy now: see test_power_towers_are_rejected_before_sympy.)
    monkeypatch.setattr(math_reward, "TIMEOUT_S", 1)
    reward = score_math("\\boxed{(x+1)^{9999}}", "5")
    assert reward.score == 0.0
    assert reward.reason.startswith("verifier_error: TimeoutException")


def test_scores_from_a_worker_thread():
    # math-verify's default signal.alarm timeout raises outside the main thread; score_math must not.
    cases = [("\\boxed{\\dfrac12}", "0.5"), ("\\boxed{71}", "72"), ("72", "72"), ("\\boxed{}", "72")]
    results: list[Reward] = []
    thread = threading.Thread(target=lambda: results.extend(score_math(r, a) for r, a in cases))
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert [r.reason for r in results] == ["correct", "wrong_answer", "no_boxed_answer", "unparsable_answer"]


def test_reasons_are_snake_case_and_cover_what_score_math_produces():
    assert all(reason.isidentifier() and reason.islower() for reason in MATH_REASONS)
    cases = [
        ("\\boxed{72}", "72"),
        ("\\boxed{7}", "72"),
        ("72", "72"),
        ("\\boxed{}", "72"),
        ("\\boxed{7}", ""),
        ("\\boxed{70 \\vee 72}", "72"),
    ]
    produced = {reason_kind(score_math(response, answer).reason) for response, answer in cases}
    assert produced == set(MATH_REASONS) - {"verifier_error"}  # verifier_error: see the two tests above
