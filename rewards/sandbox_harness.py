"""The child side of ``rewards.sandbox``: runs the candidate program and its tests inside the sandbox and reports.

The host never imports this file to run it: ``rewards.sandbox`` compiles it once and sends the code object, with the
run's payload, to each child's stdin. A one-line bootstrap executes it in a private globals dict holding a copy of
the pristine builtins, a dict that no module can reach, so a program that patches ``builtins`` or a module cannot
change the names this harness looks up. ``rewards/sandbox.py`` states the threat model; in short, this file:

1. applies the resource limits, drops to the run's uid (root on the host + bwrap), and writes ``<nonce> started``;
2. imports the modules the tests use and snapshots them, then arms an audit hook (``sys.addaudithook`` hooks
   cannot be removed) that blocks frame and gc introspection, ctypes, signals, code-object construction,
   sub-interpreters, fork and exec; in ``strict`` mode (no bwrap) also sockets, killing other processes, and
   file access outside the working dir (writes) or the interpreter's prefix (reads);
3. runs the candidate in namespace N, the setup and each test in namespace T (N's names, the pristine builtins,
   the test's modules), where every comparison and binary operator of the tests goes through ``_sbx_cmp`` /
   ``_sbx_bin``: operands must be built-in data (recursively) and are used as private copies, so ``__eq__`` or
   ``__sub__`` overrides that would see the expected value, and int/str subclasses, fail the test;
4. writes one ``<nonce> verdict <pid> <reason> <passed> <total> <detail>`` line to the report fd, from the
   original process only, then calls ``os._exit`` at once.
"""

from __future__ import annotations

import _operator
import builtins
import os
import resource
import sys
import types  # before the hook is armed: importing it reads tb_frame, which the hook blocks
from collections import OrderedDict, defaultdict, deque  # the C types; collections is snapshotted too
from os import _exit, close, dup2, getcwd, getpid, set_inheritable, write
from os import open as os_open

_RAW_BUILTINS = dict(vars(builtins))  # taken before any candidate code runs
_AssertionError = AssertionError  # saved references, immune to rebinding
_MemoryError = MemoryError
_bool, _len, _type, _id = bool, len, type, id
_type_dict = type.__dict__["__dict__"].__get__  # a class's own namespace, past any metaclass
_type_mro = type.__dict__["__mro__"].__get__
_type_name = type.__dict__["__name__"].__get__

_IMMUTABLE_FLAG = 1 << 8  # Py_TPFLAGS_IMMUTABLETYPE: C types whose methods cannot be reassigned
_LEAF_TYPES = frozenset([int, float, complex, str, bytes, bool, type(None), range, type(...)])
_ALWAYS_IMPORTED = ("collections",)  # its Python classes (Counter) are trusted results, so it is snapshotted
_MAX_DETAIL = 600
_COMPARE = {  # "in" takes its operands the other way round from operator.contains
    "in": lambda a, b: _operator.contains(b, a),
    "not in": lambda a, b: not _operator.contains(b, a),
    "==": _operator.eq,
    "!=": _operator.ne,
    "<": _operator.lt,
    "<=": _operator.le,
    ">": _operator.gt,
    ">=": _operator.ge,
}
_BINARY = {
    "+": _operator.add, "-": _operator.sub, "*": _operator.mul, "@": _operator.matmul, "/": _operator.truediv,
    "//": _operator.floordiv, "%": _operator.mod, "**": _operator.pow, "<<": _operator.lshift,
    ">>": _operator.rshift, "|": _operator.or_, "^": _operator.xor, "&": _operator.and_,
}  # fmt: skip

# Imports that hand out frames, raw memory, fresh interpreters without this hook, or processes.
_BLOCKED_IMPORTS = frozenset(
    [
        "ctypes", "_ctypes", "signal", "_signal", "_posixsubprocess", "_xxsubinterpreters", "_xxinterpchannels",
        "_testcapi", "_testinternalcapi", "_testbuffer", "_testmultiphase", "_testimportmultiple",
        "_testsinglephase", "_testclinic", "_xxtestfuzz",
    ]
)  # fmt: skip
_BLOCKED_IMPORTS_STRICT = frozenset(["socket", "_socket", "ssl", "_ssl"])
# Events that hand out frames or objects, forge code, or start processes (a fork would multiply the memory
# limit, an exec'd program would run without this hook).
_BLOCKED_EVENTS = frozenset(
    [
        "sys._current_frames", "sys.settrace", "sys.setprofile", "sys.addaudithook", "gc.get_objects",
        "gc.get_referrers", "gc.get_referents", "code.__new__", "os.fork", "os.forkpty", "os.exec",
        "os.posix_spawn", "os.spawn", "os.system", "subprocess.Popen", "ctypes.dlopen",
    ]
)  # fmt: skip
_BLOCKED_EVENTS_STRICT = frozenset(
    ["socket.__new__", "socket.connect", "socket.bind", "os.link", "os.symlink"]
)
_FRAME_ATTRS = frozenset(["tb_frame", "gi_frame", "cr_frame", "ag_frame"])
# event -> indices of the args that are paths the event writes to (strict mode confines them to the workdir)
_WRITE_EVENTS = {
    "os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "os.rename": (0, 1), "os.chmod": (0,),
    "os.chown": (0,), "os.truncate": (0,), "os.utime": (0,), "os.setxattr": (0,), "os.removexattr": (0,),
    "os.chflags": (0,), "os.lchflags": (0,), "os.lchmod": (0,), "shutil.rmtree": (0,),
}  # fmt: skip
_READ_EVENTS = {"os.listdir": 0, "os.scandir": 0}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC


_Blocked = RuntimeError  # what the audit hook raises (built in, so details show its message)


def _text(value: object) -> str:
    """``str(value)`` on one line, cut to ``_MAX_DETAIL`` (only ever called on harness-made or built-in values)."""
    return " ".join(str(value).split())[:_MAX_DETAIL]


def _exc_detail(exc: BaseException) -> str:
    """``"<Type>: <message>"`` without running candidate code: the message only for built-in exception types."""
    cls = _type(exc)
    name = _type_name(cls)
    if isinstance(exc, SyntaxError) and cls.__flags__ & _IMMUTABLE_FLAG:  # raised by compile()
        return _text(f"{name}: {exc.msg} (line {exc.lineno})")
    if not (cls.__flags__ & _IMMUTABLE_FLAG) or not all(_type(a) in _LEAF_TYPES for a in exc.args):
        return _text(name)
    message = str(exc)
    return _text(f"{name}: {message}" if message else name)


# --------------------------------------------------------------------------------------------- checked values


def _snapshot_types(modules: dict[str, object]) -> dict[type, tuple]:
    """Python classes of the tests' modules -> (mro, each Python class's namespace), to trust their instances."""
    trusted = {}
    for module in modules.values():
        for value in list(vars(module).values()):
            if _type(value) is type and not (value.__flags__ & _IMMUTABLE_FLAG):
                mro = _type_mro(value)
                mutable = [k for k in mro if not (k.__flags__ & _IMMUTABLE_FLAG)]
                trusted[value] = (mro, [(k, dict(_type_dict(k))) for k in mutable])
    return trusted


def _make_checks(trusted: dict[type, tuple]):
    """The test namespace's ``_sbx_cmp`` and ``_sbx_bin``: comparisons and arithmetic on built-in data only.

    These are where a test hands its expected values to whatever the program returned (``__eq__``, ``__sub__``,
    ...), so both operands must be built-in data, recursively, and are used as private copies.
    """

    missing = object()

    def unchanged(cls: type) -> bool:
        """No base, method or attribute of the class was replaced, added or removed since the snapshot."""
        mro, namespaces = trusted[cls]
        if _type_mro(cls) is not mro:
            return False
        for klass, saved in namespaces:
            current = _type_dict(klass)
            if _len(current) != _len(saved) or not all(
                current.get(n, missing) is v for n, v in saved.items()
            ):
                return False
        return True

    def untrusted(value: object):
        return _AssertionError(
            f"untrusted value of type {_text(_type_name(_type(value)))} in a test comparison"
        )

    def copy(value, memo: dict):
        """A private deep copy of built-in data (the original could change under a candidate thread)."""
        cls = _type(value)
        if cls in _LEAF_TYPES:
            return value
        key = _id(value)
        if key in memo:
            return memo[key]
        if cls is list:
            out = memo[key] = []
            list.extend(out, [copy(v, memo) for v in value])
        elif cls is dict or cls is defaultdict or cls is OrderedDict:  # defaultdict compares as a dict
            out = memo[key] = OrderedDict() if cls is OrderedDict else {}
            for k, v in (OrderedDict.items if cls is OrderedDict else dict.items)(value):
                out[copy(k, memo)] = copy(v, memo)
        elif cls is tuple or cls is set or cls is frozenset or cls is deque or cls is bytearray:
            out = memo[key] = cls([copy(v, memo) for v in value])
        elif cls in trusted and unchanged(cls):  # e.g. collections.Counter: a copy of the same class
            if isinstance(value, dict):
                out = memo[key] = dict.__new__(cls)
                dict.update(out, [(copy(k, memo), copy(v, memo)) for k, v in dict.items(value)])
            elif isinstance(value, list):
                out = memo[key] = list.__new__(cls)
                list.extend(out, [copy(v, memo) for v in value])
            elif isinstance(value, (tuple, frozenset)):
                out = memo[key] = (tuple if isinstance(value, tuple) else frozenset).__new__(
                    cls, [copy(v, memo) for v in value]
                )
            else:
                raise untrusted(value)
        else:
            raise untrusted(value)
        return out

    def cmp1(op: str, a, b) -> bool:
        if op == "is":
            return a is b
        if op == "is not":
            return a is not b
        return _COMPARE[op](copy(a, {}), copy(b, {}))

    def cmp(left, ops: tuple, rights: tuple):
        """``left op0 rights[0] op1 rights[1]() ...``: later operands are thunks, as a chain short-circuits."""
        right = rights[0]
        result = cmp1(ops[0], left, right)
        for i in range(1, _len(ops)):
            if not result:
                return result
            left, right = right, rights[i]()
            result = cmp1(ops[i], left, right)
        return result

    def binop(op: str, a, b):
        return _BINARY[op](copy(a, {}), copy(b, {}))

    return cmp, binop


# ----------------------------------------------------------------------------------------------- audit hook


def _normpath(path, cwd: str) -> str:
    """The absolute, ``..``-free form of a str/bytes path; symlinks need no resolving as none can be made."""
    if _type(path) is bytes:
        path = bytes.decode(path, "utf-8", "surrogateescape")
    if _type(path) is not str:
        raise _Blocked(f"sandbox: path of type {_type_name(_type(path))} not allowed")
    if not str.startswith(path, "/"):
        path = cwd + "/" + path
    parts: list[str] = []
    for part in str.split(path, "/"):
        if part == "..":
            if parts:
                parts.pop()
        elif part and part != ".":
            parts.append(part)
    return "/" + "/".join(parts)


def _make_hook(strict: bool, workdir: str, read_roots: tuple[str, ...], own_pid: int):
    blocked_imports = _BLOCKED_IMPORTS | (_BLOCKED_IMPORTS_STRICT if strict else frozenset())
    blocked_events = _BLOCKED_EVENTS | (_BLOCKED_EVENTS_STRICT if strict else frozenset())

    def under(path: str, roots: tuple[str, ...]) -> bool:
        return any(path == r or str.startswith(path, r + "/") for r in roots)

    def check_path(path, writing: bool) -> None:
        resolved = _normpath(path, getcwd())
        if not under(resolved, (workdir,) if writing else read_roots):
            raise _Blocked(f"sandbox: {'writing' if writing else 'reading'} {resolved} is not allowed")

    def hook(event: str, args: tuple) -> None:
        if event == "import":
            if str.partition(args[0], ".")[0] in blocked_imports:
                raise ImportError(f"sandbox: import of {args[0]} is blocked")
        elif event == "object.__getattr__":
            if args[1] in _FRAME_ATTRS:
                raise _Blocked(f"sandbox: {args[1]} is blocked")
        elif event == "sys._getframe":
            raise ValueError("sandbox: sys._getframe is blocked")  # stdlib callers catch ValueError
        elif event in blocked_events:
            raise _Blocked(f"sandbox: {event} is blocked")
        elif not strict:
            return
        elif event == "open":
            if _type(args[0]) is not int:
                if args[1] is None:  # os.open: dir fds would make relative paths escape the checks
                    raise _Blocked("sandbox: os.open is blocked")
                check_path(args[0], _bool(args[2] & _WRITE_FLAGS))
        elif event in _WRITE_EVENTS:
            for i in _WRITE_EVENTS[event]:
                if _type(args[i]) is not int:
                    check_path(args[i], True)
        elif event in _READ_EVENTS:
            path = args[_READ_EVENTS[event]]
            if _type(path) is not int:
                check_path("." if path is None else path, False)
        elif event in ("os.kill", "os.killpg") and args[0] != own_pid:
            raise _Blocked(f"sandbox: {event} of another process is blocked")

    return hook


# ---------------------------------------------------------------------------------------------------- main


def _apply_limits(limits: dict[str, int], uid: int) -> None:
    """Hard limits equal the soft ones, so the program cannot raise them back."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CPU, (limits["cpu_s"], limits["cpu_s"] + 1))
    for name in ("AS", "FSIZE", "NOFILE", "NPROC"):
        value = limits[name.lower()]
        resource.setrlimit(getattr(resource, f"RLIMIT_{name}"), (value, value))
    if uid:  # root inside bwrap: become the run's own uid so RLIMIT_NPROC counts, and lose every capability
        os.chown(".", uid, uid)
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)


def _import_test_modules(names: list[tuple[str, str]]) -> tuple[dict[str, object], list[tuple]]:
    """bound name -> module for the modules the tests use, and a snapshot of each module's namespace."""
    modules, snapshots = {}, []
    for bound, name in [*names, *((n, n) for n in _ALWAYS_IMPORTED)]:
        try:
            module = __import__(name)
        except ImportError:
            continue  # the test fails on its own with a NameError/ImportError
        modules[bound] = module
        if name not in ("sys", "builtins"):  # these change legitimately (sys.stdout, ...)
            snapshots.append((name, module, dict(vars(module))))
    return modules, snapshots


def _reason(exc: BaseException) -> str:
    """A failed assert is a wrong answer (a program can only raise one itself by failing), MemoryError is memory."""
    cls = _type(exc)
    return "wrong_answer" if cls is _AssertionError else "memory" if cls is _MemoryError else "runtime_error"


def _tampered(snapshots: list[tuple], sys_modules: dict) -> str:
    """The first module binding the program changed since the snapshot, or ""."""
    missing = object()
    for name, module, namespace in snapshots:
        if sys_modules.get(name) is not module:
            return f"sys.modules[{name!r}]"
        current = vars(module)
        for key, value in namespace.items():
            if current.get(key, missing) is not value:
                return f"{name}.{key}"
    return ""


def _run(payload: dict, report) -> None:
    """Candidate in N, then setup and each test unit in T; calls ``report(reason, passed, total, detail)``."""
    units = payload["units"]
    try:
        setup = compile(payload["setup"], "<setup>", "exec")
        unit_codes = [compile(u, f"<test {i + 1}>", "exec") for i, u in enumerate(units)]
    except BaseException as e:
        return report("sandbox_error", 0, len(units), f"tests do not compile: {_exc_detail(e)}")
    modules, snapshots = _import_test_modules(payload["modules"])
    cmp, binop = _make_checks(_snapshot_types(modules))
    sys_modules = sys.modules
    strict = payload["strict"]
    blocked = _BLOCKED_IMPORTS | (_BLOCKED_IMPORTS_STRICT if strict else frozenset())
    for name in list(sys_modules):  # e.g. _signal, imported at startup, must be imported again to be had
        if name.partition(".")[0] in blocked:
            del sys_modules[name]
    hook = _make_hook(strict, payload["workdir"], tuple(payload["read_roots"]), getpid())
    sys.addaudithook(hook)
    # ---- from here on, candidate code may run at any call into its objects ----
    try:
        program = compile(payload["program"], "<candidate>", "exec")
    except _MemoryError:
        return report("memory", 0, len(units), "MemoryError while compiling the program")
    except BaseException as e:
        return report("syntax_error", 0, len(units), _exc_detail(e))
    module = types.ModuleType("__candidate__")  # a real module: dataclasses and pickle look classes up there
    candidate = vars(module)
    candidate["__builtins__"] = builtins  # the real module: never the harness's private copy
    sys_modules["__candidate__"] = module
    try:
        exec(program, candidate)
    except BaseException as e:
        return report(_reason(e), 0, len(units), f"while defining the program: {_exc_detail(e)}")
    entry = payload["entry_point"]
    tests = {k: v for k, v in candidate.items() if k not in _RAW_BUILTINS or k == entry}
    tests.update(modules)
    tests.update(__builtins__=dict(_RAW_BUILTINS), __name__="tests", _sbx_cmp=cmp, _sbx_bin=binop)
    passed = 0
    for i, code in enumerate([setup, *unit_codes]):
        try:
            exec(code, tests)
        except BaseException as e:
            where = "setup" if i == 0 else f"test {i}/{len(units)} `{payload['labels'][i - 1]}`"
            return report(_reason(e), passed, len(units), f"{where}: {_exc_detail(e)}")
        passed += i > 0
    changed = _tampered(snapshots, sys_modules)
    if changed:
        return report("runtime_error", passed, len(units), f"the program changed {changed}")
    return report("passed", passed, len(units), "")


def main(payload: dict) -> None:
    nonce, fd = payload.pop("nonce"), payload["report_fd"]
    vars(sys.modules["__main__"]).clear()  # the bootstrap's names (the payload dict among them)
    set_inheritable(fd, False)
    null = os_open("/dev/null", os.O_RDONLY)
    dup2(null, 0)
    close(null)
    _apply_limits(payload["limits"], payload["uid"])
    pid = getpid()
    write(fd, f"{nonce} started {pid}\n".encode())

    def report(reason: str, passed: int, total: int, detail: str) -> None:
        if getpid() != pid:  # a forked copy of the harness never speaks for the run
            _exit(1)
        line = f"{nonce} verdict {pid} {reason} {passed} {total} {_text(detail)}\n"
        try:
            write(fd, line.encode("utf-8", "replace"))  # one write under PIPE_BUF: atomic
        finally:
            _exit(0)

    _run(payload, report)
    report("sandbox_error", 0, 0, "the harness returned without a verdict")


if __name__ == "__sandbox_harness__":
    main(PAYLOAD)  # type: ignore[name-defined]  # noqa: F821 (injected by the bootstrap)
