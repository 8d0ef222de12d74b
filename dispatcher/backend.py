"""Middleware for backend authors: count requests in flight and answer the dispatcher's health check.

Owns: the backend's side of the load protocol (README, "Health checks and the load protocol"): the
in-flight count that is the load, the drain flag, the plain health answer (`X-Load` and a JSON body)
and the stream answer (Server-Sent Events, one event per change), for ASGI and for WSGI apps.
Rules: standard library only. It runs inside other people's servers (uvicorn on asyncio, waitress and
gunicorn on threads), so it must not import trio, h11, or anything else from `dispatcher`, and a
backend installs nothing for it beyond this package. `StreamPacer` decides what a stream sends and
when, as a plain function of the time and the load: the I/O loops around it only wait and write.

The words are HAProxy agent-check's: an agent answers `drain` to take no new traffic while it finishes
what it has, and `ready` to take it again. The dispatcher reads `X-Load-State: drain` (or
`"state": "drain"`) the same way, so a backend says "drain me" with `reporter.drain()` before a
graceful stop, and `reporter.ready()` cancels it.

A stream is a response that never ends by itself, and a server stopping gracefully waits for its
responses: uvicorn, by default, for ever, while the stream's heartbeats keep the backend up in the
dispatcher. So the middlewares chain a handler in front of the server's own for SIGTERM and SIGINT
(`stop_signals`): it calls `reporter.stop()`, which sends every stream a last event saying
`"state": "drain"` and ends it, so that the dispatcher moves away at once and the server's wait ends;
then the server's handler runs as it would have. No ASGI or WSGI message tells an app that its
server is stopping (uvicorn sends lifespan's shutdown only after its connections have closed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping
from types import FrameType
from typing import Any, NamedTuple
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["ASGILoadMiddleware", "LoadReporter", "WSGILoadMiddleware"]

# ASGI's shapes (asgiref's names), spelled out here so that the module needs nothing outside the stdlib.
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

DEFAULT_HEALTH_PATH = "/health"  # the dispatcher's `--health-path` default
# The heartbeat must be below the dispatcher's health interval (`--health-interval`, 2 s by default):
# a stream quiet for longer than an interval cannot be told from a backend that has hung. Half of it
# leaves room for a late write on a busy backend.
DEFAULT_HEARTBEAT = 1.0
# A burst of requests moves the load many times a millisecond; one event per 5 ms keeps the figure
# fresh to within a few requests while costing the dispatcher at most 200 events a second per backend.
DEFAULT_COALESCE = 0.005
EVENT_STREAM = "text/event-stream"
HEARTBEAT_COMMENT = b":\n\n"  # WHATWG EventSource: a line starting with ':' is a comment, ignored
# What servers are stopped with: SIGTERM (systemd, Kubernetes, docker stop; uvicorn's and gunicorn's
# graceful stop) and SIGINT (Ctrl-C).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# A stop signal whose action is the default, death (waitress installs no handler), is held back this
# long at most while the streams send their last event and close; then the default applies. Without
# it the process died before a stream's thread had written anything (6 SIGTERMs in 10 under
# waitress), and the dispatcher sent requests to it until its checks had failed `fall` times.
STOP_GRACE = 1.0
# After the last stream has closed, time for the server's own loop to send what it was given (waitress
# writes the threads' bytes from its main thread).
STOP_FLUSH = 0.05


class LoadReport(NamedTuple):
    """What the backend tells the dispatcher: its load and whether it asks to be drained."""

    load: float
    draining: bool


def report_json(report: LoadReport) -> bytes:
    """The JSON object of a report: `{"load": 3}` or `{"load": 3, "state": "drain"}`."""
    body: dict[str, object] = {"load": report.load}
    if report.draining:
        body["state"] = "drain"
    return json.dumps(body).encode()


def report_event(report: LoadReport) -> bytes:
    """One Server-Sent Event carrying a report: `data: {"load": 3}` and the blank line that ends it."""
    return b"data: " + report_json(report) + b"\n\n"


def plain_headers(report: LoadReport, body: bytes) -> list[tuple[str, str]]:
    """The headers of a plain health answer: the load in `X-Load`, which the dispatcher reads first."""
    headers = [
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(body))),
        ("X-Load", json.dumps(report.load)),
    ]
    if report.draining:
        headers.append(("X-Load-State", "drain"))
    return headers


STREAM_HEADERS = [("Content-Type", EVENT_STREAM), ("Cache-Control", "no-cache")]


def accepts_event_stream(accept: str) -> bool:
    """Whether an Accept header value lists `text/event-stream` with a q above 0 (RFC 9110 §12.5.1)."""
    for item in accept.split(","):
        media_type, _, parameters = item.partition(";")
        if media_type.strip().lower() == EVENT_STREAM:
            return _quality(parameters) > 0
    return False


def _quality(parameters: str) -> float:
    for parameter in parameters.split(";"):
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "q":
            try:
                return float(value)
            except ValueError:
                return 0.0  # a malformed weight accepts nothing rather than everything
    return 1.0


class LoadReporter:
    """The shared core: requests in flight, the drain flag, and telling open streams of each change.

    Thread-safe, since WSGI servers run requests on many threads and a stream waits on its own one.
    The load is the number of requests in flight, unless `load` is given: then it is whatever that
    callable returns (a float), and the app calls `changed()` when its figure moves so that open
    streams report it at once rather than at their next heartbeat.
    """

    def __init__(self, load: Callable[[], float] | None = None) -> None:
        self._figure = load
        self._changed = threading.Condition()
        self._in_flight = 0
        self._draining = False
        self._stopping = False
        self._version = 0  # moves on every change; a thread-waiting stream waits for it to move
        self._streams = 0
        self._listeners: set[Callable[[], None]] = set()

    @property
    def in_flight(self) -> int:
        """Requests the middleware has seen start and not yet finish (health checks not counted)."""
        return self._in_flight

    @property
    def load(self) -> float:
        """The figure reported to the dispatcher: `load()` if given, else requests in flight."""
        return self._in_flight if self._figure is None else self._figure()

    @property
    def draining(self) -> bool:
        return self._draining

    @property
    def stopping(self) -> bool:
        """`stop()` was called: the server is stopping, and no stream is opened again."""
        return self._stopping

    @property
    def open_streams(self) -> int:
        """Health streams open now (one per dispatcher watching this backend)."""
        return self._streams

    def report(self) -> LoadReport:
        return LoadReport(self.load, self._draining)

    def begin(self) -> None:
        """One more request (or any piece of work the app wants counted) in flight."""
        with self._changed:
            self._in_flight += 1
            listeners = self._moved()
        _tell(listeners)

    def end(self) -> None:
        """One request fewer in flight; call exactly once for each `begin()`."""
        with self._changed:
            self._in_flight -= 1
            listeners = self._moved()
        _tell(listeners)

    def drain(self) -> None:
        """Ask the dispatcher to send no new requests here (before a graceful stop, say)."""
        self._set_draining(True)

    def ready(self) -> None:
        """Take new requests again after `drain()`."""
        self._set_draining(False)

    def stop(self) -> None:
        """The server is stopping: drain, send every open stream a last event saying so and end it,
        and answer later checks plain (draining). Called on a stop signal (`stop_signals`); call it
        yourself from a server's shutdown hook where the signals are not the way it is stopped."""
        with self._changed:
            if self._stopping:
                return
            self._stopping = self._draining = True
            listeners = self._moved()
        _tell(listeners)

    def changed(self) -> None:
        """The app's own `load()` figure has moved: tell the open streams now."""
        with self._changed:
            listeners = self._moved()
        _tell(listeners)

    def _set_draining(self, draining: bool) -> None:
        with self._changed:
            if self._draining == draining:
                return
            self._draining = draining
            listeners = self._moved()
        _tell(listeners)

    def _moved(self) -> tuple[Callable[[], None], ...]:
        """With the lock held: wake the waiting threads, and return the listeners to call after."""
        self._version += 1
        self._changed.notify_all()
        return tuple(self._listeners) if self._listeners else ()

    def _listen(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call `listener` after every change until the returned function is called."""
        with self._changed:
            self._listeners.add(listener)

        def stop() -> None:
            with self._changed:
                self._listeners.discard(listener)

        return stop

    def _seen(self) -> int:
        return self._version

    def _wait_for_change(self, seen: int, timeout: float) -> None:
        """Block this thread until something changes after version `seen`, or `timeout` seconds."""
        with self._changed:
            self._changed.wait_for(lambda: self._version != seen, timeout)

    def _count_stream(self, delta: int) -> None:
        with self._changed:
            self._streams += delta
            self._changed.notify_all()  # `_wait_for_no_streams`

    def _wait_for_no_streams(self, timeout: float) -> bool:
        """Block this thread until no stream is open, or `timeout` seconds; True if none is."""
        with self._changed:
            return self._changed.wait_for(lambda: self._streams == 0, max(0.0, timeout))

    def _open_stream(self, most: int) -> bool:
        """Count one more stream unless `most` are open: False then (checked and counted under the
        lock, so that two dispatchers' checks at once cannot both take the last place)."""
        with self._changed:
            if self._streams >= most:
                return False
            self._streams += 1
            return True


def _tell(listeners: tuple[Callable[[], None], ...]) -> None:
    for listener in listeners:  # outside the lock: a listener may take locks of its own
        listener()


# The reporters each stop signal stops, and the handler it had before ours (called after it).
_stopped_on_signal: dict[int, weakref.WeakSet[LoadReporter]] = {}
_chained: dict[int, Any] = {}


def watch_stop_signals(reporter: LoadReporter, signals: Iterable[int]) -> None:
    """Stop `reporter` on any of `signals`, then run the handler the server had installed.

    Installed when a middleware is made and again when an ASGI stream opens: a server may install
    its handlers after the app is made (`uvicorn.run(app)` does), and ours must come first. Only
    the main thread may set handlers; elsewhere nothing is installed (a WSGI stream's thread: the
    middleware's making, in the main thread under gunicorn and waitress, has done it)."""
    signals = tuple(signals)
    for number in signals:
        _stopped_on_signal.setdefault(number, weakref.WeakSet()).add(reporter)
    if threading.current_thread() is not threading.main_thread():
        return
    for number in signals:
        current = signal.getsignal(number)
        if current is _on_stop_signal:
            continue
        with contextlib.suppress(ValueError, OSError):  # a signal this platform cannot catch
            signal.signal(number, _on_stop_signal)
            _chained[number] = current


def _on_stop_signal(number: int, frame: FrameType | None) -> None:
    # A signal handler interrupts whatever the main thread was doing, maybe inside a reporter's
    # lock (a sync worker runs the app there): the reporters are stopped from a thread of their own.
    reporters = list(_stopped_on_signal.get(number, ()))
    previous = _chained.get(number)
    dies = not callable(previous) and previous != signal.SIG_IGN  # the default (or one set outside Python)
    if dies:
        signal.signal(number, signal.SIG_DFL)  # a second one acts at once
        if not any(reporter.open_streams for reporter in reporters):
            signal.raise_signal(number)  # nothing to wait for: the default, now, as without us
            return
    stopping = threading.Thread(
        target=_stop_all,
        args=(reporters, number if dies else None),
        name="dispatcher-backend-stop",
        daemon=True,
    )
    stopping.start()
    if callable(previous):
        previous(number, frame)


def _stop_all(reporters: list[LoadReporter], then: int | None = None) -> None:
    """Stop the reporters; with `then`, give their streams STOP_GRACE to close, and send the process
    that signal again (its default action now)."""
    deadline = time.monotonic() + STOP_GRACE
    for reporter in reporters:
        reporter.stop()
    if then is None:
        return
    if all(reporter._wait_for_no_streams(deadline - time.monotonic()) for reporter in reporters):
        time.sleep(STOP_FLUSH)
    os.kill(os.getpid(), then)


class StreamPacer:
    """What a health stream sends and when: a plain function of the clock and the current report.

    The first step sends the report. After that, a changed report is sent at once unless an event
    went out less than `coalesce` seconds ago (then at the end of that window, carrying whatever the
    report is by then), and a heartbeat comment goes out when nothing was written for `heartbeat`
    seconds, so the dispatcher can tell a quiet backend from a dead one.
    """

    def __init__(self, heartbeat: float, coalesce: float) -> None:
        self.heartbeat = heartbeat
        self.coalesce = coalesce
        self._sent: bytes | None = None  # the last event written
        self._last_event = -float("inf")
        self._last_write = -float("inf")

    def step(self, now: float, report: LoadReport) -> tuple[bytes, float, bool]:
        """The bytes to write now (maybe none), how long to wait before the next step, and whether a
        change should end that wait early (not within a coalescing window: it would only spin).
        Reports are compared as the event they make: a `load=` figure of NaN, never equal to itself,
        was sent again at every step instead of once (the dispatcher refuses it, as it should)."""
        event = report_event(report)
        if event != self._sent:
            window_ends = self._last_event + self.coalesce
            if now < window_ends:
                return b"", window_ends - now, False
            self._sent, self._last_event, self._last_write = event, now, now
            return event, self.heartbeat, True
        if now >= self._last_write + self.heartbeat:
            self._last_write = now
            return HEARTBEAT_COMMENT, self.heartbeat, True
        return b"", self._last_write + self.heartbeat - now, True


class _Answering:
    """What both middlewares are configured with: the health path, the stream's pace, the reporter."""

    def _configure(
        self,
        health_path: str,
        heartbeat: float,
        coalesce: float,
        load: Callable[[], float] | None,
        stop_signals: Iterable[int],
    ) -> None:
        if not health_path.startswith("/"):
            raise ValueError(f"health_path must start with '/': {health_path!r}")
        if not heartbeat > 0:
            raise ValueError(f"heartbeat must be above 0 seconds: {heartbeat!r}")
        if not coalesce >= 0:
            raise ValueError(f"coalesce must be 0 seconds or more: {coalesce!r}")
        self.health_path = health_path
        self.heartbeat = heartbeat
        self.coalesce = coalesce
        self.reporter = LoadReporter(load)
        self.stop_signals = tuple(stop_signals)
        watch_stop_signals(self.reporter, self.stop_signals)


class ASGILoadMiddleware(_Answering):
    """Wraps an ASGI app: counts its HTTP requests in flight and answers the health path itself.

    A request counts from its start until its response is complete (the last `http.response.body`)
    or the app returns, whichever is first. Lifespan and websocket scopes pass through untouched; so
    does every request that is not `GET`/`HEAD` of the health path. The stream waits with asyncio,
    which every mainstream ASGI server runs on; on a server that does not (hypercorn under trio), the
    health path answers plain, which the dispatcher reads just as well.

    `health_path` is the path inside the app (after the server's `root_path`); `heartbeat` (seconds)
    must stay below the dispatcher's health interval; `coalesce` is the shortest gap between two
    events; `stream=False` always answers plain; `load` replaces the in-flight count (see
    `LoadReporter`); `stop_signals` are the signals that stop the reporter before the server's own
    handler runs (module docstring; `()` installs nothing).
    """

    def __init__(
        self,
        app: ASGIApp,
        health_path: str = DEFAULT_HEALTH_PATH,
        heartbeat: float = DEFAULT_HEARTBEAT,
        coalesce: float = DEFAULT_COALESCE,
        stream: bool = True,
        *,
        load: Callable[[], float] | None = None,
        stop_signals: Iterable[int] = STOP_SIGNALS,
    ) -> None:
        self._configure(health_path, heartbeat, coalesce, load, stop_signals)
        self.app = app
        self.stream = stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
        elif scope["method"] in ("GET", "HEAD") and _asgi_path(scope) == self.health_path:
            await self._answer_health(scope, receive, send)
        else:
            await self._counted(scope, receive, send)

    async def _counted(self, scope: Scope, receive: Receive, send: Send) -> None:
        reporter = self.reporter
        finished = False

        def finish() -> None:
            nonlocal finished
            if not finished:
                finished = True
                reporter.end()

        async def send_counted(message: Message) -> None:
            await send(message)  # still in flight while the server takes the last body (backpressure)
            if _completes_response(message):
                finish()

        reporter.begin()
        try:
            await self.app(scope, receive, send_counted)
        finally:
            finish()

    async def _answer_health(self, scope: Scope, receive: Receive, send: Send) -> None:
        accept = b",".join(value for name, value in scope["headers"] if name.lower() == b"accept")
        streams = self.stream and not self.reporter.stopping and _running_loop() is not None
        if streams and accepts_event_stream(accept.decode("latin-1")):
            watch_stop_signals(self.reporter, self.stop_signals)  # the server's own may be newer
            await self._stream(receive, send)
            return
        report = self.reporter.report()
        body = report_json(report)
        headers = [(name.lower().encode(), value.encode()) for name, value in plain_headers(report, body)]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _stream(self, receive: Receive, send: Send) -> None:
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()
        watcher = loop.create_task(_until_disconnect(receive))
        watcher.add_done_callback(lambda _: wake.set())
        stop_listening = self.reporter._listen(_waker(loop, wake))
        self.reporter._count_stream(+1)
        try:
            headers = [(name.lower().encode(), value.encode()) for name, value in STREAM_HEADERS]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            pacer = StreamPacer(self.heartbeat, self.coalesce)
            while not watcher.done():
                wake.clear()  # before reading the report: a change after the read sets it again
                report = self.reporter.report()
                if self.reporter.stopping:  # the last event, and the end of the response
                    await send({"type": "http.response.body", "body": report_event(report)})
                    return
                chunk, delay, wake_on_change = pacer.step(loop.time(), report)
                if chunk:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await _pause(wake if wake_on_change else None, delay)
        except OSError:
            pass  # ASGI: a send on a closed connection raises an OSError; the client has gone
        finally:
            self.reporter._count_stream(-1)
            stop_listening()
            watcher.cancel()
            await asyncio.wait([watcher])  # never left pending: no task outlives its stream
            if not watcher.cancelled():
                watcher.exception()  # a receive that failed ended the stream as a disconnect does


def _asgi_path(scope: Scope) -> str:
    """The path inside the app: ASGI servers put the mount point (`root_path`) in front of it."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and (path == root or path.startswith(root + "/")):
        return path[len(root) :]
    return path


def _completes_response(message: Message) -> bool:
    kind = message["type"]
    if kind == "http.response.body":
        return not message.get("more_body", False)
    return bool(kind == "http.response.pathsend")  # the ASGI extension that sends a whole file


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _waker(loop: asyncio.AbstractEventLoop, wake: asyncio.Event) -> Callable[[], None]:
    """A change listener that sets `wake` from any thread: drain() may come from a worker thread."""

    def on_change() -> None:
        if _running_loop() is loop:
            wake.set()
            return
        with contextlib.suppress(RuntimeError):  # the loop has closed: no stream is left to wake
            loop.call_soon_threadsafe(wake.set)

    return on_change


async def _pause(wake: asyncio.Event | None, delay: float) -> None:
    if wake is None:
        await asyncio.sleep(delay)
        return
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(delay):
            await wake.wait()


class WSGILoadMiddleware(_Answering):
    """Wraps a WSGI app: counts its requests in flight and answers the health path itself.

    A request counts from the call until the server closes the body it got back (PEP 3333: the
    server calls `close()` when the response is done or abandoned). Every request that is not
    `GET`/`HEAD` of the health path passes through.

    A stream holds one server thread for as long as the dispatcher watches, and a server whose every
    thread holds one serves nothing else while it still looks healthy and idle: a black hole. So at
    most `max_streams` streams are open at once (1 by default; a dispatcher asking past it gets plain
    answers and polls), and with `stream=None` it streams only where `environ["wsgi.multithread"]`
    is true (gunicorn's gthread with threads, waitress) and, under waitress, which says so whatever
    its thread count, only with more threads than `max_streams`; it answers plain elsewhere (a
    single-threaded worker, gunicorn's sync worker or `waitress --threads 1`). `True` streams
    wherever `max_streams` allows; `False` never. A client that has gone is noticed when a write
    fails, at the latest a few heartbeats later. The other settings are `ASGILoadMiddleware`'s;
    `health_path` is matched against `PATH_INFO`, the path below the app's mount point
    (`SCRIPT_NAME`).
    """

    def __init__(
        self,
        app: WSGIApplication,
        health_path: str = DEFAULT_HEALTH_PATH,
        heartbeat: float = DEFAULT_HEARTBEAT,
        coalesce: float = DEFAULT_COALESCE,
        stream: bool | None = None,
        *,
        load: Callable[[], float] | None = None,
        max_streams: int = 1,
        stop_signals: Iterable[int] = STOP_SIGNALS,
    ) -> None:
        self._configure(health_path, heartbeat, coalesce, load, stop_signals)
        if max_streams < 1:
            raise ValueError(f"max_streams must be 1 or more, not {max_streams!r}")
        self.app = app
        self.stream = stream
        self.max_streams = max_streams

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        if method in ("GET", "HEAD") and environ.get("PATH_INFO", "") == self.health_path:
            return self._answer_health(environ, start_response)
        reporter = self.reporter
        reporter.begin()
        try:
            body = self.app(environ, start_response)
        except BaseException:
            reporter.end()
            raise
        return _CountedBody(body, reporter.end)

    def _streams_here(self, environ: WSGIEnvironment) -> bool:
        if self.stream is None:
            if not environ.get("wsgi.multithread", False):
                return False
            threads = _waitress_threads(environ)
            return threads is None or threads > self.max_streams
        return self.stream

    def _answer_health(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if (
            not self.reporter.stopping
            and accepts_event_stream(environ.get("HTTP_ACCEPT", ""))
            and self._streams_here(environ)
            and self.reporter._open_stream(self.max_streams)
        ):
            start_response("200 OK", list(STREAM_HEADERS))
            return _StreamBody(self._events(), self.reporter)
        report = self.reporter.report()
        body = report_json(report)
        start_response("200 OK", plain_headers(report, body))
        return [body]

    def _events(self) -> Iterator[bytes]:
        """The stream's events. The server closing it (client gone, shutdown) ends it at a `yield`;
        its place among `max_streams` is given back by `_StreamBody.close`."""
        reporter = self.reporter
        pacer = StreamPacer(self.heartbeat, self.coalesce)
        while True:
            seen = reporter._seen()  # before reading the report, as the ASGI loop clears `wake`
            report = reporter.report()
            if reporter.stopping:  # the last event; the server ends the response
                yield report_event(report)
                return
            chunk, delay, wake_on_change = pacer.step(time.monotonic(), report)
            if chunk:
                yield chunk
            if wake_on_change:
                reporter._wait_for_change(seen, delay)
            else:
                time.sleep(delay)  # a coalescing window, 5 ms by default


def _waitress_threads(environ: WSGIEnvironment) -> int | None:
    """Waitress's thread count, when the request comes from waitress: it sets `wsgi.multithread`
    even with one thread. Read from the channel behind `waitress.client_disconnected` (its
    adjustments, `threads`); None from any other server, or a waitress that no longer has them."""
    channel = getattr(environ.get("waitress.client_disconnected"), "__self__", None)
    threads = getattr(getattr(channel, "adj", None), "threads", None)
    return threads if isinstance(threads, int) else None


class _StreamBody:
    """A WSGI stream's body: its place among `max_streams` is taken when the stream is answered and
    given back when the server closes the body (PEP 3333), whether it was read or not."""

    __slots__ = ("_events", "_reporter")

    def __init__(self, events: Iterator[bytes], reporter: LoadReporter) -> None:
        self._events = events
        self._reporter: LoadReporter | None = reporter

    def __iter__(self) -> Iterator[bytes]:
        return self._events

    def close(self) -> None:
        reporter, self._reporter = self._reporter, None
        try:
            close = getattr(self._events, "close", None)
            if close is not None:
                close()
        finally:
            if reporter is not None:  # a second close() gives back no second place
                reporter._count_stream(-1)


class _CountedBody:
    """The app's response body, ending the request's count when the server closes it."""

    __slots__ = ("_body", "_end")

    def __init__(self, body: Iterable[bytes], end: Callable[[], None]) -> None:
        self._body = body
        self._end: Callable[[], None] | None = end

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._body)

    def close(self) -> None:
        end, self._end = self._end, None
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            if end is not None:  # a second close() must not count the request out twice
                end()
