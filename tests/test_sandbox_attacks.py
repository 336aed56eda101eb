"""Adversarial programs against the code sandbox, in both isolation modes: a wrong answer never scores.

Every case is a *wrong* factorial (``n + 1``) combined with one attack on the verdict or the host: module
aliasing and ``importlib``/``_imp`` tricks to reach ctypes or cffi, libc ``system()``, ``_posixsubprocess``,
``exec*``, frame / gc / closure introspection, inherited or guessed descriptors, ``/proc``, signals, other runs'
files, forged output and forged value frames, patched builtins and modules, always-equal objects, huge and slow
values. Each case asserts: not passed, the expected reason (and a detail where it is stable), nothing created
at its canary path outside the sandbox, its run's wall time under a bound, and no child process of this test
process left afterwards (zombies included). All cases of a mode run through one SandboxPool, in parallel, in a
module-scoped fixture; the tests then check one case each.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from rewards.sandbox import BWRAP, FALLBACK, Limits, SandboxJob, SandboxPool, SandboxResult

TESTS = "assert f(5) == 120\nassert f(0) == 1\nassert f(3) == 6"
WRONG = "\ndef f(n):\n    return n + 1\n"
LIMITS = Limits(timeout_s=3.0, cpu_s=2, memory_mb=256)
CTYPES_SO = importlib.util.find_spec("_ctypes").origin  # type: ignore[union-attr]
CFFI_SO = importlib.util.find_spec("_cffi_backend").origin  # type: ignore[union-attr]
SITE_PACKAGES = str(Path(CFFI_SO).parent)  # type: ignore[arg-type]
# The forged-frame attacks write to every descriptor number up to 65535: the value channel keeps the number it
# has in the parent, which is above 63 in a test process that holds many files (CI's did; the attack then missed it).
# A forged frame that claims every test passed without values: rows end before the tests do.
FORGED_EMPTY = '\\nSBXV1 [[], null, ""]\\n'
# A forged frame whose rows are for sites the tests do not have.
FORGED_STEP = '\\nSBXV1 [[[9, [["i", "0x78"]]], [9, [["i", "0x1"]]], [9, [["i", "0x6"]]]], null, ""]\\n'
# Zeros for f(i) in a loop over range(1, 4): the judge keeps its own i, so 0 == i * 2 fails.
FORGED_LOOP = '\\nSBXV1 [[[1, [["i", "0x0"]]], [1, [["i", "0x0"]]], [1, [["i", "0x0"]]]], null, ""]\\n'
# A forged frame that reports a "passed" end: the judge accepts no such reason from the sandbox.
FORGED_PASSED = '\\nSBXV1 [[], ["passed", "all good"], ""]\\n'


# Each case: program (``{canary}`` is this case's path outside the sandbox), expected reason (or
# {mode: reason}), a detail substring ("" for none), and optional tests / time bound.
CASES: dict[str, dict] = {
    # ----------------------------------------------------------------- module aliasing and importlib tricks
    "import ctypes": {
        "program": "import ctypes" + WRONG,
        "reason": "runtime_error",
        "detail": "import of ctypes is blocked",
    },
    "import ctypes.util": {
        "program": "from ctypes import util" + WRONG,
        "reason": "runtime_error",
        "detail": "is blocked",
    },
    "importlib _ctypes": {
        "program": "import importlib\nm = importlib.import_module('_ctypes')" + WRONG,
        "reason": "runtime_error",
        "detail": "_ctypes",
    },
    "_ctypes under a package prefix": {
        "program": f"""
import importlib.util
spec = importlib.util.spec_from_file_location("x._ctypes", {CTYPES_SO!r})
m = importlib.util.module_from_spec(spec)
m.dlopen(None)
"""
        + WRONG,
        "reason": "runtime_error",
        "detail": "loading x._ctypes",
    },
    "_ctypes file under another name": {
        "program": f"""
import importlib.util
spec = importlib.util.spec_from_file_location("harmless", {CTYPES_SO!r})
importlib.util.module_from_spec(spec)
"""
        + WRONG,
        "reason": "runtime_error",
        "detail": "is blocked",
    },
    "_imp.create_dynamic directly": {
        "program": f"""
import _imp, types
m = _imp.create_dynamic(types.SimpleNamespace(name="y._ctypes", origin={CTYPES_SO!r}))
"""
        + WRONG,
        "reason": "runtime_error",
        "detail": "loading y._ctypes",
    },
    "fresh _imp from create_builtin": {
        "program": """
import _imp
from importlib.machinery import ModuleSpec
fresh = _imp.create_builtin(ModuleSpec("_imp", None))
"""
        + WRONG,
        "reason": "runtime_error",
        "detail": "loading _imp",
    },
    "guard's globals hold no loader": {
        "program": """
import _imp
g = _imp.create_dynamic.__globals__
assert not any(getattr(v, "__name__", "") == "create_dynamic" and v is not _imp.create_dynamic for v in g.values())
"""
        + WRONG,
        "reason": "wrong_answer",
        "detail": "test 1/3",
    },
    "ctypes from sys.modules": {
        "program": """
import sys
found = [m for m in list(sys.modules.values()) if hasattr(m, "CFuncPtr") or hasattr(m, "CDLL")]
if found:
    found[0].CDLL(None).system(b"touch {canary}")
"""
        + WRONG,
        "reason": "wrong_answer",
        "detail": "test 1/3",
    },
    "ctypes types from object.__subclasses__": {
        # Without bwrap the interpreter that runs the program never loaded _ctypes (stage one did, then exec'd);
        # under bwrap the harness did, and a wild write through its types kills the run inside the sandbox.
        "program": """
def f(n):
    cdata = [c for c in object.__subclasses__() if c.__name__ == "_CData"]
    if not cdata:
        return n + 1
    kinds = {c.__name__: c for c in cdata[0].__subclasses__()}
    class c_long(kinds["_SimpleCData"]):
        _type_ = "l"
    class LongPointer(kinds["_Pointer"]):
        _type_ = c_long
    LongPointer(c_long(0))[1 << 40] = 120
    return 120
""",
        "reason": {BWRAP: "runtime_error", FALLBACK: "wrong_answer"},
        "detail": "",
    },
    "cffi from site-packages": {
        "program": f"""
import sys
sys.path.append({SITE_PACKAGES!r})
import cffi
ffi = cffi.FFI()
ffi.cdef("int system(const char *);")
ffi.dlopen(None).system(b"touch {{canary}}")
"""
        + WRONG,
        "reason": "runtime_error",
        "detail": "",
    },
    "_cffi_backend by file": {
        "program": f"""
import importlib.util
spec = importlib.util.spec_from_file_location("z._cffi_backend", {CFFI_SO!r})
importlib.util.module_from_spec(spec)
"""
        + WRONG,
        "reason": "runtime_error",
        "detail": "",
    },
    # ------------------------------------------------------------------- processes: _posixsubprocess, exec*
    "_posixsubprocess.fork_exec": {
        "program": "import _posixsubprocess" + WRONG,
        "reason": "runtime_error",
        "detail": "import of _posixsubprocess is blocked",
    },
    "subprocess.run": {
        "program": "import subprocess\nsubprocess.run(['sh', '-c', 'touch {canary}'])" + WRONG,
        "reason": "runtime_error",
        "detail": "blocked",
    },
    "os.system": {
        "program": "import os\nos.system('touch {canary}')" + WRONG,
        "reason": "runtime_error",
        "detail": "os.system is blocked",
    },
    "os.execv": {
        "program": "import os\nos.execv('/bin/sh', ['sh', '-c', 'touch {canary}'])" + WRONG,
        "reason": "runtime_error",
        "detail": "os.exec is blocked",
    },
    "os.execve on a descriptor": {
        "program": "import os\nos.execve(os.open('/bin/sh', os.O_RDONLY), ['sh', '-c', 'touch {canary}'], {{}})"
        + WRONG,
        "reason": "runtime_error",
        "detail": "",
    },
    "os.posix_spawn": {
        "program": "import os\nos.posix_spawn('/bin/sh', ['sh', '-c', 'touch {canary}'], {{}})" + WRONG,
        "reason": "runtime_error",
        "detail": "os.posix_spawn is blocked",
    },
    "os.fork": {
        "program": "import os\nif os.fork() == 0:\n    os._exit(0)" + WRONG,
        "reason": "runtime_error",
        "detail": "os.fork is blocked",
    },
    # ------------------------------------------------------------------ frame / gc / closure introspection
    "sys._getframe": {
        "program": "import sys\ndef f(n):\n    return sys._getframe(1).f_globals",
        "reason": "runtime_error",
        "detail": "sys._getframe is blocked",
    },
    "traceback frames": {
        "program": "def f(n):\n    try:\n        1 / 0\n    except ZeroDivisionError as e:\n        return e.__traceback__.tb_frame.f_back.f_locals",
        "reason": "runtime_error",
        "detail": "tb_frame is blocked",
    },
    "generator gi_frame": {
        "program": "def g():\n    yield 1\ndef f(n):\n    return g().gi_frame.f_back",
        "reason": "runtime_error",
        "detail": "gi_frame is blocked",
    },
    "gc.get_referrers": {
        "program": "import gc\ndef f(n):\n    return gc.get_referrers(f)",
        "reason": "runtime_error",
        "detail": "gc.get_referrers is blocked",
    },
    "gc.get_objects": {
        "program": "import gc\nobjs = gc.get_objects()" + WRONG,
        "reason": "runtime_error",
        "detail": "gc.get_objects is blocked",
    },
    "inspect.currentframe": {
        "program": "import inspect\ndef f(n):\n    return inspect.currentframe().f_back.f_locals",
        "reason": "runtime_error",
        "detail": "sys._getframe is blocked",
    },
    "closures of reachable functions": {
        "program": """
import sys, types
def f(n):
    for module in list(sys.modules.values()):
        for value in list(vars(module).values()):
            if type(value) is not types.FunctionType:
                continue
            for cell in value.__closure__ or ():
                try:
                    content = cell.cell_contents
                except ValueError:
                    continue
                if type(content) is list:
                    content.clear()
    return n + 1
""",
        "reason": "wrong_answer",
        "detail": "test 1/3",
    },
    # ------------------------------------------------------------------------ descriptors, /proc, other runs
    "forged frames on every descriptor": {
        "program": "import os\nfor fd in range(3, 65536):\n    try:\n        os.write(fd, b'"
        + FORGED_PASSED
        + "')\n    except OSError:\n        pass"
        + WRONG,
        "reason": "wrong_answer",
        "detail": "test 1/3",
    },
    "forged empty frame, then exit": {
        "program": "import os\nfor fd in range(3, 65536):\n    try:\n        os.write(fd, b'"
        + FORGED_EMPTY
        + "')\n    except OSError:\n        pass\nos._exit(0)"
        + WRONG,
        "reason": "runtime_error",
        "detail": "end before the tests do",
    },
    "forged frame out of step, then exit": {
        "program": "import os\nfor fd in range(3, 65536):\n    try:\n        os.write(fd, b'"
        + FORGED_STEP
        + "')\n    except OSError:\n        pass\nos._exit(0)"
        + WRONG,
        "reason": "runtime_error",
        "detail": "out of step",
    },
    "forged 'passed' end, then exit": {
        "program": "import os\nfor fd in range(3, 65536):\n    try:\n        os.write(fd, b'"
        + FORGED_PASSED
        + "')\n    except OSError:\n        pass\nos._exit(0)"
        + WRONG,
        "reason": "runtime_error",
        "detail": "unknown reason",
    },
    "forged values for a trusted loop": {
        "program": "import os\nfor fd in range(3, 65536):\n    try:\n        os.write(fd, b'"
        + FORGED_LOOP
        + "')\n    except OSError:\n        pass\nos._exit(0)"
        + WRONG,
        "tests": "for i in range(1, 4):\n    assert f(i) == i * 2",
        "reason": "wrong_answer",
        "detail": "test 1/1",
    },
    "forged rows cut short for a trusted loop": {
        "program": "import os\nfor fd in range(3, 65536):\n    try:\n        os.write(fd, b'"
        + FORGED_EMPTY
        + "')\n    except OSError:\n        pass\nos._exit(0)"
        + WRONG,
        "tests": "for i in range(1, 4):\n    assert f(i) == i * 2",
        "reason": "runtime_error",
        "detail": "end before the tests do",
    },
    "listing /proc/self/fd": {
        "program": "import os\nfds = os.listdir('/proc/self/fd')" + WRONG,
        "reason": "runtime_error",
        "detail": "",
    },
    "/proc/1/environ": {
        "program": "def f(n):\n    try:\n        return len(open('/proc/1/environ', 'rb').read())\n    except Exception:\n        return n + 1",
        "reason": "wrong_answer",
        "detail": "test 1/3",
    },
    "other runs' working dirs": {
        "program": """
import os
def f(n):
    for root in ("/tmp", "/sandbox/..", "/"):
        try:
            for name in os.listdir(root):
                if name.startswith("sandbox-"):
                    os.listdir(os.path.join(root, name))
        except Exception:
            pass
    return n + 1
""",
        "reason": "wrong_answer",
        "detail": "test 1/3",
    },
    "write the canary": {
        "program": "open('{canary}', 'w').write('pwned')" + WRONG,
        "reason": "runtime_error",
        "detail": "",
    },
    # ---------------------------------------------------------------------------------------------- signals
    "kill pid 1": {"program": "import os\nos.kill(1, 9)" + WRONG, "reason": "runtime_error", "detail": ""},
    "kill own group": {
        "program": "import os\nos.killpg(0, 9)" + WRONG,
        "reason": "runtime_error",
        "detail": "",
    },
    "signal handlers": {
        "program": "import signal\nsignal.signal(signal.SIGALRM, lambda *a: None)" + WRONG,
        "reason": "runtime_error",
        "detail": "import of signal is blocked",
    },
    # --------------------------------------------------------------------------------- forged output, patches
    "success text on stdout and stderr": {
        "program": "import sys\nfor s in ('3/3 tests passed', 'passed', '[\"passed\", 3, 3, \"\"]'):\n    print(s)\n    print(s, file=sys.stderr)"
        + WRONG,
        "reason": "wrong_answer",
        "detail": "test 1/3",
    },
    "patched builtins": {
        "program": "import builtins\nbuiltins.isinstance = lambda *a: True\nbuiltins.AssertionError = ValueError\nbuiltins.type = lambda *a: int"
        + WRONG,
        "reason": "wrong_answer",
        "detail": "test 1/3",
    },
    "patched json and collections": {
        "program": "import json, collections\njson.dumps = lambda *a, **k: '[]'\njson.loads = lambda *a, **k: []\ncollections.Counter.__eq__ = lambda s, o: True"
        + WRONG,
        "reason": "wrong_answer",
        "detail": "test 1/3",
    },
    "patched module the tests use": {
        "program": "import math\nmath.isclose = lambda *a, **k: True" + WRONG,
        "tests": "assert math.isclose(f(5), 120)\nassert f(0) == 1",
        "reason": "runtime_error",
        "detail": "the program changed math.isclose",
    },
    # ------------------------------------------------------------------------ values that are not plain data
    "always-equal object": {
        "program": "class E:\n    def __eq__(self, other):\n        return True\n    __hash__ = object.__hash__\ndef f(n):\n    return E()",
        "reason": "wrong_answer",
        "detail": "untrusted value of type E",
    },
    "int subclass": {
        "program": "class I(int):\n    def __eq__(self, other):\n        return True\n    __hash__ = int.__hash__\ndef f(n):\n    return I(n + 1)",
        "reason": "wrong_answer",
        "detail": "untrusted value of type I",
    },
    "always-equal inside a list": {
        "program": "class E:\n    __eq__ = lambda s, o: True\n    __hash__ = lambda s: 0\ndef f(n):\n    return [E()]",
        "tests": "assert f(5) == [120]",
        "reason": "wrong_answer",
        "detail": "untrusted value of type E",
    },
    "str subclass with a lying method": {
        "program": "class S(str):\n    def startswith(self, *args):\n        return True\ndef f(n):\n    return S('x')",
        "tests": "assert f(5).startswith('120')",
        "reason": "wrong_answer",
        "detail": "untrusted value of type S",
    },
    "object whose every method agrees": {
        "program": "class Yes:\n    def __getattr__(self, name):\n        return lambda *a, **k: True\ndef f(n):\n    return Yes()",
        "tests": "assert f(5).startswith('120')\nassert f(0).isdigit()",
        "reason": "wrong_answer",
        "detail": "untrusted value of type Yes",
    },
    "raises AssertionError itself": {
        "program": "def f(n):\n    raise AssertionError('skip me')",
        "reason": "wrong_answer",
        "detail": "",
    },
    "exits inside f": {
        "program": "import os\ndef f(n):\n    os._exit(0)",
        "reason": "runtime_error",
        "detail": "exited with status 0",
    },
    # ----------------------------------------------------------------------------------- huge and slow values
    "huge int past the value cap": {
        "program": "def f(n):\n    return 1 << (8 << 20)",  # 2 MiB of hex digits
        "reason": "output_too_large",
        "detail": "",
    },
    "self-referencing list": {
        "program": "def f(n):\n    x = []\n    x.append(x)\n    return x",
        "reason": "runtime_error",
        "detail": "too large to report",
    },
    "endless generator": {
        "program": "import itertools\ndef f(n):\n    return itertools.count()",
        "reason": "runtime_error",
        "detail": "too large to report",
    },
    "slow value for the judge": {
        "program": "def f(n):\n    return 10 ** 7 + n",
        "tests": "assert f(5) ** f(5) == 120 ** 120",
        "reason": "timeout",
        "detail": "judging",
        "bound_s": 10.0,
    },
    "printing gigabytes": {
        "program": "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)" + WRONG,
        "reason": "output_too_large",
        "detail": "stdout went past",
    },
}


def _children(pid: int) -> list[int]:
    """This process's child pids, zombies included (``/proc/<pid>/task/*/children``)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


@pytest.fixture(scope="module", params=[BWRAP, FALLBACK])
def attacked(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """Every case run once in this mode: (mode, canary dir, {case: result}, children left afterwards)."""
    mode = request.param
    canaries = tmp_path_factory.mktemp(f"canaries-{mode.replace('+', '-')}")
    jobs = []
    for i, case in enumerate(CASES.values()):
        program = (
            case["program"]
            .replace("{canary}", str(canaries / f"case-{i}"))
            .replace("{{", "{")
            .replace("}}", "}")
        )
        jobs.append(SandboxJob(program, case.get("tests", TESTS), limits=LIMITS))
    before = set(_children(os.getpid()))
    # the value channels numbered above 100, as in a busy test process (CI's)
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(100)]
    try:
        with SandboxPool(workers=4, isolation=mode) as pool:
            results = pool.map(jobs)
    finally:
        for fd in held:
            os.close(fd)
    left = set(_children(os.getpid())) - before  # at once: every child is reaped before map returns
    return mode, canaries, dict(zip(CASES, results, strict=True)), sorted(left)


@pytest.mark.parametrize("name", list(CASES))
def test_attack_fails_without_touching_the_host(attacked, name: str):
    mode, canaries, results, left = attacked
    case, result = CASES[name], results[name]
    assert isinstance(result, SandboxResult) and result.isolation == mode
    assert not result.passed, result
    expected = case["reason"] if isinstance(case["reason"], str) else case["reason"][mode]
    assert result.reason == expected, result
    assert case["detail"] in result.details, result.details
    assert not (canaries / f"case-{list(CASES).index(name)}").exists()
    assert result.seconds < case.get("bound_s", LIMITS.timeout_s + 2.0), result
    assert left == [], f"child processes left behind: {left}"


def test_there_are_enough_attacks():
    assert len(CASES) >= 30
