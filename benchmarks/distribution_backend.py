"""The backends of `distribution.py`: N single-threaded HTTP/1.1 servers in one trio process.

Owns: N servers on N loopback ports, each serving `GET /work?s=SECONDS` one request at a time in
arrival order, and reporting its true queue (requests in flight there: waiting + in service) on
`GET /health`, polled or, with `--stream`, as Server-Sent Events; `GET /stats` on any port gives
the counters of all of them as JSON.
Rules: it must not import `dispatcher` (the benchmark measures the dispatcher as users run it). Health
requests are served beside the queue, never in it, and are not counted in the load.

The model is M/M/1 per backend, FIFO: the client draws the service demand `s` of each request (an
exponential of mean S, so that every way of routing in a round replays the same demands) and a
backend serves it in `s x slowness` seconds (`--slowness 1,1,4`: the third is 4x slower).
- One at a time, in order: every request takes the backend's `trio.Lock`, which trio hands over
  in FIFO order (trio.Lock is fair).
- Exact service times: a request is due `service` after the later of its arrival and the previous
  request's *due* time, and sleeps until then. Counting from when the previous one really ended
  would add each wake-up's lateness (epoll's 1 ms rounding, a busy loop) to the next service: at
  a load of 0.9 half a millisecond on 20 ms is a load of 0.92 and 12 % more waiting (1/(1-load)).
  `/stats` gives how late the wake-ups were.
- The load is +1 when the request head is read and -1 once its response is written.

Health (the dispatcher's load protocol, README "Health checks and the load protocol"):
- poll: `200`, `X-Load: N`, body `{"load": N}`;
- stream (`--stream`, and the request's `Accept` has `text/event-stream`): `200`,
  `Content-Type: text/event-stream`, chunked, held open: `data: {"load": N}` at once and on every
  change of N, at most one event every COALESCE, and a `:` comment after HEARTBEAT of quiet.
  Without `--stream` the same request gets the poll answer, so the dispatcher must fall back.

    python benchmarks/distribution_backend.py --ports 9001,9002 --slowness 1,4 [--stream]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from urllib.parse import parse_qs

import h11
import trio
from baseline import next_event  # benchmarks/ is on the path when this runs as a script

HOST = "127.0.0.1"
# The load stream's contract: changes coalesced to one event per 2 ms at most, a comment after
# 0.5 s of quiet so that the reader can tell a quiet backend from a dead connection.
COALESCE = 0.002
HEARTBEAT = 0.5
EVENT_STREAM = b"text/event-stream"
RECEIVE_BYTES = 65536
REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found"}


@dataclass
class Backend:
    """One single-threaded server: its queue, its load and what it has done."""

    index: int
    port: int
    slowness: float
    load: int = 0
    due: float = 0.0  # when the request in service (or the last one) is due to end
    lock: trio.Lock = field(default_factory=trio.Lock)
    changed: trio.Event = field(default_factory=trio.Event)
    served: int = 0
    busy_seconds: float = 0.0
    lateness_seconds: float = 0.0
    polls: int = 0
    streams_opened: int = 0
    streams_open: int = 0
    events: int = 0
    heartbeats: int = 0
    peak_load: int = 0

    def add_load(self, delta: int) -> None:
        """Change the queue by `delta` and wake every load stream."""
        self.load += delta
        self.peak_load = max(self.peak_load, self.load)
        self.changed.set()
        self.changed = trio.Event()

    async def serve(self, demand: float) -> None:
        """Wait for the requests ahead, then serve this one for `demand x slowness` seconds."""
        arrived = trio.current_time()
        async with self.lock:
            service = demand * self.slowness
            self.due = max(arrived, self.due) + service
            await trio.sleep_until(self.due)
            self.lateness_seconds += trio.current_time() - self.due
            self.busy_seconds += service
            self.served += 1

    def stats(self) -> dict[str, float]:
        """The counters, for `GET /stats`."""
        names = ("served", "busy_seconds", "lateness_seconds", "polls", "streams_opened")
        more = ("streams_open", "events", "heartbeats", "peak_load", "load", "slowness", "port")
        return {name: float(getattr(self, name)) for name in (*names, *more)}


def poll_answer(load: int) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """The polled health answer: the load in the header and in a JSON body."""
    body = json.dumps({"load": load}).encode()
    return 200, [(b"X-Load", str(load).encode()), (b"Content-Type", b"application/json")], body


def demand_of(target: bytes) -> float | None:
    """The service demand `s` of `/work?s=SECONDS`; None when missing or not a finite number >= 0."""
    query = parse_qs(target.partition(b"?")[2].decode("ascii", "replace"))
    try:
        demand = float(query.get("s", [""])[0])
    except ValueError:
        return None
    return demand if math.isfinite(demand) and demand >= 0 else None


def wants_stream(request: h11.Request) -> bool:
    """Whether the request asks for the load stream (its Accept names text/event-stream)."""
    return any(name == b"accept" and EVENT_STREAM in value.lower() for name, value in request.headers)


async def send(stream: trio.SocketStream, conn: h11.Connection, *events: h11.Event) -> None:
    """Serialise the events and write them in one send."""
    await stream.send_all(b"".join(conn.send(event) or b"" for event in events))


async def answer(
    stream: trio.SocketStream, conn: h11.Connection, reply: tuple[int, list[tuple[bytes, bytes]], bytes]
) -> None:
    """Write a whole response with a Content-Length."""
    status, headers, body = reply
    headers = [*headers, (b"Content-Length", str(len(body)).encode())]
    response = h11.Response(status_code=status, reason=REASONS[status], headers=headers)
    await send(stream, conn, response, h11.Data(data=body), h11.EndOfMessage())


async def work(stream: trio.SocketStream, conn: h11.Connection, backend: Backend, demand: float) -> None:
    """Queue, serve and answer one request; the load counts it until its answer is written."""
    backend.add_load(1)
    try:
        await backend.serve(demand)
        await answer(stream, conn, (200, [(b"Content-Type", b"text/plain")], b"done\n"))
    finally:
        backend.add_load(-1)


async def stream_loads(stream: trio.SocketStream, conn: h11.Connection, backend: Backend) -> None:
    """Hold the load stream open: an event at once and on every change, a comment when quiet."""
    headers = [(b"Content-Type", EVENT_STREAM), (b"Cache-Control", b"no-cache")]
    # No Content-Length on an HTTP/1.1 answer: h11 frames it chunked.
    await send(stream, conn, h11.Response(status_code=200, reason=b"OK", headers=headers))
    backend.streams_opened += 1
    backend.streams_open += 1
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cancel_on_close, stream, nursery.cancel_scope)
            await write_events(stream, conn, backend)
    finally:
        backend.streams_open -= 1


async def cancel_on_close(stream: trio.SocketStream, scope: trio.CancelScope) -> None:
    """Read (and drop) until the reader closes its end, then end the stream at once."""
    while await stream.receive_some(RECEIVE_BYTES):
        pass
    scope.cancel()


async def write_events(stream: trio.SocketStream, conn: h11.Connection, backend: Backend) -> None:
    """The loop of `stream_loads`, until the reader goes away (a failed write)."""
    sent: int | None = None
    last_event = -math.inf
    last_write = trio.current_time()
    while True:
        changed = backend.changed
        if backend.load != sent:
            await trio.sleep_until(last_event + COALESCE)
            if backend.load == sent:
                continue  # changed back meanwhile: nothing new to say
            sent = backend.load
            await send(stream, conn, h11.Data(data=b'data: {"load": %d}\n\n' % sent))
            backend.events += 1
            last_event = last_write = trio.current_time()
            continue
        with trio.move_on_at(last_write + HEARTBEAT):
            await changed.wait()
        if not changed.is_set():
            await send(stream, conn, h11.Data(data=b":\n\n"))
            backend.heartbeats += 1
            last_write = trio.current_time()


async def answer_one(
    stream: trio.SocketStream, conn: h11.Connection, backend: Backend, pool: list[Backend], streams: bool
) -> bool:
    """Answer one request; return whether the connection can carry another one."""
    request = await next_event(stream, conn)
    if not isinstance(request, h11.Request):
        return False  # the client closed between requests
    while not isinstance(await next_event(stream, conn), h11.EndOfMessage):
        pass  # no request here has a body; drop a stray one
    path = request.target.partition(b"?")[0]
    if path == b"/work":
        demand = demand_of(request.target)
        if demand is None:
            await answer(stream, conn, (400, [], b"expected /work?s=SECONDS\n"))
        else:
            await work(stream, conn, backend, demand)
    elif path == b"/health" and streams and wants_stream(request):
        await stream_loads(stream, conn, backend)
        return False
    elif path == b"/health":
        backend.polls += 1
        await answer(stream, conn, poll_answer(backend.load))
    elif path == b"/stats":
        body = json.dumps([member.stats() for member in pool]).encode()
        await answer(stream, conn, (200, [(b"Content-Type", b"application/json")], body))
    else:
        await answer(stream, conn, (404, [], b"try /work?s=SECONDS, /health or /stats\n"))
    return conn.our_state is h11.DONE and conn.their_state is h11.DONE


async def handle(stream: trio.SocketStream, backend: Backend, pool: list[Backend], streams: bool) -> None:
    """One connection: requests in turn until either side closes; a bad client only loses its own."""
    conn = h11.Connection(h11.SERVER)
    try:
        while await answer_one(stream, conn, backend, pool, streams):
            conn.start_next_cycle()
    except (h11.ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        await trio.aclose_forcefully(stream)


async def serve(ports: Sequence[int], slowness: Sequence[float], streams: bool) -> None:
    """Every backend's server, until cancelled."""
    pool = [
        Backend(index, port, factor) for index, (port, factor) in enumerate(zip(ports, slowness, strict=True))
    ]
    async with trio.open_nursery() as nursery:
        for backend in pool:
            handler = partial(handle, backend=backend, pool=pool, streams=streams)
            await nursery.start(partial(trio.serve_tcp, handler, backend.port, host=HOST))
        print(f"serving {len(pool)} backends on ports {','.join(map(str, ports))}", flush=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="single-threaded FIFO backends reporting their queue")
    parser.add_argument("--ports", required=True, help="comma-separated loopback ports, one per backend")
    parser.add_argument("--slowness", help="comma-separated service-time factors (default all 1)")
    parser.add_argument("--stream", action="store_true", help="offer the load stream on /health")
    args = parser.parse_args(argv)
    args.ports = [int(port) for port in args.ports.split(",")]
    factors = args.slowness.split(",") if args.slowness else ["1"] * len(args.ports)
    args.slowness = [float(factor) for factor in factors]
    if len(args.slowness) != len(args.ports):
        parser.error("--slowness needs one factor per port")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        trio.run(serve, args.ports, args.slowness, args.stream)


if __name__ == "__main__":
    main()
