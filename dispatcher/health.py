"""Active health checks: the only code that talks to backends.

Owns: one check loop per backend (first check at once, then every interval with jitter, so that a
large pool is not checked in one burst), the HTTP client for the check (h11 over a kept-alive
connection per backend, TLS for https backends), and the mapping of what went wrong to a reason.
Rules: results go to the pool through `Pool.record_check`; no other module is called. Time comes
from trio's clock, so intervals and timeouts run under `trio.testing.MockClock` in tests. A slow
backend only ever delays its own loop.
"""

from __future__ import annotations

import logging
import math
import random
import ssl
from collections.abc import Callable
from dataclasses import dataclass

import h11
import trio

from dispatcher import __version__
from dispatcher.config import HealthSettings
from dispatcher.http import CHECK_HEADER
from dispatcher.pool import Backend, CheckResult, Pool
from dispatcher.report import BadLoad, parse_report
from dispatcher.state import Admin

log = logging.getLogger("dispatcher.health")

# A health response is small; anything past this is not read (the check fails as `protocol`).
MAX_HEALTH_BODY = 64 * 1024
USER_AGENT = f"dispatcher-health/{__version__}".encode()
# Check times are rounded up to this grid (see _on_grid): 20 ms is far below any interval's precision.
CHECK_GRID = 0.02


class CheckFailed(Exception):
    """A check that did not pass, with the reason metrics and logs use."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


@dataclass(slots=True)
class _Link:
    """A kept-alive connection to one backend."""

    stream: trio.abc.Stream
    conn: h11.Connection


class Prober:
    """Checks one backend, reusing its connection between checks."""

    def __init__(
        self, backend: Backend, settings: HealthSettings, connect_limiter: trio.CapacityLimiter | None = None
    ) -> None:
        self.backend = backend
        # Bounds connection bursts (TCP and TLS handshakes) across the pool, never a wait for an answer:
        # a hung backend must only ever delay its own checks.
        self._connect_limiter = connect_limiter or trio.CapacityLimiter(1)
        self.settings = settings
        spec = backend.spec
        host = f"[{spec.host}]" if ":" in spec.host else spec.host
        self._host_header = (host if spec.port in (80, 443) else f"{host}:{spec.port}").encode()
        self._link: _Link | None = None
        self._tls = ssl.create_default_context() if spec.scheme == "https" else None

    async def check(self) -> CheckResult:
        """One check within the timeout; never raises for anything the backend does."""
        start = trio.current_time()
        try:
            with trio.fail_after(self.settings.timeout):
                status, headers, body = await self._exchange()
            return self._judge(status, headers, body, trio.current_time() - start)
        except trio.TooSlowError:
            await self.close()
            return self._failed("timeout", f"no answer within {self.settings.timeout:g}s", start)
        except CheckFailed as failure:
            await self.close()
            return self._failed(failure.reason, failure.detail, start)

    def _failed(self, reason: str, detail: str, start: float) -> CheckResult:
        return CheckResult(False, trio.current_time() - start, reason=reason, detail=detail)

    def _judge(
        self, status: int, headers: list[tuple[bytes, bytes]], body: bytes, duration: float
    ) -> CheckResult:
        if status == 508:
            detail = "status 508: this backend URL leads to a dispatcher's front door (a redirect loop)"
            return CheckResult(False, duration, reason="status", detail=detail)
        if not 200 <= status < 300:
            return CheckResult(False, duration, reason="status", detail=f"status {status}")
        try:
            report = parse_report(headers, body)
        except BadLoad as error:
            return CheckResult(False, duration, reason="bad_load", detail=str(error))
        return CheckResult(True, duration, load=report.load, self_drain=report.drain)

    async def _exchange(self) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        if self._link is not None:
            try:
                return await self._request(self._link)
            except CheckFailed:
                # The backend may have closed the idle connection between checks: retry once, fresh.
                await self.close()
        self._link = await self._connect()
        return await self._request(self._link)

    async def _connect(self) -> _Link:
        spec = self.backend.spec
        try:
            async with self._connect_limiter:
                stream: trio.abc.Stream = await trio.open_tcp_stream(spec.host, spec.port)
                if self._tls is not None:
                    tls = trio.SSLStream(stream, self._tls, server_hostname=spec.host)
                    await tls.do_handshake()
                    stream = tls
        except (OSError, trio.BrokenResourceError, ssl.SSLError) as error:
            raise CheckFailed("refused", f"cannot connect: {error}") from None
        return _Link(stream, h11.Connection(h11.CLIENT))

    async def _request(self, link: _Link) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        conn = link.conn
        request = h11.Request(
            method="GET",
            target=(self.backend.spec.prefix + self.settings.path).encode(),
            headers=[(b"host", self._host_header), (b"user-agent", USER_AGENT), (CHECK_HEADER, b"1")],
        )
        try:
            await link.stream.send_all(conn.send(request) + conn.send(h11.EndOfMessage()))
            status, headers, body = await self._read_response(link)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as error:
            raise CheckFailed("protocol", f"connection lost: {error}") from None
        except h11.ProtocolError as error:
            raise CheckFailed("protocol", f"bad response: {error}") from None
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        else:
            await self.close()
        return status, headers, body

    async def _read_response(self, link: _Link) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        status, headers, body = 0, [], bytearray()
        while True:
            event = link.conn.next_event()
            if event is h11.NEED_DATA:
                link.conn.receive_data(bytes(await link.stream.receive_some(65536)))
            elif isinstance(event, h11.Response):
                status, headers = event.status_code, list(event.headers)
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_HEALTH_BODY:
                    raise CheckFailed("protocol", "health response body too large")
            elif isinstance(event, h11.EndOfMessage):
                return status, headers, bytes(body)
            elif isinstance(event, h11.ConnectionClosed):
                raise CheckFailed("protocol", "connection closed mid-response")

    async def close(self) -> None:
        if self._link is not None:
            link, self._link = self._link, None
            await trio.aclose_forcefully(link.stream)


def log_transition(backend: Backend, before: str, after: str, result: CheckResult) -> None:
    """One line per state change: operators grep for these."""
    why = "" if result.passed else f": {result.reason} ({result.detail})"
    level = logging.INFO if after == "up" else logging.WARNING
    log.log(level, "backend %s is %s (was %s)%s", backend.name, after, before, why)


def _on_grid(at: float) -> float:
    """The next multiple of CHECK_GRID. Checks due within the same few milliseconds then wake, send
    and get their answers in the same scheduler passes: with 1,000 backends most of a check's cost is
    per wake-up (timers, epoll, scheduling), not per check. Jitter still spreads them over the interval.
    """
    return math.ceil(at / CHECK_GRID - 1e-9) * CHECK_GRID


async def check_forever(
    pool: Pool,
    backend: Backend,
    limiter: trio.CapacityLimiter,
    jitter: Callable[[], float],
) -> None:
    """Check one backend until cancelled; maint pauses checking (HAProxy MAINT).

    Settings are read from the pool at every round, so that a reload's new interval, timeout or path
    applies from the next check on.
    """
    settings = pool.health_settings
    prober = Prober(backend, settings, limiter)
    # The first checks are spread too, over at most a second: a pool is usable soon after start.
    next_at = trio.current_time() + min(1.0, settings.interval * settings.jitter) * jitter()
    try:
        while True:
            next_at = _on_grid(next_at)
            backend.next_check_at = next_at
            await trio.sleep_until(next_at)
            settings = prober.settings = pool.health_settings
            if backend.admin is not Admin.MAINT:
                result = await prober.check()
                pool.record_check(backend, result, trio.current_time())
            # From the time it was due, not when it woke: wake-up delays must not add up into drift.
            spread = 1 + settings.jitter * (2 * jitter() - 1)
            next_at = max(next_at + settings.interval * spread, trio.current_time())
    finally:
        with trio.CancelScope(shield=True):
            await prober.close()


class HealthChecks:
    """One check loop per backend of the pool; loops come and go with backends on reload."""

    def __init__(self, pool: Pool, max_concurrent: int = 100, rng: random.Random | None = None) -> None:
        self.pool = pool
        self._limiter = trio.CapacityLimiter(max_concurrent)
        self._jitter = (rng or random.Random()).random
        self._loops: dict[str, trio.CancelScope] = {}
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for backend in self.pool.backends:
                self.add(backend)
            task_status.started()
            await trio.sleep_forever()

    def add(self, backend: Backend) -> None:
        assert self._nursery is not None, "HealthChecks.run has not started"
        scope = self._loops[backend.name] = trio.CancelScope()
        self._nursery.start_soon(self._loop, backend, scope)

    def remove(self, backend: Backend) -> None:
        scope = self._loops.pop(backend.name, None)
        if scope is not None:
            scope.cancel()

    async def _loop(self, backend: Backend, scope: trio.CancelScope) -> None:
        with scope:
            await check_forever(self.pool, backend, self._limiter, self._jitter)


async def run_checks(
    pool: Pool,
    settings: HealthSettings | None = None,
    max_concurrent: int = 100,
    rng: random.Random | None = None,
) -> None:
    """Check every backend, each on its own schedule; at most `max_concurrent` connecting at once."""
    if settings is not None:
        pool.health_settings = settings
    await HealthChecks(pool, max_concurrent, rng).run()
