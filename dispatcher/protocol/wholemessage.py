"""Small HTTP/1.1 servers that read whole requests: the admin listener and the demo backends.

Owns: reading one request with its body (bounded) and writing one response, through h11, and the
bytes of the answer to a request it refuses (`Refused`).
Rules: no decisions of its own: what a bad head is answered with is `refusals`', the same answers
as the front door's. The front door does not use this (it never reads bodies whole).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import h11
import trio

from dispatcher.core.reply import DateHeader, Reply, folded, serialise, text_reply
from dispatcher.protocol.refusals import folding_refused, protocol_refusal, whole_head_refusal

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


class Refused(Exception):
    """A request not read whole, for what it is (a malformed, folded or too large head, a body past
    the bound): the server sends `answer()` and closes, lingering, as the front door does. Before,
    such a client was closed without a word, and an operator's curl said only "empty reply"."""

    def __init__(self, reply: Reply, head: bool) -> None:
        super().__init__(reply.status)
        self.reply = reply
        self.head = head  # the refused request is a HEAD: its answer has no body (RFC 9110 §9.3.2)

    def answer(self) -> bytes:
        return serialise(self.reply, DateHeader().at(time.time()), close=True, head=self.head)


async def read_request(
    stream: trio.SocketStream, conn: h11.Connection, max_body: int, *, send_continue: bool = False
) -> WholeRequest | None:
    """The next whole request, or None when the client closed; raises `Refused` for one refused.

    `send_continue`: answer `Expect: 100-continue` with a 100 (a backend does; the admin need not).
    `conn` must bound incomplete heads (h11's `max_incomplete_event_size`, 16 KiB by default).
    """
    head: h11.Request | None = None
    body = bytearray()
    # What arrived of the head while it is read (bytes left from the last request first): scanned for
    # folds (h11 would unfold them) and read back by the refusals.
    received = bytearray(conn.trailing_data[0])
    if folded(bytes(received), False):
        raise Refused(folding_refused(), received[:5] == b"HEAD ")
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as error:
            raise Refused(protocol_refusal(error, conn, bytes(received)), received[:5] == b"HEAD ") from None
        if event is h11.NEED_DATA:
            if send_continue and conn.they_are_waiting_for_100_continue:
                await stream.send_all(conn.send(h11.InformationalResponse(status_code=100, headers=[])))
            data = bytes(await stream.receive_some(RECEIVE_SIZE))
            if head is None:
                line_start = received.endswith(b"\n")
                received += data
                if folded(data, line_start):
                    raise Refused(folding_refused(), received[:5] == b"HEAD ")
            conn.receive_data(data)
        elif isinstance(event, h11.Request):
            head = event
            refusal = whole_head_refusal(event, len(received), max_body)
            if refusal is not None:
                raise Refused(refusal, event.method == b"HEAD")
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > max_body:
                raise Refused(text_reply(413, f"request body larger than {max_body} bytes"), False)
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
