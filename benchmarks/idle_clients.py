# Idle keep-alive clients, for the memory benchmark: open N connections to a front door, send one request
# on each, read its answer, then hold every connection open without a word until told to stop.
#
# Why: what a server costs per open connection is what matters when thousands of clients keep their
# connections between requests (browsers, SDKs with pools). One request on each makes the server set up
# everything a served connection has (its task, its parser, its buffers), not just an accepted socket.
#
# Protocol with the parent (benchmarks/bench.py): once every connection is open and answered (or has
# failed), one line on stdout: `open <ok> failed <failed>[ <first failure>]`. The connections then stay
# open until stdin is closed (or reaches EOF), or --hold seconds have passed, whichever comes first. Every
# step is bounded: a connection that does not connect and get its answer within --timeout counts as failed.
# It must not import `dispatcher`.
#
#   python benchmarks/idle_clients.py --port 8080 --count 10000

import argparse
import contextlib
import resource
import sys

import trio

# Opening connections in parallel, but not all at once: the listen backlog (Linux somaxconn, 4096 by
# default) would overflow and the kernel would drop SYNs, turning the start-up into retransmit timeouts.
CONCURRENT_OPENS = 256
MAX_HEAD = 16 * 1024
# Sockets of our own beyond the connections: stdio, trio's wakeup pipe and epoll, some slack.
SPARE_FILES = 64


class Tally:
    """How the connections fared."""

    def __init__(self) -> None:
        self.ok = 0
        self.failed = 0
        self.first_failure = ""

    def fail(self, reason: str) -> None:
        self.failed += 1
        self.first_failure = self.first_failure or reason


def raise_file_limit(count: int) -> None:
    """Lift the soft RLIMIT_NOFILE so that `count` connections fit; fail clearly if the hard one is lower."""
    wanted = count + SPARE_FILES
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < wanted:
        raise SystemExit(f"idle_clients: {count} connections need {wanted} files, the hard limit is {hard}")
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


async def read_head(stream: trio.SocketStream) -> bytes:
    """Bytes up to the end of the response head (a redirect has an empty body)."""
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = await stream.receive_some(MAX_HEAD)
        if not chunk:
            raise ConnectionError("closed before the answer")
        received += chunk
        if len(received) > MAX_HEAD:
            raise ConnectionError("answer head too large")
    return received


async def open_one(
    host: str,
    port: int,
    index: int,
    limiter: trio.CapacityLimiter,
    streams: list[trio.SocketStream],
    tally: Tally,
) -> None:
    """Connect, send one request, check that it is answered with a 307 and keep the connection."""
    request = f"GET /idle/{index} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
    async with limiter:
        try:
            stream = await trio.open_tcp_stream(host, port)
        except OSError as error:
            tally.fail(f"connect: {error}")
            return
        try:
            await stream.send_all(request)
            head = await read_head(stream)
        except (OSError, ConnectionError, trio.BrokenResourceError) as error:
            await stream.aclose()
            tally.fail(f"request: {error}")
            return
    if not head.startswith(b"HTTP/1.1 307 "):
        await stream.aclose()
        tally.fail(f"answer: {head.splitlines()[0]!r}")
        return
    streams.append(stream)
    tally.ok += 1


async def open_all(host: str, port: int, count: int, timeout: float) -> tuple[list[trio.SocketStream], Tally]:
    """Open `count` answered connections; those not done within `timeout` count as failed."""
    streams: list[trio.SocketStream] = []
    tally = Tally()
    limiter = trio.CapacityLimiter(CONCURRENT_OPENS)
    with trio.move_on_after(timeout):
        async with trio.open_nursery() as nursery:
            for index in range(count):
                nursery.start_soon(open_one, host, port, index, limiter, streams, tally)
    unfinished = count - tally.ok - tally.failed
    for _ in range(unfinished):
        tally.fail(f"not open and answered within {timeout:g} s")
    return streams, tally


async def hold(seconds: float) -> None:
    """Wait until stdin reaches EOF (the parent closed it) or `seconds` have passed."""
    with trio.move_on_after(seconds):
        stdin = trio.lowlevel.FdStream(sys.stdin.fileno())
        while await stdin.receive_some():
            pass


async def run(host: str, port: int, count: int, timeout: float, hold_seconds: float) -> None:
    streams, tally = await open_all(host, port, count, timeout)
    print(f"open {tally.ok} failed {tally.failed} {tally.first_failure}".rstrip(), flush=True)
    try:
        await hold(hold_seconds)
    finally:
        for stream in streams:
            await trio.aclose_forcefully(stream)


def main() -> None:
    parser = argparse.ArgumentParser(description="open N idle keep-alive connections and hold them")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to open them all (default 60)")
    parser.add_argument(
        "--hold", type=float, default=600.0, help="seconds to hold them at most (default 600)"
    )
    args = parser.parse_args()
    raise_file_limit(args.count)
    with contextlib.suppress(KeyboardInterrupt):
        trio.run(run, args.host, args.port, args.count, args.timeout, args.hold)


if __name__ == "__main__":
    main()
