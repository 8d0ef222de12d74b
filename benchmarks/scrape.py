# The cost of one /metrics scrape of a 1,000-backend pool, in process (issue 3: "a scrape with 1,000
# backends stays fast (well under 100 ms) and never stalls the front door").
#
# How: a `Pool` of 1,000 backends and a `Metrics` over it, built here without sockets or trio. Between two
# scrapes the pool changes as a real one does between two Prometheus scrapes (every 15 s, checks every 2 s):
# every backend gets 7 check results (new load reports, check durations, pass counts) and some of 20,000
# redirects; 2 backends go down and 2 down ones come back, and every down backend keeps failing its checks.
# Each round then times, in turn and in the same process:
#   - the baseline: prometheus-client's own encoder over `Metrics.registry(now)`, the registry of the
#     uncached `PoolCollector`: every sample built and formatted at every scrape, as before anything was
#     kept (with the cheaper sample building, so the original code was ~25 ms slower still);
#   - `Metrics.scrape(now, accept)`, what the admin listener serves, driven step by step as the listener
#     drives it; its longest step is the longest the front door can wait on a scrape (the event loop
#     runs the front door between steps);
# then each side once more at the same time with nothing changed in between (the best case: the second
# scraper of an HA pair). Both sides' bodies must be the same bytes (the process_* families aside: CPU
# time moves between two calls). Each scraper gets a pool of its own (the same seed, so the same changes):
# curl's `*/*` (the text format), Prometheus 3's Accept (OpenMetrics, `escaping=allow-utf-8`) and
# Prometheus 2's (OpenMetrics, `underscores` escaping, which prometheus-client 0.26 does character by
# character for every sample name: twice the cost of the others on the baseline side; the exposition
# renders with `allow-utf-8`, the same bytes for names that need no escaping).
#
# Owns: the simulated pool and its changes, the timing and the table. Rules: in process, no I/O; both sides
# are timed in the same invocation; a full garbage collection before each timed call so that garbage left
# by the simulation is not charged to either side; a warning when other processes took CPU meanwhile
# (harness.py's accounting).
#
#   python benchmarks/scrape.py [--backends 1000] [--rounds 20] [--seed 1]

from __future__ import annotations

import argparse
import gc
import os
import platform
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from importlib.metadata import version

from harness import busy_warning, cpu_snapshot, others_cpu_percent
from prometheus_client.exposition import choose_encoder

from dispatcher.core.pool import Backend, CheckResult, Pool
from dispatcher.core.stats import ServerStats
from dispatcher.expose.render import Metrics
from dispatcher.settings.config import BackendSpec, HealthSettings

SCRAPE_INTERVAL = 15.0  # Prometheus' default scrape_interval
CHECK_INTERVAL = 2.0  # the dispatcher's default health interval
CHECK_JITTER = 0.2  # its default jitter: 10 % of the interval
REDIRECTS_PER_SCRAPE = 20_000  # about 1,300 redirects a second
STATE_CHANGES_PER_SCRAPE = 2  # backends going down, and as many coming back
GOAL_MS, AIM_MS = 100.0, 60.0
# The Accept headers, word for word: Prometheus' from its scrape code (`acceptHeader`, default
# scrape_protocols; 3.x with its default `allow-utf-8` escaping). choose_encoder takes the first it knows.
SCRAPERS = {
    "curl": "*/*",
    "Prometheus 3": (
        "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,"
        "application/openmetrics-text;version=0.0.1;q=0.5,"
        "text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
    ),
    "Prometheus 2": (
        "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,"
        "text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
    ),
}
CASES = ("after 15 s", "nothing changed")
PROCESS_FAMILIES = b"# HELP process_"


@dataclass(frozen=True)
class Timings:
    """Milliseconds of each round, for one scraper and one case, on both sides."""

    baseline: list[float]
    exposition: list[float]
    longest_step: list[float]  # of each exposition: the longest the front door waited on the scrape


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Time one /metrics scrape of a large pool, in process.")
    parser.add_argument("--backends", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    return parser.parse_args(argv)


def build_pool(count: int) -> Pool:
    specs = [
        BackendSpec(f"b{i:04d}", f"http://127.0.0.1:{10000 + i}/", "http", "127.0.0.1", 10000 + i, "/")
        for i in range(count)
    ]
    return Pool(specs, HealthSettings())


class Simulation:
    """A pool that lives through scrape intervals: checks, load reports, redirects, a few state changes."""

    def __init__(self, pool: Pool, rng: random.Random) -> None:
        self.pool = pool
        self.rng = rng
        self.now = 0.0
        self.down: set[str] = set()
        # Each backend is checked at its own moment of the interval, give or take the jitter: the load
        # ages differ between backends and between scrapes, as they do live.
        self.phase = {
            backend.name: rng.uniform(0.0, CHECK_INTERVAL - CHECK_JITTER) for backend in pool.backends
        }

    def interval(self) -> None:
        """One scrape interval of checks and redirects."""
        self._change_states()
        checks = round(SCRAPE_INTERVAL / CHECK_INTERVAL)
        for step in range(checks):
            for backend in self.pool.backends:
                at = (
                    self.now
                    + step * CHECK_INTERVAL
                    + self.phase[backend.name]
                    + self.rng.uniform(0.0, CHECK_JITTER)
                )
                self.pool.record_check(backend, self._result(backend), at)
        for _ in range(REDIRECTS_PER_SCRAPE):
            self.pool.choose()
        self.now += SCRAPE_INTERVAL

    def _change_states(self) -> None:
        names = [backend.name for backend in self.pool.backends]
        back = self.rng.sample(sorted(self.down), min(len(self.down), STATE_CHANGES_PER_SCRAPE))
        self.down.difference_update(back)
        self.down.update(self.rng.sample([n for n in names if n not in self.down], STATE_CHANGES_PER_SCRAPE))

    def _result(self, backend: Backend) -> CheckResult:
        if backend.name in self.down:
            return CheckResult(False, 1.0, reason="timeout")
        return CheckResult(True, self.rng.uniform(0.0005, 0.008), load=float(self.rng.randint(0, 40)))


def timed(scrape: Callable[[], bytes]) -> tuple[float, bytes]:
    gc.collect()
    started = time.perf_counter()
    body = scrape()
    return (time.perf_counter() - started) * 1000, body


def pool_part(body: bytes) -> bytes:
    """The body up to the process collector's families, which differ between any two calls."""
    return body.split(PROCESS_FAMILIES, 1)[0]


def baseline_scrape(metrics: Metrics, now: float, accept: str) -> bytes:
    """prometheus-client's encoder for `accept` over the uncached collector's registry."""
    encoder, _ = choose_encoder(accept)
    return encoder(metrics.registry(now))


def stepped_scrape(metrics: Metrics, now: float, accept: str, longest: list[float]) -> bytes:
    """`Metrics.scrape` driven as the admin listener drives it, each step timed: the event loop runs the
    front door between steps, so the longest step is the longest a client can wait on a scrape."""
    steps = metrics.scrape(now, accept)
    slowest = 0.0
    while True:
        started = time.perf_counter()
        try:
            next(steps)
        except StopIteration as done:
            longest.append(max(slowest, time.perf_counter() - started) * 1000)
            body: bytes = done.value[0]
            return body
        slowest = max(slowest, time.perf_counter() - started)


def scrape_round(metrics: Metrics, now: float, accept: str, results: dict[str, Timings]) -> int:
    """Time both sides, after the pool changed and then unchanged; returns the body's line count."""
    lines = 0
    for case in CASES:
        timings = results.setdefault(case, Timings([], [], []))
        base_ms, base_body = timed(partial(baseline_scrape, metrics, now, accept))
        ours_ms, ours_body = timed(partial(stepped_scrape, metrics, now, accept, timings.longest_step))
        if pool_part(base_body) != pool_part(ours_body):
            raise SystemExit(f"scrape: the bodies differ ({case}, {accept}): the exposition is wrong")
        timings.baseline.append(base_ms)
        timings.exposition.append(ours_ms)
        lines = base_body.count(b"\n")
    return lines


def run_scraper(accept: str, args: argparse.Namespace) -> tuple[dict[str, Timings], int]:
    """A pool of its own scraped every 15 s by one scraper, `args.rounds` times after a first scrape."""
    pool = build_pool(args.backends)
    metrics = Metrics(pool, ServerStats())
    simulation = Simulation(pool, random.Random(args.seed))
    simulation.interval()  # all up, and a first scrape fills whatever is kept
    metrics.exposition(simulation.now, accept)
    results: dict[str, Timings] = {}
    lines = 0
    for _ in range(args.rounds):
        simulation.interval()
        lines = scrape_round(metrics, simulation.now, accept, results)
    return results, lines


def p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10)[-1] if len(values) > 1 else values[0]


def report(results: dict[str, dict[str, Timings]], args: argparse.Namespace, lines: int) -> None:
    print(
        f"one scrape of {args.backends:,} backends ({lines:,} lines), median and p90 of {args.rounds} "
        f"rounds; Python {platform.python_version()}, prometheus-client {version('prometheus-client')}, "
        f"{os.cpu_count()} cores"
    )
    header = f"  {'scraper':<13} {'case':<16} {'baseline':>8} {'p90':>8}   {'exposition':>10} {'p90':>8}   "
    print(header + f"{'speed-up':>8}   {'longest step':>12}   goal")
    print("  " + "-" * (len(header) + 42))
    for scraper, cases in results.items():
        for case, timings in cases.items():
            base, ours = statistics.median(timings.baseline), statistics.median(timings.exposition)
            goal = ""
            if case == CASES[0]:
                goal = f"< {GOAL_MS:.0f} ms (aim {AIM_MS:.0f})   " + ("met" if ours < GOAL_MS else "MISSED")
            print(
                f"  {scraper:<13} {case:<16} {base:5.1f} ms {p90(timings.baseline):5.1f} ms   "
                f"{ours:7.1f} ms {p90(timings.exposition):5.1f} ms   {base / ours:6.2f} x   "
                f"{max(timings.longest_step):9.1f} ms   {goal}"
            )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    results: dict[str, dict[str, Timings]] = {}
    lines = 0
    before = cpu_snapshot([os.getpid()])
    for scraper, accept in SCRAPERS.items():
        results[scraper], lines = run_scraper(accept, args)
    warning = busy_warning(others_cpu_percent(before, cpu_snapshot([os.getpid()])), "the scrapes")
    report(results, args, lines)
    if warning:
        print(warning)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
