"""math-verify in child processes, so every comparison has a hard time bound.

math-verify bounds itself with ``signal.alarm``, which exists only in a process's main thread, and even there
is no hard bound: it cannot stop one long C-level step (a big-integer power), and an alarm that lands while a
finalizer runs (``__del__``, e.g. during a garbage collection) is printed and dropped. The rewards run on a
thread pool (``rewards.guard``), where sympy could expand ``(x+1)^{9999}`` for minutes and the abandoned thread
would keep a core busy. Here each comparison runs in the main thread of a child (``python -m
rewards.math_worker``, one JSON line in, one out), with math-verify's alarm on; a child with no verdict by
``deadline_s`` is killed and the answer scores 0 as ``verifier_error: TimeoutException``. Idle children are
kept for the next call, at most one per concurrent caller; a child exits when its parent does (its stdin closes).

This module imports only math-verify (never torch), so a child starts in about a second.
"""

from __future__ import annotations

import atexit
import json
import select
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
from math_verify.errors import TimeoutException
from sympy import Expr, Float, Rational

from rewards.math_normalize import decimal_reading

_EXTRACTION = (LatexExtractionConfig(), ExprExtractionConfig())
_MAX_ERROR_CHARS = 200  # keeps verifier_error reasons short enough to log and count
_START_S = 120.0  # a child imports sympy and math-verify first; on a loaded 2-core box that can take a while
_ROOT = Path(__file__).resolve().parents[1]


def error_reason(error: BaseException) -> str:
    """``verifier_error: <Type>: <message>`` on one line, for logs and metric tables."""
    message = " ".join(str(error).split())[:_MAX_ERROR_CHARS]
    return f"verifier_error: {type(error).__name__}: {message}"


def parse_latex(latex: str, timeout_s: int) -> list:
    """math-verify's parse of one answer; ``$...$`` makes plain numbers (``1,234``) and LaTeX both parse."""
    return parse(f"${latex}$", extraction_config=_EXTRACTION, parsing_timeout=timeout_s, raise_on_error=True)


def compare(predicted_latex: str, gold_latex: str, timeout_s: int, verify_fn: Callable = verify) -> str:
    """``correct`` / ``wrong_answer`` / ``unparsable_answer`` / ``unparsable_reference``; raises what math-verify raises."""
    predicted = parse_latex(predicted_latex, timeout_s)
    if not predicted:
        return "unparsable_answer"
    gold = parse_latex(gold_latex, timeout_s)
    if not gold:
        return "unparsable_reference"
    if not verify_fn(gold, predicted, timeout_seconds=timeout_s, raise_on_error=True):
        return "wrong_answer"
    # math-verify's float tolerance, vetoed where both values are exact (see the two functions).
    gold_decimal, predicted_decimal = decimal_reading(gold_latex), decimal_reading(predicted_latex)
    if gold_decimal is not None and predicted_decimal is not None and gold_decimal != predicted_decimal:
        return "wrong_answer"
    if exact_rationals_equal(gold[0], predicted[0]) is False:
        return "wrong_answer"
    return "correct"


def exact_rationals_equal(gold: object, predicted: object) -> bool | None:
    """Whether two exact rational values are equal, or None unless both are one (``\\frac{1}{2004!}``, ``0.5``).

    math-verify's numeric fallback evaluates the difference to 15 digits and chops what is below, so
    ``\\frac{1}{2004!}`` would equal ``\\frac{1}{2005!}`` (and any tiny value any other); exact values need no tolerance.
    """
    values = []
    for value in (gold, predicted):
        if not isinstance(value, Expr) or not value.is_number or value.has(Float):
            return None
        value = value.doit()
        if not isinstance(value, Rational):
            return None
        values.append(value)
    return values[0] == values[1]


class _Child:
    """One ``python -m rewards.math_worker`` process and its pipes."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rewards.math_worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=_ROOT,
            text=True,
        )
        if self._read_line(_START_S) != "ready":
            self.kill()
            raise RuntimeError(f"math worker did not start within {_START_S:g}s")

    def _read_line(self, timeout_s: float) -> str | None:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        return self.proc.stdout.readline().strip() if ready else None

    def ask(self, request: dict, deadline_s: float) -> str | None:
        """The child's reason for ``request``, or None if it gave none within ``deadline_s`` (or died)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self._read_line(deadline_s)
        return json.loads(line) if line else None

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()


_idle: list[_Child] = []
_idle_lock = threading.Lock()


def compare_in_child(predicted_latex: str, gold_latex: str, timeout_s: int, deadline_s: float) -> str:
    """``compare`` in a child process: its reason, or a verifier_error when the child ran past ``deadline_s``."""
    with _idle_lock:
        child = _idle.pop() if _idle else None
    try:
        child = child or _Child()
        reason = child.ask(
            {"predicted": predicted_latex, "gold": gold_latex, "timeout_s": timeout_s}, deadline_s
        )
    except (OSError, ValueError) as e:  # a child that died: a broken pipe, or half a line
        if child is not None:
            child.kill()
        return error_reason(e)
    if reason is None:  # stuck (or dead): never reused
        child.kill()
        return f"verifier_error: TimeoutException: no verdict within {deadline_s:g}s, worker killed"
    with _idle_lock:
        _idle.append(child)
    return reason


@atexit.register
def _close_children() -> None:
    with _idle_lock:
        for child in _idle:
            child.kill()
        _idle.clear()


def main() -> None:
    """The child: one JSON request a line on stdin, one JSON reason a line on stdout, until stdin closes.
    Ctrl-C at the terminal reaches the whole process group: the parent decides when this ends (it closes stdin)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    replies, sys.stdout = sys.stdout, sys.stderr  # anything a library prints must not look like a reply
    print("ready", file=replies, flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        try:
            reason = compare(request["predicted"], request["gold"], request["timeout_s"])
        except (
            Exception,
            TimeoutException,
        ) as e:  # TimeoutException is a BaseException; the reason records it
            reason = error_reason(e)
        print(json.dumps(reason), file=replies, flush=True)


if __name__ == "__main__":
    main()
