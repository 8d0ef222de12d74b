"""What a request head that cannot be served is answered with, on every listener that reads heads
through h11: the front door (`conversation`), the admin listener and the demo backends (`wholemessage`).

Owns: the head size limit, the answer to each refusal h11 raises (400, 414, 431, 501 and the 400s of
bad Transfer-Encoding), to an obs-fold, and the screening of a whole small request's head.
Rules: sans-IO and no decisions of routing; one answer per fault, whichever listener saw it, so that
an operator's curl gets the same status and reason from the admin port as from the front door.
"""

from __future__ import annotations

from collections.abc import Sequence

import h11

from dispatcher.core.reply import Reply, head_size, screen, text_reply

# h11's own default (16 KiB) for the request head; past it the client gets 431. nginx's
# large_client_header_buffers is 4 x 8k, HAProxy's tune.bufsize 16k: the same order.
MAX_HEAD = 16 * 1024


def folding_refused() -> Reply:
    return text_reply(400, "obsolete line folding refused")


def protocol_refusal(error: h11.RemoteProtocolError, conn: h11.Connection, head: bytes) -> Reply:
    """400, 414, 431 or 501, as h11 hints: its 431 (a head past MAX_HEAD) is a 414 when the request
    line alone is that long (RFC 9112 §3: a target longer than the server parses MUST get 414); its
    501 (a Transfer-Encoding other than one `chunked`) is what the head's codings deserve (`head`: as
    much of it as arrived)."""
    status = error.error_status_hint
    if status == 431 and b"\n" not in _buffered(conn)[:MAX_HEAD]:
        return text_reply(414, "request target too long")
    if status == 431:
        return text_reply(431, "request header block too large")
    if status == 501:  # h11's one 501: a Transfer-Encoding other than one `chunked`
        return _coding_refusal(head)
    return text_reply(status, "malformed request")


def whole_head_refusal(request: h11.Request, received: int, max_body: int) -> Reply | None:
    """The refusal of a head h11 accepted, for a listener that reads whole requests (`received`: the
    bytes that arrived while it was read): `screen`'s limits and framing rules (505, 414, 431, the
    Host and smuggling 400s), 431 for a head whole in one read yet past MAX_HEAD, which h11 does not
    bound, and 413 for a Content-Length past `max_body`, before its body is read (nginx's
    client_max_body_size). Not the loop check: a dispatcher's health check is what such a listener
    answers."""
    refusal, _ = screen(request.http_version, request.target, request.headers, max_body, loops=False)
    if refusal is None and _declared_length(request.headers) > max_body:
        return text_reply(413, f"request body larger than {max_body} bytes")
    large = received > MAX_HEAD and head_size(request.method, request.target, request.headers) > MAX_HEAD
    if refusal is None and large:
        refusal = text_reply(431, "request header block too large")
    return refusal


def _declared_length(headers: Sequence[tuple[bytes, bytes]]) -> int:
    """The Content-Length h11 read (it refuses two that differ), or -1."""
    for name, value in headers:
        if name == b"content-length":
            return int(value)
    return -1


def _coding_refusal(head: bytes) -> Reply:
    """The answer to a head whose Transfer-Encoding h11 refused, by its codings, all its
    Transfer-Encoding lines read as one list (RFC 9110 §5.3), in any case (RFC 9112 §7), empty
    elements ignored (RFC 9110 §5.6.1):
    - chunked not the final coding (`gzip`, `chunked, gzip`): 400 and close (RFC 9112 §6.3 item 4:
      the body's length cannot be known; MUST);
    - chunked more than once (`chunked, chunked`): 400, the framing is malformed (RFC 9112 §7.1: a
      sender MUST NOT); HAProxy refuses both with 400;
    - with Content-Length, or in HTTP/1.0: 400, as `screen` refuses them with chunked alone;
    - chunked last after a coding we do not implement (`gzip, chunked`): 501 (RFC 9112 §6.1: SHOULD).
    The head is h11's: its lines passed h11's parser, and no line of it is folded (`folded`)."""
    lines = head.split(b"\n")
    codings: list[bytes] | None = None
    length = False
    for raw in lines[1:]:
        line = raw.rstrip(b"\r")
        if not line:
            break
        name, _, value = line.partition(b":")
        name = name.lower()
        if name == b"transfer-encoding":
            codings = codings or []
            codings += (item.split(b";", 1)[0].strip(b" \t").lower() for item in value.split(b","))
        elif name == b"content-length":
            length = True
    if codings is None:  # not found in the head as we kept it: h11's own word, then
        return text_reply(501, "transfer coding not implemented: only chunked is")
    codings = [coding for coding in codings if coding]
    if not codings or codings[-1] != b"chunked":
        return text_reply(400, "Transfer-Encoding whose final coding is not chunked: refused (RFC 9112 6.3)")
    if codings.count(b"chunked") > 1:
        return text_reply(400, "chunked applied more than once: refused (RFC 9112 7.1)")
    if length:
        return text_reply(400, "both Content-Length and Transfer-Encoding: refused (RFC 9112 6.1)")
    if lines[0].rstrip(b"\r").endswith(b"/1.0"):
        return text_reply(400, "Transfer-Encoding in an HTTP/1.0 request: refused (RFC 9112 6.1)")
    return text_reply(501, "transfer coding not implemented: only chunked is")


def _buffered(conn: h11.Connection) -> bytes:
    """What h11 holds unparsed. Its buffer is private (h11 has no public view of it): read only on
    the refusal path, and when a later h11 moves it, the answer is its own 431 again."""
    buffer = getattr(conn, "_receive_buffer", None)
    try:
        return bytes(buffer) if buffer is not None else b"\n"
    except TypeError:
        return b"\n"
