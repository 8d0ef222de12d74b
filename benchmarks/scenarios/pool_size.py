# Scenario 2, pool size: the same dispatcher over 1,000 backends of backends.py and over 3, default health
# interval (2 s), loaded in turns.
#
# Owns: the ratio's goal (>= 0.95) and the time from start to every backend up, 1,000 against 3.

from contextlib import ExitStack
from dataclasses import dataclass

from scenarios.context import Bench
from scenarios.results import (
    Figure,
    Report,
    Run,
    at_least,
    median_run,
    round_ratios,
    run_warnings,
    speed_figures,
    with_goal,
)
from scenarios.servers import LARGE_POOL, SMALL_POOL, pool_dispatcher


@dataclass(frozen=True)
class PoolSizeResult(Report):
    """Scenario 2: req/s with 1,000 backends and with 3 (default 2 s checks, backends.py), medians."""

    small: Run
    large: Run
    large_ready_seconds: float  # from the process start to 1000 of 1000 up
    small_ready_seconds: float
    runs: list[Run]

    def title(self) -> str:
        return (
            f"2. pool size, {self.large.load}: {LARGE_POOL:,} backends vs {SMALL_POOL} "
            "(backends.py, checks every 2 s)"
        )

    def figures(self) -> list[Figure]:
        label = f"{SMALL_POOL} backends"
        req, p50, p99 = speed_figures("2", self.runs, self.large.name, self.small.name, label)
        ready = Figure(
            "2",
            "start until all up",
            self.large_ready_seconds,
            "s",
            self.small_ready_seconds,
            f"{SMALL_POOL} backends",
            self.large_ready_seconds - self.small_ready_seconds,
            "difference",
        )
        return [with_goal(req, at_least(req.comparison, 0.95)), p50, p99, ready]

    def warnings(self) -> list[str]:
        return run_warnings(self.runs, "2")

    def notes(self) -> list[str]:
        return round_ratios("2", self.runs, self.large.name, self.small.name)


def pool_size(bench: Bench) -> PoolSizeResult:
    """2. The same dispatcher over 3 and over 1,000 backends of backends.py, default health interval."""
    with ExitStack() as stack:
        small = stack.enter_context(pool_dispatcher(bench, SMALL_POOL, f"dispatcher, {SMALL_POOL} backends"))
        large = stack.enter_context(pool_dispatcher(bench, LARGE_POOL, f"dispatcher, {LARGE_POOL} backends"))
        runs = bench.take_turns(bench.settings.load(), [small, large])
    return PoolSizeResult(
        median_run(runs, small.name),
        median_run(runs, large.name),
        large.ready_seconds,
        small.ready_seconds,
        runs,
    )
