# Throughput of the dispatcher against a baseline measured in the same run, on the same machine.
#
# Why a baseline in the same run: absolute req/s depend on the machine, its load and the Python build, so
# they cannot be compared across runs or machines. The ratio "dispatcher / baseline" can:
# benchmarks/baseline.py is the leanest correct trio + h11 server giving the same 307 reply, so the ratio is
# the share of the trio + h11 ceiling that the dispatcher keeps after its own work (policy, timeouts,
# metrics).
#
# How: every server under test runs as a child process, pinned to the first CPU while wrk is pinned to the
# others (taskset semantics), so that the load generator does not steal the server's core. Before timing,
# one request is checked by hand to be a 307 with the expected Location, since wrk only flags a status of
# 400 or more.
#
# Owns: child processes (each one stopped in a `finally`, also on Ctrl-C and SIGTERM), the wrk run and the
# parsing of its report. Each scenario is one function returning a ScenarioResult; add new ones to
# SCENARIOS. It must not import `dispatcher`: the dispatcher is measured as users run it, as
# `python -m dispatcher`.
#
#   python benchmarks/bench.py [--duration 10] [--connections 50] [--threads 1]
#                              [--only baseline] [--no-pin] [--json FILE]

import argparse
import functools
import http.client
import json
import os
import platform
import re
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType

BENCHMARKS_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCHMARKS_DIR.parent
HOST = "127.0.0.1"  # Loopback only: the benchmark never talks to another address.
TARGET = "/some/path?x=1"  # A path and a query, so that both must be carried into Location.
BACKEND_COUNT = 3
REDIRECT_STATUS = 307

# Readiness is polled: 200 tries 50 ms apart give a server 10 s to come up. The dispatcher checks its
# backends at start; even a `rise` of 2 checks 2 s apart (HAProxy's `rise 2`, `inter 2s`) fits easily.
READY_TRIES = 200
READY_INTERVAL_SECONDS = 0.05
# A server gets this long to exit after SIGTERM before it is killed: longer than the dispatcher's default
# --grace-period of 10 s, so that a drain is never cut short. With no client left, a graceful shutdown needs
# far less.
STOP_TIMEOUT_SECONDS = 15.0
# wrk gets this long on top of --duration to connect, finish and print its report.
WRK_GRACE_SECONDS = 30


class BenchError(Exception):
    """A scenario could not be measured: a server did not start, or did not answer 307."""


@dataclass(frozen=True)
class Settings:
    """What every scenario shares: the wrk load, the CPUs for server and wrk, and where logs go."""

    duration_seconds: int
    connections: int
    threads: int
    rounds: int
    server_cpus: frozenset[int] | None
    wrk_cpus: frozenset[int] | None
    log_dir: Path


@dataclass(frozen=True)
class WrkFigures:
    """The part of a wrk report that the table shows; latencies in milliseconds."""

    requests_per_second: float
    requests: int
    p50_ms: float
    p99_ms: float
    non_3xx_responses: int
    socket_errors: int


@dataclass(frozen=True)
class ScenarioResult:
    """One row of the table: the server measured, its figures, what else ran, and how it stopped."""

    name: str
    figures: WrkFigures
    others_cpu_percent: float | None
    shutdown: str


Scenario = Callable[[Settings, Sequence[str]], ScenarioResult]

# -------------------------------------------------------------------------------------------------
# Child processes
# -------------------------------------------------------------------------------------------------


def free_ports(count: int) -> list[int]:
    """Ports the kernel hands out for port 0, all held open together so that they differ."""
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind((HOST, 0))
        return [sock.getsockname()[1] for sock in sockets]


def pin_to(cpus: frozenset[int] | None) -> Callable[[], None] | None:
    """A preexec_fn pinning the child before exec, so that all its threads inherit the CPUs."""
    if cpus is None:
        return None
    return functools.partial(os.sched_setaffinity, 0, cpus)


def log_tail(log: Path, lines: int = 20) -> str:
    """The last lines a child wrote, to explain why it failed."""
    text = log.read_text(errors="replace") if log.exists() else ""
    return "\n".join(text.splitlines()[-lines:]) or "(no output)"


def stop(process: subprocess.Popen[bytes]) -> str:
    """SIGTERM, then SIGKILL after STOP_TIMEOUT_SECONDS; say how the process ended."""
    if process.poll() is not None:
        return f"had already exited with code {process.returncode}"
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(timeout=STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return f"ignored SIGTERM for {STOP_TIMEOUT_SECONDS:.0f} s and was killed"
    return f"exited with code {code} {time.monotonic() - started:.2f} s after SIGTERM"


@contextmanager
def running(
    argv: Sequence[str], log: Path, cpus: frozenset[int] | None, cwd: Path = REPO_ROOT
) -> Iterator[subprocess.Popen[bytes]]:
    """Run argv with its output in `log`; stop it on the way out, whatever happened."""
    with log.open("wb") as log_file:
        # Own session: Ctrl-C reaches only us, and we stop the children in order, in the finally below.
        process = subprocess.Popen(
            argv,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            preexec_fn=pin_to(cpus),
            start_new_session=True,
        )
        try:
            yield process
        finally:
            stop(process)


# -------------------------------------------------------------------------------------------------
# Probing servers
# -------------------------------------------------------------------------------------------------


def fetch(port: int, target: str) -> tuple[int, str | None]:
    """Status and Location of one GET, never following a redirect (http.client does not)."""
    connection = http.client.HTTPConnection(HOST, port, timeout=5)
    try:
        connection.request("GET", target)
        response = connection.getresponse()
        response.read()
        return response.status, response.getheader("Location")
    finally:
        connection.close()


def answers_ok(port: int, target: str) -> bool:
    """Whether GET target answers 200; a refused connection is just 'not yet'."""
    try:
        return fetch(port, target)[0] == 200
    except (OSError, http.client.HTTPException):
        return False


def accepts_connections(port: int) -> bool:
    """Whether something listens on the port."""
    try:
        socket.create_connection((HOST, port), timeout=1).close()
    except OSError:
        return False
    return True


def wait_until_ready(ready: Callable[[], bool], process: subprocess.Popen[bytes], log: Path) -> None:
    """Poll ready() a bounded number of times; fail early if the process dies."""
    for _ in range(READY_TRIES):
        if process.poll() is not None:
            raise BenchError(f"{log.stem} exited with code {process.returncode}:\n{log_tail(log)}")
        if ready():
            return
        time.sleep(READY_INTERVAL_SECONDS)
    waited = READY_TRIES * READY_INTERVAL_SECONDS
    raise BenchError(f"{log.stem} not ready after {waited:.0f} s:\n{log_tail(log)}")


def check_redirect(port: int, base_urls: Sequence[str], what: str) -> None:
    """Fail unless one GET of TARGET answers 307 with Location = one of base_urls + TARGET."""
    status, location = fetch(port, TARGET)
    expected = {base_url + TARGET for base_url in base_urls}
    if status != REDIRECT_STATUS or location not in expected:
        raise BenchError(
            f"{what}: GET {TARGET} gave {status} Location {location!r}; expected 307 to {expected}"
        )


# -------------------------------------------------------------------------------------------------
# wrk
# -------------------------------------------------------------------------------------------------

REQUESTS_PER_SECOND = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
REQUESTS = re.compile(r"^\s*(\d+) requests in ", re.MULTILINE)
PERCENTILE = re.compile(r"^\s*(\d+)%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.MULTILINE)
NON_3XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
SOCKET_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
MILLISECONDS_PER_UNIT = {"us": 0.001, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def first_number(pattern: re.Pattern[str], report: str) -> str:
    """The first group of pattern in the wrk report, which must be there."""
    match = pattern.search(report)
    if match is None:
        raise BenchError(f"no {pattern.pattern!r} in the wrk report:\n{report}")
    return match.group(1)


def parse_wrk(report: str) -> WrkFigures:
    """Read the figures out of the text wrk prints with --latency."""
    percentiles = {
        p: float(value) * MILLISECONDS_PER_UNIT[unit] for p, value, unit in PERCENTILE.findall(report)
    }
    if "50" not in percentiles or "99" not in percentiles:
        raise BenchError(f"no latency distribution in the wrk report (was --latency given?):\n{report}")
    non_3xx = NON_3XX.search(report)
    socket_errors = SOCKET_ERRORS.search(report)
    return WrkFigures(
        requests_per_second=float(first_number(REQUESTS_PER_SECOND, report)),
        requests=int(first_number(REQUESTS, report)),
        p50_ms=percentiles["50"],
        p99_ms=percentiles["99"],
        non_3xx_responses=int(non_3xx.group(1)) if non_3xx else 0,
        socket_errors=sum(map(int, socket_errors.groups())) if socket_errors else 0,
    )


def run_wrk(settings: Settings, port: int) -> WrkFigures:
    """Load the server on port with wrk and return its figures; every response must be a 3xx."""
    argv = [
        "wrk",
        f"-t{settings.threads}",
        f"-c{settings.connections}",
        f"-d{settings.duration_seconds}s",
        "--latency",
        f"http://{HOST}:{port}{TARGET}",
    ]
    completed = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=settings.duration_seconds + WRK_GRACE_SECONDS,
        preexec_fn=pin_to(settings.wrk_cpus),
        check=False,
    )
    if completed.returncode != 0:
        raise BenchError(
            f"wrk exited with code {completed.returncode}:\n{completed.stdout}{completed.stderr}"
        )
    figures = parse_wrk(completed.stdout)
    if figures.non_3xx_responses:
        raise BenchError(f"{figures.non_3xx_responses} responses were not redirects:\n{completed.stdout}")
    return figures


# -------------------------------------------------------------------------------------------------
# What else ran: on a 2-core machine one busy neighbour (a test suite, a build) takes a third off a row
# without any other sign. Linux only, from /proc.
# -------------------------------------------------------------------------------------------------

PROC_STAT = Path("/proc/stat")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# Above this share of one core used by other processes while wrk ran, the figures are flagged.
OTHERS_CPU_WARNING_PERCENT = 10.0


@dataclass(frozen=True)
class CpuSnapshot:
    """CPU seconds so far: the whole machine's busy time, the server's, and our reaped children's."""

    wall: float
    machine_busy: float
    server: float
    children: float


def machine_busy_seconds() -> float:
    """user + nice + system + steal of all CPUs since boot. irq and softirq are left out: on loopback
    they are mostly the network stack carrying our own traffic, which most kernels also count in our
    processes' system time. So what is left for others is a lower bound. steal is a neighbour's."""
    user, nice, system, _idle, _iowait, _irq, _softirq, steal = PROC_STAT.read_text().split()[1:9]
    return (int(user) + int(nice) + int(system) + int(steal)) / CLOCK_TICKS


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of a live process and all its threads (fields 14 and 15 of /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def cpu_snapshot(server_pid: int) -> CpuSnapshot | None:
    """Where the CPU clocks stand now; None where /proc is missing."""
    if not PROC_STAT.exists():
        return None
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return CpuSnapshot(
        wall=time.monotonic(),
        machine_busy=machine_busy_seconds(),
        server=process_cpu_seconds(server_pid),
        children=children.ru_utime + children.ru_stime,
    )


def others_cpu_percent(before: CpuSnapshot | None, after: CpuSnapshot | None) -> float | None:
    """CPU used between the snapshots by neither the server nor wrk (reaped in between), in % of a core;
    a lower bound (see machine_busy_seconds)."""
    if before is None or after is None:
        return None
    ours = (after.server - before.server) + (after.children - before.children)
    others = after.machine_busy - before.machine_busy - ours
    return max(0.0, others) / (after.wall - before.wall) * 100


# -------------------------------------------------------------------------------------------------
# Backends and scenarios
# -------------------------------------------------------------------------------------------------


@contextmanager
def running_backends(settings: Settings, count: int) -> Iterator[list[str]]:
    """Start `count` http.server backends whose GET /health is 200; yield their base URLs."""
    with ExitStack() as stack:
        base_urls = []
        for index, port in enumerate(free_ports(count)):
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="backend-")))
            (root / "health").write_text("ok\n")
            argv = [sys.executable, "-m", "http.server", "--bind", HOST, str(port)]
            log = settings.log_dir / f"backend-{index}.log"
            # On the wrk side: health probes are light, and the server's core stays the server's own.
            process = stack.enter_context(running(argv, log, settings.wrk_cpus, cwd=root))
            wait_until_ready(functools.partial(answers_ok, port, "/health"), process, log)
            base_urls.append(f"http://{HOST}:{port}")
        yield base_urls


def measure(name: str, settings: Settings, port: int, server: subprocess.Popen[bytes]) -> ScenarioResult:
    """Load a ready server with wrk, watch what else used the CPU meanwhile, then stop the server."""
    before = cpu_snapshot(server.pid)
    figures = run_wrk(settings, port)
    others = others_cpu_percent(before, cpu_snapshot(server.pid))
    return ScenarioResult(name, figures, others, stop(server))


def baseline(settings: Settings, backends: Sequence[str]) -> ScenarioResult:
    """benchmarks/baseline.py: trio + h11 answering 307 to itself, nothing else."""
    (port,) = free_ports(1)
    argv = [sys.executable, str(BENCHMARKS_DIR / "baseline.py"), "--listen", f"{HOST}:{port}"]
    log = settings.log_dir / "baseline.log"
    with running(argv, log, settings.server_cpus) as process:
        wait_until_ready(functools.partial(accepts_connections, port), process, log)
        check_redirect(port, [f"http://{HOST}:{port}"], "baseline")
        return measure("baseline", settings, port, process)


def dispatcher(settings: Settings, backends: Sequence[str]) -> ScenarioResult:
    """`python -m dispatcher` over the shared backends, with its default health checks."""
    port, admin_port = free_ports(2)
    argv = [
        sys.executable,
        "-m",
        "dispatcher",
        "--listen",
        f"{HOST}:{port}",
        "--admin-listen",
        f"{HOST}:{admin_port}",
    ]
    for base_url in backends:
        argv += ["--backend", base_url]
    log = settings.log_dir / "dispatcher.log"
    with running(argv, log, settings.server_cpus) as process:
        wait_until_ready(functools.partial(answers_ok, admin_port, "/readyz"), process, log)
        check_redirect(port, backends, "dispatcher")
        return measure("dispatcher", settings, port, process)


# Run in this order; every row is compared with the one named "baseline".
SCENARIOS: dict[str, Scenario] = {"baseline": baseline, "dispatcher": dispatcher}


# What fails one scenario without stopping the others: a server that does not come up or answers wrongly, a
# refused or broken connection, a missing wrk, a wrk that hangs.
SCENARIO_FAILURES = (BenchError, OSError, http.client.HTTPException, subprocess.TimeoutExpired)


def run_scenarios(settings: Settings, names: Sequence[str]) -> tuple[list[ScenarioResult], list[str]]:
    """Run the named scenarios in turn, `rounds` times; a failed one is reported and not run again."""
    runs: list[ScenarioResult] = []
    failures: dict[str, str] = {}
    with running_backends(settings, BACKEND_COUNT) as backends:
        for _ in range(settings.rounds):
            for name in (name for name in names if name not in failures):
                try:
                    runs.append(SCENARIOS[name](settings, backends))
                except SCENARIO_FAILURES as error:
                    failures[name] = f"{name}: {error}"
    return runs, list(failures.values())


def median_runs(runs: Sequence[ScenarioResult]) -> list[ScenarioResult]:
    """Per scenario, in order, the run with the median req/s (the lower middle one of an even count)."""
    by_name: dict[str, list[ScenarioResult]] = {}
    for run in runs:
        by_name.setdefault(run.name, []).append(run)
    return [
        sorted(group, key=lambda run: run.figures.requests_per_second)[(len(group) - 1) // 2]
        for group in by_name.values()
    ]


# -------------------------------------------------------------------------------------------------
# Report
# -------------------------------------------------------------------------------------------------


def ratio_to_baseline(result: ScenarioResult, results: Sequence[ScenarioResult]) -> float | None:
    """result's req/s over the baseline's, if the baseline ran."""
    for other in results:
        if other.name == "baseline":
            return result.figures.requests_per_second / other.figures.requests_per_second
    return None


def describe_pinning(settings: Settings) -> str:
    """One line saying where the server and wrk ran."""
    if settings.server_cpus is None or settings.wrk_cpus is None:
        return "not pinned"
    return f"server on CPU {sorted(settings.server_cpus)}, wrk on CPU {sorted(settings.wrk_cpus)}"


ROW = "{:<12} | {:>10} | {:>9} | {:>9} | {:>11} | {:>13} | {:>12}"
RULE = "-+-".join("-" * width for width in (12, 10, 9, 9, 11, 13, 12))


def format_row(result: ScenarioResult, results: Sequence[ScenarioResult]) -> str:
    """One scenario's line of the table."""
    figures, ratio = result.figures, ratio_to_baseline(result, results)
    return ROW.format(
        result.name,
        f"{figures.requests_per_second:.0f}",
        f"{figures.p50_ms:.2f} ms",
        f"{figures.p99_ms:.2f} ms",
        "-" if ratio is None else f"{ratio:.2f}",
        figures.socket_errors,
        "-" if result.others_cpu_percent is None else f"{result.others_cpu_percent:.0f} %",
    )


def format_table(settings: Settings, results: Sequence[ScenarioResult]) -> str:
    """The machine, the load, then one row per scenario and its ratio to the baseline."""
    load = f"-t{settings.threads} -c{settings.connections} -d{settings.duration_seconds}s"
    lines = [
        f"cores:  {os.cpu_count()}",
        f"python: {platform.python_implementation()} {platform.python_version()}",
        f"load:   wrk {load} --latency {TARGET}",
        f"pinned: {describe_pinning(settings)}",
        f"rounds: {settings.rounds}" + (" (each row is the median run)" if settings.rounds > 1 else ""),
        "",
        ROW.format("server", "req/s", "p50", "p99", "vs baseline", "socket errors", "others' CPU"),
        RULE,
        *(format_row(result, results) for result in results),
    ]
    for result in results:
        ratio = ratio_to_baseline(result, results)
        if result.name != "baseline" and ratio is not None:
            lines.append(f"\n{result.name}/baseline req/s: {ratio:.2f}")
    lines += ["", *(f"{result.name} {result.shutdown}" for result in results)]
    lines += [busy_warning(result) for result in results if busy_warning(result)]
    return "\n".join(lines)


def busy_warning(result: ScenarioResult) -> str:
    """A warning when other processes took a noticeable share of the CPU during the run, else ''."""
    others = result.others_cpu_percent
    if others is None or others < OTHERS_CPU_WARNING_PERCENT:
        return ""
    return f"WARNING: other processes used {others:.0f} % of a core during {result.name}: rerun when quiet"


def write_json(
    path: Path, settings: Settings, runs: Sequence[ScenarioResult], failures: Sequence[str]
) -> None:
    """The same figures as the table, for machines, and every run behind them."""
    results = median_runs(runs)
    report = {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "duration_seconds": settings.duration_seconds,
        "connections": settings.connections,
        "threads": settings.threads,
        "rounds": settings.rounds,
        "pinned": describe_pinning(settings),
        "results": [
            {**asdict(result), "ratio_to_baseline": ratio_to_baseline(result, results)} for result in results
        ],
        "runs": [asdict(run) for run in runs],
        "failures": list(failures),
    }
    path.write_text(json.dumps(report, indent=2) + "\n")


# -------------------------------------------------------------------------------------------------
# Command line
# -------------------------------------------------------------------------------------------------


def choose_cpus(pin: bool) -> tuple[frozenset[int] | None, frozenset[int] | None]:
    """The first allowed CPU for the server, the others for wrk; (None, None) if impossible."""
    if not pin or not hasattr(os, "sched_setaffinity"):
        return None, None
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        return None, None
    return frozenset(allowed[:1]), frozenset(allowed[1:])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Redirect throughput: the dispatcher against a trio + h11 baseline"
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds of load per scenario (default 10)")
    parser.add_argument("--connections", type=int, default=50, help="wrk connections (default 50)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    parser.add_argument(
        "--rounds", type=int, default=1, help="run every scenario N times, in turn; show the median"
    )
    parser.add_argument(
        "--only", choices=SCENARIOS, action="append", help="run only this scenario (repeatable)"
    )
    parser.add_argument(
        "--no-pin", dest="pin", action="store_false", help="do not pin server and wrk to CPUs"
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the figures to FILE as JSON")
    return parser.parse_args(argv)


def exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    """Turn SIGTERM into SystemExit, so that the finally blocks stop the children."""
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    server_cpus, wrk_cpus = choose_cpus(args.pin)
    names = [name for name in SCENARIOS if args.only is None or name in args.only]
    with tempfile.TemporaryDirectory(prefix="dispatcher-bench-") as log_dir:
        settings = Settings(
            args.duration, args.connections, args.threads, args.rounds, server_cpus, wrk_cpus, Path(log_dir)
        )
        try:
            runs, failures = run_scenarios(settings, names)
        except KeyboardInterrupt:
            print("interrupted; every child process was stopped", file=sys.stderr)
            return 130
        except BenchError as error:
            print(f"FAILED to start the backends: {error}", file=sys.stderr)
            return 1
    print(format_table(settings, median_runs(runs)))
    if args.json is not None:
        write_json(args.json, settings, runs, failures)
    for failure in failures:
        print(f"\nFAILED {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
