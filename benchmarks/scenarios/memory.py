# Scenario 5, memory: the dispatcher's VmRSS before and with 10,000 idle keep-alive connections (opened and
# held by idle_clients.py), then stopped with all of them open.
#
# Owns: the keep-alive timeout that outlasts the measurement, reading idle_clients.py's one line within a
# deadline, dispatcher_open_connections compared with the connections opened, the goal (<= 200 MiB).

import re
import selectors
import subprocess
import sys
import time
from dataclasses import dataclass

from harness import (
    BENCHMARKS_DIR,
    BenchError,
    busy_warning,
    cpu_snapshot,
    fetch,
    others_cpu_percent,
    resident_bytes,
    running,
    stop,
)

from scenarios.context import Bench
from scenarios.results import Figure, Report, at_most
from scenarios.servers import SETTLE_SECONDS, backend_flags, dispatcher_running

KEEPALIVE_SECONDS = "300"  # scenario 5: longer than the whole measurement, so no idle connection is closed
IDLE_CLIENT_TIMEOUT_SECONDS = 120.0  # to open and get answers on all the idle connections
MIB = 1024 * 1024
OPEN_CONNECTIONS = re.compile(r"^dispatcher_open_connections (\S+)$", re.MULTILINE)
IDLE_CLIENTS_LINE = re.compile(r"^open (\d+) failed (\d+) ?(.*)$")


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
