"""rewards.math: boxed-answer extraction and math-verify scoring, in and out of the main thread."""

from __future__ import annotations

import threading
import time
from decimal import Decimal
from typing import Any

import pytest

import rewards.math as math_reward
from rewards.math import MATH_REASONS, extract_boxed, last_number, reason_kind, score_math, score_math_lenient
from rewards.math_normalize import (
    MAX_ANSWER_CHARS,
    brace_command_args,
    clock_minutes,
    clock_reading,
    clocks_match,
    decimal_reading,
    form_problem,
    join_thousands,
    normalize,
    ratio_reading,
    text_reading,
)
from rewards.math_worker import compare, compare_in_child, error_reason
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


def test_verifier_exception_is_recorded_not_silent():
    # A request that makes math-verify raise inside the child (a timeout that is not a number): the child
    # replies with the error as the reason, and stays usable.
    not_a_number: Any = "soon"
    reason = compare_in_child("72", "72", timeout_s=not_a_number, deadline_s=30.0)
    assert reason.startswith("verifier_error: TypeError: "), reason
    assert compare_in_child("72", "72", timeout_s=5, deadline_s=30.0) == "correct"


def test_a_verify_that_raises_is_not_swallowed_by_compare():
    def broken_verify(*args, **kwargs):
        raise RuntimeError("sympy blew up")

    with pytest.raises(RuntimeError, match="sympy blew up"):
        compare("72", "72", 5, broken_verify)
    assert error_reason(RuntimeError("sympy   blew\nup")) == "verifier_error: RuntimeError: sympy blew up"


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


# ------------------------------------------------------------------ grader normalisation: right and wrong twins
# Each class lists answers a grader accepts and their wrong twins, the reference normalised the same way.
# Decisions (see rewards/math_normalize.py): a clock reading without a.m./p.m. matches the 12- or 24-hour
# form of one with it; ratios match exactly (6:2 is not 3:1); percent, units and currency are annotations,
# so 0.27 is not 27% (one target per question, as the MATH grader strips \%); x=5 and 5 are the same answer.

GRADER_TWINS = {
    "clock": (
        [
            ("3:30 p.m.", "3:30 p.m."),
            ("3:30 PM", "3:30 p.m."),
            ("3:30pm", "3:30 p.m."),
            ("15:30", "3:30 p.m."),
            ("3:30", "3:30 p.m."),
            ("3:30\\text{ p.m.}", "\\text{3:30 p.m.}"),
            ("13:03", "\\text{1:03 PM}"),
            ("1:03", "\\text{1:03 PM}"),
            ("12:50", "12:50"),
        ],
        [
            ("3:31 p.m.", "3:30 p.m."),
            ("3:30 a.m.", "3:30 p.m."),
            ("4:30", "3:30 p.m."),
            ("6:25", "12:50"),
            ("1:04", "\\text{1:03 PM}"),
            ("\\frac{6}{25}", "12:50"),
            ("1303", "\\text{1:03 PM}"),
        ],
    ),
    "ratio": (
        [("3:1", "3:1"), ("1 : 2", "1:2")],
        [("6:2", "3:1"), ("3", "3:1"), ("1:3", "3:1"), ("\\frac{1}{2}", "1:2")],
    ),
    "thousands": (
        [
            ("1\\,000", "1000"),
            ("1{,}000", "1000"),
            ("1\\!000", "1000"),
            ("1,000", "1000"),
            ("1~000", "1000"),
            ("10,\\!080", "10080"),
            ("10080", "10,\\!080"),
            ("11111111100", "11,\\! 111,\\! 111,\\! 100"),
        ],
        [
            ("1,0001", "10001"),
            ("1\\,0001", "10001"),
            ("1\\,000", "1001"),
            ("10081", "10,\\!080"),
            ("1\\,000", "1"),
        ],
    ),
    "currency": (
        [
            ("5 dollars", "5"),
            ("\\$5", "5"),
            ("5 USD", "5"),
            ("\\text{5 dollars}", "5"),
            ("5", "\\$5"),
            ("\\$5.00", "5"),
            ("32348", "\\$32,\\!348"),
            ("18.9", "\\$18.90"),
        ],
        [
            ("6 dollars", "5"),
            ("\\$6", "5"),
            ("6 USD", "5"),
            ("\\text{6 dollars}", "5"),
            ("18.09", "\\$18.90"),
        ],
    ),
    "percent": (
        [("27\\%", "27.0"), ("27%", "27.0"), ("27 percent", "27.0"), ("27", "27\\%"), ("27\\%", "27")],
        [("28\\%", "27.0"), ("0.27", "27\\%"), ("0.27", "27"), ("27", "0.27")],
    ),
    "text_number": (
        [("\\text{27}", "27.0"), ("27.0", "27"), ("27", "27.0"), ("\\mbox{27}", "27")],
        [("\\text{28}", "27.0"), ("27.1", "27"), ("26", "27.0")],
    ),
    "units": (
        [
            ("5 cm", "5"),
            ("5\\text{ cm}", "5"),
            ("5\\mbox{cm}", "5"),
            ("5", "5\\text{ cm}"),
            ("5cm", "5"),
            ("864", "864 \\mbox{ inches}^2"),
            ("5 square units", "5"),
            ("9 \\text{ apples}", "9"),
            ("9", "9 (apples)"),
            ("\\frac{270}{7}", "\\frac{270}7\\text{ degrees}"),
        ],
        [
            ("6 cm", "5"),
            ("5x", "5"),
            ("865", "864 \\mbox{ inches}^2"),
            ("10", "9 (apples)"),
        ],
    ),
    "degrees": (
        [("90^\\circ", "90"), ("90", "90^\\circ"), ("90 degrees", "90^{\\circ}"), ("90\\degree", "90")],
        [("91^\\circ", "90"), ("89", "90^\\circ")],
    ),
    "words": (
        [
            ("\\text{Evelyn}", "\\text{Evelyn}"),
            ("Evelyn", "\\text{Evelyn}"),
            ("\\text{evelyn}", "\\text{Evelyn}"),
            ("C", "\\text{(C)}"),
            ("(C)", "\\text{(C)}"),
            ("\\text{(C)}", "\\text{(C)}"),
            ("\\text{ East }", "\\text{east}"),
        ],
        [
            ("lynEve", "\\text{Evelyn}"),
            ("\\text{Navin}", "\\text{Evelyn}"),
            ("D", "\\text{(C)}"),
            ("CD", "\\text{(C)}"),
            ("\\text{(C) or (D)}", "\\text{(C)}"),
            ("C, D", "\\text{(C)}"),
            ("\\text{}", "\\text{(C)}"),
            ("3", "\\text{(C)}"),
        ],
    ),
    "equation": (
        [("x=5", "5"), ("5", "x=5"), ("x = 5", "x=5")],
        [("y=5", "x=5"), ("x=6", "5"), ("5=x", "5")],
    ),
    "plus_minus": (
        [("1 \\pm \\sqrt{19}", "1 \\pm \\sqrt{19}"), ("1 - \\sqrt{19}, 1 + \\sqrt{19}", "1 \\pm \\sqrt{19}")],
        [("1+\\sqrt{19}", "1 \\pm \\sqrt{19}"), ("\\pm 4", "4"), ("\\pm 4", "-4")],
    ),
    "exact_values": (
        [
            ("0.0000672", ".0000672"),
            ("\\frac{1}{2004!}", "\\frac{1}{2004!}"),
            ("18.90", "18.9"),
            ("\\frac{\\pi}{4} + 2 - \\sqrt{2}", "\\frac \\pi4 + 2 - \\sqrt2"),
        ],
        # math-verify alone: rounding to 6 places / chopping below 1e-15 accepted the first two; the
        # unbraced \frac \pi4 made the reference parse as 2.
        [
            (".0000673", ".0000672"),
            ("\\frac{1}{2005!}", "\\frac{1}{2004!}"),
            ("4.0000001", "4"),
            ("2", "\\frac \\pi4 + 2 - \\sqrt2"),
            ("\\frac \\pi4 + 2 - \\sqrt3", "\\frac \\pi4 + 2 - \\sqrt2"),
        ],
    ),
}


@pytest.mark.parametrize(
    ("answer", "reference"),
    [pytest.param(a, r, id=f"{kind}:{a}|{r}") for kind, (right, _) in GRADER_TWINS.items() for a, r in right],
)
def test_grader_accepts(answer: str, reference: str):
    assert score_math(f"so \\boxed{{{answer}}}", reference) == Reward(1.0, "correct")


@pytest.mark.parametrize(
    ("answer", "reference"),
    [pytest.param(a, r, id=f"{kind}:{a}|{r}") for kind, (_, wrong) in GRADER_TWINS.items() for a, r in wrong],
)
def test_grader_rejects_the_wrong_twin(answer: str, reference: str):
    reward = score_math(f"so \\boxed{{{answer}}}", reference)
    assert reward.score == 0.0
    assert reason_kind(reward.reason) in ("wrong_answer", "malformed_answer", "unparsable_answer"), reward


# --------------------------------------------------------- ways to score without solving: all stay at 0


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        ("3 \\vee 4", "uses \\vee"),  # math-verify alone reads each of these as 4
        ("3 \\lor 4", "uses \\lor"),
        ("3 \\to 4", "uses \\to"),
        ("3 \\mid 4", "uses \\mid"),
        ("4 \\approx 3", "uses \\approx"),
        ("3 \\quad 4", "uses \\quad"),
        ("3 | 4", "an unpaired '|'"),
        ("3 & 4", "'&' or '\\\\' outside a matrix"),
        ("3 \\\\ 4", "'&' or '\\\\' outside a matrix"),
        ("x = 3 = 4", "more than one '='"),
        ("3 = 4", "an equation whose left side is a number"),
        ("3 \\text{ (or } 4)", "\\text{} holding more than words"),
        ("4 \\text{ or three}", "words joined to the answer by a connective"),
        ("4 (or three)", "words joined to the answer by a connective"),
        ("4~3", "two numbers side by side"),
        ("4{}3", "two numbers side by side"),
        ("4\\;3", "two numbers side by side"),
        ("\\begin{cases} 3 \\\\ 4 \\end{cases}", "an environment that is not a matrix"),
    ],
)
def test_two_answers_in_one_box_are_malformed(answer: str, why: str):
    assert score_math(f"\\boxed{{{answer}}}", "4") == Reward(0.0, f"malformed_answer: {why}")


@pytest.mark.parametrize(
    "hedge",
    [
        "3 \\text{ or } 4",
        "3, 4",
        "\\{3, 4\\}",
        "4 \\text{ and } 3",
        "[3, 5]",
        "(3, 5)",
        "x > 3",
        "3 < x < 5",
        "x \\in \\{3, 4\\}",
        "\\pm 4",
        "x=3 \\text{ or } x=4",
        "\\begin{pmatrix} 3 & 4 \\end{pmatrix}",
    ],
)
def test_a_set_interval_or_inequality_holding_the_answer_is_wrong(hedge: str):
    for reference in ("3", "4"):
        assert score_math(f"\\boxed{{{hedge}}}", reference).score == 0.0, (hedge, reference)


def test_a_list_answer_still_matches_a_list_reference():
    assert score_math("\\boxed{3 \\text{ or } 4}", "3, 4") == Reward(1.0, "correct")
    assert score_math("\\boxed{19 \\text{ and } 43}", "19 \\text{ and }43") == Reward(1.0, "correct")
    assert score_math("\\boxed{19, 44}", "19 \\text{ and }43") == Reward(0.0, "wrong_answer")


def test_several_and_nested_boxes_count_once_the_last():
    assert score_math("\\boxed{3} or \\boxed{4}", "4") == Reward(1.0, "correct")
    assert score_math("\\boxed{3} or \\boxed{4}", "3") == Reward(0.0, "wrong_answer")
    assert score_math("\\boxed{\\boxed{4}}", "4") == Reward(1.0, "correct")
    assert score_math("\\boxed{3 \\boxed{4}}", "3") == Reward(0.0, "wrong_answer")  # the inner box is last


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        ("9^{9^{9}}", "a power of a power"),
        ("9^{9^{9^{9}}}", "a power of a power"),
        ("(9^9)^9", "a power of a power"),
        ("{9^9}^{9}", "a power of a power"),
        ("9^9^9", "a power of a power"),
        ("9^{99999999}", "an exponent over 10000"),
        ("1000000!", "a factorial over 10000"),
        ("(10^{100})!", "a factorial of an expression"),
        ("9!!", "a factorial of an expression"),
        ("3!!", "a factorial of an expression"),
        ("\\binom{1000000}{500000}", "a binomial over 10000"),
    ],
)
def test_power_towers_are_rejected_before_sympy(answer: str, why: str):
    # Each of these keeps sympy busy for minutes (a big-integer power cannot even be interrupted).
    assert score_math(f"\\boxed{{{answer}}}", "5") == Reward(0.0, f"malformed_answer: {why}")


def test_legit_powers_and_factorials_still_score():
    assert score_math("\\boxed{2^{10}}", "1024") == Reward(1.0, "correct")
    assert score_math("\\boxed{5!}", "120") == Reward(1.0, "correct")
    assert score_math("\\boxed{x^5 - x^4 + x^3 - x^2 + x - 1}", "x^5 - x^4 + x^3 - x^2 + x - 1").score == 1.0
    assert score_math("\\boxed{\\binom{10}{3}}", "120") == Reward(1.0, "correct")
    assert score_math("\\boxed{\\frac{1}{2004!}}", "\\frac{1}{2004!}") == Reward(1.0, "correct")
    assert score_math("\\boxed{(n+1)!}", "(n+1)!") == Reward(1.0, "correct")
    assert score_math("\\boxed{\\left(5\\right)!}", "120") == Reward(
        0.0, "malformed_answer: a factorial of an expression"
    )


def test_a_very_long_answer_is_rejected_unread():
    long_answer = "+".join(["1"] * 300)  # 599 characters
    assert score_math(f"\\boxed{{{long_answer}}}", "300") == Reward(
        0.0, f"malformed_answer: longer than {MAX_ANSWER_CHARS} characters"
    )


@pytest.mark.parametrize("where", ["main thread", "worker thread"])
def test_a_slow_answer_is_bounded_by_the_child_process(where: str, monkeypatch: pytest.MonkeyPatch):
    # Unbounded, sympy expands (x+1)^9999 for minutes. The child's alarm stops it after TIMEOUT_S; where the
    # alarm is lost (it landed in a finalizer) the parent kills the child a second later. Either way: a
    # verifier_error within the deadline, from the main thread as from any other.
    monkeypatch.setattr(math_reward, "TIMEOUT_S", 1)
    results: list[tuple[Reward, float]] = []

    def run():
        start = time.monotonic()
        results.append((score_math("\\boxed{(x+1)^{9999}}", "5"), time.monotonic() - start))

    if where == "main thread":
        run()
    else:
        thread = threading.Thread(target=run)
        thread.start()
        thread.join(timeout=60)
    reward, seconds = results[0]
    assert reward.score == 0.0
    assert reward.reason.startswith("verifier_error: TimeoutException"), reward.reason
    assert seconds < 30  # the child's start included


def test_a_child_past_its_deadline_is_killed_and_replaced():
    # timeout_s=0 switches the child's own alarm off (as a big-integer power in C code would defeat it):
    # the parent kills the child at the deadline, and the next comparison gets a fresh child.
    start = time.monotonic()
    reason = compare_in_child("9^{9^{9}}", "5", timeout_s=0, deadline_s=2.0)
    assert reason == "verifier_error: TimeoutException: no verdict within 2s, worker killed"
    assert time.monotonic() - start < 30  # includes the child's start
    assert compare_in_child("72", "72", timeout_s=5, deadline_s=30.0) == "correct"


# ------------------------------------------------------------------------ the normalisation's pure functions


@pytest.mark.parametrize(
    ("latex", "expected"),
    [
        ("1\\,000", "1000"),
        ("1{,}000", "1,000"),
        ("10,\\!080", "10,080"),
        ("11,\\! 111,\\! 100", "11,111,100"),
        ("1~000~000", "1000000"),
        ("3\\,4", "3\\,4"),  # not a group of three: left for math-verify, which reads 3*4
        ("1\\,0001", "1\\,0001"),
    ],
)
def test_join_thousands(latex: str, expected: str):
    assert join_thousands(latex) == expected


@pytest.mark.parametrize(
    ("latex", "expected"),
    [
        ("\\frac \\pi4", "\\frac{\\pi}{4}"),
        ("\\frac12", "\\frac{1}{2}"),
        ("\\dfrac{1}2", "\\dfrac{1}{2}"),
        ("\\sqrt2 + \\sqrt{3}", "\\sqrt{2} + \\sqrt{3}"),
        ("\\frac{\\sqrt2}{2}", "\\frac{\\sqrt{2}}{2}"),
        ("\\sqrt[3]{2}", "\\sqrt[3]{2}"),
    ],
)
def test_brace_command_args(latex: str, expected: str):
    assert brace_command_args(latex) == expected


@pytest.mark.parametrize(
    ("latex", "expected"),
    [
        ("\\$5", "5"),
        ("5 dollars", "5"),
        ("\\text{5 dollars}", "5"),
        ("27\\%", "27"),
        ("27 percent", "27"),
        ("90^{\\circ}", "90"),
        ("864 \\mbox{ inches}^2", "864"),
        ("9 (apples)", "9"),
        ("5 square units", "5"),
        ("\\text{27}", "27"),
        ("a + 5x", "a + 5x"),  # letters after an expression are variables
        ("4 \\text{ or three}", "4 \\text{ or three}"),  # a connective is not an annotation
        ("\\text{Evelyn}", "\\text{Evelyn}"),
    ],
)
def test_normalize(latex: str, expected: str):
    assert normalize(latex) == expected


def test_readings():
    assert text_reading("\\text{(C)}") == text_reading("C") == text_reading("(C).") == "c"
    assert text_reading("\\text{ Navin }") == "navin"
    assert text_reading("p - q") is None and text_reading("\\text{3}") is None
    assert clock_reading("\\text{4:30 p.m.}") == (4, 30, "p")
    assert clock_reading("16:30") == (16, 30, "")
    assert clock_reading("4:3") is None
    assert clock_minutes(4, 30, "p") == {990} and clock_minutes(12, 5, "a") == {5}
    assert clock_minutes(4, 30, "") == {270, 990}
    assert clocks_match((4, 30, "p"), (16, 30, "")) and not clocks_match((4, 30, "p"), (4, 30, "a"))
    assert ratio_reading("3 : 1") == (3, 1) and ratio_reading("3:1:2") == (3, 1, 2)
    assert ratio_reading("3/1") is None
    assert decimal_reading("-1,234.50") == Decimal("-1234.5") and decimal_reading(".5") == Decimal("0.5")
    assert decimal_reading("1,0001") is None and decimal_reading("\\frac12") is None


def test_every_reference_command_is_allowed():
    # The allowlist must hold everything the MATH / MATH-500 references write (checked on the real files
    # in tests/test_math_data.py); these are the rarer ones.
    for latex in ("\\cfrac{1}{2}", "\\overline{3}", "\\tfrac12", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}"):
        assert form_problem(normalize(latex)) is None, latex


# ------------------------------------------------------------------------------ the lenient reading (eval only)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("She sold 48 + 24 = 72 clips.", "72"),
        ("The total is 1,234.", "1,234"),  # thousands separator kept, full stop dropped
        ("It costs $18.00.", "18.00"),
        ("from -3 to 0.5", "0.5"),
        ("a temperature of -3", "-3"),
        ("x2 and y3", None),  # digits inside a word are not numbers
        ("no numbers here", None),
    ],
)
def test_last_number(text: str, expected: str | None):
    assert last_number(text) == expected


@pytest.mark.parametrize(
    ("response", "strict", "lenient"),
    [
        ("48 + 24 = 72 clips in all.", 0.0, 1.0),  # right, but not in the rewarded form
        ("\\boxed{72}", 1.0, 1.0),
        ("\\boxed{70}, though 72 is close", 0.0, 0.0),  # a boxed answer is the answer, never a later number
        ("The total is 1,234.", 0.0, 0.0),
        ("72 minus 2 is 70", 0.0, 0.0),  # the last number, not any number
        ("I do not know.", 0.0, 0.0),
    ],
)
def test_the_lenient_reading_tells_form_from_skill(response: str, strict: float, lenient: float):
    assert score_math(response, "72").score == strict
    assert score_math_lenient(response, "72").score == lenient
    assert score_math_lenient("I do not know.", "72").reason == "no_answer"
