"""The admin listener: metrics, liveness and readiness, apart from the front door.

Owns: the admin routes and their small HTTP/1.1 server (h11, whole bodies, keep-alive).
Rules: reads the pool and the metrics; never chooses a backend. It binds to loopback by default,
so that the scraper reaches it and the internet does not. Route functions are plain functions of
the request, testable without sockets.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import h11
import trio

from dispatcher.http import Reply, text_reply
from dispatcher.metrics import Metrics
from dispatcher.pool import Pool

log = logging.getLogger("dispatcher.admin")

MAX_ADMIN_BODY = 64 * 1024
ADMIN_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class AdminRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class Admin:
    """Routes of the admin listener."""

    def __init__(self, pool: Pool, metrics: Metrics, is_stopping: Callable[[], bool]) -> None:
        self.pool = pool
        self.metrics = metrics
        self.is_stopping = is_stopping

    def route(self, request: AdminRequest) -> Reply:
        if request.path == "/metrics" and request.method in ("GET", "HEAD"):
            body, content_type = self.metrics.exposition(request.headers.get("accept"))
            return _reply(200, body, content_type)
        if request.path == "/healthz" and request.method in ("GET", "HEAD"):
            return text_reply(200, "ok", close=False)
        if request.path == "/readyz" and request.method in ("GET", "HEAD"):
            return self._ready()
        return text_reply(404, "not found: try /metrics, /healthz, /readyz", close=False)

    def _ready(self) -> Reply:
        """Ready: at least one backend takes redirects, and we are not shutting down."""
        if self.is_stopping():
            return text_reply(503, "shutting down", close=False)
        usable = self.pool.usable_count
        if usable == 0:
            return text_reply(503, "no backend is up", close=False)
        return text_reply(200, f"ready: {usable} of {len(self.pool.backends)} backends up", close=False)

    async def handle(self, stream: trio.SocketStream) -> None:
        """One admin connection; never raises."""
        try:
            with trio.move_on_after(ADMIN_TIMEOUT):
                await self._serve(stream, h11.Connection(h11.SERVER))
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            pass
        except Exception:
            log.exception("admin connection failed")
        finally:
            await trio.aclose_forcefully(stream)

    async def _serve(self, stream: trio.SocketStream, conn: h11.Connection) -> None:
        while True:
            request = await _read_request(stream, conn)
            if request is None:
                return
            reply = self.route(request)
            await stream.send_all(_serialise(conn, reply, request.method == "HEAD"))
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()


def _reply(status: int, body: bytes, content_type: str) -> Reply:
    headers = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    return Reply(status, headers, body)


async def _read_request(stream: trio.SocketStream, conn: h11.Connection) -> AdminRequest | None:
    head: h11.Request | None = None
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(65536))
        elif isinstance(event, h11.Request):
            head = event
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > MAX_ADMIN_BODY:
                return None
        elif isinstance(event, h11.EndOfMessage) and head is not None:
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in head.headers}
            path = head.target.decode("ascii", "replace").split("?", 1)[0]
            return AdminRequest(head.method.decode("ascii"), path, headers, bytes(body))
        elif isinstance(event, h11.ConnectionClosed):
            return None


def _serialise(conn: h11.Connection, reply: Reply, head: bool) -> bytes:
    headers = list(reply.headers)
    if reply.close:
        headers.append((b"connection", b"close"))
    data = conn.send(h11.Response(status_code=reply.status, headers=headers, reason=reply.reason))
    if reply.body and not head:
        data += conn.send(h11.Data(data=reply.body))
    return data + conn.send(h11.EndOfMessage())
