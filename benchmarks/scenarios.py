# The benchmark scenarios: each one a function `(Bench) -> result`, whose result says which figures go into
# the table (each with what it is compared with, and the goal), and what to warn about.
#
#   1 throughput  the dispatcher (3 backends, checks and metrics on) against the trio + h11 baseline
#   7 profile     py-spy on the dispatcher under scenario 1's load (only with --profile)
#   2 pool        1,000 backends against 3
#   3 health      1,000 backends checked every second: idle CPU, and req/s against 3 backends
#   8 streams     1,000 backends streaming their load against the same pool polled (in streams.py)
#   4 latency     p50/p99 at half the saturating rate, against the baseline at the same rate
#   5 memory      resident memory with 10,000 idle keep-alive connections
#   6 workers     --workers 2 against --workers 1 (when the flag exists)
#
# Every server is a child process started with `running` (stopped in a `finally`); the servers under load
# run on the first CPU and everything else (wrk, backends, clients, py-spy) on the others, except in
# scenario 6. Each comparison starts both sides at once and loads them in turns (`Bench.take_turns`):
# `rounds` rounds of one wrk run per side, in the order A B, B A, A B ..., the side not being loaded
# parked on the wrk CPUs. Each figure is the median of its side's runs; a ratio is the median of the
# rounds' ratios. It must not import `dispatcher`: the dispatcher runs as `python -m dispatcher`.

import functools
import os
import re
import selectors
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from operator import attrgetter
from pathlib import Path
from typing import TypeVar

import pyspy
from harness import (
    BENCHMARKS_DIR,
    HOST,
    READY_TIMEOUT_SECONDS,
    REPO_ROOT,
    BenchError,
    WrkFigures,
    WrkLoad,
    accepts_connections,
    all_backends_up,
    answers_ok,
    busy_warning,
    check_redirect,
    check_wrk_report,
    cpu_snapshot,
    fetch,
    free_ports,
    may_leave_idle,
    move_to,
    others_cpu_percent,
    prepare_child,
    process_cpu_seconds,
    resident_bytes,
    run_when_idle,
    run_wrk,
    running,
    stop,
    wait_until_ready,
    wrk_argv,
)

FILE_BACKEND_COUNT = 3  # scenario 1's pool: three `python -m http.server`
SMALL_POOL = 3
LARGE_POOL = 1000
# A pool of 1,000 must pass 1,000 first checks (at most 100 connecting at once) before /readyz says so.
LARGE_POOL_READY_SECONDS = 60.0
FAST_HEALTH_INTERVAL = "1"  # scenario 3's --health-interval
# After /readyz says all are up, let the start-up burst of first checks pass before measuring idle CPU.
SETTLE_SECONDS = 1.0
KEEPALIVE_SECONDS = "300"  # scenario 5: longer than the whole measurement, so no idle connection is closed
IDLE_CLIENT_TIMEOUT_SECONDS = 120.0  # to open and get answers on all the idle connections
WORKERS = 2
MIB = 1024 * 1024
OPEN_CONNECTIONS = re.compile(r"^dispatcher_open_connections (\S+)$", re.MULTILINE)
IDLE_CLIENTS_LINE = re.compile(r"^open (\d+) failed (\d+) ?(.*)$")
Key = TypeVar("Key")  # what a scenario names the dispatchers of a comparison by (pool size, side)


@dataclass(frozen=True)
class Settings:
    """What every scenario shares: the wrk load, the CPUs for servers and the rest, logs, and the knobs of
    the scenarios that are not wrk runs."""

    duration_seconds: int
    connections: int
    threads: int
    rounds: int
    server_cpus: frozenset[int] | None
    wrk_cpus: frozenset[int] | None
    log_dir: Path
    idle_seconds: float  # scenario 3: the idle CPU window
    idle_connections: int  # scenario 5
    profile_seconds: int  # scenario 7
    py_spy: str | None  # the py-spy executable, if found

    def load(self) -> WrkLoad:
        """The standard wrk load: saturating, from the wrk CPUs."""
        return WrkLoad(self.threads, self.connections, self.duration_seconds, self.wrk_cpus)


# -------------------------------------------------------------------------------------------------
# What a scenario hands back
# -------------------------------------------------------------------------------------------------


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


@dataclass(frozen=True)
class Server:
    """A started server, ready for load: what its runs are called, its process, its port."""

    name: str
    process: subprocess.Popen[bytes]
    port: int


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


def file_name(name: str) -> str:
    """A server's or pool's name as a file name: each run of other characters becomes one `-`."""
    return re.sub(r"[^A-Za-z0-9]+", "-", name)


# -------------------------------------------------------------------------------------------------
# The shared context: backends started on first use, stopped at the end
# -------------------------------------------------------------------------------------------------


class Bench:
    """What the scenarios of one invocation share: the settings, which sides of scenario 1 run, the
    backends (started on first use and stopped when the invocation ends), and the figure scenario 4 takes
    from scenario 1."""

    def __init__(self, settings: Settings, sides: frozenset[str], stack: ExitStack) -> None:
        self.settings = settings
        self.sides = sides  # of scenario 1: "baseline", "dispatcher"
        self.saturation_rps: float | None = None  # scenario 1's dispatcher req/s
        self._stack = stack
        self._file_backends: list[str] | None = None
        self._pool_ports: dict[tuple[int, tuple[str, ...]], int] = {}
        self._helpers: list[subprocess.Popen[bytes]] = []
        self._park_idle = may_leave_idle()  # parked servers run under SCHED_IDLE
        self._logs = 0

    def log(self, name: str) -> Path:
        """A fresh log file: runs of the same server must not overwrite each other's log."""
        self._logs += 1
        return self.settings.log_dir / f"{self._logs:02d}-{file_name(name)}.log"

    def helper_pids(self) -> list[int]:
        """The backends' pids: their CPU time is ours, not another process's."""
        return [helper.pid for helper in self._helpers if helper.poll() is None]

    def file_backends(self) -> list[str]:
        """Scenario 1's three `python -m http.server` backends (each serves a `health` file)."""
        if self._file_backends is None:
            base_urls = []
            for index, port in enumerate(free_ports(FILE_BACKEND_COUNT)):
                root = Path(self._stack.enter_context(tempfile.TemporaryDirectory(prefix="backend-")))
                (root / "health").write_text("ok\n")
                argv = [sys.executable, "-m", "http.server", "--bind", HOST, str(port)]
                ready = functools.partial(answers_ok, port, "/health")
                self._start_helper(argv, f"backend-{index}", ready, cwd=root)
                base_urls.append(f"http://{HOST}:{port}")
            self._file_backends = base_urls
        return self._file_backends

    def pool_port(self, count: int, mode: Sequence[str] = ()) -> int:
        """The port of the benchmarks/backends.py serving the pool of `count` backends (`/bNNNN`
        prefixes on one port), started with the options `mode` (`--stream`, `--vary-load`). Each pool
        has its own, so that two dispatchers running side by side are never answered by the same
        process, and each process counts one pool's checks."""
        key = (count, tuple(mode))
        if key not in self._pool_ports:
            (port,) = free_ports(1)
            argv = [sys.executable, str(BENCHMARKS_DIR / "backends.py"), "--listen", f"{HOST}:{port}", *mode]
            name = " ".join([f"pool-{count}-backends", *mode])
            self._start_helper(argv, name, functools.partial(accepts_connections, port))
            self._pool_ports[key] = port
        return self._pool_ports[key]

    def _start_helper(
        self, argv: list[str], name: str, ready: Callable[[], bool], cwd: Path = REPO_ROOT
    ) -> None:
        log = self.log(name)
        # On the wrk side: health checks are light, and the server's core stays the server's own.
        process = self._stack.enter_context(running(argv, log, self.settings.wrk_cpus, cwd=cwd))
        self._helpers.append(process)
        wait_until_ready(ready, process, log)
        # And only when wrk leaves the CPU idle: 1,000 backends' answers (about 200 us of Python each,
        # 500 or 1,000 a second) must not delay the load generator, which would starve the server and
        # be counted against it. wrk itself uses a sixth of its core.
        run_when_idle(process.pid)

    def take_turns(
        self, load: WrkLoad, servers: Sequence[Server], pinned: bool = True, rounds: int | None = None
    ) -> list[Run]:
        """Load the servers, all up at once, in turns: one wrk run each per round, in the order A B,
        then B A, then A B again. A drift of the machine within a round then falls on both sides alike,
        and one that lasts longer is cancelled by the alternation; each server also runs as long as the
        other, warm, without a restart between rounds. The servers not being loaded are parked on the
        wrk CPUs (when `pinned`), so that their own background work (health checks) never takes the
        loaded server's core. Then every server is stopped; the last run of each says how it ended."""
        pids = [server.process.pid for server in servers]
        runs = []
        for round_ in range(rounds or self.settings.rounds):
            for server in servers if round_ % 2 == 0 else list(reversed(servers)):
                if pinned:
                    self._park_all_but(server, servers)
                before = cpu_snapshot(pids, self.helper_pids())
                figures = run_wrk(load, server.port)
                others = others_cpu_percent(before, cpu_snapshot(pids, self.helper_pids()))
                runs.append(Run(server.name, load.describe(), figures, others, ""))
        for server in servers:
            last = max(i for i, run in enumerate(runs) if run.name == server.name)
            runs[last] = replace(runs[last], shutdown=stop(server.process))
        return runs

    def _park_all_but(self, loaded: Server, servers: Sequence[Server]) -> None:
        """The loaded server on the server CPUs; the others on the wrk CPUs, and there only when wrk
        leaves them idle (where they may be given the normal policy back: see may_leave_idle), so
        that their health checks do not delay the load generator either."""
        server_cpus, wrk_cpus = self.settings.server_cpus, self.settings.wrk_cpus
        if server_cpus is None or wrk_cpus is None:
            return
        for server in servers:
            parked = server is not loaded
            if self._park_idle:
                run_when_idle(server.process.pid, parked)
            move_to(server.process.pid, wrk_cpus if parked else server_cpus)


# -------------------------------------------------------------------------------------------------
# Servers
# -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dispatcher(Server):
    """A started `python -m dispatcher` whose backends are all up."""

    admin_port: int
    base_urls: list[str]
    ready_seconds: float  # from the start of the process to all backends up


@contextmanager
def dispatcher_running(
    bench: Bench,
    name: str,
    backend_args: Sequence[str],
    base_urls: list[str],
    cpus: frozenset[int] | None,
    extra: Sequence[str] = (),
    ready_timeout: float = READY_TIMEOUT_SECONDS,
) -> Iterator[Dispatcher]:
    """`python -m dispatcher` on free ports; yields once /readyz says every backend is up."""
    port, admin_port = free_ports(2)
    argv = [sys.executable, "-m", "dispatcher", "--listen", f"{HOST}:{port}"]
    argv += ["--admin-listen", f"{HOST}:{admin_port}", *backend_args, *extra]
    log = bench.log(name)
    with running(argv, log, cpus) as process:
        ready = functools.partial(all_backends_up, admin_port, len(base_urls))
        waited = wait_until_ready(ready, process, log, ready_timeout)
        check_redirect(port, base_urls, name)
        yield Dispatcher(name, process, port, admin_port, base_urls, waited)


def backend_flags(base_urls: Sequence[str]) -> list[str]:
    return [arg for base_url in base_urls for arg in ("--backend", base_url)]


def pool_config(bench: Bench, count: int, mode: Sequence[str] = ()) -> tuple[list[str], list[str]]:
    """A config file with `count` backends on backends.py (`/b0001`, `/b0002`, ...) started with the
    options `mode`: its flag and URLs."""
    base = f"http://{HOST}:{bench.pool_port(count, mode)}"
    base_urls = [f"{base}/b{index:04d}" for index in range(1, count + 1)]
    entries = (f'[[backends]]\nurl = "{url}"\nname = "{url.rpartition("/")[2]}"\n' for url in base_urls)
    path = bench.settings.log_dir / f"{file_name(' '.join([f'pool-{count}', *mode]))}.toml"
    path.write_text("\n".join(entries))
    return ["--config", str(path)], base_urls


@contextmanager
def baseline_running(bench: Bench, name: str = "baseline") -> Iterator[Server]:
    """benchmarks/baseline.py: trio + h11 answering 307 to itself, nothing else."""
    (port,) = free_ports(1)
    argv = [sys.executable, str(BENCHMARKS_DIR / "baseline.py"), "--listen", f"{HOST}:{port}"]
    log = bench.log(name)
    with running(argv, log, bench.settings.server_cpus) as process:
        wait_until_ready(functools.partial(accepts_connections, port), process, log)
        check_redirect(port, [f"http://{HOST}:{port}"], name)
        yield Server(name, process, port)


def file_dispatcher(
    bench: Bench, name: str = "dispatcher", extra: Sequence[str] = (), pinned: bool = True
) -> AbstractContextManager[Dispatcher]:
    """The dispatcher over scenario 1's three http.server backends."""
    base_urls = bench.file_backends()
    cpus = bench.settings.server_cpus if pinned else None
    return dispatcher_running(bench, name, backend_flags(base_urls), base_urls, cpus, extra)


def pool_dispatcher(
    bench: Bench, count: int, name: str, extra: Sequence[str] = (), mode: Sequence[str] = ()
) -> AbstractContextManager[Dispatcher]:
    """The dispatcher over `count` backends of backends.py (started with the options `mode`), given in
    a config file."""
    flags, base_urls = pool_config(bench, count, mode)
    cpus = bench.settings.server_cpus
    return dispatcher_running(bench, name, flags, base_urls, cpus, extra, pool_timeout(count))


def compared(
    bench: Bench,
    load: WrkLoad,
    starts: Sequence[AbstractContextManager[Server]],
    pinned: bool = True,
    rounds: int | None = None,
) -> list[Run]:
    """Start the servers, one after the other, then load them in turns (Bench.take_turns)."""
    with ExitStack() as stack:
        servers = [stack.enter_context(start) for start in starts]
        return bench.take_turns(load, servers, pinned, rounds)


def pool_timeout(count: int) -> float:
    """How long a dispatcher over `count` backends may take until all are up."""
    return LARGE_POOL_READY_SECONDS if count > SMALL_POOL else READY_TIMEOUT_SECONDS


# -------------------------------------------------------------------------------------------------
# 1. Throughput against the baseline
# -------------------------------------------------------------------------------------------------


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


# -------------------------------------------------------------------------------------------------
# 7. Profile (with --profile): py-spy on the dispatcher under scenario 1's load
# -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProfileResult(Report):
    """Scenario 7: where the dispatcher spends its time under scenario 1's load."""

    seconds: int
    wrk: WrkFigures  # the load while sampled (py-spy pauses the process for each sample: slower)
    summary: pyspy.StackSummary
    others_cpu_percent: float | None

    def title(self) -> str:
        return "7. profile: see below the table"

    def warnings(self) -> list[str]:
        warning = busy_warning(self.others_cpu_percent, "7, the profile")
        return [warning] if warning else []

    def details(self) -> list[str]:
        rps = self.wrk.requests_per_second
        lines = [
            f"7. profile: py-spy record -d {self.seconds} -r {pyspy.SAMPLE_RATE} -f raw on the dispatcher of "
            f"scenario 1 under the same load ({rps:.0f} req/s while sampled; "
            f"{self.summary.samples} busy samples)",
            "",
        ]
        everywhere = ", ".join(self.summary.on_every_stack)
        title = f"top {pyspy.TOP_FUNCTIONS} by inclusive time (left out, on every stack: {everywhere})"
        lines += pyspy.format_top(title, self.summary.inclusive)
        lines += ["", *pyspy.format_top(f"top {pyspy.TOP_FUNCTIONS} by self time", self.summary.self_time)]
        return lines


def profile(bench: Bench) -> ProfileResult:
    """7. Scenario 1's dispatcher and load, with py-spy attached for profile_seconds in the middle of it.

    A run of its own, so that the sampling (py-spy pauses the process for each sample) does not slow the
    run whose req/s goes into scenario 1's ratio."""
    settings = bench.settings
    if settings.py_spy is None:
        raise BenchError("py-spy not found: put it on PATH or give --py-spy PATH")
    # wrk starts first and ends after py-spy: 1 s of load before sampling, 1 s after.
    load = WrkLoad(settings.threads, settings.connections, settings.profile_seconds + 2, settings.wrk_cpus)
    base_urls = bench.file_backends()
    flags = backend_flags(base_urls)
    with dispatcher_running(
        bench, "dispatcher-profile", flags, base_urls, settings.server_cpus
    ) as dispatcher:
        raw = settings.log_dir / "profile.raw"
        before = cpu_snapshot([dispatcher.process.pid], bench.helper_pids())
        with wrk_in_background(load, dispatcher.port) as wrk:
            time.sleep(1.0)
            pyspy.record(
                settings.py_spy, dispatcher.process.pid, settings.profile_seconds, raw, settings.wrk_cpus
            )
            stdout, stderr = wrk.communicate(timeout=load.duration_seconds + 30)
        others = others_cpu_percent(before, cpu_snapshot([dispatcher.process.pid], bench.helper_pids()))
        figures = check_wrk_report(wrk.returncode, stdout, stderr)
    summary = pyspy.summarise(raw.read_text())
    return ProfileResult(settings.profile_seconds, figures, summary, others)


@contextmanager
def wrk_in_background(load: WrkLoad, port: int) -> Iterator[subprocess.Popen[str]]:
    """wrk running while the caller does something else; killed on the way out if still running."""
    process = subprocess.Popen(
        wrk_argv(load, port),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=prepare_child(load.cpus),
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()


# -------------------------------------------------------------------------------------------------
# 2. Pool size: 1,000 backends against 3
# -------------------------------------------------------------------------------------------------


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


# -------------------------------------------------------------------------------------------------
# 3. Health-check cost: 1,000 backends checked every second
# -------------------------------------------------------------------------------------------------


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


# -------------------------------------------------------------------------------------------------
# 4. Latency at half the saturating rate
# -------------------------------------------------------------------------------------------------

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


# -------------------------------------------------------------------------------------------------
# 5. Memory with 10,000 idle keep-alive connections
# -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MemoryResult(Report):
    """Scenario 5: the dispatcher's VmRSS before and with `opened` idle keep-alive connections."""

    connections: int  # asked for
    opened: int  # open and answered
    failed: int
    first_failure: str
    open_connections_gauge: float | None  # dispatcher_open_connections, scraped after
    rss_before_bytes: int
    rss_after_bytes: int
    others_cpu_percent: float | None
    shutdown: str  # how the dispatcher stopped with all those connections open

    def title(self) -> str:
        asked = f" (of {self.connections:,} asked)" if self.opened != self.connections else ""
        return (
            f"5. memory: {self.opened:,} idle keep-alive connections{asked}, "
            f"--keepalive-timeout {KEEPALIVE_SECONDS}, VmRSS from /proc"
        )

    def figures(self) -> list[Figure]:
        before, after = self.rss_before_bytes / MIB, self.rss_after_bytes / MIB
        per_connection = (self.rss_after_bytes - self.rss_before_bytes) / 1024 / max(self.opened, 1)
        return [
            Figure("5", "VmRSS", after, "MiB", before, "before", per_connection,
                   "KiB per connection", *at_most(after, 200.0, "MiB")),
        ]  # fmt: skip

    def notes(self) -> list[str]:
        return [f"5. memory: the dispatcher, stopped with every connection open, {self.shutdown}"]

    def warnings(self) -> list[str]:
        warnings = []
        if self.failed:
            warnings.append(
                f"WARNING: 5, {self.failed} of {self.connections} idle connections failed: "
                f"{self.first_failure}"
            )
        if self.open_connections_gauge is not None and self.open_connections_gauge != self.opened:
            warnings.append(
                f"WARNING: 5, dispatcher_open_connections was {self.open_connections_gauge:.0f} "
                f"with {self.opened} connections open"
            )
        warning = busy_warning(self.others_cpu_percent, "5")
        return warnings + ([warning] if warning else [])


def read_line(process: subprocess.Popen[bytes], timeout: float) -> str:
    """One line from the child's stdout within `timeout` seconds (a child that hangs cannot hang us)."""
    assert process.stdout is not None
    received = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while b"\n" not in received:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not selector.select(remaining):
                raise BenchError(f"no line from {process.args!r} within {timeout:.0f} s")
            chunk = process.stdout.read1(4096)  # type: ignore[attr-defined]
            if not chunk:
                raise BenchError(f"{process.args!r} ended without a line (code {process.wait()})")
            received += chunk
    return received.decode(errors="replace").partition("\n")[0]


def open_connections_gauge(admin_port: int) -> float | None:
    match = OPEN_CONNECTIONS.search(fetch(admin_port, "/metrics").body)
    return float(match.group(1)) if match else None


def memory(bench: Bench) -> MemoryResult:
    """5. VmRSS of the dispatcher (scenario 1's pool) before and with N idle keep-alive connections."""
    settings = bench.settings
    base_urls = bench.file_backends()
    extra = ["--keepalive-timeout", KEEPALIVE_SECONDS]
    with dispatcher_running(bench, "dispatcher-memory", backend_flags(base_urls), base_urls,
                            settings.server_cpus, extra) as dispatcher:  # fmt: skip
        pid = dispatcher.process.pid
        time.sleep(SETTLE_SECONDS)
        rss_before, before = resident_bytes(pid), cpu_snapshot([pid], bench.helper_pids())
        argv = [sys.executable, str(BENCHMARKS_DIR / "idle_clients.py"), "--port", str(dispatcher.port)]
        argv += ["--count", str(settings.idle_connections), "--timeout", str(IDLE_CLIENT_TIMEOUT_SECONDS)]
        log = bench.log("idle-clients")
        with running(argv, log, settings.wrk_cpus, stdin=subprocess.PIPE, stdout=subprocess.PIPE) as client:
            line = read_line(client, IDLE_CLIENT_TIMEOUT_SECONDS + 30)
            match = IDLE_CLIENTS_LINE.match(line)
            if match is None:
                raise BenchError(f"idle_clients.py said {line!r}")
            time.sleep(SETTLE_SECONDS)
            rss_after = resident_bytes(pid)
            # The client is ours too (it did not exist at `before`, so all its CPU time falls in between).
            others = others_cpu_percent(before, cpu_snapshot([pid], [*bench.helper_pids(), client.pid]))
            gauge = open_connections_gauge(dispatcher.admin_port)
            # Stopped while every connection is open: a graceful stop must close idle ones at once.
            shutdown = stop(dispatcher.process)
    opened, failed = int(match.group(1)), int(match.group(2))
    return MemoryResult(
        settings.idle_connections,
        opened,
        failed,
        match.group(3),
        gauge,
        rss_before,
        rss_after,
        others,
        shutdown,
    )


# -------------------------------------------------------------------------------------------------
# 6. Workers
# -------------------------------------------------------------------------------------------------


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
