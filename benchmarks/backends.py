# Many backends on one port, for the benchmarks of large pools: every path that ends in `/health` is a
# passing health check, so `http://127.0.0.1:PORT/b0001` .. `/b1000` are a thousand backends to the
# dispatcher (it checks `GET <prefix>/health`), served by one small process.
#
# Why: a pool of 1,000 backends checked every second needs 1,000 answers a second. A thousand
# `python -m http.server` processes would cost gigabytes and close every connection after each check
# (HTTP/1.0); this answers on kept-alive connections, with `X-Load: 0` (the dispatcher's load protocol) and
# an empty body, so that the cost measured is the dispatcher's, not the backends'. `--vary-load` answers
# a random `X-Load` of 0 to 9 instead, so that the pool's order moves with every check.
#
# `--stream` (issue 6's load streams): a check whose `Accept` offers `text/event-stream` is answered
# `200 text/event-stream`, chunked, with a first event at once (the check passes with it), and the
# answer stays open: every stream then gets `data: <load>\n\n` (a random load of 0 to 9, so that the
# pool's order moves) `--events-per-second` times a second, and a heartbeat comment (`:\n\n`) when it
# has had nothing for `--heartbeat` seconds. A check that does not offer a stream is answered as above.
# How it stays cheap at 10,000 events a second (1,000 streams x 10): one writer task, not a task per
# stream. It wakes every `--tick` (1 ms) and sends the events that fell due since its last wake-up, to
# the streams next in turn (a cursor goes round them), so that the events are spread evenly over time
# and over the streams, never sent as one burst per second; a late wake-up sends what it owes (the
# rate holds on average). Each stream gets one write per wake-up with its events joined, already framed
# as HTTP/1.1 chunks (`<hex length>\r\n<event>\r\n`, RFC 9112 §7.1), written straight to the socket
# (`os.write` on trio's non-blocking descriptor: no await, no task switch per event). A stream whose
# reader lags keeps the unsent bytes and gets them first at its next turn; one that falls more than
# MAX_BACKLOG behind is given up (the dispatcher's silence rule then reconnects it).
#
# Also answers `GET /checks` with the number of health checks answered since start (a stream's opening
# request counts as one), `GET /events` with the load events written to streams since start, and
# `GET /streams` with the streams open now, so that a benchmark can tell what the dispatcher really did
# without asking it (a scrape of 1,000 backends' metrics is not free). Anything else is 404.
#
# Shaped like baseline.py (h11's examples/trio-server.py, cut down). It must not import `dispatcher`.
#
#   python benchmarks/backends.py --listen 127.0.0.1:9000 [--vary-load]
#                                 [--stream [--events-per-second 10] [--heartbeat 1] [--tick 0.001]]

import argparse
import contextlib
import os
import random
import resource
from dataclasses import dataclass

import h11
import trio
from baseline import (
    MAX_RECEIVE_BYTES,
    next_event,
)  # the baseline server's reader (benchmarks/ is on the path)

# The dispatcher keeps one connection per backend: 1,000 backends are 1,000 sockets here, past the usual
# soft limit of 1,024 file descriptors with the listener and stdio. Raised to the hard limit or to this.
WANTED_FILES = 65536
HEALTH_SUFFIX = b"/health"
CHECKS_PATH = b"/checks"
EVENTS_PATH = b"/events"
STREAMS_PATH = b"/streams"
REASONS = {200: b"OK", 404: b"Not Found"}
EVENT_STREAM = b"text/event-stream"
# Loads 0 to 9: with 1,000 backends about a hundred share the lowest load at any time, and each report
# moves its backend in the pool's order.
LOADS = 10
SEED = 6  # the loads are random, but the same in every run (issue 6)
# Each event and the heartbeat, framed once as an HTTP/1.1 chunk.
EVENT_FRAMES = tuple(b"%x\r\n%s\r\n" % (len(e), e) for e in (b"data: %d\n\n" % load for load in range(LOADS)))
HEARTBEAT_FRAME = b"3\r\n:\n\n\r\n"
# A stream that stops reading is given up past this many unsent bytes: 90 s of events at 10 a second.
MAX_BACKLOG = 16 * 1024


@dataclass
class Counter:
    """What was answered and sent since start."""

    checks: int = 0  # health checks answered, streams opened included
    events: int = 0  # load events written to streams
    heartbeats: int = 0


@dataclass(frozen=True)
class StreamSettings:
    """--stream's schedule."""

    events_per_second: float  # per stream
    heartbeat_seconds: float  # a comment after this long without an event
    tick_seconds: float  # how often the writer wakes


class Outgoing:
    """One open load stream: its socket's descriptor, the bytes it could not take yet, its last send."""

    __slots__ = ("backlog", "fd", "given_up", "sent_at")

    def __init__(self, fd: int, now: float) -> None:
        self.fd = fd
        self.backlog = b""
        self.sent_at = now
        self.given_up = False  # it stopped reading, or its connection broke: nothing more is written

    def write(self, data: bytes, now: float) -> None:
        """Write `data` after any backlog, without waiting; keep what the socket did not take."""
        if self.given_up:
            return
        data = self.backlog + data if self.backlog else data
        try:
            written = os.write(self.fd, data)
        except BlockingIOError:
            written = 0
        except OSError:  # reset or closed by the reader; the connection's task will see it end
            self.given_up = True
            return
        self.backlog = data[written:]
        self.given_up = len(self.backlog) > MAX_BACKLOG
        self.sent_at = now


class Streams:
    """Every open load stream, and the writer that spreads their events over time."""

    def __init__(self, settings: StreamSettings, counter: Counter) -> None:
        self.settings = settings
        self.counter = counter
        self.open: list[Outgoing] = []
        self._random = random.Random(SEED)
        self._cursor = 0  # the stream whose turn is next
        self._owed = 0.0  # events due but not sent yet (the fraction of one, after each wake-up)

    def event(self) -> bytes:
        """One framed event with a random load."""
        return self._random.choice(EVENT_FRAMES)

    async def run(self) -> None:
        """Wake every tick; send the events that fell due since the last one; heartbeat the quiet."""
        settings = self.settings
        last = trio.current_time()
        next_heartbeats = last + settings.heartbeat_seconds / 2
        while True:
            await trio.sleep_until(last + settings.tick_seconds)
            now = trio.current_time()
            self._owed += (now - last) * settings.events_per_second * len(self.open)
            last = now
            self._send_due(now)
            if now >= next_heartbeats:
                self._heartbeat(now)
                next_heartbeats = now + settings.heartbeat_seconds / 2

    def _send_due(self, now: float) -> None:
        """The events owed, to the streams next in turn: one write per stream, its events joined."""
        count, due = len(self.open), int(self._owed)
        if not count or not due:
            return
        self._owed -= due
        rounds, rest = divmod(due, count)  # rounds > 0 only after a late wake-up
        for offset in range(count if rounds else rest):
            stream = self.open[(self._cursor + offset) % count]
            events = rounds + (offset < rest)
            stream.write(b"".join([self.event() for _ in range(events)]), now)
        self.counter.events += due
        self._cursor = (self._cursor + rest) % count

    def _heartbeat(self, now: float) -> None:
        quiet_since = now - self.settings.heartbeat_seconds
        for stream in self.open:
            if stream.sent_at <= quiet_since:
                stream.write(HEARTBEAT_FRAME, now)
                self.counter.heartbeats += 1

    async def serve(self, stream: trio.SocketStream, head: bytes) -> None:
        """Open a load stream on the connection: the head and a first event, then events until the
        dispatcher closes it (it sends nothing more on a stream)."""
        await stream.send_all(head + self.event())
        self.counter.events += 1
        outgoing = Outgoing(stream.socket.fileno(), trio.current_time())
        self.open.append(outgoing)
        try:
            while await stream.receive_some(MAX_RECEIVE_BYTES):
                pass
        finally:
            self.open.remove(outgoing)  # before the descriptor is closed and reused


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


class Backends:
    """The answers: health checks (polled or streamed), the counters, 404 for the rest."""

    def __init__(self, counter: Counter, vary_load: bool, streams: Streams | None) -> None:
        self.counter = counter
        self.streams = streams
        self._random = random.Random(SEED) if vary_load else None

    def load(self) -> bytes:
        return b"0" if self._random is None else str(self._random.randrange(LOADS)).encode()

    def answer_for(self, target: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """Status, headers and body for a request target."""
        path = target.partition(b"?")[0]
        counter = self.counter
        if path.endswith(HEALTH_SUFFIX):
            counter.checks += 1
            return 200, [(b"X-Load", self.load())], b""
        counts = {CHECKS_PATH: counter.checks, EVENTS_PATH: counter.events}
        counts[STREAMS_PATH] = len(self.streams.open) if self.streams else 0
        if path in counts:
            return 200, [(b"Content-Type", b"text/plain")], f"{counts[path]}\n".encode()
        body = b"not found: try <prefix>/health, /checks, /events or /streams\n"
        return 404, [(b"Content-Type", b"text/plain")], body

    def streamed(self, request: h11.Request) -> bool:
        """Whether to answer this request with a load stream."""
        if self.streams is None or not request.target.partition(b"?")[0].endswith(HEALTH_SUFFIX):
            return False
        return any(name == b"accept" and EVENT_STREAM in value.lower() for name, value in request.headers)

    async def answer_one_request(self, stream: trio.SocketStream, conn: h11.Connection) -> bool:
        """Answer one request; return whether the connection can carry another one."""
        request = await next_event(stream, conn)
        if not isinstance(request, h11.Request):
            return False  # ConnectionClosed between requests: the client is done.
        while not isinstance(await next_event(stream, conn), h11.EndOfMessage):
            pass  # a health check has no body; drop whatever a stray client sends
        if self.streams is not None and self.streamed(request):
            self.counter.checks += 1
            # No Content-Length: h11 frames the body as chunks, which Streams writes itself.
            headers = [(b"Content-Type", EVENT_STREAM), (b"Cache-Control", b"no-cache")]
            await self.streams.serve(
                stream, conn.send(h11.Response(status_code=200, reason=REASONS[200], headers=headers))
            )
            return False
        status, headers, body = self.answer_for(request.target)
        headers.append((b"Content-Length", str(len(body)).encode()))
        # The standard reason phrase: some clients' parsers (llhttp) fail on an empty one.
        response = h11.Response(status_code=status, reason=REASONS[status], headers=headers)
        head = conn.send(response)
        data = conn.send(h11.Data(data=body)) if body else b""
        await stream.send_all(head + data + conn.send(h11.EndOfMessage()))
        return conn.our_state is h11.DONE and conn.their_state is h11.DONE

    async def serve_connection(self, stream: trio.SocketStream) -> None:
        """Answer requests on one connection until the client or h11 says it is over."""
        conn = h11.Connection(h11.SERVER)
        with contextlib.suppress(h11.ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
            while await self.answer_one_request(stream, conn):
                conn.start_next_cycle()


async def serve(host: str, port: int, vary_load: bool, stream_settings: StreamSettings | None) -> None:
    """Bind, announce the bound address on stdout, then serve until cancelled."""
    counter = Counter()
    streams = Streams(stream_settings, counter) if stream_settings else None
    backends = Backends(counter, vary_load, streams)
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound_host, bound_port = listeners[0].socket.getsockname()[:2]
    print(f"listening on {bound_host}:{bound_port}", flush=True)
    async with trio.open_nursery() as nursery:
        if streams is not None:
            nursery.start_soon(streams.run)
        nursery.start_soon(trio.serve_listeners, backends.serve_connection, listeners)


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(
        description="one port, many backends: GET <any prefix>/health is 200 with X-Load: 0"
    )
    parser.add_argument("--listen", type=parse_listen, default=("127.0.0.1", 9000), metavar="HOST:PORT")
    parser.add_argument("--vary-load", action="store_true", help="answer checks with a random X-Load 0-9")
    parser.add_argument(
        "--stream", action="store_true", help="answer checks that accept text/event-stream with a load stream"
    )
    parser.add_argument(
        "--events-per-second", type=positive_float, default=10.0, help="per stream (default 10)"
    )
    parser.add_argument(
        "--heartbeat", type=positive_float, default=1.0, help="seconds of quiet before a comment (default 1)"
    )
    parser.add_argument(
        "--tick", type=positive_float, default=0.001, help="seconds between the writer's wake-ups (0.001)"
    )
    args = parser.parse_args()
    settings = StreamSettings(args.events_per_second, args.heartbeat, args.tick) if args.stream else None
    host, port = args.listen
    raise_file_limit()
    with contextlib.suppress(KeyboardInterrupt):
        trio.run(serve, host, port, args.vary_load, settings)


if __name__ == "__main__":
    main()
