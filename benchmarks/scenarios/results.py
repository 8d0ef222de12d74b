# What a scenario hands back to the table, and the comparisons its rows are made of.
#
# Owns: `Figure` (one row: the value, what it is compared with and how, the goal), `Run` (one server under
# one wrk load), `Report` (what every scenario's result offers the table: title, figures, notes, warnings,
# details), and the arithmetic of comparisons in turns: the median run of a side, the median of the rounds'
# ratios, the goals `at_least` and `at_most`, the speed rows (req/s, p50, p99) of one side against another.
# Rules: plain data and arithmetic: no process is started here, nothing is printed (bench.py prints).

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from operator import attrgetter

from harness import WrkFigures, busy_warning


@dataclass(frozen=True)
class Figure:
    """One line of the table: a measured value, what it is compared with, how, and the goal if any."""

    scenario: str
    label: str
    value: float
    unit: str  # "req/s", "ms", "%", "MiB", "/s", "s", "us"
    baseline: float | None
    baseline_label: str
    comparison: float | None
    comparison_kind: str  # "ratio", "difference" (in `unit`), "KiB per connection", or ""
    goal: str = ""
    met: bool | None = None


@dataclass(frozen=True)
class Run:
    """One server under one wrk load: its figures, what else used the CPU meanwhile, how it stopped."""

    name: str
    load: str
    figures: WrkFigures
    others_cpu_percent: float | None
    shutdown: str


def ratio(value: float, baseline: float | None) -> float | None:
    return None if baseline is None or baseline == 0 else value / baseline


def at_least(value: float | None, threshold: float, aim: float | None = None) -> tuple[str, bool | None]:
    """Goal text and verdict for 'value >= threshold' (and an aim beyond it)."""
    text = f">= {threshold:.2f}" + (f" (aim {aim:.2f})" if aim is not None else "")
    return text, None if value is None else value >= threshold


def at_most(value: float, threshold: float, unit: str) -> tuple[str, bool]:
    return f"<= {threshold:g} {unit}", value <= threshold


def run_warnings(runs: Sequence[Run], scenario: str) -> list[str]:
    """A busy-machine warning per run in which other processes used much CPU, and one per run in which wrk
    saw socket errors (connect, read, write, timeout: a healthy server on loopback has none)."""
    warnings = []
    for run in runs:
        busy = busy_warning(run.others_cpu_percent, f"{scenario}, {run.name}")
        warnings += [busy] if busy else []
        if run.figures.socket_errors:
            errors = run.figures.socket_errors
            warnings.append(f"WARNING: {scenario}, {run.name}: wrk saw {errors} socket errors")
    return warnings


def median_run(runs: Sequence[Run], name: str, key: Callable[[Run], float] | None = None) -> Run:
    """The run named `name` with the median of `key` (req/s by default; the lower middle of an even count)."""
    chosen = sorted(
        (run for run in runs if run.name == name), key=key or (lambda run: run.figures.requests_per_second)
    )
    return chosen[(len(chosen) - 1) // 2]


def each_round_ratio(runs: Sequence[Run], name: str, reference: str) -> list[float]:
    """The req/s ratio of side `name` over side `reference` in each round."""
    mine = [run.figures.requests_per_second for run in runs if run.name == name]
    theirs = [run.figures.requests_per_second for run in runs if run.name == reference]
    return [a / b for a, b in zip(mine, theirs, strict=True) if b]


def round_ratios(scenario: str, runs: Sequence[Run], name: str, reference: str) -> list[str]:
    """A note with each round's req/s ratio and their median."""
    ratios = each_round_ratio(runs, name, reference)
    if len(ratios) < 2:
        return []
    each = " ".join(f"{value:.2f}" for value in ratios)
    return [f"{scenario}: req/s ratio round by round {each} (median {statistics.median(ratios):.2f})"]


def median_of(runs: Sequence[Run], name: str, key: Callable[[WrkFigures], float]) -> float:
    """The median of one figure over the runs of side `name` (the lower middle of an even count, so
    that it is always a measured value)."""
    return statistics.median_low(key(run.figures) for run in runs if run.name == name)


def paired_ratio(runs: Sequence[Run], name: str, reference: str) -> float | None:
    """The median of the rounds' req/s ratios, `name` over `reference`: each round's two runs were
    back to back, so each ratio is spared the drifts of a virtual machine that the medians of each
    side are not."""
    ratios = each_round_ratio(runs, name, reference)
    return statistics.median(ratios) if ratios else None


def speed_figures(
    scenario: str, runs: Sequence[Run], name: str, reference: str, reference_label: str
) -> list[Figure]:
    """req/s, p50 and p99 of side `name` against side `reference`, each the median of its runs; the
    req/s comparison is the median of the rounds' ratios (no goal)."""
    rps, p50, p99 = attrgetter("requests_per_second"), attrgetter("p50_ms"), attrgetter("p99_ms")
    mine_rps, theirs_rps = median_of(runs, name, rps), median_of(runs, reference, rps)
    mine_p50, theirs_p50 = median_of(runs, name, p50), median_of(runs, reference, p50)
    mine_p99, theirs_p99 = median_of(runs, name, p99), median_of(runs, reference, p99)
    return [
        Figure(scenario, "req/s", mine_rps, "req/s", theirs_rps, reference_label,
               paired_ratio(runs, name, reference), "ratio"),
        Figure(scenario, "p50 latency", mine_p50, "ms", theirs_p50, reference_label,
               mine_p50 - theirs_p50, "difference"),
        Figure(scenario, "p99 latency", mine_p99, "ms", theirs_p99, reference_label,
               mine_p99 - theirs_p99, "difference"),
    ]  # fmt: skip


class Report:
    """What every scenario's result offers the table; the defaults say nothing."""

    def title(self) -> str:
        raise NotImplementedError

    def figures(self) -> list[Figure]:
        return []

    def warnings(self) -> list[str]:
        return []

    def notes(self) -> list[str]:
        return []

    def details(self) -> list[str]:
        return []

    def all_runs(self) -> list[Run]:
        """Every wrk run behind the figures (each round of each side)."""
        runs = getattr(self, "runs", [])
        return [run for run in runs if isinstance(run, Run)]


def with_goal(figure: Figure, goal: tuple[str, bool | None]) -> Figure:
    return replace(figure, goal=goal[0], met=goal[1])
