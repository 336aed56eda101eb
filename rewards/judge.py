"""The trusted judge: decides a sandboxed run's verdict from the values it reported, in a process of its own.

``rewards.sandbox`` starts it (``python -S``, with the sandbox's flags and environment) for a batch of runs that
left a value frame (one run, or the runs of one ``SandboxPool.map`` share), and sends this file's code object
with the payload on stdin: per run, the judge half of each test unit (``rewards/split_tests.py``) and the frame
the sandbox wrote (``rewards/sandbox_harness.py``); and the code of ``rewards/plain.py``. Each run is judged in a fresh
namespace under its own wall-clock budget (an interval timer, the run's timeout); the process as a whole has the
runs' summed CPU-time limits as RLIMIT_CPU. No candidate
code exists here: the frame is JSON, its values are decoded into built-in types (``Opaque`` for anything that
was not plain data), and the tests' own expressions run on them. The process has CPU-time and address-space
limits and the host a wall-clock timeout, since a reported value (a huge int, a long list) can make a trusted
expression slow; it is a separate process so that such a value cannot stall the host.

Verdict (one JSON line per run, in order, on the original stdout): ``[reason, passed, total, detail, µs]``, where ``passed``
counts the test units that held before the first failure. A frame that does not decode, rows out of step with
the tests (a program writing its own frame), or left over, fail the run as a runtime error.
"""

from __future__ import annotations

import builtins
import os
import resource
import signal
import sys
import time

_REASONS = frozenset(
    ["wrong_answer", "syntax_error", "runtime_error", "memory", "output_too_large", "sandbox_error"]
)
_MAX_DETAIL = 600


class Failed(Exception):
    """The run failed for ``reason`` (the sandbox's report, or the frame does not fit the tests)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason, detail)
        self.reason, self.detail = reason, detail


class CandidateError(Exception):
    """A requested value is an exception the program raised: the test fails with the sandbox's reason."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason, detail)
        self.reason, self.detail = reason, detail


def _text(value: object) -> str:
    return " ".join(str(value).split())[:_MAX_DETAIL]


def _detail(exc: BaseException) -> str:
    message = _text(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _reason_field(value) -> str:
    if type(value) is not str or value not in _REASONS:
        raise Failed("runtime_error", "the value frame names an unknown reason")
    return value


class Stream:
    """The frame's rows, consumed by the judge units in the order the sandbox wrote them."""

    def __init__(self, frame: list, decode) -> None:
        if (
            type(frame) is not list
            or len(frame) != 3
            or type(frame[0]) is not list
            or type(frame[2]) is not str
        ):
            raise Failed("runtime_error", "the value frame is malformed")
        rows, end, self.changed = frame
        if end is not None and (type(end) is not list or len(end) != 2 or type(end[1]) is not str):
            raise Failed("runtime_error", "the value frame's end is malformed")
        self.rows, self.end, self.decode = rows, end, decode
        self.position = 0
        self.values: list = []

    def next(self, site: int) -> None:
        """Take the next row, which must be for ``site``; the sandbox's failure if the rows ran out there."""
        if self.position == len(self.rows):
            if self.end is not None:
                raise Failed(_reason_field(self.end[0]), _text(self.end[1]))
            raise Failed("runtime_error", "the reported values end before the tests do")
        row = self.rows[self.position]
        self.position += 1
        if type(row) is not list or len(row) != 2 or row[0] != site or type(row[1]) is not list:
            raise Failed("runtime_error", "the reported values are out of step with the tests")
        self.values = row[1]

    def value(self, index: int):
        node = self.values[index]
        if type(node) is list and len(node) == 3 and node[0] == "e":
            raise CandidateError(_reason_field(node[1]), _text(node[2]))
        try:
            return self.decode(node)
        except (ValueError, TypeError, RecursionError) as e:
            raise Failed("runtime_error", f"a reported value is malformed: {_text(e)}") from None

    def loop(self, site: int) -> range:
        self.next(site)
        if len(self.values) != 1:
            raise Failed("runtime_error", "the reported values are out of step with the tests")
        count = self.value(0)
        if type(count) is not int or count < 0:
            raise Failed("runtime_error", "a reported loop count is malformed")
        return range(count)


def judge(payload: dict, plain: dict) -> tuple[str, int, int, str]:
    """(reason, passed, total, detail) for the payload's frame; a module the program changed fails it."""
    total = len(payload["labels"])
    try:
        stream = Stream(plain["from_json"](payload["frame"].decode("ascii")), plain["decode"])
    except (ValueError, RecursionError):
        return "runtime_error", 0, total, "the value frame is not valid JSON"
    except Failed as e:
        return e.reason, 0, total, e.detail
    reason, passed, detail = _evaluate(payload, stream)
    if stream.changed:  # the sandbox saw the program patch a module the tests use
        return "runtime_error", passed, total, f"the program changed {_text(stream.changed)}"
    return reason, passed, total, detail


def _evaluate(payload: dict, stream: Stream) -> tuple[str, int, str]:
    """Run the judge units on the stream: (reason, passed, detail)."""
    labels = payload["labels"]
    total = len(labels)
    namespace: dict = {"__builtins__": builtins, "__name__": "tests"}
    for name in payload["implicit_modules"]:
        namespace[name] = __import__(name)
    namespace.update(_sbx_next=stream.next, _sbx_v=stream.value, _sbx_loop=stream.loop)
    passed = 0
    for i, source in enumerate(payload["units"]):
        where = "setup" if i == 0 else f"test {i}/{total} `{labels[i - 1]}`"
        try:
            exec(compile(source, f"<test {i}>", "exec"), namespace)
        except Failed as e:
            return e.reason, passed, e.detail
        except CandidateError as e:
            return e.reason, passed, f"{where}: {e.detail}"
        except MemoryError:
            return "memory", passed, f"{where}: MemoryError while judging"
        except JudgeTimeout:
            raise
        except BaseException as e:
            reason = "wrong_answer" if type(e) is AssertionError else "runtime_error"
            return reason, passed, f"{where}: {_detail(e)}"
        passed += i > 0
    if stream.position != len(stream.rows):
        return "runtime_error", passed, "more values were reported than the tests asked for"
    if stream.end is not None:
        return _reason_field(stream.end[0]), passed, _text(stream.end[1])
    return "passed", passed, ""


class JudgeTimeout(BaseException):
    """One job's time budget ran out (a BaseException: a test's ``except Exception`` does not stop it)."""


def _on_timer(signum, frame) -> None:
    raise JudgeTimeout


def main(payload: dict) -> None:
    """Judge each job of the payload in turn; one verdict line per job, as soon as it is decided."""
    jobs = payload["jobs"]
    cpu_total = sum(job["cpu_s"] for job in jobs) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_total, cpu_total + 1))
    resource.setrlimit(resource.RLIMIT_AS, (payload["as"], payload["as"]))
    out = os.dup(1)  # the verdicts'; whatever the tests print goes to /dev/null
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (lives as long as the process)
    plain: dict = {"__name__": "plain"}
    exec(payload["plain"], plain)
    signal.signal(signal.SIGALRM, _on_timer)
    for job in jobs:
        total = len(job["labels"])
        start = time.monotonic()
        signal.setitimer(signal.ITIMER_REAL, job["timeout_s"])
        try:
            reason, passed, total, detail = judge(job, plain)
        except JudgeTimeout:
            reason, passed, detail = (
                "timeout",
                0,
                f"judging the reported values took longer than {job['timeout_s']} s",
            )
        except Failed as e:
            reason, passed, detail = e.reason, 0, e.detail
        except MemoryError:
            reason, passed, detail = "memory", 0, "MemoryError while judging"
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        os.write(
            out,
            plain["to_json"](
                [reason, passed, total, _text(detail), int((time.monotonic() - start) * 1e6)]
            ).encode()
            + b"\n",
        )
    os._exit(0)


if __name__ == "__judge__":
    main(PAYLOAD)  # type: ignore[name-defined]  # noqa: F821 (injected by the bootstrap)
