"""How well the dispatcher spreads load, live, next to three client-side baselines in the same run.

What it measures: N single-threaded FIFO backends (`distribution_backend.py`, one process; service
times exponential of mean S, some optionally slower) are loaded to `--load` of their total capacity
by open-loop Poisson arrivals (this process), and each request is routed one of these ways:
- `dispatcher`: `GET` to a real `python -m dispatcher` front door (started as a user starts it,
  `--dispatchers 2`: two processes taking the requests in turn), then to the backend its 307 names;
- `random`: a uniformly random backend;
- `round-robin`: the backends in turn;
- `jsq`: fresh join-shortest-queue, the backend with the fewest requests outstanding, ties at random.
  Fresh, because the counts are the clients' own: only these clients load the backends and a
  backend serves only what it was sent, so a backend's outstanding count here (sent and not yet
  answered) is its true queue at every instant. It is what a dispatcher with perfect, instant
  knowledge would do: the bar the dispatcher's load reports are measured against.
The figure of each way is the time spent at the backend (from sending the request to the backend to
its full answer: waiting + service), its mean and p99; the dispatcher's own redirect time is given
apart. Ratios to JSQ, random and round-robin of the same run are what to read.

Why open-loop Poisson: a closed loop (N clients, each sending when its last answer came) slows its own
arrivals down when the backends are slow, which hides queueing; real traffic does not wait for the
server. Arrivals are drawn in advance and each request is sent at its time whatever happened before;
the output says how late the client was on its schedule (`lateness`), since a late client would
smooth the arrivals and flatter every way.

Why interleaved blocks: the machine's speed drifts (a VM, other work on 2 cores), so the ways take
turns, in blocks of `--block-seconds`, `--blocks` rounds, the order rotated every round, so that a
drift falls on all of them alike. Every way in a round replays the same arrival times and the same
service demands (common random numbers: the client draws each request's demand and the backend
serves it for demand x its slowness), so that the ways differ in their routing only. Before a block
starts, every request of the previous one has been answered (all outstanding counts are 0), and its
first `--warmup` seconds are not counted: the queues start empty and the dispatcher's estimates need
a moment to see the new traffic. (Starting empty lowers the mean of a slowly relaxing way most: random
at 0.9 measured 185 ms in blocks of 10 s against its long run's 243, so short blocks make the ratios
to random, if anything, against the dispatcher; the matrix's polled goals also run in blocks 4x as
long with a warm-up 5x, `STEADY_BLOCKS`.)
A dispatcher idle through the other ways' blocks meets a step of traffic at each of its own, which
its estimates take some seconds to follow; `--lead-in` sends it that many seconds of traffic (drawn
apart, never counted) before its block, and the "2nd half" column shows each way's settled figure.

Processes: backends in one, the clients in this one, each dispatcher in its own; nothing pinned (2
cores). A matrix's scenarios that share backends run as one run with several dispatcher ways (every
dispatcher is up throughout, checking the backends; only the way whose block it is gets traffic), so
that one dispatcher setup is compared with another in the same run.

    python benchmarks/distribution.py                     # one scenario from the flags (streaming)
    python benchmarks/distribution.py --poll --quick      # a short poll-only run
    python benchmarks/distribution.py --matrix            # the goals of issue 6, about 16 minutes
    python benchmarks/distribution.py --matrix --quick    # the same, short: about 2 minutes
    python benchmarks/distribution.py --sim               # the simulation (benchmarks/simulate.py)
"""

from __future__ import annotations

import argparse
import gc
import importlib
import itertools
import json
import math
import os
import random
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from types import FrameType

import harness
import httptools
import trio
from harness import HOST, BenchError

BACKEND_SCRIPT = harness.BENCHMARKS_DIR / "distribution_backend.py"
BASELINES = ("random", "round-robin", "jsq")
# A request that takes this long is broken, not slow: even an overloaded baseline drains in seconds.
REQUEST_TIMEOUT = 120.0
# Every dispatcher checks its backends at once when it starts; 30 s covers a slow, busy machine.
READY_TIMEOUT = 30.0
RECEIVE_BYTES = 65536
# The first arrival of a block is this far after the block is set up, so that it is not late.
BLOCK_LEAD = 0.02
# trio's timers wait in epoll, which takes whole milliseconds and rounds the wait up (CPython's
# select.epoll.poll: ROUND_CEILING): a sleep until t wakes up to 1 ms after t, 0.5 ms late on average.
# Each arrival's timer is set this much earlier, so that it fires within +/- 0.5 ms of its time.
TIMER_ROUNDING = 0.0005
# Above this p99 lateness the arrivals were visibly not the schedule's (a 20 ms service time): warn.
LATENESS_WARNING_MS = 2.0
# Herds are counted in windows this long: 25 mean service times, about 22 requests per backend.
HERD_WINDOW = 0.5
# Seconds per block spent draining and setting up, for the estimate of the run's length.
BLOCK_OVERHEAD = 0.6
SCENARIO_OVERHEAD = 4.0


# -------------------------------------------------------------------------------------------------
# What to run
# -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Front:
    """One dispatcher setup: `count` processes sharing the traffic, checking every `interval` s."""

    count: int = 1
    interval: float = 2.0

    def label(self) -> str:
        return f"dispatcher x{self.count} @{self.interval:g}s"


@dataclass(frozen=True)
class Scenario:
    """Backends, their load, and the ways of routing compared in one run."""

    name: str
    stream: bool = True
    load: float = 0.9
    backends: int = 8
    service: float = 0.02
    slow: int = 0
    slow_factor: float = 4.0
    fronts: tuple[Front, ...] = (Front(),)
    baselines: tuple[str, ...] = BASELINES
    policy: str | None = None
    jitter: float | None = None
    note: str = ""
    steady: bool = False  # blocks STEADY_BLOCKS x as long, STEADY_WARMUP x the warm-up (Timing.steadied)

    def slowness(self) -> list[float]:
        """Each backend's service-time factor: the last `slow` are `slow_factor` x slower."""
        return [1.0] * (self.backends - self.slow) + [self.slow_factor] * self.slow

    def rate(self) -> float:
        """Arrivals per second: `load` x the backends' total service rate."""
        return self.load * sum(1.0 / (self.service * factor) for factor in self.slowness())

    def ways(self) -> list[Way]:
        return [*(Way(front.label(), front) for front in self.fronts), *(Way(b) for b in self.baselines)]

    def describe(self) -> str:
        health = "load stream offered" if self.stream else "poll only"
        slow = f", {self.slow} of them {self.slow_factor:g}x slower" if self.slow else ""
        policy = f", --policy {self.policy}" if self.policy else ""
        return (
            f"{self.name}: {health}, {self.backends} backends (S = {self.service * 1e3:g} ms{slow}), "
            f"load {self.load:g} = {self.rate():.0f} req/s{policy}"
        )


@dataclass(frozen=True)
class Way:
    """A way of routing: a dispatcher setup, or a client-side baseline by name."""

    name: str
    front: Front | None = None


# A steady scenario (the matrix's polled goals at the default interval): blocks 4x as long and a warm-up
# 5x, 40 s with the first 10 s not counted by default. A block starts with empty queues and, for a
# dispatcher, estimates that sat idle through the other ways' blocks. In 10 s blocks (2 s warm-up) the
# slowest way to relax is flattered most: random at load 0.9 measured 185 ms against the 243 ms of its
# long run (an M/M/1 queue at 0.9 relaxes over about S / (1 - sqrt(0.9))^2 = 7.6 s), round-robin less,
# JSQ hardly; and a dispatcher checking every 2 s has had five reports of each backend. The goals are
# about a dispatcher under steady traffic; the 10 s run stays beside it as the start after idle.
STEADY_BLOCKS = 4.0
STEADY_WARMUP = 5.0


@dataclass(frozen=True)
class Timing:
    blocks: int = 3
    block_seconds: float = 10.0
    warmup: float = 2.0
    lead_in: float = 0.0  # seconds of uncounted traffic before each dispatcher block
    seed: int = 1

    def steadied(self, scenario: Scenario) -> Timing:
        """This timing as `scenario` runs it: a steady scenario's blocks and warm-up are longer, for
        every way alike."""
        if not scenario.steady:
            return self
        return replace(
            self, block_seconds=self.block_seconds * STEADY_BLOCKS, warmup=self.warmup * STEADY_WARMUP
        )

    def estimate(self, scenario: Scenario) -> float:
        """Seconds the scenario should take (with this timing: `steadied` first for a steady one)."""
        ways = len(scenario.ways())
        blocks = ways * self.blocks * (self.block_seconds + BLOCK_OVERHEAD)
        return blocks + len(scenario.fronts) * self.blocks * self.lead_in + SCENARIO_OVERHEAD


def overloaded_by_equal_shares(scenario: Scenario) -> float:
    """The utilisation of the slowest backend when every backend gets an equal share of the traffic."""
    return scenario.rate() / scenario.backends * scenario.service * max(scenario.slowness())


# -------------------------------------------------------------------------------------------------
# The client side: kept-alive connections, parsed by llhttp (httptools, a dependency of the dispatcher)
# -------------------------------------------------------------------------------------------------


class StaleLink(Exception):
    """A kept-alive connection failed before any byte of the answer: the server had closed it while
    idle (RFC 9112 §9.3.1: a client may retry such a request on a new connection)."""


class BadAnswer(Exception):
    """An answer that is not what the benchmark expects (a status, a Location)."""


@dataclass(frozen=True)
class Answer:
    status: int
    location: bytes | None
    body: bytes


class Link:
    """One kept-alive HTTP/1.1 connection and the parse of its answers, one at a time."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.parser = httptools.HttpResponseParser(self)
        self.location: bytes | None = None
        self.body = bytearray()
        self.done = False

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"location":
            self.location = value

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.done = True

    async def exchange(self, request: bytes) -> Answer:
        """Send the request and read its whole answer."""
        self.location, self.body, self.done = None, bytearray(), False
        received = False
        try:
            await self.stream.send_all(request)
            while not self.done:
                data = await self.stream.receive_some(RECEIVE_BYTES)
                if not data:
                    raise trio.BrokenResourceError("closed by the server")
                received = True
                self.parser.feed_data(data)
        except (trio.BrokenResourceError, OSError) as error:
            if not received:
                raise StaleLink(str(error)) from error
            raise
        return Answer(self.parser.get_status_code(), self.location, bytes(self.body))

    def keep_alive(self) -> bool:
        return self.parser.should_keep_alive()


class Pool:
    """Kept-alive connections to one server. A request never waits for one: with none idle it opens a
    new one, so that requests queue at the server, where the figures are taken, not here."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.idle: list[Link] = []
        self.opened = 0

    async def exchange(self, request: bytes) -> Answer:
        """One request on an idle connection (the last one used first), else on a new one."""
        while self.idle:
            link = self.idle.pop()
            try:
                return await self._exchange(link, request)
            except StaleLink:
                pass  # closed while idle: try the next one, or a new one
        return await self._exchange(await self._open(), request)

    async def _open(self) -> Link:
        """A new connection: a plain connect, not open_tcp_stream's happy eyeballs (a nursery and a
        resolver call per connection), since queues of a hundred at a backend open many at once."""
        self.opened += 1
        sock = trio.socket.socket()
        try:
            await sock.connect((HOST, self.port))
        except BaseException:
            sock.close()
            raise
        return Link(trio.SocketStream(sock))

    async def _exchange(self, link: Link, request: bytes) -> Answer:
        try:
            answer = await link.exchange(request)
        except BaseException:
            await trio.aclose_forcefully(link.stream)
            raise
        if link.keep_alive():
            self.idle.append(link)
        else:
            await trio.aclose_forcefully(link.stream)
        return answer

    async def close(self) -> None:
        for link in self.idle:
            await trio.aclose_forcefully(link.stream)
        self.idle.clear()


def get(target: bytes, port: int) -> bytes:
    """The bytes of `GET target` to the server on loopback `port`."""
    return b"GET %s HTTP/1.1\r\nHost: %s:%d\r\n\r\n" % (target, HOST.encode(), port)


@dataclass(eq=False)
class Target:
    """A backend as the clients see it: its connections and its outstanding requests (its true queue)."""

    index: int
    port: int
    pool: Pool
    outstanding: int = 0


@dataclass(frozen=True, slots=True)
class Sample:
    """One counted request."""

    offset: float  # when it was due, seconds from the block's start
    lateness: float  # how late the client sent it
    backend: int
    queue: int  # the backend's true queue (outstanding requests) when this one was sent to it
    shortest: int  # the shortest true queue of any backend at that moment
    at_backend: float
    redirect: float  # the dispatcher's answer time; NaN for a client-side way


@dataclass
class BlockRecord:
    """What one block of one way measured."""

    way: str
    round: int
    samples: list[Sample] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""

    def fail(self, error: BaseException) -> None:
        self.errors += 1
        self.first_error = self.first_error or f"{type(error).__name__}: {error}"

    def times(self) -> list[float]:
        return [sample.at_backend for sample in self.samples]


# What fails one request (counted, shown in the table) without stopping the run.
REQUEST_FAILURES = (
    BadAnswer,
    StaleLink,
    OSError,
    httptools.HttpParserError,
    trio.TooSlowError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
)


class Clients:
    """Routes each request one way and times it at the backend."""

    def __init__(self, backend_ports: Sequence[int], front_ports: dict[Front, list[int]], seed: int) -> None:
        self.backends = [Target(index, port, Pool(port)) for index, port in enumerate(backend_ports)]
        self.by_port = {target.port: target for target in self.backends}
        self.fronts = {front: [Pool(port) for port in ports] for front, ports in front_ports.items()}
        self.turns = dict.fromkeys(self.fronts, 0)
        self.rng = random.Random(seed)  # routing's own draws: random choice and JSQ's ties
        self.next_in_turn = 0

    def outstanding(self) -> int:
        return sum(target.outstanding for target in self.backends)

    def pick(self, way: str) -> Target:
        """A backend by a client-side rule."""
        if way == "random":
            return self.rng.choice(self.backends)
        if way == "round-robin":
            self.next_in_turn = (self.next_in_turn + 1) % len(self.backends)
            return self.backends[self.next_in_turn]
        fewest = min(target.outstanding for target in self.backends)
        return self.rng.choice([target for target in self.backends if target.outstanding == fewest])

    async def redirected(self, front: Front, target: bytes) -> tuple[Target, bytes, float]:
        """Ask the front's next dispatcher: the backend and target its 307 names, and how long it took."""
        pools = self.fronts[front]
        pool = pools[self.turns[front] % len(pools)]
        self.turns[front] += 1
        started = trio.current_time()
        answer = await pool.exchange(get(target, pool.port))
        took = trio.current_time() - started
        if answer.status != 307 or answer.location is None:
            raise BadAnswer(f"dispatcher answered {answer.status} {answer.body[:80]!r}")
        url = httptools.parse_url(answer.location)
        backend = self.by_port.get(url.port)
        if backend is None or url.path != target.partition(b"?")[0]:
            raise BadAnswer(f"dispatcher redirected to {answer.location!r}")
        return backend, url.path + b"?" + url.query, took

    async def at_backend(self, backend: Target, target: bytes) -> float:
        """Send the request to the backend; the seconds until its whole answer."""
        backend.outstanding += 1
        try:
            started = trio.current_time()
            answer = await backend.pool.exchange(get(target, backend.port))
            took = trio.current_time() - started
        finally:
            backend.outstanding -= 1
        if answer.status != 200:
            raise BadAnswer(f"backend {backend.index} answered {answer.status} {answer.body[:80]!r}")
        return took

    async def one_request(
        self, way: Way, start: float, due: float, demand: float, record: BlockRecord, counted: bool
    ) -> None:
        """One arrival: route it, send it, and record its times when it is past the warm-up."""
        lateness = trio.current_time() - due
        target = b"/work?s=%.6f" % demand
        try:
            with trio.fail_after(REQUEST_TIMEOUT):
                redirect = math.nan
                if way.front is not None:
                    backend, target, redirect = await self.redirected(way.front, target)
                else:
                    backend = self.pick(way.name)
                queue, shortest = backend.outstanding, min(other.outstanding for other in self.backends)
                took = await self.at_backend(backend, target)
        except REQUEST_FAILURES as error:
            record.fail(error)
            return
        if counted:
            sample = Sample(due - start, lateness, backend.index, queue, shortest, took, redirect)
            record.samples.append(sample)

    async def stats(self) -> list[dict[str, float]]:
        """The backends' counters (`GET /stats`, any backend's port answers for all)."""
        answer = await self.backends[0].pool.exchange(get(b"/stats", self.backends[0].port))
        stats: list[dict[str, float]] = json.loads(answer.body)
        return stats

    async def close(self) -> None:
        for pool in [target.pool for target in self.backends] + [
            p for ps in self.fronts.values() for p in ps
        ]:
            await pool.close()


def arrivals(scenario: Scenario, seconds: float, rng: random.Random) -> list[tuple[float, float]]:
    """Arrival offsets and service demands over `seconds`: a Poisson process at the scenario's rate,
    exponential demands of mean S."""
    schedule: list[tuple[float, float]] = []
    offset = 0.0
    while True:
        offset += rng.expovariate(scenario.rate())
        if offset >= seconds:
            return schedule
        schedule.append((offset, rng.expovariate(1.0 / scenario.service)))


def round_schedule(scenario: Scenario, timing: Timing, round_: int) -> list[tuple[float, float]]:
    """One round's arrivals, which every way of the round replays."""
    return arrivals(scenario, timing.block_seconds, random.Random(timing.seed * 1_000_003 + round_))


def lead_in(scenario: Scenario, timing: Timing, round_: int, way: Way) -> list[tuple[float, float]]:
    """Arrivals before a dispatcher way's block (`--lead-in`), drawn apart: never counted."""
    if way.front is None or timing.lead_in <= 0:
        return []
    rng = random.Random(f"{timing.seed}/{round_}/{way.name}")
    return arrivals(scenario, timing.lead_in, rng)


async def run_block(
    clients: Clients,
    way: Way,
    lead: list[tuple[float, float]],
    schedule: list[tuple[float, float]],
    timing: Timing,
    round_: int,
) -> BlockRecord:
    """Send the lead-in's then the block's arrivals on time, the way given; return once every answer
    is in. Offsets in the record are from the start of the block's own schedule."""
    record = BlockRecord(way.name, round_)
    origin = timing.lead_in if lead else 0.0
    start = trio.current_time() + BLOCK_LEAD + origin
    sends = [(offset - origin, demand) for offset, demand in lead] + schedule
    async with trio.open_nursery() as nursery:
        for offset, demand in sends:
            due = start + offset
            await trio.sleep_until(due - TIMER_ROUNDING)
            counted = offset >= timing.warmup
            nursery.start_soon(clients.one_request, way, start, due, demand, record, counted)
    if clients.outstanding():
        raise BenchError(f"{clients.outstanding()} requests outstanding after a block")
    return record


# -------------------------------------------------------------------------------------------------
# Figures
# -------------------------------------------------------------------------------------------------


def percentile(values: Sequence[float], share: float) -> float:
    """Nearest-rank percentile (`share` 0.99 for p99); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else math.nan


@dataclass(frozen=True)
class WayFigures:
    """One way's figures over all its blocks, times in milliseconds."""

    way: str
    requests: int
    errors: int
    mean_ms: float
    p99_ms: float
    block_means_ms: list[float]
    late_mean_ms: float  # the mean over the second half of each block only: the settled part
    redirect_mean_ms: float
    redirect_p99_ms: float
    queue_seen: float  # the chosen backend's true queue when the request was sent to it, on average
    excess_queue: float  # how much longer that was than the shortest queue then (JSQ: 0)
    repeat_share: float  # requests sent to the same backend as the request before them
    herd_share: float  # windows of HERD_WINDOW in which one backend got over 2x its fair part
    shares: list[float]  # each backend's share of the requests
    first_error: str


def herd_share(records: Sequence[BlockRecord], capacity: Sequence[float]) -> float:
    """The share of HERD_WINDOW windows in which some backend was sent more than twice its fair part
    (the window's requests x its share of the pool's capacity)."""
    windows: dict[tuple[int, int], list[int]] = {}
    for number, record in enumerate(records):
        for sample in record.samples:
            counts = windows.setdefault((number, int(sample.offset / HERD_WINDOW)), [0] * len(capacity))
            counts[sample.backend] += 1
    total = sum(capacity)
    herds = sum(
        any(count > 2 * sum(counts) * speed / total for count, speed in zip(counts, capacity, strict=True))
        for counts in windows.values()
    )
    return herds / len(windows) if windows else math.nan


def way_figures(
    way: str, records: Sequence[BlockRecord], scenario: Scenario, block_seconds: float
) -> WayFigures:
    backends = scenario.backends
    samples = [sample for record in records for sample in record.samples]
    late = [sample.at_backend for sample in samples if sample.offset >= block_seconds / 2]
    times = [sample.at_backend for sample in samples]
    redirects = [sample.redirect for sample in samples if not math.isnan(sample.redirect)]
    runs = [[sample.backend for sample in record.samples] for record in records]
    repeats = sum(sum(a == b for a, b in itertools.pairwise(run)) for run in runs)
    pairs = sum(max(0, len(run) - 1) for run in runs)
    counts = [sum(run.count(index) for run in runs) for index in range(backends)]
    return WayFigures(
        way=way,
        requests=len(times),
        errors=sum(record.errors for record in records),
        mean_ms=mean(times) * 1e3,
        p99_ms=percentile(times, 0.99) * 1e3,
        block_means_ms=[mean(record.times()) * 1e3 for record in records],
        late_mean_ms=mean(late) * 1e3,
        redirect_mean_ms=mean(redirects) * 1e3,
        redirect_p99_ms=percentile(redirects, 0.99) * 1e3,
        queue_seen=mean([float(sample.queue) for sample in samples]),
        excess_queue=mean([float(sample.queue - sample.shortest) for sample in samples]),
        repeat_share=repeats / pairs if pairs else math.nan,
        herd_share=herd_share(records, [1.0 / factor for factor in scenario.slowness()]),
        shares=[count / max(1, len(samples)) for count in counts],
        first_error=next((record.first_error for record in records if record.first_error), ""),
    )


@dataclass(frozen=True)
class Lateness:
    """How late the client sent requests against their schedule, in milliseconds."""

    mean_ms: float
    p99_ms: float
    max_ms: float
    over_1ms_share: float


def lateness_of(records: Sequence[BlockRecord]) -> Lateness:
    values = [sample.lateness for record in records for sample in record.samples]
    late = sum(1 for t in values if t > 1e-3)
    return Lateness(
        mean(values) * 1e3,
        percentile(values, 0.99) * 1e3,
        max(values, default=0) * 1e3,
        late / max(1, len(values)),
    )


@dataclass(frozen=True)
class Health:
    """What the backends saw of the dispatchers' checks over the measurement."""

    polls_per_second: float
    streams_opened: int  # during the measurement (each dispatcher opens its streams when it starts)
    streams_open: int  # at the end
    events_per_second: float
    utilisation: list[float]  # busy share of each backend while the blocks ran (not the drains)
    wake_lateness_ms: float  # how late the backends' service timers fired, on average

    def streaming(self) -> bool:
        """Whether the dispatchers took the load stream (rather than polling)."""
        return self.streams_open > 0 or self.streams_opened > 0


def health_of(
    before: list[dict[str, float]], after: list[dict[str, float]], seconds: float, busy: float
) -> Health:
    def delta(name: str) -> float:
        return sum(a[name] - b[name] for a, b in zip(after, before, strict=True))

    served = max(1.0, delta("served"))
    return Health(
        polls_per_second=delta("polls") / seconds,
        streams_opened=int(delta("streams_opened")),
        streams_open=int(sum(a["streams_open"] for a in after)),
        events_per_second=delta("events") / seconds,
        utilisation=[
            (a["busy_seconds"] - b["busy_seconds"]) / busy for a, b in zip(after, before, strict=True)
        ],
        wake_lateness_ms=delta("lateness_seconds") / served * 1e3,
    )


@dataclass(frozen=True)
class Cpu:
    """CPU used during the measurement, in % of one core."""

    backends: float
    dispatchers: float
    clients: float
    others: float | None


@dataclass(frozen=True)
class CpuClock:
    wall: float
    machine: float | None
    backends: float
    dispatchers: float
    clients: float

    @classmethod
    def now(cls, backend_pid: int, dispatcher_pids: Sequence[int]) -> CpuClock:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        machine = harness.machine_busy_seconds() if harness.PROC_STAT.exists() else None
        return cls(
            wall=time.monotonic(),
            machine=machine,
            backends=harness.process_cpu_seconds(backend_pid),
            dispatchers=sum(harness.tree_cpu_seconds(pid) for pid in dispatcher_pids),
            clients=usage.ru_utime + usage.ru_stime,
        )

    def until(self, later: CpuClock) -> Cpu:
        wall = later.wall - self.wall

        def percent(seconds: float) -> float:
            return seconds / wall * 100

        ours = [
            later.backends - self.backends,
            later.dispatchers - self.dispatchers,
            later.clients - self.clients,
        ]
        others = None
        if self.machine is not None and later.machine is not None:
            others = max(0.0, percent(later.machine - self.machine - sum(ours)))
        backends, dispatchers, clients = (percent(seconds) for seconds in ours)
        return Cpu(backends, dispatchers, clients, others)


@dataclass(frozen=True)
class ScenarioResult:
    scenario: Scenario
    timing: Timing
    ways: list[WayFigures]
    lateness: Lateness
    health: Health
    cpu: Cpu
    seconds: float
    offered_load: float  # what the rounds' schedules asked for: the nominal load +/- their chance

    def figures(self, way: str) -> WayFigures | None:
        return next((figures for figures in self.ways if figures.way == way), None)

    def ratio(self, way: str, field_name: str, baseline: str) -> float:
        """`way`'s figure over the baseline's same figure (NaN when either is missing)."""
        mine, theirs = self.figures(way), self.figures(baseline)
        if mine is None or theirs is None:
            return math.nan
        value: float = getattr(mine, field_name) / getattr(theirs, field_name)
        return value


# -------------------------------------------------------------------------------------------------
# One scenario, live
# -------------------------------------------------------------------------------------------------


async def measure(
    scenario: Scenario,
    timing: Timing,
    backend_ports: list[int],
    front_ports: dict[Front, list[int]],
    cpu: Callable[[], CpuClock],
    trace: Path | None,
) -> ScenarioResult:
    """Every way's blocks, rounds rotated; the figures."""
    clients = Clients(backend_ports, front_ports, timing.seed)
    ways = scenario.ways()
    records: dict[str, list[BlockRecord]] = {way.name: [] for way in ways}
    started, stats_before, clock_before = trio.current_time(), await clients.stats(), cpu()
    busy, demand = 0.0, 0.0
    for round_ in range(timing.blocks):
        schedule = round_schedule(scenario, timing, round_)
        demand += sum(work for _, work in schedule)
        for way in ways[round_ % len(ways) :] + ways[: round_ % len(ways)]:
            record = await run_block(
                clients, way, lead_in(scenario, timing, round_, way), schedule, timing, round_
            )
            busy += timing.block_seconds + (timing.lead_in if way.front is not None else 0.0)
            records[way.name].append(record)
            progress(block_line(record, round_, timing))
            # Between blocks, not as a pause in one; then frozen, so that the collections during the
            # next block never walk what the blocks before it kept (tens of thousands of samples:
            # a full collection over them paused this loop for up to 100 ms).
            gc.collect()
            gc.freeze()
    seconds = trio.current_time() - started
    stats_after, clock_after = await clients.stats(), cpu()
    await clients.close()
    if trace is not None:
        write_trace(trace, scenario, records)
    return ScenarioResult(
        scenario=scenario,
        timing=timing,
        ways=[way_figures(way.name, records[way.name], scenario, timing.block_seconds) for way in ways],
        lateness=lateness_of([record for block in records.values() for record in block]),
        health=health_of(stats_before, stats_after, seconds, busy),
        cpu=clock_before.until(clock_after),
        seconds=seconds,
        offered_load=scenario.load
        * demand
        / (scenario.service * scenario.rate() * timing.block_seconds * timing.blocks),
    )


def write_trace(path: Path, scenario: Scenario, records: dict[str, list[BlockRecord]]) -> None:
    """Every counted request as a CSV row, appended (one file can hold several scenarios)."""
    new = not path.exists()
    with path.open("a") as file:
        if new:
            file.write(
                "scenario,way,round,offset_s,lateness_ms,backend,queue,shortest,at_backend_ms,redirect_ms\n"
            )
        for record in (record for block in records.values() for record in block):
            for sample in record.samples:
                file.write(
                    f"{scenario.name},{record.way},{record.round},{sample.offset:.6f},"
                    f"{sample.lateness * 1e3:.3f},{sample.backend},{sample.queue},{sample.shortest},"
                    f"{sample.at_backend * 1e3:.3f},{sample.redirect * 1e3:.3f}\n"
                )


def block_line(record: BlockRecord, round_: int, timing: Timing) -> str:
    times = record.times()
    late = percentile([sample.lateness for sample in record.samples], 0.99) * 1e3
    errors = f", {record.errors} errors ({record.first_error})" if record.errors else ""
    return (
        f"  round {round_ + 1}/{timing.blocks} {record.way:<22} {len(times):6d} requests, "
        f"mean {mean(times) * 1e3:7.1f} ms, p99 {percentile(times, 0.99) * 1e3:7.1f} ms, "
        f"lateness p99 {late:.2f} ms{errors}"
    )


def progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def backend_argv(scenario: Scenario, ports: Sequence[int]) -> list[str]:
    argv = [sys.executable, str(BACKEND_SCRIPT), "--ports", ",".join(map(str, ports))]
    argv += ["--slowness", ",".join(f"{factor:g}" for factor in scenario.slowness())]
    return [*argv, "--stream"] if scenario.stream else argv


def dispatcher_argv(
    scenario: Scenario, front: Front, port: int, admin_port: int, backends: Sequence[int]
) -> list[str]:
    """`python -m dispatcher` as a user starts it (the tests' `dispatcher_command`)."""
    argv = [
        sys.executable,
        "-m",
        "dispatcher",
        f"--listen={HOST}:{port}",
        f"--admin-listen={HOST}:{admin_port}",
    ]
    argv += [f"--backend=http://{HOST}:{backend}" for backend in backends]
    argv += [f"--health-interval={front.interval:g}", "--log-level=warning"]
    if scenario.jitter is not None:
        argv.append(f"--health-jitter={scenario.jitter:g}")
    return [*argv, f"--policy={scenario.policy}"] if scenario.policy else argv


@contextmanager
def backends_running(scenario: Scenario, ports: list[int], logs: Path) -> Iterator[int]:
    """The backend process, once every port accepts connections; yields its pid."""
    log = logs / f"{slug(scenario.name)}-backends.log"
    with harness.running(backend_argv(scenario, ports), log, None) as process:
        harness.wait_until_ready(lambda: all(map(harness.accepts_connections, ports)), process, log)
        yield process.pid


@contextmanager
def dispatchers_running(
    scenario: Scenario, front: Front, ports: list[int], backends: list[int], logs: Path
) -> Iterator[list[int]]:
    """The front's dispatcher processes, once each says all backends are up; yields their pids."""
    with ExitStack() as stack:
        pids = []
        for number in range(front.count):
            port, admin = ports[2 * number], ports[2 * number + 1]
            log = logs / f"{slug(scenario.name)}-{slug(front.label())}-{number + 1}.log"
            process = stack.enter_context(
                harness.running(dispatcher_argv(scenario, front, port, admin, backends), log, None)
            )
            ready = partial(harness.all_backends_up, admin, len(backends))
            harness.wait_until_ready(ready, process, log, READY_TIMEOUT)
            harness.check_redirect(port, [f"http://{HOST}:{backend}" for backend in backends], front.label())
            pids.append(process.pid)
        yield pids


def slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in ".-" else "-" for c in text).strip("-")


def run_scenario(scenario: Scenario, timing: Timing, logs: Path, trace: Path | None) -> ScenarioResult:
    """Start the backends and every dispatcher, measure, stop them all."""
    timing = timing.steadied(scenario)
    progress(f"{scenario.describe()}: about {timing.estimate(scenario) / 60:.1f} min")
    processes = sum(front.count for front in scenario.fronts)
    ports = harness.free_ports(scenario.backends + 2 * processes)
    backend_ports, spare = ports[: scenario.backends], ports[scenario.backends :]
    front_ports: dict[Front, list[int]] = {}
    with ExitStack() as stack:
        backend_pid = stack.enter_context(backends_running(scenario, backend_ports, logs))
        dispatcher_pids: list[int] = []
        for front in scenario.fronts:
            mine, spare = spare[: 2 * front.count], spare[2 * front.count :]
            dispatcher_pids += stack.enter_context(
                dispatchers_running(scenario, front, mine, backend_ports, logs)
            )
            front_ports[front] = mine[0::2]
        cpu = partial(CpuClock.now, backend_pid, dispatcher_pids)
        return trio.run(measure, scenario, timing, backend_ports, front_ports, cpu, trace)


# -------------------------------------------------------------------------------------------------
# Tables
# -------------------------------------------------------------------------------------------------


def ms(value: float, digits: int = 1) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def times(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f} x"


# The table's columns: heading, width. "2nd half" is the mean over the second half of each block
# only (a way still settling after its warm-up shows a lower figure there). "queue" is the chosen
# backend's true queue when the request was sent to it, and in brackets how much longer it was than
# the shortest then (JSQ's: 0); "herd" the share of half-second windows in which one backend was
# sent more than twice its fair part (at 360 req/s about 22 requests in each: chance alone almost
# never doubles that).
COLUMNS = (
    ("way", -22),
    ("requests", 8),
    ("mean ms", 8),
    ("p99 ms", 8),
    ("mean/JSQ", 9),
    ("p99/JSQ", 8),
    ("mean/rand", 9),
    ("mean/RR", 8),
    ("2nd half", 9),
    ("redirect ms", 12),
    ("queue (+)", 11),
    ("herd", 6),
    ("block means ms", -15),
)


def row(cells: Sequence[str]) -> str:
    """Cells laid out in COLUMNS (a negative width: left-aligned)."""
    return " ".join(
        cell.ljust(-width) if width < 0 else cell.rjust(width)
        for cell, (_, width) in zip(cells, COLUMNS, strict=True)
    ).rstrip()


def table(result: ScenarioResult) -> str:
    """The scenario's table: a row per way, then the notes."""
    header = row([heading for heading, _ in COLUMNS])
    lines = [result.scenario.describe(), timing_line(result), header, "-" * len(header)]
    lines += [way_row(result, figures) for figures in result.ways]
    return "\n".join(lines + notes(result))


def way_row(result: ScenarioResult, figures: WayFigures) -> str:
    redirect = "-"
    if not math.isnan(figures.redirect_mean_ms):
        redirect = f"{figures.redirect_mean_ms:.2f}/{figures.redirect_p99_ms:.1f}"
    ratios = [
        result.ratio(figures.way, "mean_ms", "jsq"),
        result.ratio(figures.way, "p99_ms", "jsq"),
        result.ratio(figures.way, "mean_ms", "random"),
        result.ratio(figures.way, "mean_ms", "round-robin"),
    ]
    return row(
        [
            figures.way,
            str(figures.requests),
            ms(figures.mean_ms),
            ms(figures.p99_ms),
            *map(times, ratios),
            ms(figures.late_mean_ms),
            redirect,
            f"{figures.queue_seen:.1f} (+{figures.excess_queue:.1f})",
            f"{figures.herd_share * 100:.0f}%",
            " ".join(ms(value, 0) for value in figures.block_means_ms),
        ]
    )


def timing_line(result: ScenarioResult) -> str:
    timing = result.timing
    lead = f"; {timing.lead_in:g} s of lead-in before each dispatcher block" if timing.lead_in else ""
    return (
        f"{timing.blocks} rounds of {len(result.ways)} blocks of {timing.block_seconds:g} s "
        f"(first {timing.warmup:g} s of each not counted{lead}), ways in rotated order, seed {timing.seed}; "
        f"{result.seconds:.0f} s; the schedules' load {result.offered_load:.3f}"
    )


def notes(result: ScenarioResult) -> list[str]:
    health, cpu, late = result.health, result.cpu, result.lateness
    scenario = result.scenario
    lines = [
        f"  clients' lateness on the arrival schedule: mean {late.mean_ms:.2f} ms, p99 {late.p99_ms:.2f} ms, "
        f"max {late.max_ms:.1f} ms; {late.over_1ms_share * 100:.1f} % over 1 ms",
        f"  backends: utilisation {' '.join(f'{u:.2f}' for u in health.utilisation)} "
        f"(target {scenario.load:g} where equal shares), "
        f"timers {health.wake_lateness_ms:.2f} ms late on average",
        f"  health: {health.polls_per_second:.1f} polls/s; load streams: {health.streams_open} open "
        f"at the end, {health.streams_opened} opened meanwhile, {health.events_per_second:.0f} events/s",
        f"  CPU, % of a core: backends {cpu.backends:.0f}, dispatchers {cpu.dispatchers:.0f}, "
        f"clients {cpu.clients:.0f}" + ("" if cpu.others is None else f", other processes {cpu.others:.0f}"),
    ]
    if not scenario.slow and "random" in scenario.baselines:
        # Under random every backend is an M/M/1 queue: its time in system is exponential, mean S/(1-load).
        theory = scenario.service / (1 - scenario.load) * 1e3
        offered = scenario.service / max(1e-9, 1 - result.offered_load) * 1e3
        lines.append(
            f"  M/M/1 (every backend under random): mean {theory:.0f} ms, "
            f"p99 {theory * math.log(100):.0f} ms; at the schedules' load {offered:.0f} ms "
            "(long-run figures: a block starting empty stays below them)"
        )
    if scenario.stream and not health.streaming():
        lines.append(
            "  NOTE: the backends offered the load stream but no dispatcher asked for it: they polled"
        )
    if scenario.note:
        lines.append(f"  note: {scenario.note}")
    if late.p99_ms > LATENESS_WARNING_MS:
        lines.append(
            f"  WARNING: the clients fell behind their schedule (lateness p99 {late.p99_ms:.1f} ms): the "
            "arrivals were not quite Poisson; see the CPU line"
        )
    warning = harness.busy_warning(cpu.others, scenario.name)
    errors = [f"  ERRORS: {f.way}: {f.errors} ({f.first_error})" for f in result.ways if f.errors]
    return lines + ([f"  {warning}"] if warning else []) + errors


# -------------------------------------------------------------------------------------------------
# The matrix: issue 6's goals
# -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Goal:
    """A figure of one dispatcher way over a baseline's, and its bound."""

    label: str
    scenario: str
    front: Front
    field_name: str  # mean_ms or p99_ms
    baseline: str
    limit: float
    needs_stream: bool = False

    def measured(self, results: dict[str, ScenarioResult]) -> float:
        result = results.get(self.scenario)
        return (
            math.nan if result is None else result.ratio(self.front.label(), self.field_name, self.baseline)
        )


def matrix(base: Scenario) -> tuple[list[Scenario], list[Goal]]:
    """Four runs for the six goal sets: (a, b) streaming with 1 and 2 dispatchers, (c) 2 of 8 backends
    4x slower, (d, e) poll only with 1 and 2 dispatchers, in steady blocks and in 10 s ones after idle,
    (f) poll only at four intervals."""
    one, two = Front(1, 2.0), Front(2, 2.0)
    intervals = [Front(1, interval) for interval in (0.05, 0.5, 5.0)]
    stream = replace(base, name="stream", stream=True, fronts=(one, two), slow=0, baselines=BASELINES)
    slow_note = "random and round-robin left out: equal shares overload the slow backends (no steady state)"
    slow = replace(
        base, name="stream-slow", stream=True, fronts=(one,), slow=2, baselines=("jsq",), note=slow_note
    )
    poll = replace(
        base, name="poll", stream=False, fronts=(one, two, *intervals), slow=0, baselines=BASELINES
    )
    steady = replace(
        base,
        name="poll-steady",
        stream=False,
        fronts=(one, two),
        slow=0,
        baselines=("random", "round-robin"),
        steady=True,
        note="blocks 4x as long, warm-up 5x, for every way: the steady state the goals are about",
    )
    goals = [
        Goal("(a) stream, 1 dispatcher: mean / JSQ", "stream", one, "mean_ms", "jsq", 1.2, True),
        Goal("(a) stream, 1 dispatcher: p99 / JSQ p99", "stream", one, "p99_ms", "jsq", 1.5, True),
        Goal("(b) stream, 2 dispatchers: mean / JSQ", "stream", two, "mean_ms", "jsq", 1.35, True),
        Goal("(c) stream, 2 of 8 4x slower: mean / JSQ", "stream-slow", one, "mean_ms", "jsq", 1.3, True),
    ]
    for label, front in (("(d) poll, 1 dispatcher", one), ("(e) poll, 2 dispatchers", two)):
        for run, when in (("poll-steady", "steady"), ("poll", "10 s blocks")):
            tag = f"{label}, {when}"
            goals.append(Goal(f"{tag}: mean / round-robin", run, front, "mean_ms", "round-robin", 0.9))
            goals.append(Goal(f"{tag}: mean / random", run, front, "mean_ms", "random", 0.5))
    for front in sorted((*intervals, one), key=lambda front: front.interval):
        label = f"(f) poll, interval {front.interval:g} s: mean / round-robin"
        goals.append(Goal(label, "poll", front, "mean_ms", "round-robin", 1.0))
    return [stream, slow, poll, steady], goals


def goal_table(goals: Sequence[Goal], results: dict[str, ScenarioResult]) -> str:
    width = max(len(goal.label) for goal in goals)
    lines = [
        "goals (issue 6)",
        f"{'goal':<{width}} {'measured':>9} {'bound':>8}  verdict",
        "-" * (width + 30),
    ]
    for goal in goals:
        value = goal.measured(results)
        verdict = "not measured" if math.isnan(value) else ("met" if value <= goal.limit else "MISSED")
        result = results.get(goal.scenario)
        if goal.needs_stream and result is not None and not result.health.streaming():
            verdict += " (the dispatcher polled: no load stream opened)"
        lines.append(
            f"{goal.label:<{width}} {times(value):>9} {'<= ' + format(goal.limit, 'g'):>8}  {verdict}"
        )
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------------
# The command
# -------------------------------------------------------------------------------------------------

QUICK = Timing(blocks=1, block_seconds=5.0, warmup=1.0)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="how well the dispatcher spreads load, against client-side baselines"
    )
    p.add_argument("--live", action="store_true", help="the live measurement (the default)")
    p.add_argument("--sim", action="store_true", help="the simulation, benchmarks/simulate.py")
    p.add_argument("--matrix", action="store_true", help="issue 6's goal set in four runs, and the goals")
    p.add_argument(
        "--quick", action="store_true", help=f"{QUICK.blocks} round of {QUICK.block_seconds:g} s blocks"
    )
    p.add_argument(
        "--stream", dest="stream", action="store_true", default=True, help="offer the load stream (default)"
    )
    p.add_argument("--poll", dest="stream", action="store_false", help="backends answer polls only")
    p.add_argument("--load", type=float, default=0.9, help="of the backends' total capacity (default 0.9)")
    p.add_argument("--backends", type=int, default=8)
    p.add_argument("--service-ms", type=float, default=20.0, help="mean service time S (default 20)")
    p.add_argument("--slow", type=int, default=0, help="this many backends are --slow-factor x slower")
    p.add_argument("--slow-factor", type=float, default=4.0)
    p.add_argument("--interval", type=float, nargs="+", default=[2.0], help="--health-interval, one or more")
    p.add_argument("--dispatchers", type=int, nargs="+", default=[1], help="processes sharing the traffic")
    p.add_argument("--policy", help="passed to the dispatcher as --policy")
    p.add_argument("--jitter", type=float, help="passed to the dispatcher as --health-jitter")
    p.add_argument("--baselines", nargs="*", choices=BASELINES, help="default: all that have a steady state")
    p.add_argument("--blocks", type=int, help=f"rounds: blocks per way (default {Timing.blocks})")
    p.add_argument("--block-seconds", type=float, help=f"default {Timing.block_seconds:g}")
    p.add_argument(
        "--warmup", type=float, help=f"seconds not counted at each block start (default {Timing.warmup:g})"
    )
    p.add_argument(
        "--lead-in",
        type=float,
        default=0.0,
        help="seconds of uncounted traffic before each dispatcher block, so that its estimates start "
        "settled (default 0)",
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", type=Path, help="also write every figure to this file")
    p.add_argument("--trace", type=Path, help="also append every counted request to this CSV file")
    p.add_argument("--logs", type=Path, help="keep the servers' logs here")
    args, rest = p.parse_known_args(argv)
    args.rest = rest
    if rest and not args.sim:
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    return args


def timing_of(args: argparse.Namespace) -> Timing:
    base = QUICK if args.quick else Timing()
    return Timing(
        blocks=args.blocks or base.blocks,
        block_seconds=args.block_seconds or base.block_seconds,
        warmup=base.warmup if args.warmup is None else args.warmup,
        lead_in=args.lead_in,
        seed=args.seed,
    )


def scenario_of(args: argparse.Namespace) -> Scenario:
    fronts = tuple(Front(count, interval) for count in args.dispatchers for interval in args.interval)
    scenario = Scenario(
        name="stream" if args.stream else "poll",
        stream=args.stream,
        load=args.load,
        backends=args.backends,
        service=args.service_ms / 1e3,
        slow=args.slow,
        slow_factor=args.slow_factor,
        fronts=fronts,
        policy=args.policy,
        jitter=args.jitter,
    )
    if args.baselines is not None:
        return replace(scenario, baselines=tuple(args.baselines))
    if overloaded_by_equal_shares(scenario) >= 1:
        note = (
            "random and round-robin left out: equal shares overload the slow backends (--baselines to force)"
        )
        return replace(scenario, baselines=("jsq",), note=note)
    return scenario


def run_live(args: argparse.Namespace) -> int:
    timing = timing_of(args)
    scenarios, goals = [scenario_of(args)], list[Goal]()
    if args.matrix:
        scenarios, goals = matrix(scenario_of(args))
    version = dispatcher_version()
    total = sum(timing.steadied(scenario).estimate(scenario) for scenario in scenarios)
    progress(f"{len(scenarios)} run(s), about {total / 60:.1f} minutes")
    results: dict[str, ScenarioResult] = {}
    failed = False
    with tempfile.TemporaryDirectory(prefix="distribution-") as temporary:
        logs = args.logs or Path(temporary)
        logs.mkdir(parents=True, exist_ok=True)
        for scenario in scenarios:
            try:
                results[scenario.name] = run_scenario(scenario, timing, logs, args.trace)
            except (BenchError, OSError, ValueError) as error:
                progress(f"{scenario.name} FAILED: {error}")
                failed = True
    print(f"dispatcher at {version}, python -m dispatcher with {sys.executable}", end="\n\n")
    for result in results.values():
        print(table(result), end="\n\n", flush=True)
    if goals:
        print(goal_table(goals, results), flush=True)
    if args.json:
        write_json(args.json, results, goals, version)
    return 1 if failed else 0


def dispatcher_version() -> str:
    """The commit the measured dispatcher is at, and whether its code had uncommitted changes."""
    git = ["git", "-C", str(harness.REPO_ROOT)]
    try:
        head = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--", "dispatcher"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown (no git)"
    changed = len(dirty.stdout.splitlines())
    return f"{head.stdout.strip() or 'unknown'}" + (
        f" + {changed} changed files in dispatcher/" if changed else ""
    )


def write_json(path: Path, results: dict[str, ScenarioResult], goals: Sequence[Goal], version: str) -> None:
    document = {
        "dispatcher": version,
        "scenarios": [asdict(result) for result in results.values()],
        "goals": [{**asdict(goal), "measured": goal.measured(results)} for goal in goals],
    }
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")


def run_simulation(rest: Sequence[str]) -> int:
    """benchmarks/simulate.py's `simulate_main` (or `main`), imported only when asked for."""
    try:
        simulate = importlib.import_module("simulate")
    except ImportError:
        progress("--sim: benchmarks/simulate.py is not there yet")
        return 2
    entry = getattr(simulate, "simulate_main", None) or simulate.main
    code: int | None = entry(list(rest))
    return code or 0


def interrupt_on_sigterm(_signum: int, _frame: FrameType | None) -> None:
    """SIGTERM as Ctrl-C: trio turns it into KeyboardInterrupt at a safe point, and every child is
    stopped on the way out."""
    os.kill(os.getpid(), signal.SIGINT)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, interrupt_on_sigterm)
    code = run_simulation(args.rest) if args.sim else 0
    if args.live or not args.sim:
        code = max(code, run_live(args))
    return code


if __name__ == "__main__":
    sys.exit(main())
