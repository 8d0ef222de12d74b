"""The middleware for backend authors (dispatcher/backend.py), hosted by real servers and called directly.

The server tests run each app under a real server in a subprocess, uvicorn for ASGI and waitress for
WSGI, on a free loopback port, and talk to it with httpx and with raw sockets for the stream. Without
uvicorn or waitress they are skipped, except in CI (CI=true), where a missing server is a failure.
The pure parts (the stream's pacing, the Accept rule, WSGI's threading rule, ASGI counting and
pass-through) are called in this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from wsgiref.types import StartResponse, WSGIEnvironment

import httpx
import pytest
import trio

from dispatcher.backend import (
    ASGILoadMiddleware,
    LoadReport,
    StreamPacer,
    WSGILoadMiddleware,
    accepts_event_stream,
)

ROOT = Path(__file__).resolve().parent.parent
# The dispatcher's health check, header for header (the wire contract).
CHECK_HEADERS = {"accept": "text/event-stream, */*;q=0.5", "x-dispatcher-check": "1"}
HEARTBEAT = 0.2  # the test apps' heartbeat: short, so that a quiet stream shows one quickly
PATIENCE = 10.0  # bound on every wait for another process

# Both test apps answer every path but /health with the same JSON status; /slow first waits until
# /release, and /drain and /ready call the reporter. `tasks` (ASGI) and `threads` show what a stream
# leaves behind.
ASGI_APP = """
import asyncio, json, socket, sys, threading
import uvicorn
from dispatcher.backend import ASGILoadMiddleware

release = asyncio.Event()

async def inner(scope, receive, send):
    global release
    if scope["type"] == "lifespan":
        while (message := await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    path = scope["path"]
    if path == "/slow":
        await release.wait()
    elif path == "/release":
        release.set()
        release = asyncio.Event()
    elif path == "/drain":
        app.reporter.drain()
    elif path == "/ready":
        app.reporter.ready()
    status = {"path": path, "method": scope["method"], "query": scope["query_string"].decode(),
              "streams": app.reporter.open_streams, "tasks": len(asyncio.all_tasks()),
              "threads": threading.active_count()}
    body = json.dumps(status).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})

app = ASGILoadMiddleware(inner, heartbeat=float(sys.argv[1]))
listener = socket.create_server(("127.0.0.1", 0))
print(listener.getsockname()[1], flush=True)
uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on")).run(sockets=[listener])
"""

WSGI_APP = """
import json, socket, sys, threading
import waitress
from dispatcher.backend import WSGILoadMiddleware

release = threading.Event()

def inner(environ, start_response):
    global release
    path = environ["PATH_INFO"]
    if path == "/slow":
        release.wait()
    elif path == "/release":
        release.set()
        release = threading.Event()
    elif path == "/drain":
        app.reporter.drain()
    elif path == "/ready":
        app.reporter.ready()
    status = {"path": path, "method": environ["REQUEST_METHOD"], "query": environ["QUERY_STRING"],
              "streams": app.reporter.open_streams, "tasks": 0, "threads": threading.active_count()}
    body = json.dumps(status).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]

app = WSGILoadMiddleware(inner, heartbeat=float(sys.argv[1]))
listener = socket.create_server(("127.0.0.1", 0))
print(listener.getsockname()[1], flush=True)
# Threads for three slow requests, a stream and the test's own requests, with room to spare (8), or
# the number the test gives.
waitress.serve(app, sockets=[listener], threads=int(sys.argv[2]) if len(sys.argv) > 2 else 8, _quiet=True)
"""

APPS = {"uvicorn": ASGI_APP, "waitress": WSGI_APP}


def require_server(name: str) -> None:
    """Skip without server `name`, but fail in CI, where `pip install -e '.[test]'` must have put it."""
    if importlib.util.find_spec(name) is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is not installed, and CI=true requires it (the test extra)")
        pytest.skip(f"{name} is not installed (pip install -e '.[test]')")


@pytest.fixture(params=["uvicorn", "waitress"])
def server(request: pytest.FixtureRequest) -> str:
    """Resolved at set-up, so that a skip keeps its reason (not wrapped by the test's nursery)."""
    name = cast(str, request.param)
    require_server(name)
    return name


@dataclass
class Backend:
    """A middleware-wrapped test app served by a real server in another process."""

    port: int
    client: httpx.AsyncClient
    process: trio.Process

    async def status(self, path: str = "/status") -> dict[str, Any]:
        """The test app's own answer, through the middleware."""
        response = await self.client.get(path)
        assert response.status_code == 200
        return cast(dict[str, Any], response.json())

    async def plain_health(self) -> httpx.Response:
        """A health check whose Accept lacks event-stream: the plain answer."""
        response = await self.client.get("/health", headers={"accept": "application/json"})
        assert response.status_code == 200
        return response

    async def wait_for_load(self, load: int) -> None:
        """Poll the plain answer until it reports `load` (bounded: another process offers no event)."""
        with trio.fail_after(PATIENCE):
            while (await self.plain_health()).headers["x-load"] != str(load):
                await trio.sleep(0.01)

    async def wait_for_status(self, accept: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        with trio.fail_after(PATIENCE):
            while not accept(status := await self.status()):
                await trio.sleep(0.01)
        return status


async def announced_port(process: trio.Process, log: Path) -> int:
    """The port the server bound (port 0: the kernel's free choice, no race), from its first line."""
    assert process.stdout is not None
    line = b""
    with trio.fail_after(PATIENCE):
        while not line.endswith(b"\n"):
            chunk = await process.stdout.receive_some(64)
            assert chunk, f"the server exited: {log.read_text()}"
            line += chunk
    return int(line)


async def wait_listening(process: trio.Process, port: int, log: Path) -> None:
    """Return once `port` accepts connections; fail if the process exits or PATIENCE runs out."""
    with trio.fail_after(PATIENCE):
        while True:
            assert process.returncode is None, f"the server exited: {log.read_text()}"
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
            except OSError:
                await trio.sleep(0.02)
                continue
            await stream.aclose()
            return


@contextlib.asynccontextmanager
async def serving(server: str, directory: Path, *extra: str) -> AsyncIterator[Backend]:
    """Run the test app under `server` in a subprocess on a free port; kill it on the way out.

    The server binds port 0 itself and prints the port it got: a port picked here and bound there
    could be taken in between by another test run on the machine.
    """
    script = directory / f"{server}_app.py"
    script.write_text(APPS[server])
    log = directory / f"{server}.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    with log.open("wb") as log_file:
        argv = [sys.executable, str(script), str(HEARTBEAT), *extra]
        process = await trio.lowlevel.open_process(argv, stdout=subprocess.PIPE, stderr=log_file, env=env)
    try:
        port = await announced_port(process, log)
        await wait_listening(process, port, log)
        base_url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base_url, trust_env=False, timeout=PATIENCE) as client:
            yield Backend(port, client, process)
    finally:
        process.kill()
        with trio.CancelScope(shield=True):
            await process.wait()
            if process.stdout is not None:
                await process.stdout.aclose()


@pytest.fixture
async def backend(server: str, tmp_path: Path) -> AsyncIterator[Backend]:
    async with serving(server, tmp_path) as served:
        yield served


@dataclass
class EventStream:
    """A raw-socket client of the health stream: reads the head, undoes the chunked framing, and
    splits the body into Server-Sent Events messages (`data: ...` or the `:` heartbeat)."""

    socket: trio.SocketStream
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    _framed: bytes = b""
    _body: bytes = b""
    ended: bool = False  # the last chunk came

    @classmethod
    async def open(cls, port: int) -> EventStream:
        socket = await trio.open_tcp_stream("127.0.0.1", port)
        lines = ["GET /health HTTP/1.1", "host: 127.0.0.1", *(f"{k}: {v}" for k, v in CHECK_HEADERS.items())]
        await socket.send_all("\r\n".join([*lines, "", ""]).encode())
        stream = cls(socket)
        await stream._read_head()
        return stream

    async def _receive(self) -> None:
        chunk = await self.socket.receive_some(65536)
        assert chunk, f"the server closed the stream; unread: {self._framed!r}"
        self._framed += chunk

    async def _read_head(self) -> None:
        with trio.fail_after(PATIENCE):
            while b"\r\n\r\n" not in self._framed:
                await self._receive()
        head, self._framed = self._framed.split(b"\r\n\r\n", 1)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split(" ")[1])
        for line in header_lines:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()

    def _unframe(self) -> None:
        """Move every complete chunk (RFC 9112 §7.1) from the framed bytes to the body."""
        while (line_end := self._framed.find(b"\r\n")) >= 0:
            size = int(self._framed[:line_end].split(b";")[0], 16)
            start = line_end + 2
            if len(self._framed) < start + size + 2:
                return
            if size == 0:
                self.ended = True
                return
            assert self._framed[start + size : start + size + 2] == b"\r\n"
            self._body += self._framed[start : start + size]
            self._framed = self._framed[start + size + 2 :]

    async def message(self, timeout: float = PATIENCE) -> bytes:
        """The next message, without the blank line that ends it."""
        with trio.fail_after(timeout):
            self._unframe()  # the head's last read may have brought chunks with it
            while (end := self._body.find(b"\n\n")) < 0:
                assert not self.ended, "the server ended the stream"
                await self._receive()
                self._unframe()
        message, self._body = self._body[:end], self._body[end + 2 :]
        return message

    async def rest(self) -> list[bytes]:
        """Every message until the server ends the stream, by its last chunk or by closing."""
        messages = []
        with trio.fail_after(PATIENCE):
            while True:
                self._unframe()
                while (end := self._body.find(b"\n\n")) >= 0:
                    messages.append(self._body[:end])
                    self._body = self._body[end + 2 :]
                if self.ended or not (chunk := await self.socket.receive_some(65536)):
                    return messages
                self._framed += chunk

    async def event(self) -> dict[str, Any]:
        """The next data event's JSON, past any heartbeats."""
        while (message := await self.message()) == b":":
            pass
        assert message.startswith(b"data: "), message
        return cast(dict[str, Any], json.loads(message[len(b"data: ") :]))

    async def event_where(self, wanted: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """The first event for which `wanted` holds (the load may pass through other figures first)."""
        with trio.fail_after(PATIENCE):
            while not wanted(event := await self.event()):
                pass
        return event


@contextlib.asynccontextmanager
async def event_stream(port: int) -> AsyncIterator[EventStream]:
    stream = await EventStream.open(port)
    try:
        yield stream
    finally:
        await stream.socket.aclose()


# Over real servers: uvicorn (ASGI) and waitress (WSGI).


async def test_plain_answer_has_the_load_in_a_header_and_in_json(backend: Backend) -> None:
    """Accept without event-stream: 200, application/json, `X-Load: 0` and `{"load": 0}`."""
    response = await backend.plain_health()
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-load"] == "0"
    assert "x-load-state" not in response.headers
    assert response.content == b'{"load": 0}'


async def test_requests_in_flight_are_the_load(backend: Backend) -> None:
    """Three requests held in the app make the load 3 (the health check itself not counted); 0 after."""
    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(backend.status, "/slow")
        await backend.wait_for_load(3)
        response = await backend.plain_health()
        assert response.headers["x-load"] == "3"
        assert response.json() == {"load": 3}
        await backend.status("/release")
    await backend.wait_for_load(0)


async def test_stream_answer_has_its_headers_and_sends_the_load_at_once(backend: Backend) -> None:
    """The dispatcher's check gets 200, text/event-stream, no-cache, chunked, and `data: {"load": 0}`."""
    async with event_stream(backend.port) as stream:
        assert stream.status == 200
        assert stream.headers["content-type"] == "text/event-stream"
        assert stream.headers["cache-control"] == "no-cache"
        assert stream.headers["transfer-encoding"] == "chunked"
        assert await stream.message() == b'data: {"load": 0}'


async def test_stream_sends_an_event_when_the_load_changes(backend: Backend) -> None:
    """A request starting sends `{"load": 1}`; its end brings the stream back to `{"load": 0}`."""
    async with event_stream(backend.port) as stream, trio.open_nursery() as nursery:
        assert await stream.event() == {"load": 0}
        nursery.start_soon(backend.status, "/slow")
        assert await stream.event() == {"load": 1}
        await backend.status("/release")  # itself in flight for a moment: the load may pass 2
        assert await stream.event_where(lambda event: event["load"] == 0) == {"load": 0}


async def test_quiet_stream_sends_heartbeat_comments(backend: Backend) -> None:
    """With nothing changing, `:` comes every heartbeat (0.2 s here), and no sooner."""
    asked = trio.current_time()  # the server cannot have written anything before this
    async with event_stream(backend.port) as stream:
        await stream.message()
        for beat in (1, 2):
            assert await stream.message(timeout=HEARTBEAT * 10) == b":"
            # A lower bound only, and a causal one: a busy machine delays a read, never a write.
            assert trio.current_time() - asked >= beat * HEARTBEAT - 0.01


async def test_drain_shows_in_the_stream_and_the_plain_answer(backend: Backend) -> None:
    """`reporter.drain()` adds `"state": "drain"` to events and X-Load-State to the plain answer."""
    async with event_stream(backend.port) as stream:
        assert await stream.event() == {"load": 0}
        await backend.status("/drain")
        drained = await stream.event_where(lambda event: event["load"] == 0 and "state" in event)
        assert drained == {"load": 0, "state": "drain"}
        response = await backend.plain_health()
        assert response.headers["x-load-state"] == "drain"
        assert response.json() == {"load": 0, "state": "drain"}
        await backend.status("/ready")  # in flight when it calls ready(): an event may say load 1 first
        assert await stream.event_where(lambda event: event["load"] == 0) == {"load": 0}
    assert "x-load-state" not in (await backend.plain_health()).headers


async def test_other_requests_pass_through_to_the_app(backend: Backend) -> None:
    """Other paths, and other methods on the health path, reach the app unchanged."""
    status = await backend.status("/anything/else?x=1")
    assert (status["path"], status["query"], status["method"]) == ("/anything/else", "x=1", "GET")
    response = await backend.client.post("/health", content=b"{}")
    assert response.json()["path"] == "/health"
    assert response.json()["method"] == "POST"


async def test_stream_ends_with_its_client_leaving_nothing_behind(backend: Backend) -> None:
    """A closed stream is noticed (ASGI at once, WSGI at a write): no stream, task or thread is left."""
    before = await backend.status()
    async with event_stream(backend.port) as stream:
        await stream.message()
        assert (await backend.status())["streams"] == 1
    after = await backend.wait_for_status(lambda status: status["streams"] == 0)
    assert (after["tasks"], after["threads"]) == (before["tasks"], before["threads"])


async def test_a_stop_signal_ends_the_stream_with_a_drain_and_the_server_exits(
    server: str, tmp_path: Path
) -> None:
    """SIGTERM, as systemd, Kubernetes and docker stop send it: the stream ends, and the server exits.
    uvicorn stops gracefully, waiting for its responses: it waited for ever on the stream, whose
    heartbeats kept the backend up in the dispatcher. Now its stream's last event says drain.
    Waitress takes SIGTERM's default, death, which came before a stream's thread had written its
    last event (6 times in 10): it is held back until the streams have closed (STOP_GRACE at most)."""
    async with serving(server, tmp_path) as backend, event_stream(backend.port) as stream:
        assert await stream.event() == {"load": 0}
        backend.process.send_signal(signal.SIGTERM)
        rest = await stream.rest()
        with trio.fail_after(PATIENCE):
            await backend.process.wait()
    assert rest and rest[-1] == b'data: {"load": 0, "state": "drain"}'
    assert stream.ended  # the response's last chunk, not a cut connection


async def test_a_stop_signal_with_no_stream_open_ends_as_it_would_without_the_middleware(
    server: str, tmp_path: Path
) -> None:
    """Nothing to drain: the server's own ending, killed by SIGTERM as uvicorn re-raises it and as
    waitress takes it (uvicorn returned normally, exit 0, once the handler waited for streams)."""
    async with serving(server, tmp_path) as backend:
        await backend.plain_health()
        backend.process.send_signal(signal.SIGTERM)
        with trio.fail_after(PATIENCE):
            await backend.process.wait()
        assert backend.process.returncode == -signal.SIGTERM


async def test_waitress_with_one_thread_answers_plain_and_keeps_serving(tmp_path: Path) -> None:
    """Under `waitress --threads 1` a stream would hold the only thread: the server would serve
    nothing else while its health answers said idle. The dispatcher's check gets the plain answer,
    and the app still answers after it."""
    require_server("waitress")
    async with serving("waitress", tmp_path, "1") as backend:
        async with event_stream(backend.port) as stream:
            assert (stream.status, stream.headers["content-type"]) == (200, "application/json")
        with trio.fail_after(PATIENCE):
            assert (await backend.status())["streams"] == 0


# In this process: the pure parts and each middleware's rules.


# Times and windows in binary fractions (1/16 s, 1/4 s), so that the pacer's arithmetic is exact.


def test_first_step_sends_the_report_and_waits_a_heartbeat() -> None:
    """The pacer sends the report at once, then waits a heartbeat, woken early by any change."""
    pacer = StreamPacer(heartbeat=1.0, coalesce=0.25)
    assert pacer.step(10.0, LoadReport(2, False)) == (b'data: {"load": 2}\n\n', 1.0, True)


def test_changes_within_the_coalescing_window_make_one_event() -> None:
    """Changes less than `coalesce` after an event wait out the window, then send the latest figure."""
    pacer = StreamPacer(heartbeat=1.0, coalesce=0.25)
    pacer.step(10.0, LoadReport(0, False))
    assert pacer.step(10.0625, LoadReport(1, False)) == (b"", 0.1875, False)
    assert pacer.step(10.125, LoadReport(2, False)) == (b"", 0.125, False)
    assert pacer.step(10.25, LoadReport(3, True)) == (b'data: {"load": 3, "state": "drain"}\n\n', 1.0, True)
    assert pacer.step(10.5, LoadReport(4, True)) == (b'data: {"load": 4, "state": "drain"}\n\n', 1.0, True)


def test_heartbeat_follows_a_heartbeat_of_quiet_and_no_sooner() -> None:
    """Unchanged, the pacer writes nothing until `heartbeat` after its last write, then `:`."""
    pacer = StreamPacer(heartbeat=1.0, coalesce=0.25)
    pacer.step(10.0, LoadReport(0, False))
    assert pacer.step(10.375, LoadReport(0, False)) == (b"", 0.625, True)
    assert pacer.step(11.0, LoadReport(0, False)) == (b":\n\n", 1.0, True)
    assert pacer.step(11.5, LoadReport(1, False)) == (b'data: {"load": 1}\n\n', 1.0, True)
    assert pacer.step(12.0, LoadReport(1, False)) == (b"", 0.5, True)


def test_a_nan_figure_is_sent_once_then_only_heartbeats() -> None:
    """A `load=` callable that returns NaN (never equal to itself) was an event at every step, a flood
    of them; it is one event (which the dispatcher refuses as a bad load), then heartbeats."""
    pacer = StreamPacer(heartbeat=1.0, coalesce=0.25)

    def nan() -> LoadReport:  # a new float each time, as a callable returns one
        return LoadReport(float("nan"), False)

    assert pacer.step(10.0, nan())[0].startswith(b"data: ")
    assert pacer.step(10.5, nan()) == (b"", 0.5, True)
    assert pacer.step(11.0, nan()) == (b":\n\n", 1.0, True)


@pytest.mark.parametrize(
    ("accept", "streams"),
    [
        ("text/event-stream, */*;q=0.5", True),
        ("TEXT/Event-Stream", True),
        ("application/json", False),
        ("*/*", False),
        ("", False),
        ("text/event-stream;q=0", False),
        ("text/event-stream;q=x", False),
    ],
)
def test_only_an_accept_listing_event_stream_gets_the_stream(accept: str, streams: bool) -> None:
    """The stream goes only to an Accept naming text/event-stream with q above 0 (a wildcard is not it)."""
    assert accepts_event_stream(accept) is streams


def wsgi_app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"app"]


def call_wsgi(
    app: WSGILoadMiddleware, path: str = "/health", *, accept: str = CHECK_HEADERS["accept"], threads: bool
) -> tuple[str, dict[str, str], Iterable[bytes]]:
    """Call `app` as a WSGI server would; returns the status, headers and the (unread) body."""
    started: list[tuple[str, dict[str, str]]] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        started.append((status, dict(headers)))

    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "HTTP_ACCEPT": accept, "wsgi.multithread": threads}
    body = app(environ, start_response)
    return started[0][0], started[0][1], body


def close_body(body: Iterable[bytes]) -> None:
    """What a WSGI server does when a response is done (PEP 3333)."""
    close = getattr(body, "close", None)
    if close is not None:
        close()


@pytest.mark.parametrize(
    ("stream", "threads", "content_type"),
    [
        (None, False, "application/json"),
        (None, True, "text/event-stream"),
        (True, False, "text/event-stream"),
        (False, True, "application/json"),
    ],
)
def test_wsgi_streams_only_where_a_stream_cannot_block_the_server(
    stream: bool | None, threads: bool, content_type: str
) -> None:
    """stream=None streams only under wsgi.multithread, else answers plain; True and False force it."""
    app = WSGILoadMiddleware(wsgi_app, stream=stream)
    status, headers, body = call_wsgi(app, threads=threads)
    assert (status, headers["Content-Type"]) == ("200 OK", content_type)
    chunks = iter(body)
    assert next(chunks) in (b'{"load": 0}', b'data: {"load": 0}\n\n')
    assert app.reporter.open_streams == (1 if content_type == "text/event-stream" else 0)
    close_body(body)
    assert app.reporter.open_streams == 0


def test_wsgi_opens_at_most_max_streams_and_a_closed_one_gives_its_place_back() -> None:
    """Past `max_streams` open streams a check gets the plain answer (its dispatcher polls); closing a
    stream's body, read or not, frees its place once, however often it is closed."""
    app = WSGILoadMiddleware(wsgi_app, max_streams=2)
    first = call_wsgi(app, threads=True)
    second = call_wsgi(app, threads=True)
    third = call_wsgi(app, threads=True)
    kinds = [headers["Content-Type"] for _, headers, _ in (first, second, third)]
    assert kinds == ["text/event-stream", "text/event-stream", "application/json"]
    assert app.reporter.open_streams == 2
    close_body(first[2])  # never read
    close_body(first[2])
    assert app.reporter.open_streams == 1
    assert call_wsgi(app, threads=True)[1]["Content-Type"] == "text/event-stream"
    with pytest.raises(ValueError):
        WSGILoadMiddleware(wsgi_app, max_streams=0)


def test_wsgi_counts_a_request_until_its_body_is_closed() -> None:
    """A WSGI request is in flight from the call until the server closes the body, once only."""
    app = WSGILoadMiddleware(wsgi_app)
    _, _, body = call_wsgi(app, "/work", threads=True)
    assert app.reporter.load == 1
    assert list(body) == [b"app"]
    assert app.reporter.load == 1
    close_body(body)
    close_body(body)
    assert app.reporter.load == 0


def test_own_load_figure_is_reported_as_given() -> None:
    """With a `load` callable the figure is its float, in the header and the JSON alike."""
    app = WSGILoadMiddleware(wsgi_app, load=lambda: 0.25)
    _, headers, body = call_wsgi(app, accept="application/json", threads=True)
    assert headers["X-Load"] == "0.25"
    assert list(body) == [b'{"load": 0.25}']


@pytest.mark.parametrize("settings", [{"health_path": "health"}, {"heartbeat": 0}, {"coalesce": -1}])
def test_bad_settings_are_refused_at_construction(settings: dict[str, Any]) -> None:
    """A health path without '/', a heartbeat of 0 or a negative coalescing window raise ValueError."""
    with pytest.raises(ValueError):
        WSGILoadMiddleware(wsgi_app, **settings)


@dataclass
class ASGICall:
    """One ASGI call's messages, for driving the middleware without a server."""

    sent: list[dict[str, Any]] = field(default_factory=list)

    async def receive(self) -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(self, message: Any) -> None:
        self.sent.append(message)


def http_scope(path: str, accept: bytes = CHECK_HEADERS["accept"].encode()) -> dict[str, Any]:
    return {"type": "http", "method": "GET", "path": path, "root_path": "", "headers": [(b"accept", accept)]}


async def test_asgi_health_answers_plain_where_no_asyncio_loop_runs() -> None:
    """Under a server without asyncio (trio here) the health path answers plain, even to a stream Accept."""

    async def never_called(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("the health path reached the app")

    call = ASGICall()
    await ASGILoadMiddleware(never_called)(http_scope("/health"), call.receive, call.send)
    start, body = call.sent
    assert (b"content-type", b"application/json") in start["headers"]
    assert (b"x-load", b"0") in start["headers"]
    assert body["body"] == b'{"load": 0}'


async def test_asgi_counts_a_request_until_its_last_body_message() -> None:
    """An ASGI request counts until `more_body` is false, even if the app goes on after it."""
    seen: list[float] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"a", "more_body": True})
        seen.append(middleware.reporter.load)
        await send({"type": "http.response.body", "body": b"b"})
        seen.append(middleware.reporter.load)

    middleware = ASGILoadMiddleware(app)
    call = ASGICall()
    await middleware(http_scope("/work"), call.receive, call.send)
    assert seen == [1, 0]
    assert middleware.reporter.load == 0


async def test_asgi_counts_a_request_that_fails_until_the_call_ends() -> None:
    """An app that raises before answering is counted out when its call ends."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert middleware.reporter.load == 1
        raise RuntimeError("boom")

    middleware = ASGILoadMiddleware(app)
    call = ASGICall()
    with pytest.raises(RuntimeError):
        await middleware(http_scope("/work"), call.receive, call.send)
    assert middleware.reporter.load == 0


@pytest.mark.parametrize("kind", ["lifespan", "websocket"])
async def test_asgi_passes_lifespan_and_websocket_scopes_through_untouched(kind: str) -> None:
    """Non-HTTP scopes reach the app with the very same scope, receive and send, and are not counted."""
    seen: list[tuple[Any, Any, Any, float]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append((scope, receive, send, middleware.reporter.load))

    middleware = ASGILoadMiddleware(app)
    call = ASGICall()
    scope = {"type": kind, "path": "/health"}
    await middleware(scope, call.receive, call.send)
    assert seen == [(scope, call.receive, call.send, 0)]


@dataclass
class AsyncioStream:
    """The ASGI middleware's health stream run as a task in an asyncio loop, with no server: the
    bodies it sends arrive in `bodies`, and `leave()` delivers `http.disconnect`."""

    middleware: ASGILoadMiddleware
    started: list[dict[str, Any]] = field(default_factory=list)
    bodies: asyncio.Queue[bytes] = field(default_factory=asyncio.Queue)
    gone: asyncio.Event = field(default_factory=asyncio.Event)
    ended: bool = False  # a body without more_body came: the middleware ended the response

    def run(self) -> asyncio.Task[None]:
        return asyncio.create_task(self.middleware(http_scope("/health"), self.receive, self.send))

    async def receive(self) -> dict[str, Any]:
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Any) -> None:
        if message["type"] == "http.response.start":
            self.started.append(message)
        else:
            assert not self.ended, "a body after the last one"
            self.ended = not message.get("more_body", False)
            self.bodies.put_nowait(message["body"])

    async def body(self) -> bytes:
        return await asyncio.wait_for(self.bodies.get(), PATIENCE)


async def refuse(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("the health path reached the app")


def test_asgi_stream_ends_on_disconnect_leaving_no_task() -> None:
    """In asyncio, a stream sends its event, ends on `http.disconnect`, and leaves no task behind."""

    async def run() -> tuple[AsyncioStream, bytes, int]:
        stream = AsyncioStream(ASGILoadMiddleware(refuse))
        task = stream.run()
        first = await stream.body()
        stream.gone.set()
        await asyncio.wait_for(task, PATIENCE)
        return stream, first, len(asyncio.all_tasks())

    stream, first, tasks = asyncio.run(run())
    assert (b"content-type", b"text/event-stream") in stream.started[0]["headers"]
    assert (b"cache-control", b"no-cache") in stream.started[0]["headers"]
    assert first == b'data: {"load": 0}\n\n'
    assert stream.middleware.reporter.open_streams == 0
    assert tasks == 1  # only asyncio.run's own


def test_asgi_stream_is_woken_by_a_drain_from_another_thread() -> None:
    """`drain()` called off the loop's thread (a sync endpoint, a signal) reaches the stream at once."""

    async def run() -> list[bytes]:
        stream = AsyncioStream(ASGILoadMiddleware(refuse, heartbeat=3600))  # no heartbeat to hide behind
        task = stream.run()
        first = await stream.body()
        await asyncio.to_thread(stream.middleware.reporter.drain)
        second = await stream.body()
        stream.gone.set()
        await asyncio.wait_for(task, PATIENCE)
        return [first, second]

    assert asyncio.run(run()) == [b'data: {"load": 0}\n\n', b'data: {"load": 0, "state": "drain"}\n\n']


def test_module_imports_only_the_standard_library() -> None:
    """dispatcher.backend loads nothing outside the stdlib but its own package's bare `__init__`."""
    probe = (
        "import sys; before = set(sys.modules); import dispatcher.backend; "
        "print('\\n'.join(sorted(set(sys.modules) - before)))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, check=True, text=True, cwd=ROOT
    )
    outside = {
        name
        for name in loaded.stdout.split()
        if name.split(".")[0] not in sys.stdlib_module_names
        and name not in ("dispatcher", "dispatcher.backend")
    }
    assert outside == set()


DRAIN_EVENT = b'data: {"load": 0, "state": "drain"}\n\n'


def test_asgi_stop_sends_a_last_drain_event_ends_the_stream_and_answers_plain_after() -> None:
    """`reporter.stop()` (a stop signal's, or a shutdown hook's): one last event saying drain ends the
    response, whatever the heartbeat; a check after it is answered plain, draining, not streamed."""

    async def run() -> tuple[AsyncioStream, list[bytes], AsyncioStream]:
        stream = AsyncioStream(ASGILoadMiddleware(refuse, heartbeat=3600, stop_signals=()))
        task = stream.run()
        first = await stream.body()
        assert not stream.ended
        await asyncio.to_thread(stream.middleware.reporter.stop)
        last = await stream.body()
        await asyncio.wait_for(task, PATIENCE)  # no disconnect needed
        later = AsyncioStream(stream.middleware)
        await asyncio.wait_for(later.run(), PATIENCE)
        return stream, [first, last], later

    stream, bodies, later = asyncio.run(run())
    assert bodies == [b'data: {"load": 0}\n\n', DRAIN_EVENT]
    assert stream.ended and stream.middleware.reporter.open_streams == 0
    assert (b"content-type", b"application/json") in later.started[0]["headers"]
    assert later.bodies.get_nowait() == b'{"load": 0, "state": "drain"}'


def test_wsgi_stop_sends_a_last_drain_event_ends_the_stream_and_answers_plain_after() -> None:
    """The same for WSGI: the stream's iterator yields the drain event and stops."""
    app = WSGILoadMiddleware(wsgi_app, heartbeat=3600, stop_signals=())
    _, headers, body = call_wsgi(app, threads=True)
    assert headers["Content-Type"] == "text/event-stream"
    chunks = iter(body)
    assert next(chunks) == b'data: {"load": 0}\n\n'
    threading.Timer(0.01, app.reporter.stop).start()  # while the stream waits a heartbeat for a change
    assert list(chunks) == [DRAIN_EVENT]
    close_body(body)
    assert app.reporter.open_streams == 0
    _, headers, body = call_wsgi(app, threads=True)
    assert (headers["Content-Type"], list(body)) == ("application/json", [b'{"load": 0, "state": "drain"}'])


def test_stop_signals_are_chained_to_the_handler_installed_before(tmp_path: Path) -> None:
    """In a process of its own: SIGTERM reaches the reporter first and then the handler the process
    had; `stop_signals=()` installs nothing, and a middleware stopped by other signals is left alone."""
    script = tmp_path / "chain.py"
    script.write_text(
        """
import os, signal, sys, threading
from dispatcher.backend import ASGILoadMiddleware
got = threading.Event()
signal.signal(signal.SIGTERM, lambda number, frame: got.set())
plain = ASGILoadMiddleware(None, stop_signals=())
assert signal.getsignal(signal.SIGTERM) is not None and not plain.reporter.stopping
app = ASGILoadMiddleware(None)
other = ASGILoadMiddleware(None, stop_signals=(signal.SIGUSR2,))
os.kill(os.getpid(), signal.SIGTERM)
assert got.wait(10), "the earlier handler was not called"
for thread in threading.enumerate():  # the reporters are stopped from a thread of their own
    if thread.name == "dispatcher-backend-stop":
        thread.join(10)
print(app.reporter.stopping, app.reporter.draining, plain.reporter.stopping, other.reporter.stopping)
"""
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, str(script)], capture_output=True, env=env, timeout=PATIENCE)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.split() == [b"True", b"True", b"False", b"False"]
