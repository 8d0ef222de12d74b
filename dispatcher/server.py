"""The front door's transport: trio streams in, h11 events through, replies out.

Owns: each client connection's life (keep-alive, pipelining, request bodies, timeouts, closing),
the connection and response counters, and graceful shutdown of connections.
Rules: decisions come from `http.reply_for`; nothing here chooses a backend or formats a reply.
One connection's failure is caught in its own handler and never reaches another client.

Timeouts: one cancel scope per connection whose deadline moves, instead of a scope per receive.
A request head must be complete within `header_timeout` of its first byte (or of the connection's
start), an idle keep-alive connection is closed after `keepalive_timeout`; a client that stops
reading our answers runs into the same deadline.

Request bodies are never forwarded or buffered: the 307 goes out as soon as the head is read. With
`Expect: 100-continue` the client has not sent the body and will send it to the backend, so we close.
Otherwise a body up to `max_discard` bytes is read and dropped to keep the connection; a larger one
closes it. Closing while the client may still be sending is a lingering close (send FIN, drain, then
close, as nginx's `lingering_close`), or the kernel's RST could destroy the 307 before it is read.
"""

from __future__ import annotations

import logging
import time
from bisect import bisect_left
from dataclasses import dataclass, field

import h11
import trio

from dispatcher.config import Settings
from dispatcher.http import DateHeader, Reply, folded, head_size, reply_for, screen, text_reply
from dispatcher.pool import Pool

log = logging.getLogger("dispatcher.server")

# h11's own default (16 KiB) for the request head; past it the client gets 431. nginx's
# large_client_header_buffers is 4 x 8k, HAProxy's tune.bufsize 16k: the same order.
MAX_HEAD = 16 * 1024
RECEIVE_SIZE = 64 * 1024
# nginx lingering_timeout: how long a closing connection waits for the client's remaining bytes.
LINGER_SECONDS = 5.0
_CLOSE = (b"connection", b"close")
# Status codes the front door can send, created at start so that every series exists.
RESPONSE_CODES = (200, 307, 400, 405, 408, 413, 414, 431, 501, 503, 505, 508)
# Request duration (head read to answer written) buckets: a redirect takes tens of microseconds when the
# loop is free; milliseconds mean the event loop is saturated or the client reads slowly.
DURATION_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


@dataclass(slots=True)
class ServerStats:
    """Counters of the front door, read by metrics at scrape time (plain ints: no lock per request)."""

    open_connections: int = 0
    connections_total: int = 0
    loops: int = 0  # health checks of a dispatcher that reached this front door (508)
    responses: dict[int, int] = field(default_factory=lambda: dict.fromkeys(RESPONSE_CODES, 0))
    # Per bucket of DURATION_BUCKETS (plus +Inf last), not cumulative; metrics accumulates at scrape.
    duration_counts: list[int] = field(default_factory=lambda: [0] * (len(DURATION_BUCKETS) + 1))
    duration_sum: float = 0.0

    def observe(self, started: list[float], now: float) -> None:
        """Record the durations of the requests answered by one write."""
        counts = self.duration_counts
        for start in started:
            duration = now - start
            self.duration_sum += duration
            counts[bisect_left(DURATION_BUCKETS, duration)] += 1
        started.clear()


@dataclass(eq=False, slots=True)
class _Client:
    scope: trio.CancelScope
    idle: bool = False  # kept alive, waiting for its next request: shutdown may close it at once
    started: bool = False  # bytes of the current request have arrived: a timeout then deserves a 408


class FrontDoor:
    """Serves client connections: every request is answered from the pool's choice."""

    def __init__(self, settings: Settings, pool: Pool) -> None:
        self.settings = settings
        self.pool = pool
        self.stats = ServerStats()
        self.shutting_down = False
        self._clients: set[_Client] = set()
        self._date = DateHeader()
        # One slot per open connection, taken by the listener before accept (listen.CappedListener).
        self.slots = trio.Semaphore(settings.max_connections)

    def begin_shutdown(self) -> None:
        """Answer what is in flight with `Connection: close`; close idle keep-alive connections now."""
        self.shutting_down = True
        for client in self._clients:
            if client.idle:
                client.scope.cancel()

    async def handle(self, stream: trio.SocketStream, counted: bool = True) -> None:
        """One client connection, from accept to close; never raises.

        `counted`: the connection holds one of `slots` (taken by the listener) to give back at close.
        """
        self.stats.open_connections += 1
        self.stats.connections_total += 1
        client = _Client(trio.CancelScope())
        self._clients.add(client)
        try:
            await self._serve(stream, client)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away: nothing to answer
        except Exception:
            log.exception("connection handler failed; closing that connection only")
        finally:
            self._clients.discard(client)
            self.stats.open_connections -= 1
            await trio.aclose_forcefully(stream)
            if counted:
                self.slots.release()

    async def _serve(self, stream: trio.SocketStream, client: _Client) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        client.scope.deadline = trio.current_time() + self.settings.header_timeout
        with client.scope:
            linger = await self._converse(stream, conn, client)
            if linger:
                await _lingering_close(stream)
            return
        if client.started and conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            # Deadline hit in the middle of a request head: RFC 9110 §15.5.9.
            await self._last_word(stream, conn, text_reply(408, "request timeout"))

    async def _converse(self, stream: trio.SocketStream, conn: h11.Connection, client: _Client) -> bool:
        """Exchange until the connection should close; True when the client may still be sending.

        Answers accumulate in `out` while h11 has complete requests buffered (pipelining) and go out
        in one send when it needs more data: one system call per batch, not per request.
        """
        out = bytearray()
        started: list[float] = []  # when each request of the batch in `out` was read
        stats = self.stats

        async def flush() -> None:
            if out:
                await stream.send_all(out)
                out.clear()
                stats.observe(started, trio.current_time())

        discarded = 0
        # Bytes received while a head was being read. h11 bounds only incomplete heads, so a head sent
        # in pieces could pass whole; past MAX_HEAD received, the parsed head is measured.
        head_bytes = 0
        kept_alive = False  # a first request's head deadline runs from the accept, not its 1st byte
        settings = self.settings
        scope = client.scope
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as error:
                out += self._error_bytes(conn, error)
                await flush()
                return True
            if event is h11.NEED_DATA:
                await flush()
                waiting = conn.their_state is h11.IDLE and not conn.trailing_data[0]
                # At shutdown a kept-alive connection between requests is closed; a new one still gets
                # its first request read (it was accepted: its client is owed an answer).
                if waiting and kept_alive and self.shutting_down:
                    return False
                client.idle = waiting and kept_alive
                client.started = not waiting
                data = await stream.receive_some(RECEIVE_SIZE)
                client.idle = False
                client.started = True
                if conn.their_state is h11.IDLE:
                    head_bytes += len(data)
                    if folded(data, not waiting):
                        refusal = text_reply(400, "obsolete line folding refused (RFC 9112 5.2)")
                        out += self._reply_bytes(conn, refusal, close=True)
                        await flush()
                        return True
                if waiting and data and kept_alive:
                    scope.deadline = trio.current_time() + settings.header_timeout
                conn.receive_data(data)
                continue
            kind = type(event)
            if kind is h11.Request:
                started.append(trio.current_time())
                out += self._answer(conn, event, head_bytes > MAX_HEAD)  # type: ignore[arg-type]
                discarded = head_bytes = 0
            elif kind is h11.Data:
                discarded += len(event.data)  # type: ignore[union-attr]
                if discarded > settings.max_discard:
                    await flush()
                    return True
            elif kind is h11.ConnectionClosed:
                await flush()
                return False
            if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                conn.start_next_cycle()
                timeout = settings.header_timeout if conn.trailing_data[0] else settings.keepalive_timeout
                scope.deadline = trio.current_time() + timeout
                kept_alive = True
            elif conn.our_state is h11.MUST_CLOSE:
                await flush()
                return conn.their_state is not h11.CLOSED

    def _answer(self, conn: h11.Connection, request: h11.Request, maybe_large: bool) -> bytes:
        """The bytes of one answer. With `Expect: 100-continue` the body goes to the backend (close);
        a body too large to discard closes too."""
        refusal, big_body = screen(
            request.http_version, request.target, request.headers, self.settings.max_discard
        )
        if maybe_large and head_size(request.method, request.target, request.headers) > MAX_HEAD:
            refusal = text_reply(431, "request header block too large")
        if refusal is not None:
            if refusal.status == 508:
                self.stats.loops += 1
            return self._reply_bytes(conn, refusal, close=True)
        reply = reply_for(request.method, request.target, self.pool, trio.current_time)
        close = reply.close or big_body or self.shutting_down or conn.they_are_waiting_for_100_continue
        return self._reply_bytes(conn, reply, close, head=request.method == b"HEAD")

    def _reply_bytes(self, conn: h11.Connection, reply: Reply, close: bool, head: bool = False) -> bytes:
        headers = [*reply.headers, (b"date", self._date.at(time.time()))]
        if close:
            headers.append(_CLOSE)
        self.stats.responses[reply.status] = self.stats.responses.get(reply.status, 0) + 1
        data = conn.send(h11.Response(status_code=reply.status, headers=headers, reason=reply.reason))
        if reply.body and not head:
            data += conn.send(h11.Data(data=reply.body))
        return data + conn.send(h11.EndOfMessage())

    def _error_bytes(self, conn: h11.Connection, error: h11.RemoteProtocolError) -> bytes:
        """400, 431 or 501 as h11 hints, when a response can still be sent; else nothing."""
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return b""
        status = error.error_status_hint
        message = "request header block too large" if status == 431 else "malformed request"
        return self._reply_bytes(conn, text_reply(status, message), close=True)

    async def _last_word(self, stream: trio.SocketStream, conn: h11.Connection, reply: Reply) -> None:
        with trio.move_on_after(1):
            await stream.send_all(self._reply_bytes(conn, reply, close=True))
            await _lingering_close(stream)


async def _lingering_close(stream: trio.SocketStream) -> None:
    """Send FIN, then drain what the client still sends, so our answer is not lost to an RST."""
    with trio.move_on_after(LINGER_SECONDS):
        try:
            await stream.send_eof()
            while await stream.receive_some(RECEIVE_SIZE):
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
