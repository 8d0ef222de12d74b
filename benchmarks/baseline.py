# The yardstick for the dispatcher: the leanest *correct* trio + h11 server that answers every request with
# `307 Temporary Redirect` to itself.
#
# Why it exists: a ratio "dispatcher req/s / baseline req/s" measured on the same machine in the same run
# tells what the dispatcher's own work costs (choosing a backend, timeouts, metrics, logging) on top of the
# floor that trio + h11 impose anyway. For that ratio to mean something the baseline takes no shortcut the
# dispatcher could not take: it parses every request with h11.Connection and serialises every reply with h11
# (Response + EndOfMessage), honours keep-alive through start_next_cycle(), and closes on any protocol
# error.
#
# What it leaves out, on purpose, because it is policy and not protocol: timeouts, logging, metrics, error
# pages. It is shaped like h11's examples/trio-server.py, cut down to the one reply. It must not import
# `dispatcher`.
#
#   python benchmarks/baseline.py --listen 127.0.0.1:8080

import argparse
import contextlib
from wsgiref.handlers import format_date_time

import h11
import trio

# The same read size as h11's examples/trio-server.py: larger than any request line plus headers that h11
# accepts (its default max_incomplete_event_size is 16 KiB), so one receive usually holds a whole request.
MAX_RECEIVE_BYTES = 64 * 1024

# RFC 9110 §15.4.8: 307 keeps the method and the body. RFC 9110 §6.6.1: an origin server with a clock MUST
# send Date in 3xx responses; the dispatcher has to, so the baseline pays for it too.
REDIRECT_STATUS = 307
REDIRECT_REASON = b"Temporary Redirect"


def parse_listen(address: str) -> tuple[str, int]:
    """Split `HOST:PORT` (the `--listen` argument) into its host and port."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {address!r}")
    return host, int(port)


def redirect_headers(base_url: bytes, target: bytes) -> list[tuple[bytes, bytes]]:
    """Headers of the one reply: where to go, an empty body, and the date."""
    return [
        (b"Location", base_url + target),
        (b"Content-Length", b"0"),
        (b"Date", format_date_time(None).encode("ascii")),
    ]


async def next_event(stream: trio.SocketStream, conn: h11.Connection) -> h11.Event:
    """The next h11 event, receiving from the stream as long as h11 needs data."""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(MAX_RECEIVE_BYTES))
        elif event is h11.PAUSED:
            raise h11.LocalProtocolError("paused: the previous cycle was not finished")
        else:
            assert isinstance(event, h11.Event)
            return event


async def answer_one_request(stream: trio.SocketStream, conn: h11.Connection, base_url: bytes) -> bool:
    """Redirect one request; return whether the connection can carry another one."""
    request = await next_event(stream, conn)
    if not isinstance(request, h11.Request):
        return False  # ConnectionClosed between requests: the client is done.
    response = h11.Response(
        status_code=REDIRECT_STATUS,
        reason=REDIRECT_REASON,
        headers=redirect_headers(base_url, request.target),
    )
    # Answer before reading any body: a client sending `Expect: 100-continue` then gets its final status at
    # once (RFC 9110 §10.1.1) and we never send 100. Whatever body follows is read and dropped below. One
    # send_all for both events: one write, one TCP segment.
    await stream.send_all(conn.send(response) + conn.send(h11.EndOfMessage()))
    while not isinstance(await next_event(stream, conn), h11.EndOfMessage):
        pass
    return conn.our_state is h11.DONE and conn.their_state is h11.DONE


async def serve_connection(stream: trio.SocketStream, base_url: bytes) -> None:
    """Answer requests on one connection until the client or h11 says it is over."""
    conn = h11.Connection(h11.SERVER)
    # A broken or misbehaving client only loses its own connection, which trio.serve_listeners closes: the
    # other clients go on being served.
    with contextlib.suppress(h11.ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
        while await answer_one_request(stream, conn, base_url):
            conn.start_next_cycle()


async def serve(host: str, port: int) -> None:
    """Bind, announce the bound address on stdout, then serve until cancelled."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound_host, bound_port = listeners[0].socket.getsockname()[:2]
    base_url = f"http://{bound_host}:{bound_port}".encode("ascii")
    print(f"listening on {bound_host}:{bound_port}", flush=True)

    async def handler(stream: trio.SocketStream) -> None:
        await serve_connection(stream, base_url)

    await trio.serve_listeners(handler, listeners)


def main() -> None:
    parser = argparse.ArgumentParser(description="trio + h11 server that answers every request with a 307")
    parser.add_argument("--listen", type=parse_listen, default=("127.0.0.1", 8080), metavar="HOST:PORT")
    host, port = parser.parse_args().listen
    with contextlib.suppress(KeyboardInterrupt):
        trio.run(serve, host, port)


if __name__ == "__main__":
    main()
