"""The front door over TLS, and the plain listener beside it that sends every request to https.

Owns: each TLS client connection's life on its socket (`TlsSocket`: the handshake, then the
conversation's bytes), `Strict-Transport-Security` on its answers, and the 308 answers of the plain
redirect listener. The conversation (`dispatcher.protocol.conversation`) is the plain front door's, as
are the accept loop, the connection cap, the counters and graceful shutdown (`FrontDoor`, inherited):
only the exchange on the stream differs.
Rules: nothing here parses HTTP beyond the Host of a request being redirected to https; the
certificates are `certificates`'.

Timeouts: the handshake runs under the conversation's first deadline, the header timeout from the
connection's start, so a client that never finishes its handshake holds its connection slot no longer
than a slowloris client that never finishes its head (HAProxy's `timeout http-request` covers the
handshake too); then the conversation's deadlines apply as on the plain front door.

Why not `trio.SSLStream`: it runs TLS over any trio stream, so every record passes through memory
BIOs, a lock and a conflict detector in Python, around a SocketStream's own wrappers: keep-alive over
TLS served 0.48x the plain front door's req/s. The front door's plain path already uses the socket
directly (`frontdoor`); here OpenSSL does too (`ssl.SSLSocket`, non-blocking, on a duplicate of the
descriptor), and trio only waits for the socket to be readable or writable when OpenSSL asks.
"""

from __future__ import annotations

import copy
import functools
import os
import re
import socket
import ssl
import time
from collections.abc import Callable
from typing import TypeVar

import h11
import trio

from dispatcher.core.lifecycle import Lifecycle
from dispatcher.core.pool import Pool
from dispatcher.core.reply import Reply, path_and_query, serialise, text_reply
from dispatcher.core.stats import ServerStats
from dispatcher.net.certificates import Certificates
from dispatcher.net.frontdoor import RECEIVE_SIZE, FrontDoor, _Client, lingering_close
from dispatcher.protocol.conversation import Replies
from dispatcher.settings.config import Settings

# A Host header the 308 may repeat: a DNS name or an IPv4 address, or an IPv6 one in brackets, with an
# optional port (RFC 9110 §7.2); anything else is not echoed into a Location. Narrower than the Host
# that `reply.AUTHORITY` lets through: no sub-delim nor escape of a client's goes into a URL we build.
_HOST = re.compile(rb"(?P<name>[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]+)?")
HTTPS_PORT = 443
# OpenSSL's reason when a connection's first bytes are "GET ", "POST", "HEAD" or "PUT " where a
# ClientHello belongs (SSL_R_HTTP_REQUEST): a plain HTTP client at the TLS port.
PLAIN_HTTP = "HTTP_REQUEST"
R = TypeVar("R", bound=Replies)
T = TypeVar("T")


class SecureReplies(Replies):
    """The front door's answers, with `Strict-Transport-Security` (RFC 6797) when tls.hsts is set."""

    def answer(
        self, conn: h11.Connection, request: h11.Request, maybe_large: bool, peer: str = "-"
    ) -> tuple[bytes, bool]:
        answer, close = super().answer(conn, request, maybe_large, peer)
        return self._with_hsts(answer), close

    def refusal(self, reply: Reply, head: bool = False) -> bytes:
        """A refusal (400, 408, 431 ...) over TLS says it too: "every answer", as RFC 6797 §8.1 has it."""
        return self._with_hsts(super().refusal(reply, head))

    def _with_hsts(self, answer: bytes) -> bytes:
        max_age = int(self.settings.tls.hsts)
        if not max_age:
            return answer
        # At the end of the head: a 307's Location stays right after its status line, where the access
        # log reads the backend back from it.
        end = answer.index(b"\r\n\r\n") + 2
        return b"%sstrict-transport-security: max-age=%d\r\n%s" % (answer[:end], max_age, answer[end:])


class HttpsRedirects(Replies):
    """Every request answered with a 308 to the same host and target over https (`port`: the TLS
    front door's). 308 keeps the method and body, as 307 does, and is permanent (RFC 9110 §15.4.9)."""

    port = HTTPS_PORT

    def answer(
        self, conn: h11.Connection, request: h11.Request, maybe_large: bool, peer: str = "-"
    ) -> tuple[bytes, bool]:
        head = request.method == b"HEAD"
        refusal, close = self.screened(request, maybe_large)  # the front door's refusals
        location = self.location(request) if refusal is None else None
        if location is None:
            refusal = refusal or text_reply(400, "no usable Host or target to redirect to https")
            return self._refusal(refusal, head), True
        # The same connection rules as the front door's (Connection: close, HTTP/1.0, a large body).
        close = close or self.lifecycle.shutting_down or conn.they_are_waiting_for_100_continue
        self.stats.responses[308] = self.stats.responses.get(308, 0) + 1
        reply = Reply(308, [(b"location", location), (b"content-length", b"0")])
        kept_1_0 = not close and request.http_version == b"1.0"
        return serialise(reply, self._date.at(time.time()), close, head, kept_1_0), close

    def location(self, request: h11.Request) -> bytes | None:
        """https:// + the request's host + the target. An absolute-form target names the host itself,
        and its authority is used instead of Host (RFC 9112 §3.2.2: the server MUST ignore Host then)."""
        target = request.target
        if target[:1] == b"/":
            host = next((value for name, value in request.headers if name == b"host"), None)
        else:
            _, _, rest = target.partition(b"://")
            host = re.split(rb"[/?#]", rest, maxsplit=1)[0]
        path = path_and_query(target)
        match = _HOST.fullmatch(host) if host is not None else None
        if match is None or path is None:
            return None
        port = b"" if self.port == HTTPS_PORT else b":%d" % self.port
        return b"https://" + match["name"] + port + path


def secured(replies: Replies, cls: type[R]) -> R:
    """`replies` (a front door's) as one of the kinds above: the same state, another answer. Copied
    rather than built anew, so that this module need not follow what `Replies` is made of."""
    made = copy.copy(replies)
    made.__class__ = cls
    assert isinstance(made, cls)
    return made


class TlsSocket:
    """One client's TLS, read and written by OpenSSL on the connection's descriptor.

    Each operation is a trio checkpoint as a trio socket's is (`trio.socket`'s `_nonblocking_helper`):
    tried at once, and waited for only when OpenSSL wants the socket readable or writable; a TLS 1.3
    key update or a session ticket may make a read want a write, or the reverse.
    """

    __slots__ = ("_sock", "tls")

    def __init__(self, sock: trio.socket.SocketType, context: ssl.SSLContext) -> None:
        self._sock = sock
        # Wrapping a socket detaches it: OpenSSL gets a duplicate of the descriptor, so that trio's
        # socket stays whole for its epoll registration, the lingering close and the close. The
        # duplicate shares the descriptor's non-blocking flag: it must be set non-blocking first, or
        # the wrap makes both blocking.
        raw = socket.socket(sock.family, sock.type, sock.proto, fileno=os.dup(sock.fileno()))
        raw.setblocking(False)
        self.tls = context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)

    async def handshake(self) -> None:
        await self._retry(self.tls.do_handshake)

    async def receive(self, size: int) -> bytes:
        """Up to `size` bytes of plain text; b"" once the client closed (a close_notify or a bare
        FIN, as browsers and curl close: `suppress_ragged_eofs`)."""
        return await self._retry(functools.partial(self.tls.recv, size))

    async def send_all(self, data: bytes | bytearray) -> None:
        """All of `data`. OpenSSL writes a whole buffer or wants a retry with the same one."""
        with memoryview(data) as view:
            sent = 0
            while sent < len(view):
                sent += await self._retry(functools.partial(self.tls.send, view[sent:]))

    def close_notify(self) -> None:
        """Say that we close (a TLS close_notify alert) before the connection's FIN, without waiting
        for the client's own: a client that reads on then sees a clean end, not a truncation."""
        try:
            self.tls.unwrap()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            pass  # sent; the client's close_notify is not waited for (RFC 8446 §6.1 allows it)
        except (ssl.SSLError, OSError, ValueError):
            pass  # the connection is already broken: nothing to say on it

    def pending(self) -> bytes:
        """Plain text already readable without waiting, or b"": a request that arrived just as an
        idle connection was closed."""
        try:
            return self.tls.recv(RECEIVE_SIZE)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, ssl.SSLError, OSError):
            return b""

    def close(self) -> None:
        """The duplicate descriptor (trio's socket is closed by the front door)."""
        self.tls.close()

    async def _retry(self, operation: Callable[[], T]) -> T:
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            result = operation()
        except ssl.SSLWantReadError:
            wait = trio.lowlevel.wait_readable
        except ssl.SSLWantWriteError:
            wait = trio.lowlevel.wait_writable
        else:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return result
        while True:
            await wait(self._sock)
            try:
                return operation()
            except ssl.SSLWantReadError:
                wait = trio.lowlevel.wait_readable
            except ssl.SSLWantWriteError:
                wait = trio.lowlevel.wait_writable


class TlsFrontDoor(FrontDoor):
    """The front door, each connection wrapped in TLS with the certificates' context of the moment."""

    def __init__(self, settings: Settings, pool: Pool, stats: ServerStats, lifecycle: Lifecycle) -> None:
        super().__init__(settings, pool, stats, lifecycle)
        self.replies = secured(self.replies, SecureReplies)
        self.certificates = Certificates(settings.tls)  # a reload rereads them (`Certificates.reload`)

    def close_idle(self) -> None:
        """Close idle keep-alive connections now, each with a close_notify (`_serve_tls`).

        Not by shutting down the socket's reading side as the plain front door does: OpenSSL then
        reads an end of stream where a record belongs, and the client got a fatal decode_error
        alert instead of the close. A cancel costs more per connection, but TLS ones are fewer."""
        for client in self._clients:
            if client.conversation.idle:
                client.scope.cancel()

    async def _serve(self, stream: trio.SocketStream, client: _Client) -> None:
        tls = TlsSocket(stream.socket, self.certificates.context)
        try:
            await self._serve_tls(stream, tls, client)
        finally:
            tls.close()

    async def _serve_tls(self, stream: trio.SocketStream, tls: TlsSocket, client: _Client) -> None:
        conversation = client.conversation
        handshaken = refused = False
        with client.scope:
            try:
                await tls.handshake()
            except ssl.SSLError as error:
                if error.reason == PLAIN_HTTP:
                    self.stats.tls_handshake_failures["http"] += 1
                    refused = True  # counted: the header timeout may still end the lingering close
                    await self._refuse_plain_http(stream)
                    return
                self.stats.tls_handshake_failures["error"] += 1
                raise
            except OSError:  # the client went away mid-handshake
                self.stats.tls_handshake_failures["error"] += 1
                raise
            handshaken = True
            await self._converse(tls, client)
            if conversation.linger:
                await _closing(tls, stream)
            return
        if refused:
            return
        if not handshaken:  # the header timeout ran out in the handshake: nothing to say over TLS
            self.stats.tls_handshake_failures["timeout"] += 1
            return
        rescued = tls.pending() if conversation.idle else b""
        if rescued:
            # Closed while idle (keep-alive timeout, or shutdown) just as a request arrived: the
            # client sent it on a connection not closed yet, so it is owed an answer.
            client.scope = trio.CancelScope(deadline=conversation.rescue())
            with client.scope:
                await self._converse(tls, client, rescued)
                if conversation.linger:
                    await _closing(tls, stream)
                return
            # Kept alive after it, the connection reached its deadline again: closed as below.
        last_word = conversation.timed_out()
        with trio.move_on_after(1):
            if last_word:
                await tls.send_all(last_word)
                await _closing(tls, stream)
            else:
                tls.close_notify()

    async def _refuse_plain_http(self, stream: trio.SocketStream) -> None:
        """A 400 in plain text to a plain HTTP request: the one answer its client can read, as nginx's
        "The plain HTTP request was sent to HTTPS port" is. Without it the client sees a reset and
        nothing to say why. Never with HSTS: a header over plain HTTP must be ignored (RFC 6797 §8.1)."""
        reply = text_reply(400, "the plain HTTP request was sent to the HTTPS port; use https://")
        await stream.send_all(Replies.refusal(self.replies, reply))
        await lingering_close(stream)  # the rest of its head is unread: no reset over our answer

    async def _converse(self, tls: TlsSocket, client: _Client, data: bytes = b"") -> None:
        """Receive, answer and send until the conversation closes, starting with `data` if any."""
        scope, conversation = client.scope, client.conversation
        while not conversation.closing:
            out = conversation.receive(data or await tls.receive(RECEIVE_SIZE))
            data = b""
            if scope.deadline != conversation.deadline:
                scope.deadline = conversation.deadline
            if out:
                await tls.send_all(out)
                self._sent(client)

    def _sent(self, client: _Client) -> None:
        """An answer is out: its duration in the histogram, its lines in the access log (when on)."""
        conversation = client.conversation
        self.stats.observe(conversation.answers, trio.current_time() - conversation.arrived)
        if conversation.answered:
            self._log(client)


async def _closing(tls: TlsSocket, stream: trio.SocketStream) -> None:
    """The end of a TLS connection that has answered: close_notify, then the FIN and the lingering
    close on the socket, so that the client reads our answer and a clean end."""
    tls.close_notify()
    await lingering_close(stream)


def redirect_door(
    settings: Settings, pool: Pool, stats: ServerStats, lifecycle: Lifecycle, https_port: int
) -> FrontDoor:
    """A plain front door whose every answer is a 308 to https on `https_port`."""
    door = FrontDoor(settings, pool, stats, lifecycle)
    redirects = secured(door.replies, HttpsRedirects)
    redirects.port = https_port
    door.replies = redirects
    door.announces_shutdown = False  # the TLS front door beside it says it
    return door
