# The decision core alone: what one `Pool.choose` costs with 1,000 backends against 3, in process,
# under the pattern of load reports a front door sees (goal 2 of issue 5: "choosing must not scan the
# pool per request"). No sockets, no trio: `bench.py` measures the whole front door; this isolates the
# policy, so that a change to it can be judged in seconds and without the VM's noise of wrk runs.
#
# The pattern: 1,000 backends checked every 2 s while the front door redirects about 13,000 requests a
# second are some 26 redirects per load report, each report replacing a backend's load + redirects
# since with a fresh figure. Here every `--every`-th redirect is followed by a passing check of the
# next backend in turn (Pool.record_check, as the health checks call it), reporting load 0 ("whole")
# or a fractional load ("fractional": keys then differ per backend, the policy's worst case).
#
# Each figure is the best of `--rounds` runs of `--redirects` choices (the least disturbed one); the
# ratio compares each pool with the 3-backend pool of the same pattern, timed in the same run.
#
#   python benchmarks/choose.py [--redirects 300000] [--rounds 5] [--every 26]

import argparse
import platform
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the dispatcher of this checkout

from dispatcher.core.pool import CheckResult, Pool
from dispatcher.settings.config import HealthSettings, parse_backend

SIZES = (3, 1000)
PATTERNS = ("whole", "fractional")


def pool_of(size: int) -> Pool:
    """`size` backends, all up (two passing checks each: rise 2), load 0."""
    specs = [
        parse_backend("bench", f"http://10.0.{i // 250}.{i % 250}:8080", f"b{i:04d}") for i in range(size)
    ]
    pool = Pool(specs, HealthSettings())
    for backend in pool.backends:
        for _ in range(2):
            pool.record_check(backend, CheckResult(True, 0.001, load=0.0), 0.0)
    return pool


def nanoseconds_per_choice(size: int, pattern: str, redirects: int, every: int) -> float:
    """One run: `redirects` choices with a load report after every `every`-th, in ns per choice."""
    pool = pool_of(size)
    loads = random.Random(size)
    reports = [
        CheckResult(True, 0.001, load=0.0 if pattern == "whole" else loads.random() * 10) for _ in range(size)
    ]
    backends, choose, record = pool.backends, pool.choose, pool.record_check
    turn = 0
    started = time.perf_counter()
    for i in range(redirects):
        choose()
        if i % every == 0:
            record(backends[turn], reports[turn], 1.0)
            turn = (turn + 1) % size
    return (time.perf_counter() - started) / redirects * 1e9


def main() -> int:
    parser = argparse.ArgumentParser(description="ns per Pool.choose: 1,000 backends against 3, in process")
    parser.add_argument("--redirects", type=int, default=300_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--every", type=int, default=26, help="redirects per load report (default 26)")
    args = parser.parse_args()
    print(f"python: {platform.python_implementation()} {platform.python_version()}")
    print(f"{args.redirects:,} choices per run, a load report every {args.every}, best of {args.rounds} runs")
    print(f"  {'pattern':<11} {'backends':>8} {'ns/choice':>10} {'vs 3 backends':>14}")
    for pattern in PATTERNS:
        best = {
            size: min(
                nanoseconds_per_choice(size, pattern, args.redirects, args.every) for _ in range(args.rounds)
            )
            for size in SIZES
        }
        for size in SIZES:
            print(f"  {pattern:<11} {size:>8} {best[size]:>10.0f} {best[size] / best[SIZES[0]]:>13.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
