"""Math reward: the last ``\\boxed{}`` answer checked against the reference with ``math-verify``.

math-verify bounds parsing and comparison with ``signal.alarm``, which only works in the main thread.
We keep that bound in the main thread (a default Ray actor runs its methods there) and switch it off
elsewhere, so the reward also runs in threads; there a pathological answer (``9^{9^{9^{9}}}``) can run
unbounded, so callers that need a bound in threads must run the reward in a process of its own.
"""

from __future__ import annotations

import re
import threading

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
from math_verify.errors import TimeoutException

from rl.types import Reward

# Every Reward.reason starts with one of these; a verifier_error reason appends ": <type>: <message>".
MATH_REASONS = (
    "correct",
    "wrong_answer",
    "no_boxed_answer",
    "unparsable_answer",
    "unparsable_reference",
    "verifier_error",
)
TIMEOUT_S = 5  # math-verify's per-call bound in the main thread (signal based, whole seconds)
_MAX_ERROR_CHARS = 200  # keeps verifier_error reasons short enough to log and count

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_EXTRACTION = (LatexExtractionConfig(), ExprExtractionConfig())


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


def _timeout_s() -> int:
    # 0 disables math-verify's signal.alarm, which raises outside the main thread.
    return TIMEOUT_S if threading.current_thread() is threading.main_thread() else 0


def _parse(latex: str, timeout_s: int) -> list:
    # $...$ makes both plain numbers ("1,234", "0.5") and LaTeX ("\dfrac12") parse.
    return parse(f"${latex}$", extraction_config=_EXTRACTION, parsing_timeout=timeout_s, raise_on_error=True)


def _check(extracted: str, answer: str) -> Reward:
    timeout_s = _timeout_s()
    predicted = _parse(extracted, timeout_s)
    if not predicted:
        return Reward(0.0, "unparsable_answer")
    gold = _parse(answer, timeout_s)
    if not gold:
        return Reward(0.0, "unparsable_reference")
    if verify(gold, predicted, timeout_seconds=timeout_s, raise_on_error=True):
        return Reward(1.0, "correct")
    return Reward(0.0, "wrong_answer")


def score_math(response: str, answer: str) -> Reward:
    """1.0 if the last boxed answer in ``response`` is equivalent to ``answer``, else 0.0 with the reason."""
    extracted = extract_boxed(response)
    if extracted is None:
        return Reward(0.0, "no_boxed_answer")
    try:
        return _check(extracted, answer)
    except (Exception, TimeoutException) as e:  # TimeoutException is a BaseException
        message = " ".join(str(e).split())[:_MAX_ERROR_CHARS]  # one line, for logs and metric tables
        return Reward(0.0, f"verifier_error: {type(e).__name__}: {message}")
