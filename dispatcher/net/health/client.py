"""What a check says and how it reaches a backend: the one path both check engines take (the sweep
over plain sockets, the TLS check over trio's SSLStream) to connect, retry and time out.

Owns: the check request (serialised by h11 once per health path), opening a connection (TCP, then
TLS for https backends) under the pool's connect limiter, the reasons a connection fails for (`dns`,
`refused`, `tls`), the check's deadline and the one wording of its timeout, the retry-once rule of a
kept-alive connection, the verdict on an answer, and the TLS context.
Rules: it never calls the pool (results are returned) and reads no socket: the engines own the reads.
It imports no other module of the checks. Time comes from trio's clock, so that timeouts run under a
mock clock in tests.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import h11
import trio

from dispatcher import __version__
from dispatcher.core.pool import Backend, CheckResult
from dispatcher.core.reply import CHECK_HEADER
from dispatcher.core.report import BadLoad, Report, parse_event, parse_report
from dispatcher.protocol.answer import is_event_stream
from dispatcher.protocol.sse import BadStream, EventReader
from dispatcher.settings.config import ConfigError, HealthSettings

USER_AGENT = f"dispatcher-health/{__version__}".encode()
# Every check offers to take a load stream, and anything else at a lower preference, so that no
# backend answers 406 (RFC 9110 §12.5.1).
ACCEPT = b"text/event-stream, */*;q=0.5"


class CheckFailed(Exception):
    """A check that did not pass, with the reason metrics and logs use."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail

    def result(self, duration: float) -> CheckResult:
        """The failed check as the pool records it."""
        return CheckResult(False, duration, reason=self.reason, detail=self.detail)


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


def timed_out(timeout: float) -> CheckFailed:
    """A check with no (whole) answer by its deadline, however far it got: the one wording of it."""
    return CheckFailed("timeout", f"no answer within {timeout:g}s")


@contextmanager
def answer_within(start: float, timeout: float) -> Iterator[None]:
    """The deadline of a check that began at `start`, for the parts of it that run in a task (a
    connect, a check over TLS): whatever is still running then fails the check as `timeout`."""
    try:
        with trio.fail_at(start + timeout):
            yield
    except trio.TooSlowError:
        raise timed_out(timeout) from None


def may_retry(reused: bool, received: bool) -> bool:
    """A check whose connection failed may be sent once more, over a fresh connection, when the
    connection was a kept-alive one and nothing of an answer came: the backend may simply have
    closed it while idle (RFC 9112 §9.3.1 allows retrying then)."""
    return reused and not received


class CheckClient:
    """One backend's check: its request, its connections, and the verdict on its answers."""

    def __init__(
        self,
        backend: Backend,
        settings: HealthSettings,
        connect_limiter: trio.CapacityLimiter,
        tls: Callable[[], ssl.SSLContext],
    ) -> None:
        self.backend = backend
        self.settings = settings  # those in force when its current check began
        # Bounds connection bursts (TCP and TLS handshakes) across the pool, never a wait for an answer:
        # a hung backend must only ever delay its own checks.
        self._connect_limiter = connect_limiter
        spec = backend.spec
        host = f"[{spec.host}]" if ":" in spec.host else spec.host
        self._host_header = (host if spec.port in (80, 443) else f"{host}:{spec.port}").encode()
        self.https = spec.scheme == "https"
        # The pool's one context (loading a CA store per backend would take seconds for 1,000).
        self._tls_context = tls
        self._check_request: tuple[str, bytes] | None = None  # (health path, the request's bytes)

    def request(self) -> bytes:
        """The check request's bytes, serialised by h11 once per health path (it validates the target
        and the headers): every check of this backend sends the same bytes."""
        path = self.settings.path
        if self._check_request is None or self._check_request[0] != path:
            self._check_request = (path, self._serialise(path))
        return self._check_request[1]

    def _serialise(self, path: str) -> bytes:
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
        return conn.send(request) + conn.send(h11.EndOfMessage())

    async def connect(self) -> trio.abc.Stream:
        """A new connection (TLS for an https backend), or CheckFailed saying why there is none."""
        spec = self.backend.spec
        async with self._connect_limiter:
            try:
                stream: trio.abc.Stream = await trio.open_tcp_stream(spec.host, spec.port)
            except OSError as error:
                raise _connect_failed(spec.host, error) from None
            if self.https:
                try:
                    stream = await self._handshake(stream)
                except (OSError, trio.BrokenResourceError, ssl.SSLError, ConfigError) as error:
                    # trio reports a failed handshake as BrokenResourceError; the SSL error it wraps
                    # says why.
                    raise CheckFailed("tls", f"TLS handshake failed: {error.__cause__ or error}") from None
        return stream

    async def _handshake(self, stream: trio.abc.Stream) -> trio.SSLStream[trio.abc.Stream]:
        """TLS over a new connection, which is closed if the handshake fails (or is cancelled)."""
        try:
            tls = trio.SSLStream(stream, self._tls_context(), server_hostname=self.backend.spec.host)
            await tls.do_handshake()
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        return tls

    def judge(
        self, status: int, headers: list[tuple[bytes, bytes]], body: bytes, duration: float
    ) -> CheckResult:
        """A whole answer's verdict: a 2xx with a valid load passes. A 508 is the front door's loop
        guard (this backend URL is a dispatcher), a 404 most likely a health.path the backend lacks."""
        if status == 508:
            detail = "status 508: this backend URL leads to a dispatcher's front door (a redirect loop)"
            return CheckResult(False, duration, reason="status", detail=detail)
        if status == 404:
            hint = f"status 404: set health.path to a route that backend serves (it is {self.settings.path})"
            return CheckResult(False, duration, reason="status", detail=hint)
        if not 200 <= status < 300:
            return CheckResult(False, duration, reason="status", detail=f"status {status}")
        try:
            report = events_report(body) if is_event_stream(headers) else parse_report(headers, body)
        except BadLoad as error:
            return CheckResult(False, duration, reason="bad_load", detail=str(error))
        return CheckResult(True, duration, load=report.load, self_drain=report.drain)


def events_report(body: bytes) -> Report:
    """A whole `text/event-stream` body (`answer.is_event_stream`): its last event is the load, as it
    would have been the stream's latest report."""
    try:
        events = EventReader().feed(body)
    except BadStream as error:
        raise BadLoad(f"event-stream answer: {error}") from None
    if not events:
        raise BadLoad("event-stream answer without a whole event (data lines, then a blank line)")
    return parse_event(events[-1])
