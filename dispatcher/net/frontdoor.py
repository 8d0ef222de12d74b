"""The front door's transport: trio streams in, h11 events through, answers out.

Owns: each client connection's life (keep-alive, pipelining, request bodies, timeouts, closing),
the connection and response counters, and graceful shutdown of connections.
Rules: decisions come from `http`; nothing here chooses a backend or formats a reply.
One connection's failure is caught in its own handler and never reaches another client.

The hot path, and why it is shaped so:
- h11 parses every request; answers are not serialised through h11. A redirect is one join of
  four byte strings (status line + Location start, the backend's base, the path, a tail with the
  Date that is rebuilt once a second). Walking h11's state machine for our own answer cost ~15 us
  a request, a fifth of the whole; a fresh h11.Connection for the next request costs 0.7 us, so
  each request gets one, fed with whatever the client sent after the previous request.
- Answers to pipelined requests accumulate and go out in one send when h11 needs more data.
- One cancel scope per connection whose deadline moves, instead of a scope per receive.

Timeouts: a request head must be complete within `header_timeout` of its first byte (or of the
connection's start); an idle keep-alive connection is closed after `keepalive_timeout`; a client
that stops reading our answers runs into the same deadline.

Request bodies are never forwarded or buffered: the 307 goes out as soon as the head is read. With
`Expect: 100-continue` the client has not sent the body and will send it to the backend, so we close.
Otherwise a body up to `max_discard` bytes is read and dropped to keep the connection; a larger one
closes it. Closing while the client may still be sending is a lingering close (send FIN, drain, then
close, as nginx's `lingering_close`), or the kernel's RST could destroy the 307 before it is read.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass

import h11
import trio

from dispatcher.core.lifecycle import Lifecycle
from dispatcher.core.pool import Pool
from dispatcher.core.reply import (
    DateHeader,
    Reply,
    folded,
    head_size,
    reply_for,
    screen,
    serialise,
    text_reply,
)
from dispatcher.core.stats import ServerStats
from dispatcher.net.listen import CappedListener, drain_backlog
from dispatcher.settings.config import Settings, format_duration

log = logging.getLogger("dispatcher.server")

# h11's own default (16 KiB) for the request head; past it the client gets 431. nginx's
# large_client_header_buffers is 4 x 8k, HAProxy's tune.bufsize 16k: the same order.
MAX_HEAD = 16 * 1024
RECEIVE_SIZE = 64 * 1024
# nginx lingering_timeout: how long a closing connection waits for the client's remaining bytes.
LINGER_SECONDS = 5.0
# How long a request that arrived as its connection was being closed may take to be answered.
RESCUE_SECONDS = 1.0


@dataclass(eq=False, slots=True)
class _Client:
    scope: trio.CancelScope
    sock: trio.socket.SocketType
    idle: bool = False  # kept alive, waiting for its next request: shutdown may close it at once
    started: bool = False  # bytes of the current request have arrived: a timeout then deserves a 408
    answered: bool = False  # the current request has its answer: no other may be sent for it
    rescued: bytes | None = None  # bytes that arrived as the idle wait was cancelled


def _h11() -> h11.Connection:
    return h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)


class FrontDoor:
    """Serves client connections: every request is answered from the pool's choice."""

    def __init__(self, settings: Settings, pool: Pool, stats: ServerStats, lifecycle: Lifecycle) -> None:
        self.settings = settings
        self.pool = pool
        self.stats = stats
        self.lifecycle = lifecycle  # the wiring's: read here (shutting down), never written
        self._clients: set[_Client] = set()
        self._date = DateHeader()
        # One slot per open connection, taken by the listener before accept (listen.CappedListener).
        self.slots = trio.Semaphore(settings.max_connections)

    async def serve(
        self,
        listeners: Sequence[CappedListener],
        stop: trio.Event,
        *,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until `stop`, then shut down gracefully: stop accepting (serving what the kernel had
        already queued), close idle keep-alive connections, give the rest the grace period."""
        listen_scope = trio.CancelScope()
        async with trio.open_nursery() as handlers:

            async def accept_loop(
                *, task_status: trio.TaskStatus[list[CappedListener]] = trio.TASK_STATUS_IGNORED
            ) -> None:
                with listen_scope:
                    await trio.serve_listeners(
                        self.handle, list(listeners), handler_nursery=handlers, task_status=task_status
                    )

            await handlers.start(accept_loop)
            task_status.started(listeners[0].socket.getsockname()[1])
            await stop.wait()
            grace = format_duration(self.settings.grace_period)
            log.info("shutting down: %s grace for exchanges in flight", grace)
            listen_scope.cancel()
            self.close_idle()
            for listener in listeners:
                for stream in drain_backlog(listener):  # queued clients are served, not reset
                    handlers.start_soon(self.handle, stream, False)
                await listener.aclose()  # refuse new connections now, not leave them in the backlog
            handlers.cancel_scope.deadline = trio.current_time() + self.settings.grace_period

    def close_idle(self) -> None:
        """Close idle keep-alive connections now; what is in flight is answered with `Connection:
        close`, as the lifecycle already says shutting down (the wiring sets it before `stop`).

        An idle connection is ended by shutting down its reading side, not by cancelling its task: its
        waiting recv then returns end-of-stream, after any request that had already arrived (which is
        answered). Cancelling cost trio about 90 us a connection; 10,000 idle ones took seconds.
        """
        for client in self._clients:
            if client.idle:
                with contextlib.suppress(OSError):
                    client.sock.shutdown(socket.SHUT_RD)

    async def handle(self, stream: trio.SocketStream, counted: bool = True) -> None:
        """One client connection, from accept to close; never raises.

        `counted`: the connection holds one of `slots` (taken by the listener) to give back at close.
        """
        self.stats.open_connections += 1
        self.stats.connections_total += 1
        client = _Client(trio.CancelScope(), stream.socket)
        self._clients.add(client)
        try:
            await self._serve(stream, client)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # the client went away (reset, broken pipe): nothing to answer
        except Exception:
            log.exception("connection handler failed; closing that connection only")
        finally:
            self._clients.discard(client)
            self.stats.open_connections -= 1
            # A plain close: trio.aclose_forcefully closes inside a cancelled scope, and delivering that
            # Cancelled costs tens of microseconds, on every connection.
            stream.socket.close()
            if counted:
                self.slots.release()

    async def _serve(self, stream: trio.SocketStream, client: _Client) -> None:
        client.scope.deadline = trio.current_time() + self.settings.header_timeout
        with client.scope:
            linger = await self._converse(stream, client)
            if client.rescued is None:
                if linger:
                    await _lingering_close(stream)
                return
        if client.rescued is not None:
            # The idle wait reached its keep-alive deadline just as a request arrived: the client sent
            # it on a connection we had not closed yet, so it is owed an answer.
            client.scope = trio.CancelScope(deadline=trio.current_time() + RESCUE_SECONDS)
            with client.scope:
                if await self._converse(stream, client):
                    await _lingering_close(stream)
            return
        if client.started and not client.answered:
            # Deadline hit in the middle of a request head: RFC 9110 §15.5.9.
            await self._last_word(stream, text_reply(408, "request timeout"))

    async def _converse(self, stream: trio.SocketStream, client: _Client) -> bool:
        """Exchange until the connection should close; True when the client may still be sending.

        The socket is used directly (trio.socket), not through SocketStream's error-translating
        wrappers: on this path they cost more than the system calls' own Python. Deadlines move as
        little as possible (each move reschedules the scope): a head's deadline is set only when a head
        arrives in pieces, and the keep-alive deadline moves only when it has slipped by 1 %.
        """
        sock = stream.socket
        conn = _h11()
        if client.rescued is not None:
            conn.receive_data(client.rescued)
            client.rescued = None
        out = bytearray()
        pending = 0  # answers in `out`, for the request duration histogram
        arrived = trio.current_time()  # when the bytes being parsed were received
        stats = self.stats
        settings = self.settings
        scope = client.scope
        slack = settings.keepalive_timeout / 100
        head_deadline = scope.deadline  # the current head's; the first runs from the accept
        discarded = 0
        # Bytes received while a head was being read. h11 bounds only incomplete heads, so a head sent
        # in pieces could pass whole; past MAX_HEAD received, the parsed head is measured.
        head_bytes = 0
        kept_alive = False
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as error:
                if not client.answered:
                    out += self._refusal(_protocol_error(error))
                await _send(sock, out)
                return True
            if event is h11.NEED_DATA:
                if out:
                    await _send(sock, out)
                    out.clear()
                    stats.observe(pending, trio.current_time() - arrived)
                    pending = 0
                waiting = conn.their_state is h11.IDLE and not conn.trailing_data[0]
                # At shutdown a kept-alive connection between requests is closed; a new one still gets
                # its first request read (it was accepted: its client is owed an answer).
                if waiting and kept_alive and self.lifecycle.shutting_down:
                    return False
                if not waiting and conn.their_state is h11.IDLE and scope.deadline != head_deadline:
                    scope.deadline = head_deadline  # a head in pieces: its own deadline applies
                client.idle = waiting and kept_alive
                client.started = not waiting
                data = await sock.recv(RECEIVE_SIZE)
                if scope.cancel_called and data and client.idle:
                    client.rescued = data  # the deadline passed, but the bytes came first: see _serve
                    return False
                client.idle = False
                client.started = True
                arrived = trio.current_time()
                if conn.their_state is h11.IDLE:
                    head_bytes += len(data)
                    if folded(data, not waiting):
                        await _send(sock, self._refusal(text_reply(400, "obsolete line folding refused")))
                        return True
                    if waiting and kept_alive:
                        head_deadline = arrived + settings.header_timeout
                conn.receive_data(data)
                continue
            kind = type(event)
            if kind is h11.Request:
                client.answered = True
                pending += 1
                answer, close = self._answer(conn, event, head_bytes > MAX_HEAD)  # type: ignore[arg-type]
                out += answer
                if close:
                    await _send(sock, out)
                    stats.observe(pending, trio.current_time() - arrived)
                    return True
                discarded = head_bytes = 0
            elif kind is h11.EndOfMessage:
                # The request is complete: a fresh h11 connection takes what the client sent after it.
                leftover, closed = conn.trailing_data
                conn = _h11()
                if leftover:
                    if folded(leftover, False):  # a pipelined head: scanned before h11 unfolds it
                        out += self._refusal(text_reply(400, "obsolete line folding refused"))
                        await _send(sock, out)
                        return True
                    conn.receive_data(leftover)
                if closed:
                    conn.receive_data(b"")
                client.answered = False
                kept_alive = True
                head_deadline = arrived + settings.header_timeout  # a pipelined head started here
                idle_deadline = arrived + settings.keepalive_timeout
                if not idle_deadline - slack < scope.deadline <= idle_deadline:
                    scope.deadline = idle_deadline
            elif kind is h11.Data:
                discarded += len(event.data)  # type: ignore[union-attr]
                if discarded > settings.max_discard:  # a chunked body that grew too large
                    await _send(sock, out)
                    return True
            elif kind is h11.ConnectionClosed:
                await _send(sock, out)
                return False

    def _answer(self, conn: h11.Connection, request: h11.Request, maybe_large: bool) -> tuple[bytes, bool]:
        """The bytes of one answer, and whether the connection closes after it."""
        refusal, close = screen(
            request.http_version, request.target, request.headers, self.settings.max_discard
        )
        if maybe_large and head_size(request.method, request.target, request.headers) > MAX_HEAD:
            refusal = text_reply(431, "request header block too large")
        if refusal is not None:
            if refusal.status == 508:
                self.stats.loops += 1
            return self._refusal(refusal), True
        # With Expect: 100-continue the body was not sent: it goes to the backend, and we close.
        close = close or self.lifecycle.shutting_down or conn.they_are_waiting_for_100_continue
        reply = reply_for(request.method, request.target, self.pool, trio.current_time)
        if type(reply) is bytes:
            self.stats.responses[307] += 1
            return reply + self._date.tails(time.time())[close], close
        assert isinstance(reply, Reply)
        self.stats.responses[reply.status] = self.stats.responses.get(reply.status, 0) + 1
        close = close or reply.close
        return serialise(reply, self._date.at(time.time()), close, request.method == b"HEAD"), close

    def _refusal(self, reply: Reply) -> bytes:
        """An error answer; the connection closes after it."""
        self.stats.responses[reply.status] = self.stats.responses.get(reply.status, 0) + 1
        return serialise(reply, self._date.at(time.time()), close=True)

    async def _last_word(self, stream: trio.SocketStream, reply: Reply) -> None:
        with trio.move_on_after(1):
            await stream.send_all(self._refusal(reply))
            await _lingering_close(stream)


async def _send(sock: trio.socket.SocketType, data: bytes | bytearray) -> None:
    """All of `data`, on the raw socket."""
    with memoryview(data) as view:
        sent = 0
        while sent < len(view):
            sent += await sock.send(view[sent:])


def _protocol_error(error: h11.RemoteProtocolError) -> Reply:
    """400, 431 or 501, as h11 hints."""
    status = error.error_status_hint
    message = "request header block too large" if status == 431 else "malformed request"
    return text_reply(status, message)


async def _lingering_close(stream: trio.SocketStream) -> None:
    """Send FIN, then drain what the client still sends, so our answer is not lost to an RST."""
    with trio.move_on_after(LINGER_SECONDS):
        try:
            await stream.send_eof()
            while await stream.receive_some(RECEIVE_SIZE):
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
