# Scenario 6, workers: --workers 2 against --workers 1, nothing pinned, under the same wrk -t2 (skipped
# when the dispatcher has no --workers flag).
#
# Owns: the worker count compared and the note on what an unpinned comparison on a small machine means.

import os
import subprocess
import sys
from dataclasses import dataclass, field

from harness import WrkLoad

from scenarios.context import Bench
from scenarios.results import Figure, Report, Run, median_run, run_warnings, speed_figures
from scenarios.servers import compared, file_dispatcher

WORKERS = 2


@dataclass(frozen=True)
class WorkersResult(Report):
    """Scenario 6: --workers 2 against --workers 1, unpinned, under wrk -t2 (medians); or skipped."""

    available: bool
    one: Run | None = None
    two: Run | None = None
    runs: list[Run] = field(default_factory=list)

    def title(self) -> str:
        if self.two is None:
            return "6. workers: skipped: --workers not available yet"
        return f"6. workers, {self.two.load}, nothing pinned: --workers {WORKERS} vs --workers 1"

    def figures(self) -> list[Figure]:
        if self.one is None or self.two is None:
            return []
        return speed_figures("6", self.runs, self.two.name, self.one.name, "--workers 1")

    def warnings(self) -> list[str]:
        return run_warnings(self.runs, "6")

    def notes(self) -> list[str]:
        if not self.available:
            return []
        return [
            f"6. workers: on this {_cores()}-core machine wrk (-t2) shares the cores with the {WORKERS} "
            "workers and the master (health checks): nothing is pinned, so the ratio is what the workers "
            "gain while competing with the load generator, a lower bound of what they would give with "
            "cores of their own."
        ]


def _cores() -> int:
    return os.cpu_count() or 1


def workers_flag_available() -> bool:
    """Whether `python -m dispatcher --help` lists --workers."""
    completed = subprocess.run(
        [sys.executable, "-m", "dispatcher", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return "--workers" in completed.stdout


def workers(bench: Bench) -> WorkersResult:
    """6. --workers 2 against --workers 1, both unpinned, under the same wrk -t2."""
    if not workers_flag_available():
        return WorkersResult(available=False)
    settings = bench.settings
    load = WrkLoad(2, settings.connections, settings.duration_seconds, None)

    starts = [
        file_dispatcher(bench, f"workers-{count}", extra=["--workers", str(count)], pinned=False)
        for count in (1, WORKERS)
    ]
    runs = compared(bench, load, starts, pinned=False)
    return WorkersResult(True, median_run(runs, "workers-1"), median_run(runs, f"workers-{WORKERS}"), runs)
