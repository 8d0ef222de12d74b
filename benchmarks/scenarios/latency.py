# Scenario 4, latency: the dispatcher and the baseline at the same constant rate, half of the dispatcher's
# saturating rate (scenario 1's, or measured here when scenario 1 did not run), paced by paced.lua.
#
# Owns: the paced load, the goal (p99 added < 2 ms) and the warning when a side did not keep the rate.

from dataclasses import dataclass

from harness import BENCHMARKS_DIR, WrkLoad

from scenarios.context import Bench
from scenarios.results import Figure, Report, Run, median_run, ratio, run_warnings
from scenarios.servers import baseline_running, compared, file_dispatcher

PACED_SCRIPT = BENCHMARKS_DIR / "paced.lua"
# Below this share of the target rate a server did not keep up: its latencies include queueing.
RATE_SHORTFALL = 0.95


@dataclass(frozen=True)
class LatencyResult(Report):
    """Scenario 4: p50/p99 of the dispatcher and the baseline at the same constant rate (medians by p99)."""

    saturation_rps: float
    saturation_source: str
    target_rps: float
    baseline: Run
    dispatcher: Run
    runs: list[Run]

    def title(self) -> str:
        return (
            f"4. latency at a constant {self.target_rps:.0f} req/s (half of {self.saturation_rps:.0f}, "
            f"{self.saturation_source}; paced.lua): dispatcher vs baseline at the same rate"
        )

    def figures(self) -> list[Figure]:
        mine, theirs = self.dispatcher.figures, self.baseline.figures
        added_p99 = mine.p99_ms - theirs.p99_ms
        return [
            Figure("4", "req/s achieved", mine.requests_per_second, "req/s", self.target_rps, "target",
                   ratio(mine.requests_per_second, self.target_rps), "ratio"),
            Figure("4", "p50 latency", mine.p50_ms, "ms", theirs.p50_ms, "baseline",
                   mine.p50_ms - theirs.p50_ms, "difference"),
            Figure("4", "p99 latency", mine.p99_ms, "ms", theirs.p99_ms, "baseline",
                   added_p99, "difference", "< +2 ms added", added_p99 < 2.0),
        ]  # fmt: skip

    def warnings(self) -> list[str]:
        warnings = run_warnings(self.runs, "4")
        for run in (self.baseline, self.dispatcher):
            achieved = run.figures.requests_per_second
            if achieved < RATE_SHORTFALL * self.target_rps:
                warnings.append(
                    f"WARNING: 4, {run.name} reached {achieved:.0f} of {self.target_rps:.0f} req/s: "
                    "it did not keep up, so its latencies include queueing"
                )
        return warnings


def latency(bench: Bench) -> LatencyResult:
    """4. The dispatcher and the baseline at half the dispatcher's saturating rate, paced by paced.lua."""
    settings = bench.settings
    source, saturated = "scenario 1", []
    if bench.saturation_rps is None:
        saturated = compared(
            bench, settings.load(), [file_dispatcher(bench, "dispatcher, saturated")], rounds=1
        )
        bench.saturation_rps, source = saturated[0].figures.requests_per_second, "measured in scenario 4"
    target = bench.saturation_rps / 2
    per_thread = f"{target / settings.threads:.1f}"
    paced = WrkLoad(
        settings.threads, settings.connections, settings.duration_seconds, settings.wrk_cpus, PACED_SCRIPT,
        (per_thread,),
    )  # fmt: skip
    runs = saturated + compared(bench, paced, [baseline_running(bench), file_dispatcher(bench)])

    def by_p99(run: Run) -> float:
        return run.figures.p99_ms

    return LatencyResult(
        bench.saturation_rps,
        source,
        target,
        median_run(runs, "baseline", by_p99),
        median_run(runs, "dispatcher", by_p99),
        runs,
    )
