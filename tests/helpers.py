"""Real little backends and clients for the tests: everything talks over loopback sockets.

`TestBackend` is a real HTTP backend (the demo's, with knobs): its health answer can be turned into
a failure status, a hang, garbage, or a close mid-response. `start_dispatcher` runs the real app on
port 0 in the test's nursery. `wait_for_state` waits on the pool's own transition events instead of
sleeping. `exchange` is a raw socket client for bytes that no polite client would send.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import httpx
import trio

from dispatcher.core.pool import Backend, CheckResult, Pool
from dispatcher.settings import config
from dispatcher.settings.config import HealthSettings, Settings
from dispatcher.wiring import app
from dispatcher.wiring.demo import Answer, LoadReportingBackend, Received


@dataclass(eq=False)
class TestBackend(LoadReportingBackend):
    """A backend whose health answer the test controls.

    mode: "ok" (200 + load report), "status" (answers `status`), "hang" (accepts, never answers),
    "garbage" (sends bytes that are not HTTP), "close" (closes mid-response).
    """

    __test__ = False  # not a pytest test class
    mode: str = "ok"
    status: int = 503
    extra_headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes | None = None

    def health_answer(self, request: Received) -> Answer:
        if self.mode == "status":
            return Answer(self.status, [], b"not healthy\n")
        answer = super().health_answer(request)
        if self.body is not None:
            answer = Answer(200, [("content-type", "text/plain")], self.body)
        answer.headers.extend(self.extra_headers)
        return answer

    async def handle(self, stream: trio.SocketStream) -> None:
        if self.mode == "hang":
            try:
                await trio.sleep_forever()
            finally:
                await trio.aclose_forcefully(stream)
        if self.mode in ("garbage", "close"):
            await self._misbehave(stream)
            return
        await super().handle(stream)

    async def _misbehave(self, stream: trio.SocketStream) -> None:
        try:
            await stream.receive_some(65536)
            self.health_checks += 1
            if self.mode == "garbage":
                await stream.send_all(b"\x00\x01 this is not HTTP at all\r\n\r\n")
            else:
                await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
        except trio.BrokenResourceError:
            pass
        finally:
            await trio.aclose_forcefully(stream)


def health(**overrides: Any) -> HealthSettings:
    """Health settings for tests: no jitter, so virtual-time assertions can be exact."""
    return replace(HealthSettings(jitter=0.0), **overrides)


def settings_for(backends: Sequence[LoadReportingBackend], **overrides: Any) -> Settings:
    """Settings for a dispatcher on loopback port 0 in front of `backends`."""
    specs = tuple(config.parse_backend("test", b.url, name=b.name) for b in backends)
    base = Settings(
        listen=config.Address("127.0.0.1", 0),
        admin_listen=config.Address("127.0.0.1", 0),
        backends=specs,
        health=health(),
    )
    return replace(base, **overrides)


@dataclass
class Dispatcher:
    """A running dispatcher in the test's nursery."""

    running: app.Running
    stop: trio.Event

    @property
    def port(self) -> int:
        return self.running.port

    @property
    def admin_port(self) -> int:
        return self.running.admin_port

    @property
    def pool(self) -> Pool:
        return self.running.pool

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"


async def start_backends(nursery: trio.Nursery, *loads: float) -> list[TestBackend]:
    backends = [TestBackend(f"b{i + 1}", load=load) for i, load in enumerate(loads)]
    for backend in backends:
        await nursery.start(backend.serve)
    return backends


async def start_dispatcher(nursery: trio.Nursery, settings: Settings) -> Dispatcher:
    stop = trio.Event()
    running = await nursery.start(app.run, settings, stop)
    return Dispatcher(running, stop)


CheckCallback = Callable[[Backend, CheckResult], None]


def on_check(pool: Pool, callback: CheckCallback) -> Callable[[], None]:
    """Call `callback(backend, result)` as each check result reaches the pool, before the pool applies
    it; returns what undoes it. The pool has no hook for this (it would cost every check): the
    test wraps the pool's `record_check` on this one instance."""
    record = pool.record_check

    def recorded(backend: Backend, result: CheckResult, now: float) -> None:
        callback(backend, result)
        record(backend, result, now)

    pool.record_check = recorded  # type: ignore[method-assign]
    return lambda: setattr(pool, "record_check", record)


async def wait_for(pool: Pool, condition: Callable[[], bool]) -> None:
    """Wait until `condition()` holds, woken by every check result the pool takes and by every change
    of what choosing sees (a load stream's reports come as the latter): no polling sleeps."""
    changed = trio.Event()

    def on_change(*_: object) -> None:
        changed.set()

    undo = on_check(pool, on_change)
    pool.change_listeners.append(on_change)
    try:
        while not condition():
            await changed.wait()
            changed = trio.Event()
    finally:
        undo()
        pool.change_listeners.remove(on_change)


async def wait_for_state(pool: Pool, name: str, state: str) -> float:
    """Wait until backend `name` shows `state`; returns the trio time at which it did."""
    backend = pool.by_name[name]
    await wait_for(pool, lambda: backend.state == state)
    return trio.current_time()


async def wait_all_up(dispatcher: Dispatcher) -> None:
    pool = dispatcher.pool
    await wait_for(pool, lambda: all(b.state == "up" for b in pool.backends))


async def exchange(port: int, data: bytes, *, read_until_close: bool = True, timeout: float = 5.0) -> bytes:
    """Send raw bytes to 127.0.0.1:port and return everything read until the server closes."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    received = bytearray()
    with trio.move_on_after(timeout):
        try:
            await stream.send_all(data)
            while chunk := await stream.receive_some(65536):
                received += chunk
                if not read_until_close and b"\r\n\r\n" in received:
                    break
        except trio.BrokenResourceError:
            pass
    await stream.aclose()
    return bytes(received)


def status_lines(raw: bytes) -> list[bytes]:
    """The status lines of every response in a raw byte stream, in order."""
    return [line for line in raw.split(b"\r\n") if line.startswith(b"HTTP/1.")]


@dataclass(frozen=True)
class RawResponse:
    """One response as it came off the wire: status line, headers in order, body."""

    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        """The value of header `name` (lower case); fails if the header is sent more than once."""
        values = [value for key, value in self.headers if key == name]
        assert len(values) <= 1, f"header {name!r} sent {len(values)} times"
        return values[0] if values else None

    @property
    def closes(self) -> bool:
        return (self.header(b"connection") or b"").lower() == b"close"


_STATUS_LINE = re.compile(rb"HTTP/1\.1 ([1-5][0-9][0-9]) ([\x20-\x7e]*)\r\n")
_HEADER_LINE = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*([\x20-\x7e]*?)[ \t]*")


def parse_responses(raw: bytes, *, bodyless: bool = False) -> tuple[list[RawResponse], bytes]:
    """Every complete response in a raw byte stream, in order, and the bytes after the last one.

    Strict on purpose: a status line or header line that is not well formed raises ValueError.
    Bodies are framed by Content-Length (the front door always sends one); `bodyless` is for
    answers to HEAD, whose Content-Length announces a body that is not sent.
    """
    responses: list[RawResponse] = []
    while (end := raw.find(b"\r\n\r\n")) >= 0:
        status_line = _STATUS_LINE.match(raw)
        if status_line is None:
            raise ValueError(f"not a status line: {raw[:80]!r}")
        headers: list[tuple[bytes, bytes]] = []
        for line in raw[status_line.end() : end].split(b"\r\n") if end > status_line.end() else []:
            header = _HEADER_LINE.fullmatch(line)
            if header is None:
                raise ValueError(f"not a header line: {line[:80]!r}")
            headers.append((header[1].lower(), header[2]))
        lengths = [value for name, value in headers if name == b"content-length"]
        if len(lengths) != 1 or not lengths[0].isdigit():
            raise ValueError(f"no single Content-Length in {raw[:end]!r}")
        start = end + 4
        stop = start if bodyless else start + int(lengths[0])
        if len(raw) < stop:
            break
        status, reason = int(status_line[1]), status_line[2]
        responses.append(RawResponse(status, reason, headers, raw[start:stop]))
        raw = raw[stop:]
    return responses, raw


async def receive_responses(
    stream: trio.abc.ReceiveStream, count: int, *, bodyless: bool = False, timeout: float = 10.0
) -> list[RawResponse]:
    """Read from `stream` until `count` complete responses have arrived; fails on EOF or timeout."""
    received = b""
    with trio.fail_after(timeout):
        while True:
            responses, rest = parse_responses(received, bodyless=bodyless)
            if len(responses) >= count:
                assert len(responses) == count and not rest, f"more than asked for: {received!r}"
                return responses
            chunk = await stream.receive_some(65536)
            if not chunk:
                raise AssertionError(f"closed after {len(responses)} of {count} responses: {received!r}")
            received += chunk


async def read_until_close(stream: trio.abc.ReceiveStream, *, timeout: float = 10.0) -> bytes:
    """Everything the peer sends until it closes its side; fails if it has not closed by `timeout`.

    A reset (the peer closed without reading what we sent) fails too: only a clean close passes.
    """
    received = bytearray()
    with trio.fail_after(timeout):
        while chunk := await stream.receive_some(65536):
            received += chunk
    return bytes(received)


# Health-check and metrics helpers (tests/net/health/test_checks.py, tests/net/test_admin_metrics.py).


@dataclass(eq=False)
class CountingBackend(TestBackend):
    """A TestBackend that counts the connections it accepts, records the health requests it answers,
    and can close its open connections the way a backend's idle timeout does."""

    __test__ = False
    connections: int = 0
    health_requests: list[Received] = field(default_factory=list)
    open_streams: set[trio.SocketStream] = field(default_factory=set, repr=False)

    def health_answer(self, request: Received) -> Answer:
        self.health_requests.append(request)
        return super().health_answer(request)

    async def handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        self.open_streams.add(stream)
        try:
            await super().handle(stream)
        finally:
            self.open_streams.discard(stream)

    async def drop_connections(self) -> None:
        """Close every open connection from the backend's side (as an idle timeout would)."""
        for stream in list(self.open_streams):
            await trio.aclose_forcefully(stream)


def unused_port() -> int:
    """A loopback port with nothing listening on it: connecting to it is refused."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def pool_for(backends: list[LoadReportingBackend], settings: HealthSettings) -> Pool:
    """A pool over `backends` (named by their `name`), started now, for running `HealthChecks`."""
    specs = [config.parse_backend("test", b.url, name=b.name) for b in backends]
    return Pool(specs, settings, started_at=trio.current_time())


@dataclass(frozen=True)
class CheckSeen:
    """One health check result as the pool received it, with the trio time it arrived."""

    backend: str
    at: float
    passed: bool
    reason: str | None
    duration: float


def record_checks(pool: Pool) -> list[CheckSeen]:
    """A list that fills with every check result the pool receives, in order."""
    seen: list[CheckSeen] = []

    def seen_check(backend: Backend, result: CheckResult) -> None:
        now = trio.current_time()
        seen.append(CheckSeen(backend.name, now, result.passed, result.reason, result.duration))

    on_check(pool, seen_check)
    return seen


def record_transitions(pool: Pool) -> list[tuple[str, str, str, float]]:
    """A list that fills with every visible state change: (backend, before, after, trio time)."""
    seen: list[tuple[str, str, str, float]] = []

    def on_change(backend: Backend, before: str, after: str, result: CheckResult | None) -> None:
        seen.append((backend.name, before, after, trio.current_time()))

    pool.listeners.append(on_change)
    return seen


# Hostile clients, failing backends and dispatcher processes (tests/net/test_hostile.py,
# tests/wiring/test_failover.py).


def request_head(target: str, *headers: str, method: str = "GET", version: str = "1.1") -> bytes:
    """A raw request head: request line, header lines, blank line."""
    return "\r\n".join([f"{method} {target} HTTP/{version}", *headers, "", ""]).encode()


def raise_file_limit(wanted: int) -> None:
    """Lift this process's soft RLIMIT_NOFILE to `wanted` (within the hard limit) for many sockets."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def metric(text: str, name: str) -> float:
    """The value of the unlabelled sample `name` in a Prometheus text exposition."""
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == name:
            return float(value)
    raise AssertionError(f"no sample {name} in the scrape")


async def poll_admin(
    admin_port: int, path: str, accept: Callable[[int, str], bool], *, limit: float = 10.0
) -> str:
    """GET `path` on another process's admin listener until `accept(status, body)`; returns the body.

    Polling is bounded by `limit`: another process offers no event to wait on.
    """
    async with httpx.AsyncClient(trust_env=False) as client:
        with trio.fail_after(limit):
            while True:
                try:
                    response = await client.get(f"http://127.0.0.1:{admin_port}{path}")
                    if accept(response.status_code, response.text):
                        return response.text
                except httpx.TransportError:
                    pass
                await trio.sleep(0.02)


def dispatcher_command(port: int, admin_port: int, backends: Sequence[str], *flags: str) -> list[str]:
    """`python -m dispatcher` on loopback ports in front of `backends` (URLs), with extra `flags`."""
    import sys

    command = [sys.executable, "-m", "dispatcher", f"--listen=127.0.0.1:{port}"]
    command += [f"--admin-listen=127.0.0.1:{admin_port}", *(f"--backend={url}" for url in backends)]
    return [*command, *flags]


@dataclass(eq=False)
class ProcessBackend:
    """A real backend process: `python -m http.server` serving a directory whose `health` file says `0`.

    `GET /health` answers 200 with the body `0` (load 0 in the load protocol); it can be killed with
    SIGKILL and started again on the same port (http.server binds with SO_REUSEADDR).
    """

    directory: str
    port: int = field(default_factory=unused_port)
    process: trio.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, nursery: trio.Nursery) -> None:
        """Start the process and return once it accepts connections (bounded polling: another process)."""
        import subprocess
        import sys
        from functools import partial

        with open(f"{self.directory}/health", "w", encoding="ascii") as health_file:
            health_file.write("0\n")
        command = [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(self.port)]
        command += ["--directory", str(self.directory)]
        run = partial(
            trio.run_process, command, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.process = await nursery.start(run)
        with trio.fail_after(10):
            while True:
                assert self.process.returncode is None, "the backend process exited"
                try:
                    stream = await trio.open_tcp_stream("127.0.0.1", self.port)
                except OSError:
                    await trio.sleep(0.02)
                    continue
                await stream.aclose()
                return

    async def kill(self) -> None:
        """SIGKILL, as `kill -9`; returns once the process is gone."""
        assert self.process is not None
        self.process.kill()
        await self.process.wait()


def one_response(raw: bytes, *, bodyless: bool = False) -> RawResponse:
    """The only response in `raw`; fails if there are more, fewer, or bytes left over."""
    responses, rest = parse_responses(raw, bodyless=bodyless)
    assert len(responses) == 1 and not rest, raw
    return responses[0]


async def admin_get(
    dispatcher: Dispatcher, path: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    """GET `path` on an in-process dispatcher's admin listener."""
    async with httpx.AsyncClient(trust_env=False) as client:
        return await client.get(dispatcher.admin_url + path, headers=headers)


# Worker processes of a `--workers` master (tests/processes/test_workers.py,
# tests/processes/test_workers_reload.py).


def worker_pids(master_pid: int) -> list[int]:
    """The master's worker processes (spawned children), not its resource tracker."""
    from pathlib import Path

    children = Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()
    pids = []
    for child in children:
        try:
            if "spawn_main" in Path(f"/proc/{child}/cmdline").read_text():
                pids.append(int(child))
        except OSError:  # exited since the list was read
            pass
    return pids


def listens(pid: int, port: int) -> bool:
    """Whether process `pid` holds a TCP socket listening on `port` (from /proc: another process)."""
    import os
    from pathlib import Path

    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    except OSError:  # the process has exited
        return False
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port and fields[9] in inodes:
                return True
    return False


async def location_on_new_connection(port: int, request: bytes) -> bytes:
    """One request on a new connection (so the kernel spreads them over --workers' processes): the
    Location of the 307 it gets."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    received = b""
    async with stream:
        await stream.send_all(request)
        while chunk := await stream.receive_some(4096):
            received += chunk
    assert received.startswith(b"HTTP/1.1 307 Temporary Redirect"), received
    return received.split(b"location: ", 1)[1].split(b"\r\n", 1)[0]
