"""Small HTTP/1.1 servers that read whole requests: the admin listener and the demo backends.

Owns: reading one request with its body (bounded) and writing one response, through h11.
Rules: no decisions; the front door does not use this (it never reads bodies whole).
"""

from __future__ import annotations

from dataclasses import dataclass

import h11
import trio

RECEIVE_SIZE = 65536


@dataclass(frozen=True, slots=True)
class WholeRequest:
    """A request as read, body included; header names lower-case, as h11 gives them."""

    method: str
    target: str
    headers: dict[str, str]
    body: bytes = b""

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]


async def read_request(
    stream: trio.SocketStream, conn: h11.Connection, max_body: int, *, send_continue: bool = False
) -> WholeRequest | None:
    """The next whole request, or None when the client closed or the body is over `max_body`.

    `send_continue`: answer `Expect: 100-continue` with a 100 (a backend does; the admin need not).
    """
    head: h11.Request | None = None
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            if send_continue and conn.they_are_waiting_for_100_continue:
                await stream.send_all(conn.send(h11.InformationalResponse(status_code=100, headers=[])))
            conn.receive_data(bytes(await stream.receive_some(RECEIVE_SIZE)))
        elif isinstance(event, h11.Request):
            head = event
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > max_body:
                return None
        elif isinstance(event, h11.EndOfMessage) and head is not None:
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in head.headers}
            target = head.target.decode("ascii", "replace")
            return WholeRequest(head.method.decode("ascii"), target, headers, bytes(body))
        elif isinstance(event, h11.ConnectionClosed):
            return None


def response_bytes(
    conn: h11.Connection,
    status: int,
    reason: bytes,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    head: bool,
) -> bytes:
    """One response through h11 (which adds nothing but checks everything); no body for HEAD."""
    data = conn.send(h11.Response(status_code=status, headers=headers, reason=reason))
    if body and not head:
        data += conn.send(h11.Data(data=body))
    return data + conn.send(h11.EndOfMessage())
