"""The front door's transport: trio sockets in, the conversation's bytes out.

Owns: each client connection's life on the socket (recv, send, the cancel scope whose deadline the
conversation names, the lingering close), the connection counters, and graceful shutdown of
connections. What to answer, when to close and which deadline applies come from
`dispatcher.protocol.conversation`; nothing here parses HTTP, chooses a backend or formats a reply.
Rules: one connection's failure is caught in its own handler and never reaches another client.
The lifecycle (serving, shutting down) is the wiring's: read here, never written.

The hot path, and why it is shaped so (the conversation's header says the rest):
- The socket is used directly (trio.socket), not through SocketStream's error-translating
  wrappers: on this path they cost more than the system calls' own Python.
- One cancel scope per connection whose deadline moves only when the conversation moves it,
  instead of a scope per receive.

The access log (`dispatcher.expose.access_log`), when on: the conversation says what each answer was,
this transport adds the client's address (read once per connection) and the duration once the answer
is sent, and `access_logging` runs its one-second flush and closes it. Off, it costs a test per send.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import trio

from dispatcher.core.lifecycle import Lifecycle
from dispatcher.core.pool import Pool
from dispatcher.core.stats import ServerStats
from dispatcher.expose.access_log import FLUSH_INTERVAL, AccessLog
from dispatcher.net.listen import CappedListener, drain_backlog
from dispatcher.protocol.conversation import Conversation, Replies
from dispatcher.settings.config import Settings, format_duration

log = logging.getLogger("dispatcher.server")

RECEIVE_SIZE = 64 * 1024
# nginx lingering_timeout: how long a closing connection waits for the client's remaining bytes.
LINGER_SECONDS = 5.0


@dataclass(eq=False, slots=True)
class _Client:
    scope: trio.CancelScope
    sock: trio.socket.SocketType
    conversation: Conversation
    peer: tuple[str, int] = ("-", 0)  # the client's address, read only for the access log


class FrontDoor:
    """Serves client connections: every request is answered from the pool's choice."""

    def __init__(self, settings: Settings, pool: Pool, stats: ServerStats, lifecycle: Lifecycle) -> None:
        self.stats = stats
        self.replies = Replies(settings, pool, stats, lifecycle, trio.current_time)
        self.access_log: AccessLog | None = None  # open while `serve` runs, when the settings name one
        self._clients: set[_Client] = set()
        # One slot per open connection, taken by the listener before accept (listen.CappedListener).
        self.slots = trio.Semaphore(settings.max_connections)
        self.announces_shutdown = True  # the process's one "shutting down" line (not the 308 listener's too)

    @property
    def settings(self) -> Settings:
        return self.replies.settings

    @settings.setter
    def settings(self, settings: Settings) -> None:
        """A reload: new connections take the new settings, open ones keep their timeouts."""
        self.replies.settings = settings

    async def serve(
        self,
        listeners: Sequence[CappedListener],
        stop: trio.Event,
        *,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until `stop`, then shut down gracefully: stop accepting (serving what the kernel had
        already queued), close idle keep-alive connections, give the rest the grace period. The
        access log the settings name is open meanwhile, its last lines written once all is answered."""
        async with trio.open_nursery() as flusher, access_logging(self.settings, flusher) as access_log:
            self.access_log = access_log
            self.replies.logging = access_log is not None
            try:
                await self._serve_listeners(listeners, stop, task_status)
            finally:
                self.access_log, self.replies.logging = None, False

    async def _serve_listeners(
        self, listeners: Sequence[CappedListener], stop: trio.Event, task_status: trio.TaskStatus[int]
    ) -> None:
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
            if self.announces_shutdown:
                grace = format_duration(self.settings.grace_period)
                log.info("shutting down: %s grace for exchanges in flight", grace)
            listen_scope.cancel()
            if not self.settings.idle_close_on_response:
                self.close_idle()  # else each idle one waits for its next request (answered, closing)
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
            if client.conversation.idle:
                with contextlib.suppress(OSError):
                    client.sock.shutdown(socket.SHUT_RD)

    async def handle(self, stream: trio.SocketStream, counted: bool = True) -> None:
        """One client connection, from accept to close; never raises.

        `counted`: the connection holds one of `slots` (taken by the listener) to give back at close.
        """
        self.stats.open_connections += 1
        self.stats.connections_total += 1
        conversation = Conversation(self.replies)
        client = _Client(trio.CancelScope(deadline=conversation.deadline), stream.socket, conversation)
        self._clients.add(client)
        try:
            if self.replies.needs_peer:
                client.peer = _peer(stream.socket)
                conversation.peer = client.peer[0]
            await self._serve(stream, client)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # the client went away (reset, broken pipe): nothing to answer
        except Exception:
            log.exception("connection handler failed; closing that connection only")
        finally:
            if conversation.answered:  # a last word (408), or answers whose send failed
                self._log(client)
            self._clients.discard(client)
            self.stats.open_connections -= 1
            # A plain close: trio.aclose_forcefully closes inside a cancelled scope, and delivering that
            # Cancelled costs tens of microseconds, on every connection.
            stream.socket.close()
            if counted:
                self.slots.release()

    async def _serve(self, stream: trio.SocketStream, client: _Client) -> None:
        conversation = client.conversation
        rescued: bytes | None = None
        with client.scope:
            rescued = await self._exchange(client)
            if rescued is None:  # the conversation closes
                if conversation.linger:
                    await lingering_close(stream)
                return
        if rescued is not None:
            # The idle wait reached its keep-alive deadline just as a request arrived: the client sent
            # it on a connection we had not closed yet, so it is owed an answer.
            client.scope = trio.CancelScope(deadline=conversation.rescue())
            with client.scope:
                if await self._exchange(client, rescued) is None and conversation.linger:
                    await lingering_close(stream)
            return
        last_word = conversation.timed_out()
        if last_word:
            with trio.move_on_after(1):
                await stream.send_all(last_word)
                await lingering_close(stream)

    async def _exchange(self, client: _Client, data: bytes | None = None) -> bytes | None:
        """Receive, answer and send until the conversation closes (then None), starting with `data`.

        Bytes that arrive as the deadline passes on an idle connection are returned instead, to be
        answered in a scope of their own (`_serve`).
        """
        sock, scope, conversation, stats = client.sock, client.scope, client.conversation, self.stats
        while True:
            if data is None:
                data = await sock.recv(RECEIVE_SIZE)
                if scope.cancel_called and data and conversation.idle:
                    return data
            out = conversation.receive(data)
            data = None
            if scope.deadline != conversation.deadline:
                scope.deadline = conversation.deadline
            if out:
                await _send(sock, out)
                stats.observe(conversation.answers, trio.current_time() - conversation.arrived)
                if conversation.answered:
                    self._log(client)
            if conversation.closing:
                return None

    def _log(self, client: _Client) -> None:
        """The access log's lines for the answers just sent (or given up on) to this client."""
        conversation, access_log = client.conversation, self.access_log
        assert conversation.answered is not None
        if access_log is not None:  # None only past the end of `serve`
            access_log.write(client.peer, conversation.answered, trio.current_time() - conversation.arrived)
        conversation.answered.clear()


def _peer(sock: trio.socket.SocketType) -> tuple[str, int]:
    """The client's host and port; ("-", 0) when the socket no longer knows (a reset)."""
    try:
        address = sock.getpeername()
    except OSError:
        return "-", 0
    return str(address[0]), int(address[1])


@contextlib.asynccontextmanager
async def access_logging(settings: Settings, nursery: trio.Nursery) -> AsyncIterator[AccessLog | None]:
    """The access log of this process while the body runs (None when it is off): flushed every
    FLUSH_INTERVAL by a task in `nursery`, and at the end, flushed and closed."""
    if settings.access_log is None:
        yield None
        return
    access_log = AccessLog(settings.access_log, settings.access_log_format)
    scope = trio.CancelScope()

    async def flush_every_interval() -> None:
        with scope:
            while True:
                await trio.sleep(FLUSH_INTERVAL)
                access_log.flush()

    nursery.start_soon(flush_every_interval)
    try:
        yield access_log
    finally:
        scope.cancel()
        access_log.close()


async def _send(sock: trio.socket.SocketType, data: bytes | bytearray) -> None:
    """All of `data`, on the raw socket."""
    with memoryview(data) as view:
        sent = 0
        while sent < len(view):
            sent += await sock.send(view[sent:])


async def lingering_close(stream: trio.SocketStream) -> None:
    """Send FIN, then drain what the client still sends, so our answer is not lost to an RST."""
    with trio.move_on_after(LINGER_SECONDS):
        try:
            await stream.send_eof()
            while await stream.receive_some(RECEIVE_SIZE):
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
