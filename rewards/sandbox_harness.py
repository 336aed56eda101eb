"""The sandbox side of ``rewards.sandbox``: runs the candidate and its tests' value requests, reports plain data.

The host never imports this file to run it: ``rewards.sandbox`` compiles it once and sends the code object, with
the run's payload, to the child's stdin; a one-line bootstrap executes it in a private globals dict with a copy
of the pristine builtins. This file:

1. applies the rlimits, switches to the run's uid (root on the host + bwrap), installs the seccomp filter
   (``rewards/seccomp.py``: no exec, fork or process, even from libc) and marks the run started; without
   bwrap, stage one (``seccomp.launch``) did the limits and the filter before exec'ing this interpreter;
2. imports the modules the tests use and snapshots them, drops blocked modules from ``sys.modules``, routes
   ``_imp``'s extension loaders through the audit hook and arms the hook (hooks cannot be removed): it blocks
   ctypes / cffi / ``_posixsubprocess`` / signals / test modules by any component of their name (and
   extension modules by file name), frame and gc introspection, code-object construction, fork and exec; in
   ``strict`` mode (no bwrap) also sockets, killing other processes, and file access outside the working dir
   (writes) or the interpreter's prefix (reads);
3. runs the candidate in namespace N, then the tests' sandbox units (``rewards/split_tests.py``) in namespace T
   (N's names, the pristine builtins, the tests' modules): the statements that involve the program, and
   ``_sbx_row(site, *thunks)`` / ``_sbx_loop(site, iterable)``, which record each requested value as plain data
   (``rewards/plain.py``) or the exception it raised;
4. writes one frame ``\\nSBXV1 <json>\\n`` (rows, how the run ended, a changed module
   binding if any) to the report fd and calls ``os._exit(0)``.

Nothing here decides a verdict: the trusted judge (``rewards/judge.py``) does, from the frame alone. The
program can write its own frames; that is no more than choosing the values it returns.
"""

from __future__ import annotations

import builtins
import os
import resource
import sys
import types  # before the hook is armed: importing it reads tb_frame, which the hook blocks
from itertools import islice
from os import _exit, close, dup2, getcwd, getpid, set_inheritable, write
from os import open as os_open
from types import SimpleNamespace

_RAW_BUILTINS = dict(vars(builtins))  # taken before any candidate code runs
_AssertionError, _MemoryError = AssertionError, MemoryError  # saved references, immune to rebinding
_type, _len = type, len
_type_dict = type.__dict__["__dict__"].__get__  # a class's own namespace, past any metaclass
_type_mro = type.__dict__["__mro__"].__get__
_type_name = type.__dict__["__name__"].__get__

_IMMUTABLE_FLAG = 1 << 8  # Py_TPFLAGS_IMMUTABLETYPE: C types whose methods cannot be reassigned
_LEAF_TYPES = frozenset([int, float, complex, str, bytes, bool, type(None), range, type(...)])
_ALWAYS_IMPORTED = ("collections",)  # its Counter is plain data; a patched Counter class is reported opaque
_MAX_DETAIL = 600
_MAX_LOOP = 100_000  # iterations of one test loop
_STARTED = b"\nSBXS\n"
_FRAME = b"\nSBXV1 "

# Modules that hand out raw memory or native calls, signals, fresh interpreters without this hook, or processes;
# blocked when any component of the imported name (or an extension file's name) is one of them.
_BLOCKED_IMPORTS = frozenset(
    [
        "ctypes", "_ctypes", "_ctypes_test", "cffi", "_cffi_backend", "signal", "_signal", "_posixsubprocess",
        "_xxsubinterpreters", "_xxinterpchannels", "_testcapi", "_testinternalcapi", "_testbuffer",
        "_testmultiphase", "_testimportmultiple", "_testsinglephase", "_testclinic", "_xxtestfuzz",
    ]
)  # fmt: skip
_BLOCKED_IMPORTS_STRICT = frozenset(["socket", "_socket", "ssl", "_ssl"])
# Events that hand out frames or objects, forge code, or start processes.
_BLOCKED_EVENTS = frozenset(
    [
        "sys._current_frames", "sys.settrace", "sys.setprofile", "sys.addaudithook", "gc.get_objects",
        "gc.get_referrers", "gc.get_referents", "code.__new__", "os.fork", "os.forkpty", "os.exec",
        "os.posix_spawn", "os.spawn", "os.system", "subprocess.Popen", "function.__new__",
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
# The replacements of _imp.create_dynamic / create_builtin: they only ask the hook, which holds the originals,
# so no attribute of theirs (__globals__, __closure__) leads to an unchecked loader.
_IMP_GUARDS = """
def create_dynamic(spec, file=None):
    out = []
    _audit("sandbox.load", "dynamic", spec, out)
    return out[0]
def create_builtin(spec):
    out = []
    _audit("sandbox.load", "builtin", spec, out)
    return out[0]
"""


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


def _reason(exc: BaseException) -> str:
    """An AssertionError is a wrong answer (the program can only fail by raising it), MemoryError is memory."""
    cls = _type(exc)
    return "wrong_answer" if cls is _AssertionError else "memory" if cls is _MemoryError else "runtime_error"


def _blocked(name, blocked: frozenset[str]) -> bool:
    return _type(name) is not str or any(part in blocked for part in str.split(name, "."))


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


def _make_loader(blocked: frozenset[str], originals: dict):
    """The hook's half of the ``_imp`` guards: check a (copied) spec's names, then call the original loader."""

    def load(kind: str, spec, out) -> None:
        name, origin = spec.name, getattr(spec, "origin", None)
        if _type(name) is not str or (origin is not None and _type(origin) is not str):
            raise ImportError("sandbox: a module spec's name and origin must be str")
        stem = str.partition(str.rpartition(origin or "", "/")[2], ".")[0]
        # a fresh copy of _imp itself would carry the unguarded loaders
        if _blocked(name, blocked) or (kind == "dynamic" and stem in blocked) or name == "_imp":
            raise ImportError(f"sandbox: loading {name} ({origin}) is blocked")
        copy = SimpleNamespace(name=name, origin=origin)  # no property can answer differently later
        list.append(out, originals[kind](copy))

    return load


def _make_hook(strict: bool, workdir: str, read_roots: tuple[str, ...], own_pid: int, load):
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
            if _blocked(args[0], blocked_imports):
                raise ImportError(f"sandbox: import of {args[0]} is blocked")
        elif event == "sandbox.load":
            load(*args)
        elif event == "object.__getattr__":
            if args[1] in _FRAME_ATTRS:
                raise _Blocked(f"sandbox: {args[1]} is blocked")
        elif event == "sys._getframe":
            raise ValueError("sandbox: sys._getframe is blocked")  # stdlib callers catch ValueError
        elif event in blocked_events or str.startswith(event, "ctypes."):
            raise _Blocked(f"sandbox: {event} is blocked")
        elif not strict:
            return
        elif event == "open":
            if _type(args[0]) is not int:
                if args[1] is None:  # os.open: dir fds would make relative paths escape the checks
                    raise _Blocked("sandbox: os.open is blocked")
                check_path(args[0], bool(args[2] & _WRITE_FLAGS))
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


def _guard_imp(blocked: frozenset[str]):
    """Replace ``_imp``'s loaders (they raise no audit event of their own) by guards; the loader for the hook."""
    import _imp

    originals = {"dynamic": _imp.create_dynamic, "builtin": _imp.create_builtin}
    guards: dict = {"__builtins__": {}, "_audit": sys.audit}
    exec(_IMP_GUARDS, guards)
    _imp.create_dynamic, _imp.create_builtin = guards["create_dynamic"], guards["create_builtin"]
    return _make_loader(blocked, originals)


# ------------------------------------------------------------------------------------------- test modules


def _import_test_modules(names: list[str]) -> tuple[dict[str, object], list[tuple]]:
    """name -> module for the modules the tests use, and a snapshot of each module's namespace."""
    modules, snapshots = {}, []
    for name in [*names, *_ALWAYS_IMPORTED]:
        try:
            module = __import__(name)
        except ImportError:
            continue  # the test fails on its own with a NameError/ImportError
        modules[name] = module
        if name not in ("sys", "builtins"):  # these change legitimately (sys.stdout, ...)
            snapshots.append((name, module, dict(vars(module))))
    return modules, snapshots


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


def _class_snapshot(cls: type):
    """``pristine(cls)``: True while no base, method or attribute of ``cls`` changed since this call."""
    mro = _type_mro(cls)
    saved = [(k, dict(_type_dict(k))) for k in mro if not (k.__flags__ & _IMMUTABLE_FLAG)]
    missing = object()

    def pristine(klass: type) -> bool:
        if klass is not cls or _type_mro(cls) is not mro:
            return False
        for k, namespace in saved:
            current = _type_dict(k)
            if _len(current) != _len(namespace) or not all(
                current.get(n, missing) is v for n, v in namespace.items()
            ):
                return False
        return True

    return pristine


# ------------------------------------------------------------------------------------------------ value rows


def _make_recorders(plain: dict, pristine):
    """``_sbx_row`` and ``_sbx_loop`` for the test namespace, and the rows they fill."""
    rows: list = []
    encode, too_big = plain["encode"], plain["TooBig"]

    def value_of(thunk) -> list:
        try:
            value = thunk()
        except BaseException as e:
            return ["e", _reason(e), _exc_detail(e)]
        try:
            return encode(value, pristine)
        except too_big as e:
            return ["e", "runtime_error", f"the value is too large to report: {_text(e.args[0])}"]
        except BaseException as e:
            return ["e", _reason(e), f"while reading the value: {_exc_detail(e)}"]

    def row(site: int, *thunks) -> None:
        list.append(rows, [site, [value_of(t) for t in thunks]])

    def loop(site: int, iterable) -> list:
        items = list(islice(iterable, _MAX_LOOP + 1))
        if _len(items) > _MAX_LOOP:
            raise RuntimeError(f"a test loop ran more than {_MAX_LOOP} times")
        list.append(rows, [site, [["i", hex(_len(items))]]])
        return items

    return row, loop, rows


# ---------------------------------------------------------------------------------------------------- main


def _apply_limits(limits: dict[str, int], uid: int) -> None:
    """Hard limits equal the soft ones (CPU: SIGXCPU at the limit, SIGKILL a second later), never raised again."""
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


def _install_seccomp(code) -> None:
    """No exec, fork or process from here on (``rewards/seccomp.py``); its ctypes leaves ``sys.modules`` later."""
    namespace: dict = {"__builtins__": dict(_RAW_BUILTINS), "__name__": "seccomp"}
    exec(code, namespace)
    namespace["install"]()


def _run(payload: dict, plain: dict) -> tuple[list, list | None, str]:
    """Candidate in N, then each sandbox unit in T: (rows, end: None or [reason, detail], changed module)."""
    units, labels = payload["units"], payload["labels"]
    total = len(labels)
    try:
        unit_codes = [compile(u, f"<test {i}>", "exec") for i, u in enumerate(units)]
    except BaseException as e:
        return [], ["sandbox_error", f"tests do not compile: {_exc_detail(e)}"], ""
    modules, snapshots = _import_test_modules(payload["modules"])
    pristine = _class_snapshot(modules["collections"].Counter)  # type: ignore[attr-defined]
    row, loop, rows = _make_recorders(plain, pristine)
    sys_modules = sys.modules
    strict = payload["strict"]
    blocked = _BLOCKED_IMPORTS | (_BLOCKED_IMPORTS_STRICT if strict else frozenset())
    load = _guard_imp(blocked)
    for name in list(sys_modules):  # e.g. _signal, imported at startup, must be imported again to be had
        if _blocked(name, blocked):
            del sys_modules[name]
    sys.addaudithook(_make_hook(strict, payload["workdir"], tuple(payload["read_roots"]), getpid(), load))
    # ---- from here on, candidate code may run at any call into its objects ----
    try:
        program = compile(payload["program"], "<candidate>", "exec")
    except _MemoryError:
        return [], ["memory", "MemoryError while compiling the program"], ""
    except BaseException as e:
        return [], ["syntax_error", _exc_detail(e)], ""
    module = types.ModuleType("__candidate__")  # a real module: dataclasses and pickle look classes up there
    candidate = vars(module)
    candidate["__builtins__"] = builtins  # the real module: never the harness's private copy
    sys_modules["__candidate__"] = module
    try:
        exec(program, candidate)
    except BaseException as e:
        return [], [_reason(e), f"while defining the program: {_exc_detail(e)}"], ""
    entry = payload["entry_point"]
    tests = {k: v for k, v in candidate.items() if k not in _RAW_BUILTINS or k == entry}
    tests.update(modules)
    tests.update(__builtins__=dict(_RAW_BUILTINS), __name__="tests", _sbx_row=row, _sbx_loop=loop)
    for i, code in enumerate(unit_codes):
        try:
            exec(code, tests)
        except BaseException as e:
            where = "setup" if i == 0 else f"test {i}/{total} `{labels[i - 1]}`"
            return rows, [_reason(e), f"{where}: {_exc_detail(e)}"], _tampered(snapshots, sys_modules)
    return rows, None, _tampered(snapshots, sys_modules)


def _frame(plain: dict, rows: list, end: list | None, changed: str, cap: int) -> bytes:
    """``[rows, end, changed module binding or ""]`` as a frame; past ``cap`` it becomes a failure."""
    to_json = plain["to_json"]
    data = str.encode(to_json([rows, end, changed]), "ascii")
    if _len(data) > cap:
        end = ["output_too_large", f"the tests' values went past {cap >> 10} KiB"]
        data = str.encode(to_json([[], end, changed]), "ascii")
    return _FRAME + data + b"\n"


def main(payload: dict) -> None:
    fd = payload["report_fd"]
    vars(sys.modules["__main__"]).clear()  # the bootstrap's names (the payload dict among them)
    set_inheritable(fd, False)
    null = os_open("/dev/null", os.O_RDONLY)
    dup2(null, 0)
    close(null)
    if not payload["staged"]:  # else stage one (rewards/seccomp.py's launch) set both before exec'ing us
        _apply_limits(payload["limits"], payload["uid"])
        _install_seccomp(
            payload["seccomp"]
        )  # OSError: the run ends without the started mark, a sandbox_error
    pid = getpid()
    write(fd, _STARTED)
    plain: dict = {"__builtins__": dict(_RAW_BUILTINS), "__name__": "plain"}
    exec(payload["plain"], plain)
    try:
        rows, end, changed = _run(payload, plain)
        data = _frame(plain, rows, end, changed, payload["report_cap"])
    except BaseException as e:  # a failure of the harness itself (or MemoryError while framing)
        reason = "memory" if _reason(e) == "memory" else "sandbox_error"
        data = _frame(plain, [], [reason, _exc_detail(e)], "", 1 << 20)
    if getpid() != pid:  # a forked copy of the harness never speaks for the run
        _exit(1)
    view = memoryview(data)
    while view:
        view = view[write(fd, view) :]
    _exit(0)


if __name__ == "__sandbox_harness__":
    main(PAYLOAD)  # type: ignore[name-defined]  # noqa: F821 (injected by the bootstrap)
