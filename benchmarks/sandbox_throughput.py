"""Sandboxed executions per second for trivial programs, and the reason each kind of bad program gets.

    python -m benchmarks.sandbox_throughput                              # bwrap, a worker per core
    python -m benchmarks.sandbox_throughput --workers 4 --n 400 --isolation rlimits+audit --out /tmp/sb.json

``--isolation rlimits+audit`` opts in to the fallback (not a security boundary) for the measurement.

Throughput: ``--n`` trivial programs (a one-line function, two asserts) through ``SandboxPool`` after a warm-up;
runs/s over the whole batch (every sandbox, then the judge processes that decide the verdicts) and each run's
latency (median, p90: its sandbox plus its own time in the judge and a share of the judge's start). A run mostly waits on the kernel (namespace
and process setup), so more workers than cores raises runs/s for trivial programs; for CPU-heavy programs it
stretches wall-clock time and so risks timeouts. Then one batch of failing and adversarial programs, each with
the reason it got and its seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

from rewards.sandbox import BWRAP, FALLBACK, Limits, SandboxJob, SandboxPool, isolation_status

GOOD = "def f(x):\n    return x + 1\n"
TESTS = "assert f(1) == 2\nassert f(5) == 6"
LIMITS = Limits(timeout_s=2.0, cpu_s=2, memory_mb=256)
CASES = {
    "trivial (passes)": GOOD,
    "wrong answer": "def f(x):\n    return x\n",
    "syntax error": "def f(x)\n    return x\n",
    "raises": "def f(x):\n    return x / 0\n",
    "infinite loop": "while True:\n    pass\n",
    "busy CPU in f": "def f(x):\n    while True:\n        x += 1\n",
    "fork bomb": "import os\nwhile True:\n    os.fork()\n",
    "thread bomb": "import threading, time\nfor _ in range(500):\n    threading.Thread(target=time.sleep, args=(9,)).start()\n",
    "memory bomb": "x = []\nwhile True:\n    x.append(' ' * 10 ** 6)\n",
    "prints gigabytes": "while True:\n    print('x' * 65536)\n",
    "sys.exit(0) first": "import sys\nsys.exit(0)\n" + GOOD,
    "os._exit(0) first": "import os\nos._exit(0)\n" + GOOD,
    "kills its parent": "import os\nos.kill(os.getppid(), 9)\n" + GOOD,
    "always-equal result": "class E:\n    def __eq__(self, other):\n        return True\ndef f(x):\n    return E()\n",
    "patches AssertionError": "import builtins\nbuiltins.AssertionError = ValueError\ndef f(x):\n    return 0\n",
    "writes /usr": "open('/usr/lib/pwned', 'w').write('x')\n" + GOOD,
    "opens a socket": "import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=1)\n" + GOOD,
    "walks frames": "import sys\ndef f(x):\n    return sys._getframe(1)\n",
}


def _throughput(pool: SandboxPool, n: int) -> dict:
    pool.map([SandboxJob(GOOD, TESTS, limits=LIMITS)] * pool.workers * 2)  # warm up (page cache, threads)
    start = time.monotonic()
    results = pool.map([SandboxJob(GOOD, TESTS, limits=LIMITS)] * n)
    elapsed = time.monotonic() - start
    latencies = sorted(r.seconds for r in results)
    return {
        "runs": n,
        "passed": sum(r.passed for r in results),
        "runs_per_s": n / elapsed,
        "latency_median_ms": 1000 * statistics.median(latencies),
        "latency_p90_ms": 1000 * latencies[int(0.9 * (n - 1))],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=200, help="trivial runs to time")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="concurrent sandboxes")
    parser.add_argument("--isolation", choices=[BWRAP, FALLBACK], default=BWRAP)
    parser.add_argument("--out", default="", help="also write the numbers as JSON here")
    args = parser.parse_args()
    best, why = isolation_status()
    isolation = args.isolation
    print(f"isolation: {isolation}  (this machine's best: {best}; {why})")
    with SandboxPool(workers=args.workers, isolation=isolation) as pool:
        throughput = _throughput(pool, args.n)
        print(
            f"trivial programs: {throughput['runs_per_s']:.1f} runs/s with {args.workers} workers on "
            f"{os.cpu_count()} cores ({throughput['passed']}/{args.n} passed; latency median "
            f"{throughput['latency_median_ms']:.0f} ms, p90 {throughput['latency_p90_ms']:.0f} ms)"
        )
        results = pool.map([SandboxJob(program, TESTS, limits=LIMITS) for program in CASES.values()])
    print(f"\n{'program':24s} {'reason':17s} {'s':>5s}  details")
    for name, r in zip(CASES, results, strict=True):
        print(f"{name:24s} {r.reason:17s} {r.seconds:5.2f}  {r.details[:90]}")
    if args.out:
        cases = {
            name: {"reason": r.reason, "seconds": r.seconds} for name, r in zip(CASES, results, strict=True)
        }
        record = {"isolation": isolation, "workers": args.workers, "cores": os.cpu_count(), **throughput}
        with open(args.out, "w") as f:
            json.dump({**record, "cases": cases}, f, indent=2)


if __name__ == "__main__":
    main()
