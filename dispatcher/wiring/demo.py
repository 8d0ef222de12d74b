"""`dispatcher --demo`: three backends on loopback that report a changing load.

Owns: a small, real HTTP backend that speaks our load protocol (header `X-Load` and a JSON body on
its health path) and answers every other request with who it is and what it received, so that a
user can watch redirects spread and a POST body arrive. Tests build their backends on it too.
Rules: this is a backend, not part of the dispatcher: it imports nothing from the dispatcher's core
(only `wholemessage`, the small whole-request server it shares with the admin listener, and the
front door's lingering close).
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
from dataclasses import dataclass, field
from http import HTTPStatus

import h11
import trio

from dispatcher.net.frontdoor import lingering_close
from dispatcher.protocol.wholemessage import Refused, WholeRequest, read_request, response_bytes

log = logging.getLogger("dispatcher.demo")

MAX_BODY = 64 * 1024 * 1024


Received = WholeRequest  # a request as the backend saw it, body included


@dataclass(slots=True)
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


@dataclass(eq=False)
class LoadReportingBackend:
    """A backend that reports `load` on `health_path` and echoes every other request."""

    name: str
    load: float = 0.0
    health_path: str = "/health"
    received: list[Received] = field(default_factory=list)
    health_checks: int = 0
    port: int = 0

    def health_answer(self, request: Received) -> Answer:
        """Our load protocol: the header and the JSON body say the same load."""
        body = json.dumps({"load": self.load, "backend": self.name}).encode()
        headers = [("content-type", "application/json"), ("x-load", f"{self.load:g}")]
        return Answer(200, headers, body)

    def answer(self, request: Received) -> Answer:
        if request.target.split("?", 1)[0] == self.health_path:
            self.health_checks += 1
            return self.health_answer(request)
        self.received.append(request)
        text = f"{self.name} answered {request.method} {request.target} ({len(request.body)} bytes of body)\n"
        return Answer(200, [("content-type", "text/plain; charset=utf-8")], text.encode())

    async def handle(self, stream: trio.SocketStream) -> None:
        """One connection; reads whole requests, answers them, keeps the connection alive."""
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
        try:
            while True:
                request = await read_request(stream, conn, MAX_BODY, send_continue=True)
                if request is None:
                    return
                answer = self.answer(request)
                await _write(stream, conn, answer, request.method == "HEAD")
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except Refused as refused:  # the admin listener's answers to a bad request, as a real server has
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.send_all(refused.answer())
                await lingering_close(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen until cancelled; reports the bound port through `task_status`."""
        listeners = await trio.open_tcp_listeners(port, host=host)
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self.handle, listeners)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


async def _write(stream: trio.SocketStream, conn: h11.Connection, answer: Answer, head: bool) -> None:
    headers = [(k.encode(), v.encode()) for k, v in answer.headers]
    headers.append((b"content-length", str(len(answer.body)).encode()))
    reason = HTTPStatus(answer.status).phrase.encode()
    await stream.send_all(response_bytes(conn, answer.status, reason, headers, answer.body, head))


async def wander(backends: list[LoadReportingBackend], seed: int | None = None) -> None:
    """Let each demo backend's load drift, so the demo shows the choice following it."""
    rng = random.Random(seed)
    while True:
        for backend in backends:
            backend.load = max(0.0, min(20.0, backend.load + rng.uniform(-3, 3)))
        await trio.sleep(1)


async def start_demo(nursery: trio.Nursery, count: int = 3) -> list[LoadReportingBackend]:
    """Start `count` demo backends on loopback with different loads; return them once listening."""
    backends = [LoadReportingBackend(f"demo-{i + 1}", load=float(4 * i + 1)) for i in range(count)]
    for backend in backends:
        await nursery.start(backend.serve)
    nursery.start_soon(wander, backends)
    return backends
