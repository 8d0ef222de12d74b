# A dispatcher's CPU while no client sends anything, and what it did meanwhile: shared by scenario 3 (the
# checks its backends.py answered) and scenario 8 (the load events it received).
#
# Owns: `IdleCpu`, `idle_cpu` (the same idle window for several dispatchers, each one's utime + stime from
# /proc), backends.py's counters (`/checks`, `/events`, `/streams`) and rates between two timed reads.
# Rules: the counters are read outside the CPU window (a scrape of the dispatcher costs it CPU).

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from harness import BenchError, cpu_snapshot, fetch, others_cpu_percent, process_cpu_seconds

from scenarios.context import Bench
from scenarios.servers import SETTLE_SECONDS, Dispatcher

Key = TypeVar("Key")  # what a scenario names the dispatchers of a comparison by (pool size, side)


@dataclass(frozen=True)
class IdleCpu:
    """A dispatcher's CPU use with no client traffic, and what it did meanwhile."""

    pool: int
    seconds: float
    cpu_percent: float  # of one core
    # What its counter counted, per second of the counter's own window: the checks its backends.py
    # answered (scenario 3), the load events it received (scenario 8).
    counted_per_second: float
    others_cpu_percent: float | None


def backend_count(port: int, path: str) -> int:
    """One of backends.py's counters: `/checks` answered, load `/events` written, `/streams` open."""
    answer = fetch(port, path)
    if answer.status != 200:
        raise BenchError(f"backends.py: GET {path} gave {answer.status}")
    return int(answer.body)


def backend_checks(port: int) -> int:
    """How many health checks backends.py has answered so far."""
    return backend_count(port, "/checks")


def timed_count(counter: Callable[[], int]) -> tuple[int, float]:
    """A counter's value, and the middle of the time it took to read (a scrape is not instant)."""
    started = time.monotonic()
    value = counter()
    return value, (started + time.monotonic()) / 2


def per_second(before: tuple[int, float], after: tuple[int, float]) -> float:
    """The rate between two timed counts."""
    return (after[0] - before[0]) / (after[1] - before[1])


def idle_cpu(
    bench: Bench, dispatchers: Mapping[Key, Dispatcher], counters: Mapping[Key, Callable[[], int]]
) -> dict[Key, IdleCpu]:
    """Each dispatcher's CPU (utime + stime from /proc) over the same idle_seconds of no traffic but
    their background work, and what each one's counter counted per second meanwhile (the checks a
    pool's backends.py answered, the load events a dispatcher received). The counters are read outside
    the CPU window (a scrape of the dispatcher costs it CPU), each rate over its own reads."""
    time.sleep(SETTLE_SECONDS)
    pids = [dispatcher.process.pid for dispatcher in dispatchers.values()]
    counted_before = {key: timed_count(counter) for key, counter in counters.items()}
    before = cpu_snapshot(pids, bench.helper_pids())
    cpu_before = {key: process_cpu_seconds(d.process.pid) for key, d in dispatchers.items()}
    started = time.monotonic()
    time.sleep(bench.settings.idle_seconds)
    cpu_after = {key: process_cpu_seconds(d.process.pid) for key, d in dispatchers.items()}
    elapsed = time.monotonic() - started
    others = others_cpu_percent(before, cpu_snapshot(pids, bench.helper_pids()))
    counted = {
        key: per_second(counted_before[key], timed_count(counter)) for key, counter in counters.items()
    }
    return {
        key: IdleCpu(
            len(d.base_urls),
            elapsed,
            100 * (cpu_after[key] - cpu_before[key]) / elapsed,
            counted[key],
            others,
        )
        for key, d in dispatchers.items()
    }
