"""Hostile clients at the front door: fuzzed bytes, slowloris, descriptor exhaustion, smuggling, injection.

What holds for any client: a well-formed answer of a known status and/or a clean close; no unhandled
exception, no stuck handler, no connection left open once the clients are gone; a Location whose
scheme, host and port are always a configured backend's; no request byte in a response header except
the validated path and query. Timeouts run in virtual time (`autojump_clock`); the descriptor test runs
the dispatcher as a child process with a low RLIMIT_NOFILE.
"""

from __future__ import annotations

import logging
import resource
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dispatcher.core.stats import RESPONSE_CODES
from tests.helpers import (
    Dispatcher,
    TestBackend,
    dispatcher_command,
    exchange,
    health,
    metric,
    one_response,
    parse_responses,
    poll_admin,
    raise_file_limit,
    read_until_close,
    receive_responses,
    request_head,
    settings_for,
    start_backends,
    start_dispatcher,
    unused_port,
    wait_all_up,
)

# Every status the front door may send (README, "What the front door answers"; tests/test_readme.py).
ALLOWED_STATUSES = set(RESPONSE_CODES)
# Answers after which the connection must close: errors (README: "400 and close", ...).
CLOSING_STATUSES = {400, 405, 408, 414, 431, 501, 505, 508}
# The headers a redirect carries; `connection` only when it closes (http.DateHeader.tails).
REDIRECT_HEADERS = {b"location", b"content-length", b"date"}


@dataclass
class Front:
    dispatcher: Dispatcher
    backend: TestBackend

    @property
    def port(self) -> int:
        return self.dispatcher.port

    @property
    def open_connections(self) -> int:
        return self.dispatcher.running.front.stats.open_connections

    async def send(self, data: bytes) -> bytes:
        """`data` on a fresh connection, then everything until the server closes (a reset fails)."""
        async with await trio.open_tcp_stream("127.0.0.1", self.port) as stream:
            await stream.send_all(data)
            return await read_until_close(stream)


async def start_front(nursery: trio.Nursery, **overrides: Any) -> Front:
    """One backend at load 0, up, and a dispatcher in front of it (no second check during a test)."""
    [backend] = await start_backends(nursery, 0)
    settings = settings_for([backend], health=health(interval=3600.0), **overrides)
    dispatcher = await start_dispatcher(nursery, settings)
    await wait_all_up(dispatcher)
    return Front(dispatcher, backend)


def dispatcher_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    """ERROR (and worse) records of the dispatcher's and trio's loggers."""
    return [
        record.getMessage()
        for record in caplog.records
        if record.levelno >= logging.ERROR and record.name.split(".")[0] in ("dispatcher", "trio")
    ]


# --- any bytes: well-formed answers or a clean close, and nothing left open -----------------------

_METHODS = st.sampled_from(
    [
        b"GET",
        b"POST",
        b"PUT",
        b"DELETE",
        b"OPTIONS",
        b"CONNECT",
        b"TRACE",
        b"PRI",
        b"get",
        b"G\x00T",
        b"",
        b"M" * 300,
    ]
)
_TARGETS = st.sampled_from(
    [
        b"/",
        b"/a?b=c",
        b"*",
        b"//evil.example/x",
        b"http://evil.example/p?q",
        b"http://127.0.0.1@evil.example/",
        b"ftp://evil.example/",
        b"evil.example:443",
        b"/\\evil.example",
        b"/%0d%0aSet-Cookie:%20x",
        b"/@evil.example",
        b"/\xff",
        b"/\x00",
        b"/a b",
        b"",
        b"/" + b"t" * 9000,  # over the 8 KiB target limit: 414
    ]
)
_VERSIONS = st.sampled_from(
    [b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/0.9", b"http/1.1", b"HTTP/1.10", b"HTTP/11", b""]
)
_HEADER_LINES = st.sampled_from(
    [
        b"Host: f",
        b"Host: evil.example",
        b"Host:",
        b"Content-Length: 3",
        b"Content-Length: 70000",
        b"Content-Length: 3, 4",
        b"Content-Length: -1",
        b"Content-Length: 99999999999999999999",
        b"Transfer-Encoding: chunked",
        b"Transfer-Encoding: gzip",
        b"Transfer-Encoding: chunked, gzip",
        b"Expect: 100-continue",
        b"Connection: close",
        b"Connection: Upgrade",
        b"Upgrade: h2c",
        b"x-dispatcher-check: 1",
        b"X-Forwarded-Host: evil.example",
        b" folded",
        b"\tfolded",
        b"No-Colon",
        b"Bad Name: x",
        b": empty-name",
        b"X: \x00",
        b"X: \xff\xfe",
        b"X-Big: " + b"v" * 17000,  # over h11's 16 KiB head: 431
    ]
)
_BODIES = st.one_of(
    st.sampled_from([b"", b"abc", b"3\r\nabc\r\n0\r\n\r\n", b"zz\r\n", b"0\r\n\r\n"]), st.binary(max_size=40)
)


@st.composite
def mutated_request(draw: st.DrawFn) -> bytes:
    """One request: a request line and headers drawn from valid and broken parts, any line ending."""
    line = b" ".join([draw(_METHODS), draw(_TARGETS), draw(_VERSIONS)])
    headers = draw(st.lists(_HEADER_LINES, max_size=6))
    if draw(st.integers(0, 9)) == 0:
        headers += [b"X-N: v"] * draw(st.integers(95, 130))  # around the 100-line limit
    end = draw(st.sampled_from([b"\r\n", b"\r\n", b"\n", b"\r"]))
    return end.join([line, *headers]) + end + end + draw(_BODIES)


_VALID = [
    request_head("/ok?x=1", "Host: f"),
    request_head("/post", "Host: f", "Content-Length: 5", method="POST") + b"hello",
    request_head("/chunked", "Host: f", "Transfer-Encoding: chunked", method="POST")
    + b"5\r\nhello\r\n0\r\n\r\n",
]


@st.composite
def truncated_request(draw: st.DrawFn) -> bytes:
    """A valid request cut anywhere."""
    request = draw(st.sampled_from(_VALID))
    return request[: draw(st.integers(0, len(request) - 1))]


@st.composite
def huge_head(draw: st.DrawFn) -> bytes:
    """A head far over 16 KiB: one huge header or very many, complete or not."""
    if draw(st.booleans()):
        headers = ["X-Big: " + "a" * draw(st.integers(16_000, 70_000))]
    else:
        headers = [f"X-H{i}: {'v' * 60}" for i in range(draw(st.integers(250, 1200)))]
    head = request_head("/", "Host: f", *headers)
    return head if draw(st.booleans()) else head[:-4]


HOSTILE_INPUT = st.one_of(
    mutated_request(),
    st.lists(mutated_request(), min_size=2, max_size=3).map(b"".join),  # pipelined
    st.binary(max_size=2000),
    truncated_request(),
    huge_head(),
)


@dataclass(frozen=True)
class Hostile:
    """Bytes to send, and where to cut them into separate writes (each read by the server alone)."""

    data: bytes
    cuts: tuple[int, ...]


@st.composite
def hostile(draw: st.DrawFn) -> Hostile:
    # HEAD answers announce a body they do not carry, which the strict parser would wait for.
    data = draw(HOSTILE_INPUT).replace(b"HEAD", b"HEAP")
    cuts = draw(st.lists(st.integers(0, len(data)), max_size=3).map(sorted))
    return Hostile(data, tuple(cuts))


async def send_hostile(port: int, item: Hostile) -> bytes:
    """Send in pieces (letting the server read each), then EOF; everything until a clean close."""
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        start = 0
        for cut in (*item.cuts, len(item.data)):
            await stream.send_all(item.data[start:cut])
            start = cut
            await trio.testing.wait_all_tasks_blocked()
        await stream.send_eof()
        return await read_until_close(stream)


def check_answers(raw: bytes) -> None:
    """Complete, well-formed answers of known statuses; an error answer is the last and says close."""
    responses, rest = parse_responses(raw)
    assert rest == b"", raw[-300:]
    assert {r.status for r in responses} <= ALLOWED_STATUSES, raw[:300]
    for response in responses[:-1]:
        assert response.status not in CLOSING_STATUSES and not response.closes, raw[:300]
    if responses and responses[-1].status in CLOSING_STATUSES:
        assert responses[-1].closes, raw[:300]


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(batch=st.lists(hostile(), min_size=1, max_size=10))
async def test_hostile_batch_is_answered_and_leaves_no_connection_open(
    batch: list[Hostile], caplog: pytest.LogCaptureFixture
) -> None:
    """A batch of hostile connections at once: well-formed answers, clean closes, 0 open, no ERROR logged."""
    caplog.clear()
    async with trio.open_nursery() as nursery:
        front = await start_front(nursery)
        answers: list[bytes] = []

        async def one(item: Hostile) -> None:
            answers.append(await send_hostile(front.port, item))

        async with trio.open_nursery() as clients:
            for item in batch:
                clients.start_soon(one, item)
        for raw in answers:
            check_answers(raw)
        # Every client has closed its socket: any handler not finished by the time every task is
        # blocked is stuck, and its connection leaked.
        await trio.testing.wait_all_tasks_blocked()
        assert front.open_connections == 0
        assert front.dispatcher.running.front.stats.connections_total == len(batch)
        after = one_response(await front.send(request_head("/after", "Host: f", "Connection: close")))
        assert after.status == 307
        nursery.cancel_scope.cancel()
    assert dispatcher_errors(caplog) == []


# --- slowloris ------------------------------------------------------------------------------------

SLOWLORIS = 1000
PARTIAL_HEAD = b"GET /slow HTTP/1.1\r\nHost: f\r\nX-Trickle: "


async def open_slowloris(port: int, count: int) -> list[trio.SocketStream]:
    """`count` connections, each having sent a partial head."""
    streams = []
    for _ in range(count):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        streams.append(stream)
        await stream.send_all(PARTIAL_HEAD)
    return streams


async def trickle(streams: list[trio.SocketStream], period: float) -> None:
    """One more header byte on every connection every `period` seconds, until cancelled."""
    while True:
        await trio.sleep(period)
        for stream in streams:
            await stream.send_all(b"a")


async def test_a_thousand_slowloris_connections_do_not_delay_a_normal_client(nursery: trio.Nursery) -> None:
    """1,000 connections trickling a head: a normal client still gets its 307 within a second, each time."""
    raise_file_limit(4 * SLOWLORIS)  # both ends of every connection are in this process
    front = await start_front(nursery)  # header timeout 10 s: none of them times out during the test
    streams = await open_slowloris(front.port, SLOWLORIS)
    try:
        await trio.testing.wait_all_tasks_blocked()
        assert front.open_connections == SLOWLORIS
        waits = []
        async with trio.open_nursery() as tricklers:
            tricklers.start_soon(trickle, streams, 0.05)
            for i in range(5):
                await trio.sleep(0.05)  # let a trickle round land in between: not synchronisation
                started = trio.current_time()
                raw = await exchange(front.port, request_head(f"/n{i}", "Host: f", "Connection: close"))
                waited = trio.current_time() - started
                waits.append(waited)
                response = one_response(raw)
                assert response.status == 307
                assert response.header(b"location") == f"{front.backend.url}/n{i}".encode()
                # The bound ("served within a second"); on loopback it takes milliseconds.
                assert waited < 1.0, f"normal client waited {waited:.3f}s behind {SLOWLORIS} slow ones"
            tricklers.cancel_scope.cancel()
        print(f"normal client behind {SLOWLORIS} slowloris connections: served in max {max(waits):.4f}s")
        stats = front.dispatcher.running.front.stats
        assert (front.open_connections, stats.responses[408]) == (SLOWLORIS, 0)
    finally:
        for stream in streams:
            await stream.aclose()
    await trio.testing.wait_all_tasks_blocked()
    assert front.open_connections == 0


async def test_slowloris_connections_all_get_408_at_the_header_timeout_whatever_they_trickle(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """1,000 connections trickling a byte a second all get 408 and a close at exactly the header timeout."""
    raise_file_limit(4 * SLOWLORIS)
    front = await start_front(nursery, header_timeout=10.0)
    t0 = trio.current_time()
    streams = await open_slowloris(front.port, SLOWLORIS)
    assert trio.current_time() == t0  # loopback connects take no virtual time
    outcomes: list[tuple[float, bytes]] = []

    async def wait_for_408(stream: trio.SocketStream) -> None:
        raw = await read_until_close(stream, timeout=60)
        outcomes.append((trio.current_time(), raw))

    try:
        async with trio.open_nursery() as clients:
            clients.start_soon(trickle, streams, 1.0)
            async with trio.open_nursery() as readers:
                for stream in streams:
                    readers.start_soon(wait_for_408, stream)
                await trio.sleep(5)
                normal = await exchange(front.port, request_head("/normal", "Host: f", "Connection: close"))
                assert one_response(normal).status == 307
                assert trio.current_time() == t0 + 5  # served at once, in the middle of the trickle
            clients.cancel_scope.cancel()
    finally:
        for stream in streams:
            await stream.aclose()
    assert len(outcomes) == SLOWLORIS
    assert {at for at, _ in outcomes} == {t0 + 10.0}
    responses = [one_response(raw) for _, raw in outcomes]
    assert {(r.status, r.closes) for r in responses} == {(408, True)}
    await trio.testing.wait_all_tasks_blocked()
    assert front.open_connections == 0


# --- out of file descriptors (EMFILE) ---------------------------------------------------------------

LOW_FILE_LIMIT = 64


def _low_file_limit() -> None:
    """In the child, before exec: soft and hard limit both low, so the dispatcher cannot raise them."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (LOW_FILE_LIMIT, LOW_FILE_LIMIT))


async def test_out_of_descriptors_logs_emfile_survives_and_serves_again(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """RLIMIT_NOFILE 64, --max-connections 1000, 200 connections: EMFILE logged; after them, a 307, 0 open."""
    [backend] = await start_backends(nursery, 0)
    port, admin_port = unused_port(), unused_port()
    # No second health check during the flood: its connection would fail with EMFILE too.
    flags = ["--max-connections=1000", "--health-interval=3600", "--health-jitter=0"]
    command = dispatcher_command(port, admin_port, [backend.url], *flags)
    log_path = tmp_path / "stderr"
    with log_path.open("wb") as log_file:
        run = partial(trio.run_process, command, check=False, stderr=log_file, preexec_fn=_low_file_limit)
        process: trio.Process = await nursery.start(run)
        await poll_admin(admin_port, "/readyz", lambda status, _: status == 200)
        flood = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(200)]
        try:
            # Bounded polling of the child's log: another process offers no event to wait on.
            with trio.fail_after(10):
                while "EMFILE" not in log_path.read_text():
                    await trio.sleep(0.05)
            assert process.returncode is None
        finally:
            for stream in flood:
                await stream.aclose()
        raw = await exchange(port, request_head("/after", "Host: f", "Connection: close"), timeout=10)
        response = one_response(raw)
        assert response.status == 307
        assert response.header(b"location") == f"{backend.url}/after".encode()
        scrape = await poll_admin(
            admin_port, "/metrics", lambda _, text: metric(text, "dispatcher_open_connections") == 0
        )
        assert metric(scrape, "dispatcher_connections_total") >= 201
        assert process.returncode is None
        process.terminate()
        with trio.fail_after(10):
            status = await process.wait()
    log = log_path.read_text()
    assert status == 0, log[-2000:]
    assert "accept returned EMFILE" in log
    assert "connection handler failed" not in log


# --- request smuggling ------------------------------------------------------------------------------

# Closes the connection if it is ever answered, so that a failing test fails at once.
SMUGGLED = request_head("/smuggled", "Host: f", "Connection: close")


@pytest.mark.parametrize(
    ("attempt", "status"),
    [
        (request_head("/s", "Host: f", "Content-Length: 5, 6", method="POST") + b"hello!", 400),
        (request_head("/s", "Host: f", "Content-Length: 0", "Content-Length: 41", method="POST"), 400),
        (
            request_head("/s", "Host: f", "Transfer-Encoding: chunked", "Content-Length: 3", method="POST")
            + b"0\r\n\r\n",
            400,
        ),
        (request_head("/s", "Host: f", "Transfer-Encoding: chunked, gzip", method="POST"), 400),
        (request_head("/s", "Host: f", "Transfer-Encoding: gzip", method="POST") + b"0\r\n\r\n", 400),
        (
            request_head(
                "/s", "Host: f", "Transfer-Encoding: chunked", "Transfer-Encoding: chunked", method="POST"
            )
            + b"0\r\n\r\n",
            400,
        ),
        (
            request_head("/s", "Host: f", "Transfer-Encoding: gzip, chunked", method="POST") + b"0\r\n\r\n",
            501,
        ),
        (request_head("/s", "Host: f", "Transfer-Encoding : chunked", method="POST"), 400),
        (request_head("/s", "Host: f", "X-A: 1", " X-Folded: 2"), 400),
        (request_head("/s", "Host: f", "X-A: 1", "\tContent-Length: 0"), 400),
        (request_head("/s", "Host: f", "Host: g"), 400),
    ],
    ids=[
        "cl-list-conflict",
        "cl-lines-conflict",
        "te-then-cl",
        "te-chunked-not-last",
        "te-gzip-alone",
        "te-chunked-twice",
        "te-unknown-then-chunked",
        "te-space-before-colon",
        "obs-fold-space",
        "obs-fold-tab",
        "two-hosts",
    ],
)
async def test_smuggling_attempt_is_refused_and_what_follows_is_never_answered(
    nursery: trio.Nursery, attempt: bytes, status: int
) -> None:
    """An ambiguous request gets its error and a close; the request smuggled behind it gets nothing."""
    front = await start_front(nursery)
    async with await trio.open_tcp_stream("127.0.0.1", front.port) as stream:
        await stream.send_all(attempt + SMUGGLED)
        raw = await read_until_close(stream)
    response = one_response(raw)
    assert (response.status, response.closes) == (status, True)
    assert b"smuggled" not in raw


async def test_obs_fold_arriving_in_a_later_write_is_refused(nursery: trio.Nursery) -> None:
    """A fold line that starts a new write (the head arrived in pieces) still gets 400 and a close."""
    front = await start_front(nursery)
    async with await trio.open_tcp_stream("127.0.0.1", front.port) as stream:
        await stream.send_all(b"GET /s HTTP/1.1\r\nHost: f\r\nX-A: 1\r\n")
        await trio.testing.wait_all_tasks_blocked()  # the server has read the first piece alone
        await stream.send_all(b" X-Folded: 2\r\n\r\n" + SMUGGLED)
        raw = await read_until_close(stream)
    response = one_response(raw)
    assert (response.status, response.closes) == (400, True)


@pytest.mark.parametrize(
    "first",
    [
        request_head("/first", "Host: f"),
        request_head("/first", "Host: f", "Content-Length: 3", method="POST") + b"abc",
    ],
    ids=["after-get", "after-body"],
)
async def test_obs_fold_in_a_pipelined_request_is_refused(nursery: trio.Nursery, first: bytes) -> None:
    """README: obs-fold lines get 400 and close, also in the 2nd of two requests sent in one write."""
    front = await start_front(nursery)
    folded = request_head("/second", "Host: f", "X-A: 1", " X-Folded: 2")
    async with await trio.open_tcp_stream("127.0.0.1", front.port) as stream:
        await stream.send_all(first + folded + SMUGGLED)
        raw = await read_until_close(stream)
    responses, rest = parse_responses(raw)
    assert [(r.status, r.header(b"location")) for r in responses[:1]] == [
        (307, f"{front.backend.url}/first".encode())
    ]
    assert [(r.status, r.closes) for r in responses[1:]] == [(400, True)], raw
    assert rest == b""


# --- the Location: a configured backend's scheme, host and port, whatever the target -------------

HOSTILE_TARGETS = [
    "/@evil.example",
    "/@evil.example/x?y=1",
    "//@evil.example/",
    "/.//evil.example/",
    "/%2f%2fevil.example/",
    "/%5cevil.example",
    "/\\\\evil.example/x",
    "/%0d%0aLocation:%20http://evil.example/",
    "/x%0aSet-Cookie:%20a=b",
    "/x?%0d%0aSet-Cookie:%20a=b",
    "/x#@evil.example",
    "/?next=http://evil.example/",
    "http://evil.example?@{backend}/",
    "http://[::1]:443/x",
    "HTTP://EVIL.EXAMPLE:8443",
]
# Absolute targets whose authority is no host and port: userinfo (RFC 9110 §4.2.4), `\`, `#`, or empty.
REFUSED_ABSOLUTE_TARGETS = [
    "http://{backend}@evil.example/",
    "http://evil.example@{backend}/x",
    "http://{backend}:80@evil.example/",
    "http://evil.example\\@{backend}/x",
    "https://evil.example#@{backend}/",
    "https:///evil.example/x",
]


@pytest.mark.parametrize("template", HOSTILE_TARGETS)
async def test_hostile_target_never_moves_the_location_off_the_backend(
    nursery: trio.Nursery, template: str
) -> None:
    """`@` tricks, userinfo, `//`, `\\`, encoded CR/LF: the Location's scheme://host:port is the backend's."""
    front = await start_front(nursery)
    backend = urlsplit(front.backend.url)
    target = template.format(backend=backend.netloc)
    raw = await front.send(request_head(target, "Host: f", "Connection: close"))
    response = one_response(raw)
    assert response.status == 307, raw
    location = (response.header(b"location") or b"").decode()
    parsed = urlsplit(location)
    assert (parsed.scheme, parsed.netloc) == (backend.scheme, backend.netloc), location
    url = httpx.URL(location)  # a second parser, WHATWG-like, as browsers read it
    assert (url.scheme, url.host, url.port) == ("http", "127.0.0.1", backend.port), location
    assert {name for name, _ in response.headers} == {*REDIRECT_HEADERS, b"connection"}


@pytest.mark.parametrize("template", REFUSED_ABSOLUTE_TARGETS)
async def test_absolute_target_with_userinfo_or_no_host_is_refused(
    nursery: trio.Nursery, template: str
) -> None:
    """`http://a@b/`, `http://a\\@b/`, `https:///x`: 400 and a close with no Location, never a redirect."""
    front = await start_front(nursery)
    target = template.format(backend=urlsplit(front.backend.url).netloc)
    raw = await front.send(request_head(target, "Host: f") + SMUGGLED)
    response = one_response(raw)
    assert (response.status, response.closes, response.header(b"location")) == (400, True, None), raw


@pytest.mark.parametrize(
    "target",
    ["/a\rSet-Cookie: x", "/a\x00b", "/\x85", "/caf\u00e9", "evil.example/x", "@evil.example", "mailto:x@e"],
)
async def test_target_that_cannot_be_validated_is_never_redirected(
    nursery: trio.Nursery, target: str
) -> None:
    """Control bytes, non-ASCII or no path: 400 and a close, with no Location at all."""
    front = await start_front(nursery)
    raw = await front.send(f"GET {target} HTTP/1.1\r\nHost: f\r\n\r\n".encode())
    response = one_response(raw)
    assert (response.status, response.closes) == (400, True)
    assert response.header(b"location") is None


# --- no header injection: nothing from the request reaches a response header ----------------------

MARKER = "zz-injected"
WEIRD_HEADERS = [
    f"Host: {MARKER}.example",
    f"X-Forwarded-Host: {MARKER}.example",
    f"X-Forwarded-Proto: {MARKER}",
    f"X-Forwarded-Port: 1{len(MARKER)}",
    f"Forwarded: host={MARKER}.example;proto=https",
    f"X-Original-URL: /{MARKER}",
    f"X-Rewrite-URL: /{MARKER}",
    f"Origin: http://{MARKER}.example",
    f"Referer: http://{MARKER}.example/",
    f"Cookie: session={MARKER}",
    f"Authorization: Bearer {MARKER}",
    f"Location: http://{MARKER}.example/",
    f"Set-Cookie: {MARKER}=1",
    f"Content-Type: text/{MARKER}",
    f"X-Load: {len(MARKER)}",
    "X-Load-State: drain",
    f"Accept-Encoding: {MARKER}",
    f"Via: 1.1 {MARKER}",
]


@pytest.mark.parametrize(
    ("method", "target", "status"),
    [("GET", "/page?q=1", 307), ("POST", "/form", 307), ("CONNECT", "x:443", 405), ("GET", "*", 400)],
)
async def test_request_headers_never_reach_response_headers(
    nursery: trio.Nursery, method: str, target: str, status: int
) -> None:
    """With Host, X-Forwarded-*, Forwarded, Location, Set-Cookie... sent: none of it appears in the answer."""
    front = await start_front(nursery)
    raw = await front.send(request_head(target, *WEIRD_HEADERS, "Connection: close", method=method))
    response = one_response(raw)
    assert response.status == status
    assert MARKER.encode() not in raw
    head = raw.split(b"\r\n\r\n", 1)[0].lower()
    assert b"set-cookie" not in head and b"forwarded" not in head
    if status == 307:
        assert response.header(b"location") == f"{front.backend.url}{target}".encode()
        assert {name for name, _ in response.headers} == {*REDIRECT_HEADERS, b"connection"}


async def test_keep_alive_redirect_has_exactly_location_length_and_date(nursery: trio.Nursery) -> None:
    """A kept-alive 307 carries exactly location, content-length and date, whatever the request sent."""
    front = await start_front(nursery)
    async with await trio.open_tcp_stream("127.0.0.1", front.port) as stream:
        await stream.send_all(request_head("/k?a=b", *WEIRD_HEADERS))
        [response] = await receive_responses(stream, 1)
    assert [name for name, _ in response.headers] == [b"location", b"content-length", b"date"]
    assert response.header(b"location") == f"{front.backend.url}/k?a=b".encode()
    assert response.header(b"content-length") == b"0"
