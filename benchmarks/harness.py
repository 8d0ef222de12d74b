# The machinery every benchmark scenario shares: child processes, probing servers, wrk, and what /proc says
# about CPU time and memory.
#
# Owns: starting a child in its own session with its output in a log file and stopping it in a `finally`
# (SIGTERM, then SIGKILL), polling readiness a bounded number of times, the wrk command line and the parsing
# of its report, CPU accounting (whose CPU time went where while a scenario ran) and resident memory.
# Rules: no scenario and no table here; it must not import `dispatcher` (the dispatcher is measured as users
# run it, as `python -m dispatcher`). Every wait is bounded.

import contextlib
import ctypes
import functools
import http.client
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

BENCHMARKS_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCHMARKS_DIR.parent
HOST = "127.0.0.1"  # Loopback only: the benchmark never talks to another address.
TARGET = "/some/path?x=1"  # A path and a query, so that both must be carried into Location.
REDIRECT_STATUS = 307

# Readiness is polled every 50 ms. 10 s is plenty for a server to bind; a pool of 1,000 backends gets more
# (see the scenarios), since every backend must pass its first check.
READY_INTERVAL_SECONDS = 0.05
READY_TIMEOUT_SECONDS = 10.0
# A server gets this long to exit after SIGTERM before it is killed: longer than the dispatcher's default
# --grace-period of 10 s, so that a drain is never cut short. With no client left, a graceful shutdown needs
# far less.
STOP_TIMEOUT_SECONDS = 15.0
# wrk gets this long on top of its duration to connect, finish and print its report.
WRK_GRACE_SECONDS = 30
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class BenchError(Exception):
    """A scenario could not be measured: a server did not start, or did not answer as it must."""


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


def prepare_child(cpus: frozenset[int] | None) -> Callable[[], None]:
    """A preexec_fn: pin the child before exec, so that all its threads inherit the CPUs, and have the
    kernel SIGTERM it should we die without cleaning up (SIGKILL, a crash), so that no server outlives
    the benchmark. Linux only; elsewhere nothing is done. (This process runs no threads, so the death
    signal, tied to the parent thread, fires only when the process dies.)"""
    return functools.partial(_prepare_child, cpus)


def _prepare_child(cpus: frozenset[int] | None) -> None:
    if cpus is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cpus)
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


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
    except KeyboardInterrupt:
        # A second Ctrl-C while we wait: do not wait any more, but leave nothing behind.
        process.kill()
        process.wait()
        raise
    return f"exited with code {code} {time.monotonic() - started:.2f} s after SIGTERM"


@contextmanager
def running(
    argv: Sequence[str],
    log: Path,
    cpus: frozenset[int] | None,
    cwd: Path = REPO_ROOT,
    stdin: int = subprocess.DEVNULL,
    stdout: int | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run argv with its output in `log` (stdout may be a pipe instead); stop it on the way out."""
    with log.open("wb") as log_file:
        # Own session: Ctrl-C reaches only us, and we stop the children in order, in the finally below.
        process = subprocess.Popen(
            argv,
            cwd=cwd,
            stdin=stdin,
            stdout=log_file if stdout is None else stdout,
            stderr=log_file if stdout is not None else subprocess.STDOUT,
            preexec_fn=prepare_child(cpus),
            start_new_session=True,
        )
        try:
            yield process
        finally:
            stop(process)
            for pipe in (process.stdin, process.stdout):
                if pipe is not None:
                    pipe.close()


# -------------------------------------------------------------------------------------------------
# Probing servers
# -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """What one GET brought back."""

    status: int
    location: str | None
    body: str


def fetch(port: int, target: str) -> Answer:
    """One GET, never following a redirect (http.client does not)."""
    connection = http.client.HTTPConnection(HOST, port, timeout=5)
    try:
        connection.request("GET", target)
        response = connection.getresponse()
        body = response.read().decode(errors="replace")
        return Answer(response.status, response.getheader("Location"), body)
    finally:
        connection.close()


def answers_ok(port: int, target: str) -> bool:
    """Whether GET target answers 200; a refused connection is just 'not yet'."""
    try:
        return fetch(port, target).status == 200
    except (OSError, http.client.HTTPException):
        return False


READY_BODY = re.compile(r"ready: (\d+) of (\d+) backends up")


def all_backends_up(admin_port: int, count: int) -> bool:
    """Whether the dispatcher's /readyz says that all `count` backends are up."""
    try:
        answer = fetch(admin_port, "/readyz")
    except (OSError, http.client.HTTPException):
        return False
    match = READY_BODY.search(answer.body)
    return answer.status == 200 and match is not None and match.groups() == (str(count), str(count))


def accepts_connections(port: int) -> bool:
    """Whether something listens on the port."""
    try:
        socket.create_connection((HOST, port), timeout=1).close()
    except OSError:
        return False
    return True


def wait_until_ready(
    ready: Callable[[], bool],
    process: subprocess.Popen[bytes],
    log: Path,
    timeout_seconds: float = READY_TIMEOUT_SECONDS,
) -> float:
    """Poll ready() until the deadline; fail early if the process dies. Return the seconds waited."""
    started = time.monotonic()
    for _ in range(int(timeout_seconds / READY_INTERVAL_SECONDS)):
        if process.poll() is not None:
            raise BenchError(f"{log.stem} exited with code {process.returncode}:\n{log_tail(log)}")
        if ready():
            return time.monotonic() - started
        time.sleep(READY_INTERVAL_SECONDS)
    raise BenchError(f"{log.stem} not ready after {timeout_seconds:.0f} s:\n{log_tail(log)}")


def check_redirect(port: int, base_urls: Iterable[str], what: str) -> None:
    """Fail unless one GET of TARGET answers 307 with Location = one of base_urls + TARGET."""
    answer = fetch(port, TARGET)
    expected = {base_url + TARGET for base_url in base_urls}
    if answer.status != REDIRECT_STATUS or answer.location not in expected:
        shown = sorted(expected)[:3] + (["..."] if len(expected) > 3 else [])
        raise BenchError(
            f"{what}: GET {TARGET} gave {answer.status} Location {answer.location!r}; expected 307 to {shown}"
        )


# -------------------------------------------------------------------------------------------------
# wrk
# -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WrkLoad:
    """One wrk command line: threads, connections, seconds, where it runs, and an optional Lua script."""

    threads: int
    connections: int
    duration_seconds: int
    cpus: frozenset[int] | None
    script: Path | None = None
    script_args: tuple[str, ...] = ()

    def describe(self) -> str:
        script = f" -s {self.script.name} -- {' '.join(self.script_args)}" if self.script else ""
        return f"wrk -t{self.threads} -c{self.connections} -d{self.duration_seconds}s{script}"


@dataclass(frozen=True)
class WrkFigures:
    """The part of a wrk report that the table shows; latencies in milliseconds."""

    requests_per_second: float
    requests: int
    p50_ms: float
    p99_ms: float
    non_3xx_responses: int
    socket_errors: int


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


def wrk_argv(load: WrkLoad, port: int) -> list[str]:
    """The wrk command line for `load` against TARGET on port."""
    argv = ["wrk", f"-t{load.threads}", f"-c{load.connections}", f"-d{load.duration_seconds}s", "--latency"]
    if load.script is not None:
        argv += ["-s", str(load.script)]
    argv.append(f"http://{HOST}:{port}{TARGET}")
    if load.script_args:
        argv += ["--", *load.script_args]
    return argv


def check_wrk_report(returncode: int, stdout: str, stderr: str) -> WrkFigures:
    """The figures of a finished wrk; every response must have been a 3xx."""
    if returncode != 0:
        raise BenchError(f"wrk exited with code {returncode}:\n{stdout}{stderr}")
    figures = parse_wrk(stdout)
    if figures.non_3xx_responses:
        raise BenchError(f"{figures.non_3xx_responses} responses were not redirects:\n{stdout}")
    return figures


def run_wrk(load: WrkLoad, port: int) -> WrkFigures:
    """Load the server on port with wrk and return its figures."""
    completed = subprocess.run(
        wrk_argv(load, port),
        capture_output=True,
        text=True,
        timeout=load.duration_seconds + WRK_GRACE_SECONDS,
        preexec_fn=prepare_child(load.cpus),
        check=False,
    )
    return check_wrk_report(completed.returncode, completed.stdout, completed.stderr)


# -------------------------------------------------------------------------------------------------
# What else ran: on a 2-core machine one busy neighbour (a test suite, a build) takes a third off a row
# without any other sign. Linux only; elsewhere these figures are None.
# -------------------------------------------------------------------------------------------------

PROC = Path("/proc")
PROC_STAT = PROC / "stat"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
# Above this share of a core used by other processes, a scenario's figures are suspect.
OTHERS_CPU_WARNING_PERCENT = 10.0


def machine_busy_seconds() -> float:
    """user + nice + system + steal of all CPUs since boot. irq and softirq are left out: on loopback
    they are mostly the network stack carrying our own traffic, which most kernels also count in our
    processes' system time. So what is left for others is a lower bound. steal is a neighbour's."""
    user, nice, system, _idle, _iowait, _irq, _softirq, steal = PROC_STAT.read_text().split()[1:9]
    return (int(user) + int(nice) + int(system) + int(steal)) / CLOCK_TICKS


def stat_fields(pid: int) -> list[str]:
    """Fields 3 and on of /proc/<pid>/stat (after the command name, which may hold spaces)."""
    return (PROC / str(pid) / "stat").read_text().rpartition(")")[2].split()


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of a live process and all its threads (fields 14 and 15 of /proc/<pid>/stat); 0 once
    it is gone."""
    try:
        fields = stat_fields(pid)
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def process_tree(pid: int) -> list[int]:
    """pid and all its live descendants (`--workers` starts worker processes of its own)."""
    children: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            try:
                parent = int(stat_fields(int(entry.name))[1])
            except (OSError, IndexError, ValueError):
                continue  # gone meanwhile
            children.setdefault(parent, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo += children.get(current, [])
    return tree


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of pid and its live descendants."""
    return sum(process_cpu_seconds(member) for member in process_tree(pid))


def threads_of(pid: int) -> list[int]:
    """Every thread of pid and of its live descendants. CPU affinity and the scheduling policy belong
    to each thread (the system calls take a thread id); a thread started later inherits its creator's.
    A thread or process that ends meanwhile is left out."""
    threads = []
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            threads += [int(tid) for tid in os.listdir(PROC / str(member) / "task")]
    return threads


def move_to(pid: int, cpus: frozenset[int]) -> None:
    """Pin pid, its threads and its descendants to `cpus`."""
    for tid in threads_of(pid):
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(tid, cpus)


def run_when_idle(pid: int, idle: bool = True) -> None:
    """Put pid, its threads and its descendants under SCHED_IDLE (they run only when nothing else on
    their CPUs wants to), or back under the normal policy (see may_leave_idle)."""
    policy = os.SCHED_IDLE if idle else os.SCHED_OTHER
    for tid in threads_of(pid):
        with contextlib.suppress(ProcessLookupError):
            os.sched_setscheduler(tid, policy, os.sched_param(0))


def may_leave_idle() -> bool:
    """Whether a process put under SCHED_IDLE may be put back under the normal policy at nice 0:
    root, or an RLIMIT_NICE of 20 (sched(7)). CAP_SYS_NICE alone is not looked for."""
    return os.geteuid() == 0 or resource.getrlimit(resource.RLIMIT_NICE)[0] >= 20


def resident_bytes(pid: int) -> int:
    """VmRSS of a live process, from /proc/<pid>/status."""
    for line in (PROC / str(pid) / "status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            value, unit = line.split()[1:3]
            if unit != "kB":
                raise BenchError(f"unexpected VmRSS unit in /proc/{pid}/status: {line!r}")
            return int(value) * 1024
    raise BenchError(f"no VmRSS in /proc/{pid}/status")


@dataclass(frozen=True)
class CpuSnapshot:
    """CPU seconds so far: the whole machine's busy time, ours (the server's process tree and the helper
    processes still running), and our reaped children's (wrk, clients)."""

    wall: float
    machine_busy: float
    ours: float
    children: float


def cpu_snapshot(server_pids: Iterable[int], helper_pids: Iterable[int] = ()) -> CpuSnapshot | None:
    """Where the CPU clocks stand now; None where /proc is missing. The servers' descendants (workers)
    count as theirs."""
    if not PROC_STAT.exists():
        return None
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    servers = sum(tree_cpu_seconds(pid) for pid in server_pids)
    return CpuSnapshot(
        wall=time.monotonic(),
        machine_busy=machine_busy_seconds(),
        ours=servers + sum(process_cpu_seconds(pid) for pid in helper_pids),
        children=children.ru_utime + children.ru_stime,
    )


def others_cpu_percent(before: CpuSnapshot | None, after: CpuSnapshot | None) -> float | None:
    """CPU used between the snapshots by none of our processes, in % of a core; a lower bound (see
    machine_busy_seconds)."""
    if before is None or after is None:
        return None
    ours = (after.ours - before.ours) + (after.children - before.children)
    others = after.machine_busy - before.machine_busy - ours
    return max(0.0, others) / (after.wall - before.wall) * 100


def busy_warning(others_percent: float | None, what: str) -> str | None:
    """A warning when other processes took a noticeable share of the CPU during `what`, else None."""
    if others_percent is None or others_percent < OTHERS_CPU_WARNING_PERCENT:
        return None
    return f"WARNING: other processes used {others_percent:.0f} % of a core during {what}: rerun when quiet"
