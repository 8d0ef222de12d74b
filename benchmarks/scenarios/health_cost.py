# Scenario 3, health-check cost: --health-interval 1 over 1,000 backends and over 3. (a) idle: the CPU of
# each over the same window and the checks the big pool's backends answered a second; (b) the req/s of
# each while those checks run, loaded in turns.
#
# Owns: the fast interval and the goals (idle CPU <= 20 % of a core, req/s ratio >= 0.90), the CPU one
# check costs.

import functools
from contextlib import ExitStack
from dataclasses import dataclass

from harness import busy_warning

from scenarios.context import Bench
from scenarios.idle import IdleCpu, backend_checks, idle_cpu
from scenarios.results import (
    Figure,
    Report,
    Run,
    at_least,
    at_most,
    median_run,
    ratio,
    round_ratios,
    run_warnings,
    speed_figures,
    with_goal,
)
from scenarios.servers import LARGE_POOL, SMALL_POOL, pool_dispatcher

FAST_HEALTH_INTERVAL = "1"  # scenario 3's --health-interval


@dataclass(frozen=True)
class HealthCostResult(Report):
    """Scenario 3: --health-interval 1 over 1,000 backends and over 3: idle CPU, checks/s and req/s."""

    idle_large: IdleCpu
    idle_small: IdleCpu
    small: Run
    large: Run
    runs: list[Run]

    def title(self) -> str:
        return (
            f"3. health-check cost, --health-interval 1: {LARGE_POOL:,} backends vs {SMALL_POOL}; "
            f"a: idle for {self.idle_large.seconds:.0f} s, b: {self.large.load}"
        )

    def figures(self) -> list[Figure]:
        large, small = self.idle_large, self.idle_small
        idle = Figure(
            "3a",
            "idle CPU, % of a core",
            large.cpu_percent,
            "%",
            small.cpu_percent,
            f"{SMALL_POOL} backends",
            large.cpu_percent - small.cpu_percent,
            "difference",
        )
        checks = Figure(
            "3a",
            "checks answered",
            large.counted_per_second,
            "/s",
            float(LARGE_POOL),
            "1 per backend per s",
            ratio(large.counted_per_second, LARGE_POOL),
            "ratio",
        )
        # What one check costs the dispatcher: the extra CPU over the extra checks.
        extra_checks = large.counted_per_second - small.counted_per_second
        per_check = 1e4 * (large.cpu_percent - small.cpu_percent) / extra_checks if extra_checks else 0.0
        cost = Figure("3a", "CPU per check", per_check, "us", None, "", None, "")
        label = f"{SMALL_POOL} backends"
        req, p50, p99 = speed_figures("3b", self.runs, self.large.name, self.small.name, label)
        return [
            with_goal(idle, at_most(large.cpu_percent, 20.0, "%")),
            checks,
            cost,
            with_goal(req, at_least(req.comparison, 0.90)),
            p50,
            p99,
        ]

    def notes(self) -> list[str]:
        return round_ratios("3b", self.runs, self.large.name, self.small.name)

    def warnings(self) -> list[str]:
        # Both pools were idle in the same window: one figure for what else ran meanwhile.
        warning = busy_warning(self.idle_large.others_cpu_percent, "3a, the idle window")
        return run_warnings(self.runs, "3b") + ([warning] if warning else [])


def health_cost(bench: Bench) -> HealthCostResult:
    """3. --health-interval 1 over 1,000 and over 3 backends: idle CPU first, then saturated by wrk."""
    extra = ["--health-interval", FAST_HEALTH_INTERVAL]
    with ExitStack() as stack:
        dispatchers = {
            count: stack.enter_context(
                pool_dispatcher(bench, count, f"dispatcher, {count} backends, checks every 1 s", extra)
            )
            for count in (SMALL_POOL, LARGE_POOL)
        }
        checks = {count: functools.partial(backend_checks, bench.pool_port(count)) for count in dispatchers}
        idle = idle_cpu(bench, dispatchers, checks)
        small, large = dispatchers[SMALL_POOL], dispatchers[LARGE_POOL]
        runs = bench.take_turns(bench.settings.load(), [small, large])
    return HealthCostResult(
        idle[LARGE_POOL], idle[SMALL_POOL], median_run(runs, small.name), median_run(runs, large.name), runs
    )
