"""Load streams (issue 6): the event-stream parse, and real streaming backends on loopback.

The backends here answer the health check with `text/event-stream` and send what each test pushes:
events, heartbeats, silence, the end of the stream. Intervals run in virtual time (`autojump_clock`):
an event sent over loopback takes no virtual time, and the stream reader applies it at once, not on
the sweep's 20 ms grid, so the tests assert the report's time exactly.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import h11
import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from dispatcher.core.health_state import Admin
from dispatcher.core.pool import Pool
from dispatcher.core.report import BadLoad, Report, parse_event, parse_event_fully
from dispatcher.net.health import HealthChecks
from dispatcher.net.health.stream import (
    GATHER,
    MAX_PASS_GAP,
    MIN_PASS_GAP,
    LoadStream,
    StreamFailed,
    pass_gap,
)
from dispatcher.protocol.answer import AnswerReader
from dispatcher.protocol.sse import MAX_LINE, BadStream, EventReader
from dispatcher.settings import config
from tests.helpers import (
    admin_get,
    health,
    metric,
    pool_for,
    record_checks,
    settings_for,
    start_dispatcher,
    wait_for,
    wait_for_state,
)

READ = 0.02  # a polled answer is applied at the next step of the sweep's grid


# --- the parse ---------------------------------------------------------------------------------------


def test_events_end_with_a_blank_line_in_any_line_ending() -> None:
    """LF, CRLF and CR all end lines; a blank line dispatches; a CRLF split across reads is one end."""
    reader = EventReader()
    assert reader.feed(b"data: 1\n\ndata: 2\r\n\r\ndata: 3\r\r") == ["1", "2", "3"]
    assert reader.feed(b"data: 4\r") == []
    assert reader.feed(b"\n\r\n") == ["4"]


def test_comments_are_heard_but_are_no_events() -> None:
    """A `:` line is a heartbeat: heard, nothing dispatched."""
    reader = EventReader()
    assert reader.feed(b":\n\n") == []
    assert reader.heard
    assert reader.feed(b"") == [] and not reader.heard


def test_bytes_that_are_not_utf8_read_as_replacement_characters() -> None:
    """The standard decodes a stream with UTF-8 decode (U+FFFD for a bad byte), and a browser keeps
    such a stream: a comment with a Latin-1 byte is a heartbeat, not the stream's end."""
    reader = EventReader()
    assert reader.feed(b"data: 2\n\n: caf\xe9\n") == ["2"]
    assert reader.feed(b": caf\xe9\n") == [] and reader.heard
    assert reader.feed(b"data: \xff\n\n") == ["\ufffd"]  # data: a bad load (parse_event's word)


def test_data_lines_join_and_other_event_types_are_skipped() -> None:
    """Two data lines join with LF; `event: other` is not ours; `event: load` and `id`/`retry` are."""
    reader = EventReader()
    text = b'\xef\xbb\xbfdata: {"load":\ndata: 3}\n\nevent: other\ndata: 9\n\n'
    text += b"event: load\nid: 7\nretry: 5\ndata:8\n\n"
    assert reader.feed(text) == ['{"load":\n3}', "8"]


def test_an_event_split_anywhere_is_read_whole() -> None:
    """Bytes arrive in any pieces: the events are the same."""
    text = b"data: 12\n\n:\n\ndata: 13\n\n"
    for cut in range(len(text)):
        reader = EventReader()
        assert reader.feed(text[:cut]) + reader.feed(text[cut:]) == ["12", "13"]


def test_a_line_past_the_limit_breaks_the_stream() -> None:
    """A stream that never ends its line cannot make the dispatcher hold more than MAX_LINE."""
    with pytest.raises(BadStream):
        EventReader().feed(b"data: " + b"1" * MAX_LINE)


def test_event_data_is_a_load_report_in_the_forms_the_health_body_takes() -> None:
    """A number, or a JSON object with load and state; anything not a finite number >= 0 is bad."""
    assert (parse_event("4.5").load, parse_event("4.5").drain) == (4.5, False)
    assert (parse_event('{"load": 2, "state": "drain"}').load, parse_event('{"state": "drain"}').drain) == (
        2.0,
        True,
    )
    for bad in ("nan", "inf", "-1", "", "busy"):
        with pytest.raises(BadLoad):
            parse_event(bad)


_EVENT_TEXT = st.one_of(
    st.from_regex(r"\A\s?[0-9]{1,17}(\.[0-9]{0,17})?\s?\Z"),
    st.from_regex(r'\A\{ ?"load" ?: ?-?[0-9]{1,17}(\.[0-9]{0,3})?(e[0-9])? ?(, "state": "drain")?\}\Z'),
    st.text(alphabet='0123456789.{}":load -e\t\u00a0', max_size=20),
)


def _parsed(text: str, parse: Callable[[str], Report]) -> Report | str:
    try:
        return parse(text)
    except BadLoad:
        return "bad"


@given(_EVENT_TEXT)
def test_the_shortcut_for_usual_events_reads_what_the_full_parse_reads(text: str) -> None:
    """A bare number and `{"load": N}` skip json: the same figure, and nothing the full parse refuses."""
    assert _parsed(text, parse_event) == _parsed(text, parse_event_fully)


_STREAM_BYTES = st.lists(
    st.sampled_from(
        [
            b"data: 3\n\n",
            b"data:7\n\n",
            b'data: {"load": 1}\n\n',
            b": hb\n\n",
            b"event: x\n",
            b"data: 1\r\n\r\n",
            b"data: 2\n",
            b"\n",
            b"\r",
            b"data: \xc3\n\n",
            b"id: 4\n",
            b"\xef\xbb\xbf",
        ]
    ),
    max_size=8,
)


@given(_STREAM_BYTES)
def test_whole_events_read_at_once_as_they_read_byte_by_byte(pieces: list[bytes]) -> None:
    """One read of a whole event takes a shortcut past the line machinery; bytes fed one at a time never
    do: both must give the same events, and fail on the same bytes."""
    whole, single = EventReader(), EventReader()
    for piece in pieces:
        try:
            got: list[str] | str = whole.feed(piece)
        except BadStream:
            got = "bad"
        wanted: list[str] | str = []
        try:
            for i in range(len(piece)):
                assert isinstance(wanted, list)
                wanted += single.feed(piece[i : i + 1])
        except BadStream:
            wanted = "bad"
        assert got == wanted
        if got == "bad":
            return


def test_only_a_200_event_stream_is_a_stream() -> None:
    """A 200 with text/event-stream is whole at its head, a stream. A 503 with the same type is no
    stream: a failed answer, decided at its head (a body that never ends must not turn a 503 into
    a timeout), whose connection is kept only once its body has ended."""
    reader = AnswerReader()
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
    head += b"transfer-encoding: chunked\r\n\r\n"
    assert reader.feed(head + b"8\r\ndata: 1\n\r\n")
    assert (reader.streaming, reader.take(), reader.reusable) == (True, b"data: 1\n", False)
    other = AnswerReader()
    assert other.feed(
        b"HTTP/1.1 503 Busy\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    assert (other.status, other.streaming, other.reusable) == (503, False, False)
    other.feed(b"8\r\ndata: 1\n\r\n0\r\n\r\n")
    assert (other.body, other.reusable) == (b"", True)


def test_stream_is_silent_past_its_deadline_and_heartbeats_move_it() -> None:
    """The first event is due within the check's timeout; after it, any line moves the deadline on."""
    answer = AnswerReader()
    answer.feed(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n")
    stream = LoadStream("b", answer, started=10.0, timeout=1.0)
    assert stream.deadline == 11.0
    assert stream.feed(b":\n\n", 10.5, silence=3.0) == []
    assert stream.deadline == 11.0  # a heartbeat is no first event
    assert [r.load for r in stream.feed(b"data: 2\n\n", 10.6, silence=3.0)] == [2.0]
    stream.first = False
    assert stream.feed(b":\n\n", 12.0, silence=3.0) == [] and stream.deadline == 15.0
    assert stream.expired(15.0).reason == "timeout"
    with pytest.raises(StreamFailed, match="ended"):
        answer.feed(b"")
        stream.feed(b"", 16.0, silence=3.0)


# --- real streaming backends -------------------------------------------------------------------------


@dataclass(eq=False)
class StreamingBackend:
    """A backend whose health path answers with a load stream that the test writes to.

    `plain`: it ignores `Accept` and answers an ordinary `200` with `X-Load` (a backend that does not
    stream). `events_body`: it answers `text/event-stream` with a Content-Length and these bytes, a
    whole body of events (Flask's `Response(..., mimetype="text/event-stream")`). `send()` writes bytes
    to the open stream; `end()` finishes it (the last chunk, then the connection closes)."""

    name: str
    first: bytes = b"data: 1\n\n"
    plain: bool = False
    events_body: bytes | None = None
    tls: ssl.SSLContext | None = None
    port: int = 0
    connections: int = 0
    accepts: list[bytes] = field(default_factory=list)
    paths: list[bytes] = field(default_factory=list)
    _outbox: trio.MemorySendChannel[bytes | None] | None = None
    connected: trio.Event = field(default_factory=trio.Event)
    closed: trio.Event = field(default_factory=trio.Event)

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        if self.tls is None:
            await trio.serve_listeners(self._handle, listeners)
        else:
            tls = [trio.SSLListener(listener, self.tls, https_compatible=True) for listener in listeners]
            await trio.serve_listeners(self._handle, tls)

    async def send(self, data: bytes) -> None:
        assert self._outbox is not None, "no stream is open"
        await self._outbox.send(data)

    async def end(self) -> None:
        assert self._outbox is not None
        await self._outbox.send(None)

    async def _handle(self, stream: trio.abc.Stream) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                    continue
                if not isinstance(event, h11.Request):
                    return
                accept = dict(event.headers).get(b"accept", b"")
                self.accepts.append(accept)
                self.paths.append(event.target)
                if self.plain or self.events_body is not None or b"text/event-stream" not in accept:
                    await self._answer_plain(stream, conn)
                    continue
                await self._stream(stream, conn)
                return
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    async def _answer_plain(self, stream: trio.abc.Stream, conn: h11.Connection) -> None:
        while not isinstance(conn.next_event(), h11.EndOfMessage):
            pass
        body = self.events_body or b""
        headers = [("x-load", "5"), ("content-length", str(len(body)))]
        if self.events_body is not None:
            headers = [("content-type", "text/event-stream"), ("content-length", str(len(body)))]
        await stream.send_all(conn.send(h11.Response(status_code=200, headers=headers)))
        if body:
            await stream.send_all(conn.send(h11.Data(data=body)))
        await stream.send_all(conn.send(h11.EndOfMessage()))
        conn.start_next_cycle()

    async def _stream(self, stream: trio.abc.Stream, conn: h11.Connection) -> None:
        headers = [("content-type", "text/event-stream"), ("transfer-encoding", "chunked")]
        send, receive = trio.open_memory_channel[bytes | None](100)
        self._outbox = send
        self.connections += 1
        await stream.send_all(conn.send(h11.Response(status_code=200, headers=headers)))
        if self.first:
            await stream.send_all(conn.send(h11.Data(data=self.first)))
        self.connected.set()
        self.closed = trio.Event()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_close, stream, nursery.cancel_scope)
                async for data in receive:
                    if data is None:
                        await stream.send_all(conn.send(h11.EndOfMessage()))
                        break
                    await stream.send_all(conn.send(h11.Data(data=data)))
                nursery.cancel_scope.cancel()
        finally:
            self.closed.set()

    async def _watch_close(self, stream: trio.abc.Stream, scope: trio.CancelScope) -> None:
        """The dispatcher closed the stream: the next read says so."""
        with contextlib.suppress(trio.BrokenResourceError):
            while await stream.receive_some(65536):
                pass
        scope.cancel()


async def streaming(nursery: trio.Nursery, backend: StreamingBackend, **settings: Any) -> Pool:
    """A pool over `backend`, checked by the real health checks, once its stream is open and up."""
    await nursery.start(backend.serve)
    checks = health(**{"interval": 2.0, "timeout": 1.0, **settings})
    pool = pool_for([backend], checks)  # type: ignore[list-item]
    nursery.start_soon(HealthChecks(pool).run)
    await wait_for_state(pool, backend.name, "up")
    return pool


async def test_every_check_offers_a_stream(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """The check asks `Accept: text/event-stream, */*;q=0.5` (so no backend answers 406)."""
    backend = StreamingBackend("s1", plain=True)
    await streaming(nursery, backend)
    assert backend.accepts[0] == b"text/event-stream, */*;q=0.5"


async def test_each_event_is_a_report_applied_as_it_arrives(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """The first event brings the backend up with its load; later ones are fresh reports at once,
    off the sweep's grid, and the check counters do not count them."""
    backend = StreamingBackend("s1", first=b"data: 3\n\n")
    pool = await streaming(nursery, backend)
    state = pool.by_name["s1"]
    assert (state.load, state.source, state.stream_connections, state.checks_passed) == (3.0, "stream", 1, 1)
    await trio.sleep(0.537)
    sent = trio.current_time()
    await backend.send(b'data: {"load": 7}\n\n')
    await wait_for(pool, lambda: state.load == 7.0)
    assert state.report is not None and state.report.at == sent
    assert (state.stream_events, state.checks_passed) == (2, 1)  # the opening event counts too


async def test_heartbeats_keep_a_quiet_stream_up_and_each_interval_passes(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """A stream that only sends `:` comments stays up; each check of the schedule passes without a
    request, so checks_total keeps counting one an interval."""
    backend = StreamingBackend("s1")
    pool = await streaming(nursery, backend)
    state = pool.by_name["s1"]
    for _ in range(5):
        await trio.sleep(2.0)
        await backend.send(b":\n\n")
    assert (state.state, state.checks_failed, backend.connections) == ("up", 0, 1)
    assert state.checks_passed == 6  # the one that opened it, and one per interval since


async def test_silence_past_interval_and_timeout_fails_and_reconnects(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """Nothing, not even a heartbeat, for interval + timeout: a failed check (timeout), at that very
    time; the next check connects again and gets a new stream."""
    backend = StreamingBackend("s1")
    pool = await streaming(nursery, backend)
    state = pool.by_name["s1"]
    heard = trio.current_time()
    seen = record_checks(pool)
    await wait_for(pool, lambda: state.checks_failed == 1)
    failure = next(check for check in seen if not check.passed)
    assert (failure.at, failure.reason) == (heard + 2.0 + 1.0, "timeout")
    assert state.last_check is not None and "silent" in state.last_check.detail
    await wait_for(pool, lambda: backend.connections == 2)
    await wait_for(pool, lambda: state.checks_passed >= 3)
    assert state.state == "up"  # one failure of fall 3


async def test_end_of_stream_fails_the_check_and_reconnects(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """A stream the backend ends is a failed check (protocol) at once; the next check opens another."""
    backend = StreamingBackend("s1")
    pool = await streaming(nursery, backend)
    state = pool.by_name["s1"]
    ended = trio.current_time()
    await backend.end()
    await wait_for(pool, lambda: state.checks_failed == 1)
    assert state.last_check_at == ended
    assert state.last_check is not None and state.last_check.reason == "protocol"
    await wait_for(pool, lambda: backend.connections == 2)


async def test_a_reload_that_moves_the_health_path_ends_the_stream_of_the_old_one(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """A live stream answers every check by living: a reload's new health path was never asked, for as
    long as the old stream lasted. At the next check the old stream ends (no failed check) and the new
    path is asked, and streams."""
    backend = StreamingBackend("s1")
    pool = await streaming(nursery, backend)
    state = pool.by_name["s1"]
    passed = state.checks_passed
    pool.reconcile([replace(state.spec, health_overrides=(("path", "/v2/health"),))])
    with trio.fail_after(10):  # virtual seconds
        await wait_for(pool, lambda: backend.connections == 2)
        assert backend.paths == [b"/health", b"/v2/health"]
        await wait_for(pool, lambda: state.checks_passed > passed and state.source == "stream")
    # Before, the old stream lived on until it fell silent: a failed check, and only then the new path.
    assert (state.checks_failed, state.state) == (0, "up")


async def test_a_stream_that_keeps_breaking_is_warned_about_once_a_minute(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Each stream ends after its first event: a pass, then a failure, in turn, so the backend never
    falls and no state change is logged. A warning says so, once a minute, with how many it left out."""
    caplog.set_level(logging.WARNING, logger="dispatcher.health")
    backend = StreamingBackend("s1")
    pool = await streaming(nursery, backend)
    state = pool.by_name["s1"]
    for connections in range(1, 40):
        await wait_for(pool, lambda: backend.connections == connections)  # noqa: B023
        await backend.end()
    lines = [r.getMessage() for r in caplog.records if "load stream failed" in r.getMessage()]
    assert state.state == "up" and state.checks_failed >= 38
    assert 2 <= len(lines) <= 3, lines
    assert lines[0].startswith("backend s1: load stream failed: protocol (load stream ended)")
    assert "more in the last 60s" in lines[1]


async def test_a_backend_that_ignores_accept_is_polled_as_before(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """An ordinary answer to the offer is an ordinary check, every interval, on the grid."""
    backend = StreamingBackend("s1", plain=True)
    pool = await streaming(nursery, backend)
    state = pool.by_name["s1"]
    await wait_for(pool, lambda: state.checks_passed == 3)
    assert (state.source, state.load, backend.connections, state.stream_events) == ("poll", 5.0, 0, 0)


@pytest.mark.parametrize(
    ("body", "load", "reason"),
    [(b"data: 1\n\ndata: 3\n\n", 3.0, None), (b"data: 2", None, "bad_load"), (b"", None, "bad_load")],
    ids=["last event", "no whole event", "empty"],
)
async def test_an_event_stream_with_a_length_is_a_polled_answer_its_last_event_the_load(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, body: bytes, load: float, reason: str
) -> None:
    """A body of events with a Content-Length ends by itself: read as a stream, it ended at once every
    time, a failed check every other interval that never took the backend down. It is a polled check,
    on one kept-alive connection, whose load is its last event's; without a whole event it fails."""
    backend = StreamingBackend("s1", events_body=body)
    await nursery.start(backend.serve)
    pool = pool_for([backend], health(interval=2.0, timeout=1.0))  # type: ignore[list-item]
    nursery.start_soon(HealthChecks(pool).run)
    state = pool.by_name["s1"]
    await wait_for(pool, lambda: state.checks_passed + state.checks_failed == 4)
    assert state.last_check is not None and state.last_check.reason == reason
    if reason is None:
        assert (state.source, state.load, state.checks_failed, backend.connections) == ("poll", load, 0, 0)


async def test_a_drain_asked_on_the_stream_applies_at_once_and_ends_with_a_ready_event(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """`"state": "drain"` in an event drains the backend now; an event without it ends the drain. Each
    change is logged in one line, as a check's answer's would be."""
    backend = StreamingBackend("s1")
    pool = await streaming(nursery, backend)
    lines: list[str] = []
    pool.listeners.append(
        lambda b, before, after, result: lines.append(f"{before}->{after}") if result else None
    )
    state = pool.by_name["s1"]
    await backend.send(b'data: {"load": 2, "state": "drain"}\n\n')
    await wait_for(pool, lambda: state.state == "draining")
    assert pool.choose() is None
    await trio.sleep(2.5)  # an interval's check passes without undoing it
    assert state.state == "draining"
    await backend.send(b'data: {"load": 2}\n\n')
    await wait_for(pool, lambda: state.state == "up")
    assert pool.choose() is state
    assert lines == ["up->draining", "draining->up"]  # what log_transition is told, with a result


async def test_a_bad_load_event_fails_the_check(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """An event whose load is not a finite number >= 0 fails as `bad_load` and the stream is closed."""
    backend = StreamingBackend("s1")
    pool = await streaming(nursery, backend)
    state = pool.by_name["s1"]
    await backend.send(b"data: nan\n\n")
    await wait_for(pool, lambda: state.checks_failed == 1)
    assert state.failures["bad_load"] == 1
    await backend.closed.wait()


async def test_no_first_event_within_the_timeout_fails_the_check(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """A stream that opens but says nothing: the check that opened it times out; the backend stays
    down until a stream brings a load."""
    backend = StreamingBackend("s1", first=b"")
    await nursery.start(backend.serve)
    checks = health(interval=2.0, timeout=1.0)
    pool = pool_for([backend], checks)  # type: ignore[list-item]
    seen = record_checks(pool)
    nursery.start_soon(HealthChecks(pool).run)
    await wait_for(pool, lambda: len(seen) == 1)
    assert (seen[0].passed, seen[0].reason, seen[0].duration) == (False, "timeout", 1.0)
    assert pool.by_name["s1"].state == "down"


async def test_rise_counts_the_intervals_of_a_live_stream(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """Down, a backend needs `rise` passes: the event that opens its stream, then one per interval."""
    backend = StreamingBackend("s1", first=b"")
    await nursery.start(backend.serve)
    checks = health(interval=2.0, timeout=1.0, rise=2)
    pool = pool_for([backend], checks)  # type: ignore[list-item]
    state = pool.by_name["s1"]
    nursery.start_soon(HealthChecks(pool).run)
    await wait_for(pool, lambda: state.checks_failed == 1)  # no first event: down
    backend.connected = trio.Event()
    await backend.connected.wait()  # the next check's stream
    await backend.send(b"data: 1\n\n")
    await wait_for(pool, lambda: state.checks_passed == 1)
    assert state.state == "down"
    up_at = await wait_for_state(pool, "s1", "up")
    assert state.checks_passed == 2 and up_at == pytest.approx(state.last_check_at)


async def maint_closes_at_once_and_ready_reopens(pool: Pool, backend: StreamingBackend) -> None:
    """Maint closes the backend's stream within the instant (checks a minute apart: `streaming(...,
    interval=60.0)`), and ready opens a second one and brings it up."""
    state = pool.by_name[backend.name]
    asked = trio.current_time()
    pool.set_admin(state, Admin.MAINT)
    await backend.closed.wait()
    assert trio.current_time() - asked < 1.0  # the next check is a minute away
    pool.set_admin(state, Admin.READY)
    await wait_for(pool, lambda: backend.connections == 2)
    await wait_for_state(pool, backend.name, "up")


async def test_maint_closes_the_stream_and_ready_opens_a_new_one(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """No checks in maint: the stream is closed at once (it was at the next check's time); back to
    ready, a new one opens, even when the ready comes straight after."""
    backend = StreamingBackend("s1")
    pool = await streaming(nursery, backend, interval=60.0)
    await maint_closes_at_once_and_ready_reopens(pool, backend)
    state = pool.by_name["s1"]
    pool.set_admin(state, Admin.MAINT)
    pool.set_admin(state, Admin.READY)  # at once: the old stream must not stand for the new check
    await wait_for(pool, lambda: backend.connections == 3)
    await wait_for_state(pool, "s1", "up")


async def test_metrics_and_the_admin_api_say_how_the_load_arrives(nursery: trio.Nursery) -> None:
    """A streaming backend shows source stream, its stream connections and events, and its drain
    rate, in /metrics and in /backends."""
    backend = StreamingBackend("s1")
    await nursery.start(backend.serve)
    specs = (config.parse_backend("test", backend.url, name="s1"),)
    settings = replace(settings_for([]), backends=specs)
    dispatcher = await start_dispatcher(nursery, settings)
    state = dispatcher.pool.by_name["s1"]
    with trio.fail_after(10):
        await wait_for_state(dispatcher.pool, "s1", "up")
        await backend.send(b"data: 2\n\n")
        await wait_for(dispatcher.pool, lambda: state.stream_events == 2)  # the opening one, then this
    text = (await admin_get(dispatcher, "/metrics")).text
    assert metric(text, 'dispatcher_backend_load_source{backend="s1",pool="default",source="stream"}') == 1.0
    assert metric(text, 'dispatcher_backend_load_source{backend="s1",pool="default",source="poll"}') == 0.0
    assert metric(text, 'dispatcher_load_stream_connections_total{backend="s1",pool="default"}') == 1.0
    assert metric(text, 'dispatcher_load_stream_events_total{backend="s1",pool="default"}') == 2.0
    assert metric(text, 'dispatcher_backend_drain_rate{backend="s1",pool="default"}') == pytest.approx(
        state.rate
    )
    entry = (await admin_get(dispatcher, "/backends/s1")).json()
    assert (entry["load_source"], entry["load"]) == ("stream", 2.0)


async def test_debug_logs_checks_and_stream_events_at_most_once_a_second_per_backend(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """`--log-level debug` says each check's result and load and each stream event, rate-limited:
    a line a second per backend at most, saying how many were left out."""
    caplog.set_level(logging.DEBUG, logger="dispatcher.health")
    backend = StreamingBackend("s1", first=b"data: 3\n\n")
    await streaming(nursery, backend, interval=0.5)
    start = trio.current_time()
    for i in range(40):  # 40 events in 4 s
        await backend.send(f"data: {i}\n\n".encode())
        await trio.sleep(0.1)
    lines = [
        r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG and "backend s1" in r.message
    ]
    assert lines[0].startswith("backend s1: check passed in") and "load 3" in lines[0]
    assert 4 <= len(lines) <= 6
    assert any("stream event: load" in line and "more since the last line" in line for line in lines)
    assert trio.current_time() - start == pytest.approx(4.0)


def test_the_pass_gap_grows_with_what_a_pass_finds_and_is_bounded() -> None:
    """A few streams with bytes: the next pass 1 ms later; many: later, 4 ms at most; never below."""
    assert pass_gap(1) == pass_gap(GATHER) == MIN_PASS_GAP
    gaps = [pass_gap(found) for found in range(1, 200)]
    assert gaps == sorted(gaps)
    assert pass_gap(2 * GATHER) == 2 * MIN_PASS_GAP
    assert max(gaps) == MAX_PASS_GAP == pass_gap(10_000)


class _Told:
    """A Delivery that writes down what it is told, in order."""

    def __init__(self) -> None:
        self.told: list[tuple[str, object]] = []

    def reports(self, stream: LoadStream, reports: list[Report], now: float) -> None:
        self.told.append(("reports", [report.load for report in reports]))

    def heartbeat(self, stream: LoadStream, now: float) -> None:
        self.told.append(("heartbeat", now))

    def failed(self, stream: LoadStream, failure: StreamFailed, now: float) -> None:
        self.told.append(("failed", failure.reason))


HEAD_CHUNKED = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


@pytest.mark.parametrize(
    ("head", "body", "reason"),
    [
        (HEAD_CHUNKED, b"9\r\ndata: 4\n\n\r\n0\r\n\r\n", "protocol"),  # the last chunk in the same read
        (HEAD_CHUNKED, b"9\r\ndata: 4\n\n\r\na\r\ndata: \xff\xfe\n\n\r\n", "bad_load"),  # then not UTF-8
        (
            HEAD_CHUNKED,
            b"9\r\ndata: 4\n\n\r\n" + b"%x\r\n" % (MAX_LINE + 1) + b"x" * (MAX_LINE + 1) + b"\r\n",
            "protocol",
        ),  # a long line
        (HEAD_CHUNKED, b"9\r\ndata: 4\n\n\r\nd\r\ndata: hello\n\n\r\n", "bad_load"),  # then a bad load
        (HEAD_CHUNKED, b"9\r\ndata: 4\n\n\r\n2\x00garbage", "protocol"),  # then bad framing
    ],
    ids=["chunked end", "not utf-8", "long line", "bad load", "bad framing"],
)
def test_events_read_whole_before_the_end_or_bad_bytes_in_the_same_read_are_reports(
    head: bytes, body: bytes, reason: str
) -> None:
    """A first event and the stream's end (or bytes it cannot read) in one packet: the event is a
    report, delivered first (the check that opened the stream passes with it), then the failure."""
    answer = AnswerReader()
    answer.feed(head)
    stream, told = LoadStream("b", answer, started=10.0, timeout=1.0), _Told()
    assert not stream.deliver(body, 10.1, 3.0, told)
    assert told.told == [("reports", [4.0]), ("failed", reason)]


async def test_a_heartbeat_confirms_the_last_report_so_a_held_load_does_not_drain_away(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """A backend holding 6 long requests sends `data: 6` once, then only heartbeats: its load has not
    changed. Each heartbeat takes the report again as of its arrival, so the estimate stands at 6
    and the load's age restarts; without them it drains as any old report does."""
    backend = StreamingBackend("s1")
    pool = await streaming(nursery, backend)
    state = pool.by_name["s1"]
    await backend.send(b"data: 6\n\n")
    await wait_for(pool, lambda: state.load == 6.0)
    events = state.stream_events
    drained = pool.effective_load(state, trio.current_time() + 5.0)  # where 5 s would take it unheard
    assert drained < 5.0
    for _ in range(5):
        await trio.sleep(1.0)
        reports = state.reports
        await backend.send(b":\n\n")
        await wait_for(pool, lambda: state.reports == reports + 1)  # noqa: B023 (awaited at once)
    now = trio.current_time()
    assert pool.effective_load(state, now) == pytest.approx(6.0, abs=0.1)
    assert state.report is not None and now - state.report.at < 0.1
    assert state.stream_events == events  # a heartbeat is no event
