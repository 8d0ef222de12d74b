"""Active health checks: the only code that talks to backends.

Owns: the schedule of every backend's checks (first at once, then every interval with jitter, on a
20 ms grid, so that a large pool is not checked in one burst), the HTTP client for the check (a
request serialised once by h11, answers read by `answer`, over a kept-alive connection per backend,
TLS for https backends), and the mapping of what went wrong to a reason.
Rules: results go to the pool through `Pool.record_check`; no other module is called. Time comes
from trio's clock, so intervals and timeouts run under `trio.testing.MockClock` in tests. A slow
backend only ever delays its own checks.

How: one sweep task drives every check over plain HTTP. It keeps the backends' sockets in an epoll
set of its own (registered once, level-triggered) and wakes only on the 20 ms grid of check times
(and at a check's deadline): each time it reads every answer that has arrived, fails the checks whose
time is up, and sends the checks that are due. It never waits for a socket to become readable.
- A task per backend cost about 150 us of the event loop per check with 1,000 backends (a timer, a
  cancel scope, two epoll_ctl calls and a task switch each time).
- A sweep woken by each answer as it arrived still paid a wake-up of trio's loop (a cancel scope, two
  epoll_ctl calls, a task switch) for nearly every answer: about 110 us of a check's 200 us on an
  idle 2-core VM. On the grid a 1,000-backend pool costs 50 wake-ups a second, whatever its size.
- So a check's result is applied at the first grid step after its answer arrived (at most 20 ms
  late), and its duration is measured from when the kernel received the answer (SO_TIMESTAMPNS),
  not from when the sweep read it.
Opening a connection (DNS, happy eyeballs) and checks over TLS (trio's SSLStream) are rare or few,
and run as short tasks beside it.

Load streams (issue 6): every check asks `Accept: text/event-stream, */*;q=0.5`. A backend that
answers `200` with `text/event-stream` keeps the answer open and sends its load as events; the sweep
then hands the connection to the `stream.StreamReader` (plain HTTP) or keeps reading it in the
check's task (TLS), and each event is a fresh load report for the pool. The check that opened the
stream passes with the first event; while the stream lives, each later check of the schedule is a
pass without a request (rise, fall and the check counters keep their meaning), and a stream that
falls silent past interval + timeout, ends or breaks is a failed check; the next one connects again.
Maint closes the stream (no checks in maint). Any other answer is an ordinary check.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import math
import random
import select
import socket
import ssl
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

import h11
import trio

from dispatcher import __version__
from dispatcher.core.health_state import Admin
from dispatcher.core.pool import Backend, CheckResult, Pool
from dispatcher.core.reply import CHECK_HEADER
from dispatcher.core.report import BadLoad, Report, parse_report
from dispatcher.net.stream import LoadStream, StreamFailed, StreamReader
from dispatcher.protocol.answer import AnswerReader, BadAnswer
from dispatcher.settings.config import ConfigError, HealthSettings

log = logging.getLogger("dispatcher.health")

USER_AGENT = f"dispatcher-health/{__version__}".encode()
# Every check offers to take a load stream, and anything else at a lower preference, so that no
# backend answers 406 (RFC 9110 §12.5.1).
ACCEPT = b"text/event-stream, */*;q=0.5"
# Check times are rounded up to this grid (see _on_grid): 20 ms is far below any interval's precision.
CHECK_GRID = 0.02
# Linux's SO_TIMESTAMPNS (asm-generic/socket.h; Python's socket module does not name it): every read
# of a check socket says when the kernel received its last byte, as a struct timespec of the wall
# clock. Where it cannot be set, a check's duration runs until the sweep read the answer.
SO_TIMESTAMPNS = 35
_TIMESPEC = struct.Struct("qq")
_ANCILLARY_SPACE = socket.CMSG_SPACE(_TIMESPEC.size)


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """What https checks verify backends with: the system's CA store, or only the certificates in
    `ca_file` (HAProxy `ca-file`). A file that cannot be used is a ConfigError naming the key."""
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as error:
        raise ConfigError("health.ca_file", ca_file, f"cannot load CA certificates: {error}") from None


def _connect_failed(host: str, error: OSError) -> CheckFailed:
    """A connection that could not be opened: the name did not resolve (`dns`), or the connection
    itself failed (`refused`: refused, unreachable, reset)."""
    if isinstance(error, socket.gaierror):
        return CheckFailed("dns", f"cannot resolve {host}: {error.strerror or error}")
    return CheckFailed("refused", f"cannot connect: {error}")


class CheckFailed(Exception):
    """A check that did not pass, with the reason metrics and logs use."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


@dataclass(slots=True)
class _Link:
    """A kept-alive connection to one backend."""

    stream: trio.abc.Stream
    reader: AnswerReader


class Prober:
    """One backend's check request and connections: a whole check over TLS, a plain connection for the
    sweep, and the verdict on an answer."""

    def __init__(
        self,
        backend: Backend,
        settings: HealthSettings,
        connect_limiter: trio.CapacityLimiter,
        tls: Callable[[], ssl.SSLContext],
    ) -> None:
        self.backend = backend
        # Bounds connection bursts (TCP and TLS handshakes) across the pool, never a wait for an answer:
        # a hung backend must only ever delay its own checks.
        self._connect_limiter = connect_limiter
        self.settings = settings
        spec = backend.spec
        host = f"[{spec.host}]" if ":" in spec.host else spec.host
        self._host_header = (host if spec.port in (80, 443) else f"{host}:{spec.port}").encode()
        self._link: _Link | None = None
        self.tls = spec.scheme == "https"
        # The pool's one context (loading a CA store per backend would take seconds for 1,000).
        self._tls_context = tls
        self._check_request: tuple[str, bytes] | None = None  # (health path, the request's bytes)

    @property
    def connected(self) -> bool:
        """A TLS link is open (plain connections belong to the sweep)."""
        return self._link is not None

    @property
    def stream_link(self) -> _Link | None:
        """The TLS link, when its last answer was a load stream that stays open."""
        link = self._link
        return link if link is not None and link.reader.streaming else None

    def request(self) -> bytes:
        """The check request's bytes, serialised by h11 once per health path (it validates the target
        and the headers): every check of this backend sends the same bytes."""
        path = self.settings.path
        if self._check_request is None or self._check_request[0] != path:
            request = h11.Request(
                method="GET",
                target=(self.backend.spec.prefix + path).encode(),
                headers=[
                    (b"host", self._host_header),
                    (b"user-agent", USER_AGENT),
                    (b"accept", ACCEPT),
                    (CHECK_HEADER, b"1"),
                ],
            )
            conn = h11.Connection(h11.CLIENT)
            self._check_request = (path, conn.send(request) + conn.send(h11.EndOfMessage()))
        return self._check_request[1]

    async def connect_plain(self) -> socket.socket:
        """A new plain TCP connection, handed over as a stdlib socket for the sweep's own epoll set."""
        spec = self.backend.spec
        try:
            async with self._connect_limiter:
                stream = await trio.open_tcp_stream(spec.host, spec.port)
        except OSError as error:
            raise _connect_failed(spec.host, error) from None
        # trio sets TCP_NODELAY on its streams; detaching keeps the option and the open descriptor.
        return socket.socket(fileno=stream.socket.detach())

    async def check(self) -> CheckResult:
        """One check within the timeout; never raises for anything the backend does."""
        start = trio.current_time()
        try:
            with trio.fail_after(self.settings.timeout):
                status, headers, body = await self._exchange()
            return self.judge(status, headers, body, trio.current_time() - start)
        except trio.TooSlowError:
            await self.close()
            return self._failed("timeout", f"no answer within {self.settings.timeout:g}s", start)
        except CheckFailed as failure:
            await self.close()
            return self._failed(failure.reason, failure.detail, start)

    def _failed(self, reason: str, detail: str, start: float) -> CheckResult:
        return CheckResult(False, trio.current_time() - start, reason=reason, detail=detail)

    def judge(
        self, status: int, headers: list[tuple[bytes, bytes]], body: bytes, duration: float
    ) -> CheckResult:
        if status == 508:
            detail = "status 508: this backend URL leads to a dispatcher's front door (a redirect loop)"
            return CheckResult(False, duration, reason="status", detail=detail)
        if status == 404:
            hint = f"status 404: set health.path to a route that backend serves (it is {self.settings.path})"
            return CheckResult(False, duration, reason="status", detail=hint)
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
        async with self._connect_limiter:
            try:
                stream: trio.abc.Stream = await trio.open_tcp_stream(spec.host, spec.port)
            except OSError as error:
                raise _connect_failed(spec.host, error) from None
            if self.tls:
                try:
                    stream = await self._handshake(stream)
                except (OSError, trio.BrokenResourceError, ssl.SSLError, ConfigError) as error:
                    # trio reports a failed handshake as BrokenResourceError; the SSL error it wraps
                    # says why.
                    raise CheckFailed("tls", f"TLS handshake failed: {error.__cause__ or error}") from None
        return _Link(stream, AnswerReader())

    async def _handshake(self, stream: trio.abc.Stream) -> trio.SSLStream[trio.abc.Stream]:
        """TLS over a new connection, which is closed if the handshake fails (or is cancelled)."""
        try:
            tls = trio.SSLStream(stream, self._tls_context(), server_hostname=self.backend.spec.host)
            await tls.do_handshake()
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        return tls

    async def _request(self, link: _Link) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        answer = link.reader
        answer.begin()
        try:
            await link.stream.send_all(self.request())
            while not answer.feed(bytes(await link.stream.receive_some(65536))):
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as error:
            raise CheckFailed("protocol", f"connection lost: {error}") from None
        except BadAnswer as error:
            raise CheckFailed("protocol", str(error)) from None
        if not answer.reusable and not answer.streaming:
            await self.close()
        return answer.status, answer.headers, answer.body

    async def close(self) -> None:
        if self._link is not None:
            link, self._link = self._link, None
            await trio.aclose_forcefully(link.stream)


# `--log-level debug` says every check's result and load and every load-stream event, but at most one
# line per backend per this many seconds (with a count of those left out): 1,000 backends checked every
# 2 s would otherwise write 500 lines a second, and a stream 10 events a second each.
DEBUG_EVERY = 1.0


class DebugLog:
    """Debug lines of checks and stream events, rate-limited per backend."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._skipped: dict[str, int] = {}

    def check(self, backend: Backend, result: CheckResult) -> None:
        if result.passed:
            load = "streamed" if result.load is None else f"{result.load:g}"
            self._line(backend, "check passed in %.4fs, load %s", result.duration, load)
        else:
            self._line(backend, "check failed: %s (%s)", result.reason, result.detail)

    def event(self, backend: Backend, report: Report) -> None:
        self._line(backend, "stream event: load %g%s", report.load, ", drain" if report.drain else "")

    def _line(self, backend: Backend, message: str, *args: object) -> None:
        now, name = trio.current_time(), backend.name
        if now - self._last.get(name, -math.inf) < DEBUG_EVERY:
            self._skipped[name] = self._skipped.get(name, 0) + 1
            return
        self._last[name] = now
        skipped = self._skipped.pop(name, 0)
        more = f" ({skipped} more since the last line)" if skipped else ""
        estimate = f"; estimate {backend.effective_load(now):.2f}, drain {backend.rate:.1f}/s"
        log.debug("backend %s: " + message + estimate + more, name, *args)


def log_transition(backend: Backend, before: str, after: str, result: CheckResult | None) -> None:
    """One line per state change that a check made: operators grep for these. A change the operator
    asked for is logged by the admin API, with who asked, in its one line."""
    if result is None:
        return
    why = "" if result.passed else f": {result.reason} ({result.detail})"
    level = logging.INFO if after == "up" else logging.WARNING
    log.log(level, "backend %s is %s (was %s)%s", backend.name, after, before, why)


async def _sleep_in(scope: trio.CancelScope) -> None:
    """Sleep until `scope`'s deadline (which others may move) without a Cancelled at the deadline.

    trio.sleep_until wakes a task by raising Cancelled into it and catching it at the scope's exit:
    about 60,000 instructions at each of the sweep's 50 wake-ups a second, more than a check costs.
    Here the deadline's cancellation is declined and the task is simply resumed (`Abort.FAILED` and
    a `reschedule`, as trio's wait_task_rescheduled allows). Any other cancellation (shutdown) is
    delivered as usual.
    """
    task = trio.lowlevel.current_task()

    def abort(raise_cancel: object) -> trio.lowlevel.Abort:
        if scope.cancel_called:  # our own deadline (cancellation from outside never sets it)
            trio.lowlevel.reschedule(task)
            return trio.lowlevel.Abort.FAILED
        return trio.lowlevel.Abort.SUCCEEDED

    with scope:
        await trio.lowlevel.wait_task_rescheduled(abort)


def _took(probe: _Probe, now: float) -> float:
    """A check's duration: from its request to the kernel's receipt of the answer, which the sweep
    read up to a grid step later (`now`); without a receive timestamp, until it was read."""
    assert probe.started is not None
    read = now - probe.started
    return read if probe.arrived is None else min(read, max(0.0, probe.arrived - probe.sent_at))


def _after(now: float) -> float:
    """The first grid step after `now` (itself usually a grid step, or a little past one)."""
    return round((math.floor(now / CHECK_GRID + 1e-9) + 1) * CHECK_GRID, 9)


def _on_grid(at: float) -> float:
    """The next multiple of CHECK_GRID. Checks due within the same few milliseconds are then sent in
    one pass of the sweep and their answers read in few wake-ups. Jitter still spreads them over the
    interval.
    """
    return round(math.ceil(at / CHECK_GRID - 1e-9) * CHECK_GRID, 9)  # 4.02, not 4.0200000000000005


class _Probe:
    """One backend's place in the sweep: its schedule, its kept-alive plain socket, its check in flight."""

    __slots__ = (
        "active",
        "answer",
        "arrived",
        "backend",
        "deadline",
        "due",
        "prober",
        "received",
        "reused",
        "scope",
        "sent_at",
        "sock",
        "started",
        "stream",
    )

    def __init__(self, backend: Backend, prober: Prober) -> None:
        self.backend = backend
        self.prober = prober
        self.active = True  # False once removed (a reload): late results are dropped
        self.due = 0.0  # when the current or next check was due, on the grid
        self.sock: socket.socket | None = None
        self.answer = AnswerReader()  # of the connection `sock`: reads the answer of the check in flight
        self.started: float | None = None  # when the check in flight on `sock` began
        self.deadline = math.inf
        self.reused = False  # the check in flight went over a kept-alive connection
        self.received = False  # any byte of its answer arrived
        self.sent_at = 0.0  # the wall clock when the check began, and when the kernel received the
        self.arrived: float | None = None  # last byte read of its answer (None: not known)
        self.scope: trio.CancelScope | None = None  # a connect or a TLS check running as a task
        self.stream: LoadStream | None = None  # its load stream, while one is open


_Entry = tuple[float, int, _Probe]


class HealthChecks:
    """Checks every backend of the pool on its own schedule; backends come and go on reload."""

    def __init__(self, pool: Pool, max_concurrent: int = 100, rng: random.Random | None = None) -> None:
        self.pool = pool
        # Bounds connection bursts (TCP and TLS handshakes) across the pool, never a wait for an answer.
        self._limiter = trio.CapacityLimiter(max_concurrent)
        self._jitter = (rng or random.Random()).random
        self._probes: dict[str, _Probe] = {}
        self._by_fd: dict[int, _Probe] = {}
        self._due: list[_Entry] = []  # one entry per backend: its next check
        self._deadlines: list[_Entry] = []  # checks in flight; stale entries are skipped when popped
        self._order = itertools.count()  # ties in the heaps never compare probes
        self._epoll = select.epoll()
        self._waiting: trio.CancelScope | None = None  # the sweep's wait, while it waits
        self._nursery: trio.Nursery | None = None
        self._tls: tuple[HealthSettings, ssl.SSLContext] | None = None
        self._streams = StreamReader(self, self._silence)
        self._debug = DebugLog() if log.isEnabledFor(logging.DEBUG) else None
        if self._debug is not None:
            pool.check_listeners.append(self._debug.check)

    def _silence(self) -> float:
        """How long a load stream may be quiet: a check's interval and timeout, as set now."""
        settings = self.pool.health_settings
        return settings.interval + settings.timeout

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for backend in self.pool.backends:
                    self.add(backend)
                nursery.start_soon(self._streams.run)
                task_status.started()
                await self._sweep()
        finally:
            probes = list(self._probes.values())
            for probe in probes:
                self._close(probe)
            with trio.CancelScope(shield=True):
                for probe in probes:
                    await probe.prober.close()
            self._epoll.close()

    def add(self, backend: Backend) -> None:
        assert self._nursery is not None, "HealthChecks.run has not started"
        settings = self.pool.health_settings
        probe = _Probe(backend, Prober(backend, settings, self._limiter, self._tls_context))
        self._probes[backend.name] = probe
        # The first checks are spread too, over at most a second: a pool is usable soon after start.
        first = min(1.0, settings.interval * settings.jitter) * self._jitter()
        self._schedule(probe, trio.current_time() + first)

    def _tls_context(self) -> ssl.SSLContext:
        """The pool's TLS context, loaded again after a reload: a CA bundle rotated in place and a
        SIGHUP apply to the next connection."""
        settings = self.pool.health_settings
        if self._tls is None or self._tls[0] is not settings:
            self._tls = (settings, tls_context(settings.ca_file))
        return self._tls[1]

    def remove(self, backend: Backend) -> None:
        probe = self._probes.pop(backend.name, None)
        if probe is None:
            return
        probe.active = False
        if probe.scope is not None:
            probe.scope.cancel()
        self._end_stream(probe)
        self._close(probe)
        if probe.prober.connected and self._nursery is not None:
            self._nursery.start_soon(probe.prober.close)

    # --- the sweep ------------------------------------------------------------------------------

    async def _sweep(self) -> None:
        epoll, by_fd = self._epoll, self._by_fd
        while True:
            now = trio.current_time()
            for fd, _ in epoll.poll(0):  # answers first: one that came in time is not a timeout
                probe = by_fd.get(fd)
                if probe is not None:
                    self._readable(probe, now)
            self._expire(now)
            self._start_due(now)
            deadline = self._next_deadline()
            wake = min(self._due[0][0] if self._due else math.inf, deadline)
            if deadline < math.inf:  # checks in flight: read their answers at the next grid step
                wake = min(wake, _after(now))
            self._waiting = trio.CancelScope(deadline=wake)
            await _sleep_in(self._waiting)
            self._waiting = None

    def _wake_by(self, at: float) -> None:
        """Another task added a check or a deadline: make the sweep's wait end in time for it."""
        if self._waiting is not None and at < self._waiting.deadline:
            self._waiting.deadline = at

    def _schedule(self, probe: _Probe, at: float) -> None:
        at = _on_grid(at)
        probe.due = probe.backend.next_check_at = at
        heapq.heappush(self._due, (at, next(self._order), probe))
        self._wake_by(at)

    def _schedule_next(self, probe: _Probe, now: float) -> None:
        """From the time the check was due, not when it ran: wake-up delays must not add up into drift.
        Settings are read at every round, so a reload's new interval applies from the next check on."""
        settings = self.pool.health_settings
        spread = 1 + settings.jitter * (2 * self._jitter() - 1)
        self._schedule(probe, max(probe.due + settings.interval * spread, now))

    def _start_due(self, now: float) -> None:
        due: list[_Probe] = []
        while self._due and self._due[0][0] <= now:
            due.append(heapq.heappop(self._due)[2])
        # Started after all are popped: a check that is rescheduled at once waits for the next pass.
        for probe in due:
            if probe.active:
                self._start(probe, now)

    def _start(self, probe: _Probe, now: float) -> None:
        if probe.backend.admin is Admin.MAINT:  # HAProxy MAINT: no checks until it leaves
            self._end_stream(probe)
            self._schedule_next(probe, now)
            return
        stream = probe.stream
        if stream is not None and not stream.first:  # the stream answers this check by living
            self._finish(probe, CheckResult(True, 0.0, self_drain=stream.drain, timed=False), now)
            return
        if stream is not None:  # still waiting for its first event: this check is still in flight
            self._schedule_next(probe, now)
            return
        probe.prober.settings = self.pool.health_settings
        if probe.sock is None or probe.prober.tls:
            self._spawn(probe, now)
        else:
            self._send(probe, now, now, reused=True)

    def _spawn(self, probe: _Probe, start: float) -> None:
        assert self._nursery is not None
        probe.scope = trio.CancelScope()
        self._nursery.start_soon(self._check_in_task, probe, start, probe.scope)

    async def _check_in_task(self, probe: _Probe, start: float, scope: trio.CancelScope) -> None:
        """A check over TLS, or the connection a plain check needs first, within the check's timeout."""
        try:
            with scope:
                await self._check_or_connect(probe, start)
        finally:
            if probe.scope is scope:
                probe.scope = None

    async def _check_or_connect(self, probe: _Probe, start: float) -> None:
        if probe.prober.tls:
            result = await probe.prober.check()
            link = probe.prober.stream_link
            if link is None:
                self._finish(probe, result, trio.current_time())
                return
            try:
                await self._read_tls_stream(
                    probe, LoadStream(probe, link.reader, start, probe.prober.settings.timeout)
                )
            finally:
                await probe.prober.close()
            return
        timeout = probe.prober.settings.timeout
        with trio.move_on_at(start + timeout):
            try:
                sock = await probe.prober.connect_plain()
            except CheckFailed as failure:
                self._fail(probe, trio.current_time(), start, failure.reason, failure.detail)
                return
            self._adopt(probe, sock)
            self._send(probe, start, trio.current_time(), reused=False)
            return
        self._fail(probe, trio.current_time(), start, "timeout", f"no answer within {timeout:g}s")

    def _adopt(self, probe: _Probe, sock: socket.socket) -> None:
        sock.setblocking(False)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        probe.sock, probe.answer = sock, AnswerReader()
        self._by_fd[sock.fileno()] = probe
        # Level-triggered, for the life of the connection: an idle connection the backend closes is
        # seen at once, and no epoll_ctl is made per check.
        self._epoll.register(sock, select.EPOLLIN)

    def _close(self, probe: _Probe) -> None:
        sock, probe.sock = probe.sock, None
        probe.started, probe.deadline = None, math.inf
        if sock is not None:
            self._by_fd.pop(sock.fileno(), None)
            self._epoll.unregister(sock)
            sock.close()

    # --- one check over a plain connection ------------------------------------------------------

    def _send(self, probe: _Probe, start: float, now: float, *, reused: bool) -> None:
        """Send a check that began at `start` (before its connection was opened, for a new one)."""
        assert probe.sock is not None
        data = probe.prober.request()
        probe.answer.begin()
        probe.started, probe.reused, probe.received = start, reused, False
        probe.deadline = start + probe.prober.settings.timeout
        heapq.heappush(self._deadlines, (probe.deadline, next(self._order), probe))
        if self._waiting is not None:  # sent by a connecting task, not by the sweep itself
            self._wake_by(_after(now))
        probe.sent_at, probe.arrived = time.time() - (now - start), None  # the wall clock at `start`
        try:
            sent = probe.sock.send(data)
        except OSError as error:
            self._lost(probe, start, f"connection lost: {error}")
            return
        if sent < len(data):  # a fresh or idle socket takes a request of a few hundred bytes whole
            self._fail(probe, start, start, "protocol", "request not sent in one piece")

    def _readable(self, probe: _Probe, now: float) -> None:
        """Read what the socket holds: an answer, usually in one piece, or the end of the stream."""
        while probe.sock is not None and self._read_once(probe, probe.sock, now):
            pass  # part of an answer: the rest, or the end of the stream, may be there too

    def _read_once(self, probe: _Probe, sock: socket.socket, now: float) -> bool:
        """One read; True when an answer is under way and more may be waiting."""
        try:
            data, ancillary, _, _ = sock.recvmsg(65536, _ANCILLARY_SPACE)
        except BlockingIOError:
            return False
        except OSError as error:
            if probe.started is None:
                self._close(probe)
            else:
                self._lost(probe, now, f"connection lost: {error}")
            return False
        if probe.started is None:
            self._close(probe)  # an idle connection the backend closed (or spoke on out of turn)
            return False
        if not data and not probe.received:
            self._lost(probe, now, "connection closed before an answer")
            return False
        # The end of the stream after part of an answer ends a body framed by the close, or breaks
        # the answer: the reader says which.
        probe.received = True
        if ancillary:  # the only message asked for: (SOL_SOCKET, SO_TIMESTAMPNS, timespec)
            seconds, nanoseconds = _TIMESPEC.unpack_from(ancillary[0][2])
            probe.arrived = seconds + nanoseconds * 1e-9
        try:
            whole = probe.answer.feed(data)
        except BadAnswer as error:
            self._fail(probe, now, probe.started, "protocol", str(error), _took(probe, now))
            return False
        if whole:
            self._answered(probe, now)
            return False
        return bool(data)

    def _answered(self, probe: _Probe, now: float) -> None:
        assert probe.started is not None
        answer = probe.answer
        if answer.streaming:
            self._hand_over(probe, now)
            return
        probe.backend.source = "poll"
        result = probe.prober.judge(answer.status, answer.headers, answer.body, _took(probe, now))
        if answer.reusable:
            probe.started, probe.deadline = None, math.inf  # the connection stays for the next check
        else:
            self._close(probe)  # `Connection: close`, or a body framed by the close
        self._finish(probe, result, now)

    def _lost(self, probe: _Probe, now: float, detail: str) -> None:
        """The connection failed before any answer. A kept-alive one may simply have been closed by
        the backend while idle (RFC 9112 §9.3.1 allows retrying then): retry once, fresh."""
        start = probe.started if probe.started is not None else now
        if probe.reused and not probe.received:
            self._close(probe)
            self._spawn(probe, start)
        else:
            self._fail(probe, now, start, "protocol", detail)

    def _expire(self, now: float) -> None:
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            deadline, _, probe = heapq.heappop(deadlines)
            if probe.started is not None and probe.deadline == deadline:
                timeout = deadline - probe.started
                self._fail(probe, now, probe.started, "timeout", f"no answer within {timeout:g}s")

    def _next_deadline(self) -> float:
        deadlines = self._deadlines
        while deadlines and deadlines[0][2].deadline != deadlines[0][0]:
            heapq.heappop(deadlines)  # the check was answered or failed in time
        return deadlines[0][0] if deadlines else math.inf

    def _fail(
        self, probe: _Probe, now: float, start: float, reason: str, detail: str, took: float | None = None
    ) -> None:
        self._close(probe)
        duration = now - start if took is None else took
        self._finish(probe, CheckResult(False, duration, reason=reason, detail=detail), now)

    def _finish(self, probe: _Probe, result: CheckResult, now: float) -> None:
        probe.started, probe.deadline = None, math.inf
        if probe.active:
            self.pool.record_check(probe.backend, result, now)
            self._schedule_next(probe, now)

    # --- load streams ---------------------------------------------------------------------------

    def _hand_over(self, probe: _Probe, now: float) -> None:
        """The answer is a load stream: its connection leaves the sweep for the stream reader, and the
        check stays in flight until the stream's first event (or its timeout)."""
        assert probe.started is not None and probe.sock is not None
        sock, answer, started = probe.sock, probe.answer, probe.started
        self._by_fd.pop(sock.fileno(), None)
        self._epoll.unregister(sock)
        probe.sock, probe.answer = None, AnswerReader()
        probe.started, probe.deadline = None, math.inf
        probe.stream = LoadStream(probe, answer, started, probe.prober.settings.timeout)
        self._streams.adopt(probe.stream, sock, now)

    def _end_stream(self, probe: _Probe) -> None:
        stream, probe.stream = probe.stream, None
        if stream is not None:
            self._streams.close(stream)
            stream.open = False

    def reports(self, stream: LoadStream, reports: list[Report], now: float) -> None:
        """A stream's events: the first completes the check that opened it; each is a fresh report."""
        probe = stream.key
        assert isinstance(probe, _Probe)
        if not probe.active or probe.stream is not stream:
            return
        backend = probe.backend
        if stream.first:
            stream.first = False
            backend.source = "stream"
            backend.stream_connections += 1
            first, reports = reports[0], reports[1:]
            result = CheckResult(True, now - stream.started, load=first.load, self_drain=first.drain)
            self._finish(probe, result, now)
        for report in reports:
            self.pool.record_load(backend, report.load, report.drain, now)
            if self._debug is not None:
                self._debug.event(backend, report)

    def failed(self, stream: LoadStream, failure: StreamFailed, now: float) -> None:
        """A stream fell silent, ended or broke: a failed check; the next check connects again."""
        probe = stream.key
        assert isinstance(probe, _Probe)
        if probe.stream is not stream:
            return
        probe.stream = None
        if not probe.active:
            return
        if stream.first:  # the check that opened it fails
            result = CheckResult(False, now - stream.started, reason=failure.reason, detail=failure.detail)
            self._finish(probe, result, now)
        else:
            result = CheckResult(False, 0.0, reason=failure.reason, detail=failure.detail, timed=False)
            self.pool.record_check(probe.backend, result, now)

    async def _read_tls_stream(self, probe: _Probe, stream: LoadStream) -> None:
        """A load stream over TLS, read in the task of the check that opened it."""
        link = probe.prober.stream_link
        assert link is not None
        probe.stream = stream
        data, now = b"", trio.current_time()
        while probe.stream is stream and stream.deliver(data, now, self._silence(), self):
            data, failure = b"", None
            with trio.move_on_at(stream.deadline):
                try:
                    data = bytes(await link.stream.receive_some(65536))
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as error:
                    failure = StreamFailed("protocol", f"load stream lost: {error}")
                else:
                    failure = None if data else StreamFailed("protocol", "load stream closed by the backend")
                if failure is not None:
                    stream.fail(failure, trio.current_time(), self)
                    return
            now = trio.current_time()
            if not data and now >= stream.deadline:
                stream.fail(stream.expired(now), now, self)
                return


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
