# Scenario 9, access log: the dispatcher of scenario 1 with `--access-log FILE` (text, and json) against
# the same dispatcher without one, all up at once, loaded in turns.
#
# Owns: the ratio's goal (>= 0.90, issue 14: "at full load the front door keeps >= 0.9x its req/s"), the
# log files (in the run's log directory, so a run can be looked at afterwards) and the check that every
# request of the runs has its line.

from dataclasses import dataclass, replace
from pathlib import Path

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
from scenarios.servers import compared, file_dispatcher

OFF = "no access log"
FORMATS = ("text", "json")


def side(form: str) -> str:
    return f"access log, {form}"


@dataclass(frozen=True)
class AccessLogResult(Report):
    """Scenario 9: req/s with the access log on (text, json) against off (medians of rounds)."""

    off: Run
    on: list[Run]
    lines: dict[str, int]  # the lines each log file held after its dispatcher stopped
    runs: list[Run]

    def title(self) -> str:
        return f"9. access log, {self.off.load}: --access-log FILE (text, json) vs none"

    def figures(self) -> list[Figure]:
        figures = []
        for run in self.on:
            req, p50, p99 = speed_figures("9", self.runs, run.name, OFF, OFF)
            req = with_goal(req, at_least(req.comparison, 0.90))
            figures += [_named(req, run.name), _named(p50, run.name), _named(p99, run.name)]
        return figures

    def answered(self, form: str) -> int:
        """The requests wrk counted as answered by the dispatcher logging in `form`."""
        return sum(run.figures.requests for run in self.runs if run.name == side(form))

    def warnings(self) -> list[str]:
        short = [
            f"9: WARNING: the {form} access log has {count:,} lines for {self.answered(form):,} answers"
            for form, count in self.lines.items()
            if count < self.answered(form)
        ]
        return [*run_warnings(self.runs, "9"), *short]

    def notes(self) -> list[str]:
        notes = [
            note for run in self.on for note in round_ratios(f"9 ({run.name})", self.runs, run.name, OFF)
        ]
        counts = ", ".join(
            f"{form}: {count:,} lines for {self.answered(form):,} answers wrk counted"
            for form, count in self.lines.items()
        )
        return [*notes, f"9: {counts} (and the one checked by hand; wrk leaves some answers unread)"]


def _named(figure: Figure, name: str) -> Figure:
    return replace(figure, label=f"{figure.label} ({name.rpartition(' ')[2]})")


def access_log(bench: Bench) -> AccessLogResult:
    """9. The dispatcher with an access log (text, json) and without, saturated by wrk in turns."""
    paths = {form: bench.settings.log_dir / f"access-{form}.log" for form in FORMATS}
    starts = [file_dispatcher(bench, OFF)]
    for form, path in paths.items():
        flags = ["--access-log", str(path), "--access-log-format", form]
        starts.append(file_dispatcher(bench, side(form), extra=flags))
    runs = compared(bench, bench.settings.load(), starts)  # every dispatcher has stopped: logs complete
    lines = {form: _count_lines(path) for form, path in paths.items()}
    return AccessLogResult(
        median_run(runs, OFF), [median_run(runs, side(form)) for form in FORMATS], lines, runs
    )


def _count_lines(path: Path) -> int:
    with path.open("rb") as file:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: file.read(1 << 20), b""))
