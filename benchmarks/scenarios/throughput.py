# Scenario 1, throughput: the dispatcher (3 backends, default checks, metrics on) against the trio + h11
# baseline, both saturated by wrk, loaded in turns. `--only baseline` or `--only dispatcher` runs one side.
#
# Owns: the two sides and the ratio's goal (>= 1.0, aim 1.3); the dispatcher's req/s, which scenario 4
# takes as its saturating rate.

from contextlib import AbstractContextManager
from dataclasses import dataclass

from scenarios.context import Bench, Server
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
from scenarios.servers import baseline_running, compared, file_dispatcher


@dataclass(frozen=True)
class ThroughputResult(Report):
    """Scenario 1: saturating req/s and latency of the dispatcher and of the baseline (medians of rounds)."""

    baseline: Run | None
    dispatcher: Run | None
    runs: list[Run]

    def title(self) -> str:
        load = self.runs[0].load
        if self.baseline is not None and self.dispatcher is not None:
            return (
                f"1. throughput, {load}: dispatcher (3 backends, checks + metrics on) vs trio + h11 baseline"
            )
        return f"1. throughput, {load}: {self.runs[0].name} only"

    def figures(self) -> list[Figure]:
        if self.baseline is not None and self.dispatcher is not None:
            req, p50, p99 = speed_figures("1", self.runs, "dispatcher", "baseline", "baseline")
            return [with_goal(req, at_least(req.comparison, 1.0, aim=1.3)), p50, p99]
        alone = self.baseline or self.dispatcher
        assert alone is not None
        mine = alone.figures
        return [
            Figure("1", "req/s", mine.requests_per_second, "req/s", None, "", None, ""),
            Figure("1", "p50 latency", mine.p50_ms, "ms", None, "", None, ""),
            Figure("1", "p99 latency", mine.p99_ms, "ms", None, "", None, ""),
        ]

    def warnings(self) -> list[str]:
        return run_warnings(self.runs, "1")

    def notes(self) -> list[str]:
        if self.baseline is None or self.dispatcher is None:
            return []
        return round_ratios("1", self.runs, self.dispatcher.name, self.baseline.name)


def throughput(bench: Bench) -> ThroughputResult:
    """1. The dispatcher (3 backends, default checks, metrics) and the baseline, saturated by wrk."""
    load = bench.settings.load()
    starts: list[AbstractContextManager[Server]] = []
    if "baseline" in bench.sides:
        starts.append(baseline_running(bench))
    if "dispatcher" in bench.sides:
        starts.append(file_dispatcher(bench))
    runs = compared(bench, load, starts)
    baseline = median_run(runs, "baseline") if "baseline" in bench.sides else None
    dispatcher = median_run(runs, "dispatcher") if "dispatcher" in bench.sides else None
    if dispatcher is not None:
        bench.saturation_rps = dispatcher.figures.requests_per_second
    return ThroughputResult(baseline, dispatcher, runs)
