"""Math reward: the last ``\\boxed{}`` answer checked against the reference with ``math-verify``.

Answer and reference first go through the same grader's normalisation (``rewards.math_normalize``: thousands
separators, units, currency, percent, ``\\text{}``); words, clock times and ratios are compared as such
rather than as sympy expressions. Answers a grader would not accept as one final answer (two values joined
by ``\\vee``, a chain of equations) or that could keep sympy busy without bound (``9^{9^{9}}``, more than
``MAX_ANSWER_CHARS`` characters) score 0 as ``malformed_answer`` before math-verify sees them.

math-verify bounds parsing and comparison with ``signal.alarm``, which only works in a main thread and is not
a hard bound even there: an alarm that lands in a finalizer (``__del__``) is printed and dropped, and one long
C-level step cannot be interrupted. So every comparison, from any thread, runs in a child process that is
killed past its deadline (``rewards.math_worker``): every verdict comes within about ``TIMEOUT_S`` seconds.
"""

from __future__ import annotations

import re

from rewards.math_normalize import (
    MAX_ANSWER_CHARS,
    clock_reading,
    clocks_match,
    complexity_problem,
    form_problem,
    is_text_answer,
    normalize,
    ratio_reading,
    text_reading,
)
from rewards.math_worker import compare_in_child, error_reason
from rewards.types import Reward

# Every Reward.reason starts with one of these; a verifier_error reason appends ": <type>: <message>",
# a malformed_answer one ": <why>".
MATH_REASONS = (
    "correct",
    "wrong_answer",
    "no_boxed_answer",
    "unparsable_answer",
    "malformed_answer",
    "unparsable_reference",
    "verifier_error",
)
TIMEOUT_S = 5  # math-verify's per-call bound in the child (signal based, whole seconds); the child is killed 1 s later

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
# a number as a response writes it: sign, digits with thousands separators, decimals (not part of a word)
_NUMBER_RE = re.compile(r"(?<![\w.])-?\d[\d,]*(?:\.\d+)?")


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` or ``\\fbox{...}``; None if there is none or it never closes."""
    starts = [m.end() for m in _BOX_RE.finditer(text)]
    if not starts:
        return None
    depth, i = 1, starts[-1]
    while i < len(text):
        if text[i] == "\\":  # an escaped character (\{, \}, \\) never opens or closes the box
            i += 2
            continue
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[starts[-1] : i]
        i += 1
    return None


def reason_kind(reason: str) -> str:
    """The ``MATH_REASONS`` entry a reason belongs to (drops a verifier_error's details)."""
    return reason.split(":", 1)[0]


def _verdict(same: bool) -> Reward:
    return Reward(1.0, "correct") if same else Reward(0.0, "wrong_answer")


def _check_reading(extracted: str, answer: str) -> Reward | None:
    """The verdict for a text, clock or ratio reference or answer (compared as read, not by sympy), else None."""
    if is_text_answer(answer):
        return _verdict(text_reading(extracted) == text_reading(answer))
    gold_clock, predicted_clock = clock_reading(answer), clock_reading(extracted)
    if gold_clock or predicted_clock:
        return _verdict(bool(gold_clock and predicted_clock and clocks_match(gold_clock, predicted_clock)))
    gold_ratio, predicted_ratio = ratio_reading(answer), ratio_reading(extracted)
    if gold_ratio or predicted_ratio:
        return _verdict(gold_ratio == predicted_ratio)
    return None


def _check(extracted: str, answer: str) -> Reward:
    if len(extracted) > MAX_ANSWER_CHARS:  # before any regex or parser reads it
        return Reward(0.0, f"malformed_answer: longer than {MAX_ANSWER_CHARS} characters")
    predicted_latex, gold_latex = normalize(extracted), normalize(answer)
    if not predicted_latex:
        return Reward(0.0, "unparsable_answer")
    if (reading := _check_reading(extracted, answer)) is not None:  # string-level: nothing for sympy
        return reading
    if problem := form_problem(predicted_latex) or complexity_problem(predicted_latex):
        return Reward(0.0, f"malformed_answer: {problem}")
    reason = compare_in_child(predicted_latex, gold_latex, TIMEOUT_S, TIMEOUT_S + 1.0)
    return Reward(1.0 if reason == "correct" else 0.0, reason)


def score_math(response: str, answer: str) -> Reward:
    """1.0 if the last boxed answer in ``response`` is equivalent to ``answer``, else 0.0 with the reason."""
    extracted = extract_boxed(response)
    return Reward(0.0, "no_boxed_answer") if extracted is None else _checked(extracted, answer)


def _checked(extracted: str, answer: str) -> Reward:
    """``_check``, never raising: an error in our own normalisation scores 0 with the error as the reason."""
    try:
        return _check(extracted, answer)
    except Exception as e:  # math-verify's alarm (TimeoutException) only fires in the child process now
        return Reward(0.0, error_reason(e))


def last_number(text: str) -> str | None:
    """The last number written in ``text`` (``1,234``, ``-3``, ``0.5``; a sentence's full stop dropped), or None."""
    numbers = _NUMBER_RE.findall(text)
    return numbers[-1].rstrip(",") if numbers else None


def score_math_lenient(response: str, answer: str) -> Reward:
    """Eval only, never a training reward: the last ``\\boxed{}`` answer, else the last number in the response,
    checked as ``score_math`` checks a boxed one. Scores at least what ``score_math`` does on every response, so
    lenient minus strict is what the answer's form costs."""
    extracted = extract_boxed(response)
    if extracted is None:
        extracted = last_number(response)
    return Reward(0.0, "no_answer") if extracted is None else _checked(extracted, answer)
