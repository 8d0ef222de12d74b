# Many backends on one port, for the benchmarks of large pools: every path that ends in `/health` is a
# passing health check, so `http://127.0.0.1:PORT/b0001` .. `/b1000` are a thousand backends to the
# dispatcher (it checks `GET <prefix>/health`), served by one small process.
#
# Why: a pool of 1,000 backends checked every second needs 1,000 answers a second. A thousand
# `python -m http.server` processes would cost gigabytes and close every connection after each check
# (HTTP/1.0); this answers on kept-alive connections, with `X-Load: 0` (the dispatcher's load protocol) and
# an empty body, so that the cost measured is the dispatcher's, not the backends'.
#
# Also answers `GET /checks` with the number of health checks answered since start, so that a benchmark
# can tell how many checks a second the dispatcher really made, without asking the dispatcher (a scrape of
# 1,000 backends' metrics is not free). Anything else is 404.
#
# Shaped like baseline.py (h11's examples/trio-server.py, cut down). It must not import `dispatcher`.
#
#   python benchmarks/backends.py --listen 127.0.0.1:9000

import argparse
import contextlib
import resource

import h11
import trio
from baseline import next_event  # the same event reader as the baseline server (benchmarks/ is on the path)

# The dispatcher keeps one connection per backend: 1,000 backends are 1,000 sockets here, past the usual
# soft limit of 1,024 file descriptors with the listener and stdio. Raised to the hard limit or to this.
WANTED_FILES = 65536
HEALTH_SUFFIX = b"/health"
CHECKS_PATH = b"/checks"
REASONS = {200: b"OK", 404: b"Not Found"}


class Counter:
    """Health checks answered since start."""

    def __init__(self) -> None:
        self.checks = 0


def parse_listen(address: str) -> tuple[str, int]:
    """Split `HOST:PORT` (the `--listen` argument) into its host and port."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {address!r}")
    return host, int(port)


def raise_file_limit() -> None:
    """Lift the soft RLIMIT_NOFILE towards the hard one, so that a thousand checkers can connect."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = WANTED_FILES if hard == resource.RLIM_INFINITY else min(WANTED_FILES, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def answer_for(target: bytes, counter: Counter) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Status, headers and body for a request target."""
    path = target.partition(b"?")[0]
    if path.endswith(HEALTH_SUFFIX):
        counter.checks += 1
        return 200, [(b"X-Load", b"0")], b""
    if path == CHECKS_PATH:
        return 200, [(b"Content-Type", b"text/plain")], f"{counter.checks}\n".encode()
    return 404, [(b"Content-Type", b"text/plain")], b"not found: try <prefix>/health or /checks\n"


async def answer_one_request(stream: trio.SocketStream, conn: h11.Connection, counter: Counter) -> bool:
    """Answer one request; return whether the connection can carry another one."""
    request = await next_event(stream, conn)
    if not isinstance(request, h11.Request):
        return False  # ConnectionClosed between requests: the client is done.
    while not isinstance(await next_event(stream, conn), h11.EndOfMessage):
        pass  # a health check has no body; drop whatever a stray client sends
    status, headers, body = answer_for(request.target, counter)
    headers.append((b"Content-Length", str(len(body)).encode()))
    # The standard reason phrase: some clients' parsers (llhttp) fail on an empty one.
    response = h11.Response(status_code=status, reason=REASONS[status], headers=headers)
    head = conn.send(response)
    data = conn.send(h11.Data(data=body)) if body else b""
    await stream.send_all(head + data + conn.send(h11.EndOfMessage()))
    return conn.our_state is h11.DONE and conn.their_state is h11.DONE


async def serve_connection(stream: trio.SocketStream, counter: Counter) -> None:
    """Answer requests on one connection until the client or h11 says it is over."""
    conn = h11.Connection(h11.SERVER)
    with contextlib.suppress(h11.ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
        while await answer_one_request(stream, conn, counter):
            conn.start_next_cycle()


async def serve(host: str, port: int) -> None:
    """Bind, announce the bound address on stdout, then serve until cancelled."""
    counter = Counter()
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound_host, bound_port = listeners[0].socket.getsockname()[:2]
    print(f"listening on {bound_host}:{bound_port}", flush=True)

    async def handler(stream: trio.SocketStream) -> None:
        await serve_connection(stream, counter)

    await trio.serve_listeners(handler, listeners)


def main() -> None:
    parser = argparse.ArgumentParser(
        description="one port, many backends: GET <any prefix>/health is 200 with X-Load: 0"
    )
    parser.add_argument("--listen", type=parse_listen, default=("127.0.0.1", 9000), metavar="HOST:PORT")
    host, port = parser.parse_args().listen
    raise_file_limit()
    with contextlib.suppress(KeyboardInterrupt):
        trio.run(serve, host, port)


if __name__ == "__main__":
    main()
