# The dispatcher's benchmarks in one command: every figure measured against a baseline taken in the same
# run, on the same machine, printed as one table (figure, baseline, ratio or difference, goal).
#
# Why a baseline in the same run: absolute req/s depend on the machine, its load and the Python build, so
# they cannot be compared across runs or machines. A ratio can: benchmarks/baseline.py is the leanest
# correct trio + h11 server giving the same 307 reply, so "dispatcher / baseline" is the share of the
# trio + h11 ceiling that the dispatcher keeps after its own work (policy, timeouts, metrics). The other
# scenarios compare the dispatcher with itself: 1,000 backends against 3, --workers 2 against 1, 1,000
# backends streaming their load against the same pool polled.
#
# How: see scenarios/ (what each scenario does, one module each, and what they share) and harness.py
# (child processes, wrk, /proc). Every server under load runs pinned to the first CPU and wrk and the
# helpers to the others (taskset semantics), so that the load generator does not steal the server's core.
# Every child process is stopped in a `finally`, also on Ctrl-C and SIGTERM; every wait is bounded. It must
# not import `dispatcher`: the dispatcher is measured as users run it, as `python -m dispatcher`.
#
#   python benchmarks/bench.py [--quick] [--profile] [--duration 1] [--connections 50] [--threads 1]
#                              [--rounds 40] [--only NAME ...] [--no-pin] [--json FILE]

import argparse
import http.client
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType

from harness import REPO_ROOT, TARGET, BenchError
from scenarios import (
    access_log,
    health_cost,
    latency,
    memory,
    pool_size,
    profile,
    routes,
    streams,
    throughput,
    tls,
    versus,
    workers,
)
from scenarios.context import Bench, Settings
from scenarios.results import Figure, Report

# Run in this order. Scenario 1 ("throughput") has two sides that --only names on their own, as before:
# `--only baseline`, `--only dispatcher`. The profile runs only when asked for (--profile).
SCENARIOS: dict[str, Callable[[Bench], Report]] = {
    "throughput": throughput.throughput,
    "profile": profile.profile,
    "pool": pool_size.pool_size,
    "health": health_cost.health_cost,
    "streams": streams.streams,
    "latency": latency.latency,
    "memory": memory.memory,
    "workers": workers.workers,
    "access-log": access_log.access_log,
    "tls": tls.tls,
    "routes": routes.routes,
    "versus": versus.versus,
}
THROUGHPUT_SIDES = ("baseline", "dispatcher")
ONLY_CHOICES = (*THROUGHPUT_SIDES, *(name for name in SCENARIOS if name != "throughput"))

# What fails one scenario without stopping the others: a server that does not come up or answers wrongly, a
# refused or broken connection, a missing wrk or py-spy, a child that hangs.
SCENARIO_FAILURES = (BenchError, OSError, http.client.HTTPException, subprocess.TimeoutExpired, ValueError)


@dataclass(frozen=True)
class Durations:
    """How long each kind of measurement lasts, and how often: the full run, or --quick for a smoke run."""

    wrk_seconds: int
    idle_seconds: float
    profile_seconds: int
    # Many 1 s wrk runs in turns rather than a few long ones: on this VM the noise between the two
    # sides of a round is mostly slow drift, which the two sides share when they run a second apart.
    # Two identical dispatchers compared in 80 s of turns: rounds of 4 s gave ratios with a standard
    # deviation of 6.2 % (mean 1.020 over 10 rounds), rounds of 1 s 2.8 % (0.998 over 40).
    rounds: int


FULL = Durations(wrk_seconds=1, idle_seconds=10.0, profile_seconds=8, rounds=40)
QUICK = Durations(wrk_seconds=1, idle_seconds=3.0, profile_seconds=2, rounds=3)


# -------------------------------------------------------------------------------------------------
# Running
# -------------------------------------------------------------------------------------------------


def run_scenarios(
    settings: Settings, names: Sequence[str], sides: frozenset[str]
) -> tuple[dict[str, Report], list[str]]:
    """Run the named scenarios in order; a failed one is reported and the others still run."""
    results: dict[str, Report] = {}
    failures: list[str] = []
    with ExitStack() as stack:  # the shared backends, stopped when every scenario is done
        bench = Bench(settings, sides, stack)
        for number, name in enumerate(names, 1):
            print(f"[{number}/{len(names)}] {name} ...", file=sys.stderr, flush=True)
            started = time.monotonic()
            try:
                results[name] = SCENARIOS[name](bench)
            except SCENARIO_FAILURES as error:
                failures.append(f"{name}: {error}")
            outcome = "FAILED" if name not in results else "done"
            print(f"      {outcome} in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    return results, failures


# -------------------------------------------------------------------------------------------------
# Report
# -------------------------------------------------------------------------------------------------

VALUE_FORMATS = {"req/s": "{:.0f} req/s", "ms": "{:.2f} ms", "%": "{:.1f} %", "MiB": "{:.1f} MiB"}
VALUE_FORMATS |= {"/s": "{:.0f} /s", "s": "{:.2f} s", "us": "{:.0f} us"}
DIFFERENCE_FORMATS = {"req/s": "{:+.0f} req/s", "ms": "{:+.2f} ms", "%": "{:+.1f} pt", "MiB": "{:+.1f} MiB"}
DIFFERENCE_FORMATS |= {"/s": "{:+.0f} /s", "s": "{:+.2f} s"}
ROW = "  {:<22} {:>13}   {:<26} {:>16}   {:<20} {}"
HEADER = ROW.format("figure", "measured", "compared with", "vs that", "goal", "").rstrip()


def format_value(value: float | None, unit: str) -> str:
    return "-" if value is None else VALUE_FORMATS[unit].format(value)


def format_comparison(figure: Figure) -> str:
    if figure.comparison is None:
        return "-"
    if figure.comparison_kind == "ratio":
        return f"{figure.comparison:.2f} x"
    if figure.comparison_kind == "difference":
        return DIFFERENCE_FORMATS[figure.unit].format(figure.comparison)
    return f"{figure.comparison:.1f} {figure.comparison_kind.replace(' per connection', '/conn')}"


def format_row(figure: Figure) -> str:
    baseline = f"{format_value(figure.baseline, figure.unit)} {figure.baseline_label}".strip()
    verdict = {None: "", True: "met", False: "MISSED"}[figure.met]
    row = ROW.format(
        figure.label,
        format_value(figure.value, figure.unit),
        baseline if figure.baseline is not None else "-",
        format_comparison(figure),
        figure.goal,
        verdict,
    )
    return row.rstrip()


def describe_pinning(settings: Settings) -> str:
    """One line saying where the servers and wrk ran."""
    if settings.server_cpus is None or settings.wrk_cpus is None:
        return "not pinned"
    return (
        f"servers on CPU {sorted(settings.server_cpus)}; wrk, backends and clients on CPU "
        f"{sorted(settings.wrk_cpus)} (scenario 6: nothing pinned)"
    )


def dispatcher_version() -> str:
    """`python -m dispatcher --version` and the commit of the work tree, with a mark if it was modified."""
    try:
        version = subprocess.run(
            [sys.executable, "-m", "dispatcher", "--version"], capture_output=True, text=True, timeout=30
        ).stdout.strip()
        commit = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--", "dispatcher"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    modified = ", dispatcher/ modified" if dirty else ""
    return f"{version or 'unknown'} (git {commit or '?'}{modified})"


def header(settings: Settings, version: str) -> list[str]:
    load = f"wrk -t{settings.threads} -c{settings.connections} -d{settings.duration_seconds}s --latency"
    return [
        f"cores:      {os.cpu_count()}",
        f"python:     {platform.python_implementation()} {platform.python_version()}",
        f"dispatcher: {version}",
        f"load:       {load} GET {TARGET} (keep-alive), unless a scenario says otherwise",
        f"pinned:     {describe_pinning(settings)}",
        f"rounds:     {settings.rounds}"
        + (
            " (both sides of a comparison up at once, loaded in turns A B, B A, ...; each figure is the "
            "median of its side's runs, each ratio the median of the rounds' ratios)"
            if settings.rounds > 1
            else ""
        ),
    ]


def shutdown_summary(results: Sequence[Report]) -> list[str]:
    """How the dispatchers ended after SIGTERM: one line when all exited 0, else every other ending."""
    endings = [(run.name, run.shutdown) for result in results for run in result.all_runs() if run.shutdown]
    endings = [(name, how) for name, how in endings if name != "baseline"]  # the baseline has no handler
    odd = [f"shutdown: {name} {how}" for name, how in endings if not how.startswith("exited with code 0 ")]
    if endings and not odd:
        slowest = max(float(how.split()[4]) for _, how in endings)
        count = len(endings)
        return [
            f"shutdown: all {count} dispatchers exited with code 0 after SIGTERM (slowest {slowest:.2f} s)"
        ]
    return odd


def format_report(
    settings: Settings, version: str, results: Sequence[Report], failures: Sequence[str]
) -> str:
    lines = header(settings, version)
    lines += ["", HEADER, "  " + "-" * (len(HEADER) - 2)]
    for result in results:
        lines.append(result.title())
        lines += [format_row(figure) for figure in result.figures()]
    notes = [note for result in results for note in result.notes()]
    lines += ["", *notes] if notes else []
    lines += ["", *shutdown_summary(results)]
    lines += [warning for result in results for warning in result.warnings()]
    for result in results:
        details = result.details()
        lines += ["", *details] if details else []
    lines += [f"\nFAILED {failure}" for failure in failures]
    return "\n".join(lines)


def jsonable(value: object) -> object:
    """json.dumps' fallback for the few non-JSON types in the settings."""
    if isinstance(value, frozenset | set):
        return sorted(value)
    return str(value)


def write_json(
    path: Path, settings: Settings, version: str, results: dict[str, Report], failures: Sequence[str]
) -> None:
    """Every figure of the table, and every result behind them (each round's run), for machines."""
    ordered = list(results.values())
    report = {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "dispatcher": version,
        "settings": {**asdict(settings), "log_dir": None},
        "pinned": describe_pinning(settings),
        "figures": [asdict(figure) for result in ordered for figure in result.figures()],
        "scenarios": {name: asdict(result) for name, result in results.items()},  # type: ignore[call-overload]
        "warnings": [warning for result in ordered for warning in result.warnings()],
        "notes": [note for result in ordered for note in result.notes()],
        "failures": list(failures),
    }
    path.write_text(json.dumps(report, indent=2, default=jsonable) + "\n")


# -------------------------------------------------------------------------------------------------
# Command line
# -------------------------------------------------------------------------------------------------


def choose_cpus(pin: bool) -> tuple[frozenset[int] | None, frozenset[int] | None]:
    """The first allowed CPU for the servers, the others for wrk; (None, None) if impossible."""
    if not pin or not hasattr(os, "sched_setaffinity"):
        return None, None
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        return None, None
    return frozenset(allowed[:1]), frozenset(allowed[1:])


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text}")
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="The dispatcher's benchmarks, each against a baseline measured in the same run"
    )
    parser.add_argument("--duration", type=positive_int, help="seconds of each wrk run (default 1)")
    parser.add_argument("--connections", type=positive_int, default=50, help="wrk connections (default 50)")
    parser.add_argument("--threads", type=positive_int, default=1, help="wrk threads (default 1)")
    parser.add_argument(
        "--rounds",
        type=positive_int,
        help="load both sides of each comparison N times, in turns (default 40; 3 with --quick)",
    )
    parser.add_argument(
        "--only", choices=ONLY_CHOICES, action="append", help="run only this scenario (repeatable)"
    )
    parser.add_argument("--quick", action="store_true", help="short durations: a smoke run of every scenario")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also profile the dispatcher with py-spy under scenario 1's load",
    )
    parser.add_argument(
        "--versus",
        metavar="REV",
        help="also load this tree's dispatcher in turns with the one at git revision REV (scenario 12)",
    )
    parser.add_argument("--py-spy", metavar="PATH", default=shutil.which("py-spy"), help="the py-spy to use")
    parser.add_argument(
        "--idle-connections",
        type=positive_int,
        default=10_000,
        help="scenario 5's idle keep-alive connections (default 10000)",
    )
    parser.add_argument(
        "--no-pin", dest="pin", action="store_false", help="do not pin servers and wrk to CPUs"
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the figures to FILE as JSON")
    parser.add_argument(
        "--logs",
        type=Path,
        metavar="DIR",
        help="keep the servers' logs in DIR (default: a temporary directory)",
    )
    return parser.parse_args(argv)


def selected(args: argparse.Namespace) -> tuple[list[str], frozenset[str]]:
    """The scenarios to run, in order, and the sides of scenario 1 among them."""
    only = set(args.only or [*THROUGHPUT_SIDES, *SCENARIOS])
    if args.profile:
        only.add("profile")
    elif args.only is None:
        only.discard("profile")
    if args.versus is not None:
        only.add("versus")
    else:  # it needs a revision: run only when --versus gives one
        only.discard("versus")
    sides = frozenset(only & set(THROUGHPUT_SIDES))
    if sides:
        only.add("throughput")
    return [name for name in SCENARIOS if name in only], sides


def exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    """Turn SIGTERM into SystemExit, so that the finally blocks stop the children."""
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    durations = QUICK if args.quick else FULL
    server_cpus, wrk_cpus = choose_cpus(args.pin)
    names, sides = selected(args)
    version = dispatcher_version()
    with ExitStack() as stack:
        if args.logs is None:
            log_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="dispatcher-bench-"))
        else:
            args.logs.mkdir(parents=True, exist_ok=True)
            log_dir = str(args.logs)
        settings = Settings(
            duration_seconds=args.duration or durations.wrk_seconds,
            connections=args.connections,
            threads=args.threads,
            rounds=args.rounds or durations.rounds,
            server_cpus=server_cpus,
            wrk_cpus=wrk_cpus,
            log_dir=Path(log_dir),
            idle_seconds=durations.idle_seconds,
            idle_connections=args.idle_connections,
            profile_seconds=durations.profile_seconds,
            py_spy=args.py_spy,
            versus=args.versus,
        )
        try:
            results, failures = run_scenarios(settings, names, sides)
        except KeyboardInterrupt:
            print("interrupted; every child process was stopped", file=sys.stderr)
            return 130
    print(format_report(settings, version, list(results.values()), failures))
    if args.json is not None:
        write_json(args.json, settings, version, results, failures)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
