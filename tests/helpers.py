"""Real little backends and clients for the tests: everything talks over loopback sockets.

`TestBackend` is a real HTTP backend (the demo's, with knobs): its health answer can be turned into
a failure status, a hang, garbage, or a close mid-response. `start_dispatcher` runs the real app on
port 0 in the test's nursery. `wait_for_state` waits on the pool's own transition events instead of
sleeping. `exchange` is a raw socket client for bytes that no polite client would send.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import trio

from dispatcher import app, config
from dispatcher.config import HealthSettings, Settings
from dispatcher.demo import Answer, LoadReportingBackend, Received
from dispatcher.pool import Backend, CheckResult, Pool


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


def settings_for(backends: list[LoadReportingBackend], **overrides: Any) -> Settings:
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


async def wait_for(pool: Pool, condition: Callable[[], bool]) -> None:
    """Wait until `condition()` holds, woken by the pool's own check events (no polling sleeps)."""
    changed = trio.Event()

    def on_check(backend: Backend, result: CheckResult) -> None:
        changed.set()

    pool.check_listeners.append(on_check)
    try:
        while not condition():
            await changed.wait()
            changed = trio.Event()
    finally:
        pool.check_listeners.remove(on_check)


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
