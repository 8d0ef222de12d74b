"""Prometheus metrics: a window onto the pool and the front door, read at scrape time.

Owns: the dispatcher's own `CollectorRegistry` (never the global one, so that several dispatchers
can live in one process, as in tests), metric names, types and help texts, and the per-backend
lines kept between scrapes (see `Metrics`).
Rules: the pool and the server hold the state; this module only reads it (a custom collector),
except the health-check duration histogram, which is observed as checks complete. Every labelled
series exists from start. Names follow Prometheus practice: `dispatcher_` prefix, base units,
counters end in `_total`, states as a state-set (as HAProxy's `haproxy_server_status{state}`).
Every byte of a scrape is written by prometheus-client's encoders, never by hand: a scrape of
1,000 backends must stay well under 100 ms (issue 3), so lines it wrote are kept and only the
samples whose figures changed are given to it again (benchmarks/scrape.py measures it).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from itertools import accumulate, cycle
from typing import TypeVar

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from dispatcher import __version__
from dispatcher.core.health_state import VISIBLE_STATES
from dispatcher.core.pool import CHECK_BUCKETS, FAILURE_REASONS, LOAD_SOURCES, Backend, Pool
from dispatcher.core.stats import DURATION_BUCKETS, ServerStats

Labels = dict[str, str]


@dataclass(frozen=True, slots=True)
class ScrapeTime:
    """The trio clock when the scrape began (it runs in steps) and at the pool's start, and the pool
    (whose estimate of a backend's load depends on the time)."""

    now: float
    started_at: float
    pool: Pool


# The sample values of one family for one scrape, read straight from the pool's figures: a family of
# 1,000 backends has up to 12,000 samples, and `add_metric`'s per-sample lists, zips and dicts cost
# more than the figures themselves.
Read = Callable[[list[Backend], ScrapeTime], list[float]]


@dataclass(frozen=True, slots=True)
class BackendLabels:
    """The label sets of one backend's samples, shared by every family (prometheus-client only reads
    them): `{"backend": name}` is one dict for all the families that have no other label."""

    backend: Labels
    states: tuple[Labels, ...]  # one per VISIBLE_STATES
    results: tuple[Labels, Labels]  # pass, fail
    reasons: tuple[Labels, ...]  # one per FAILURE_REASONS
    sources: tuple[Labels, ...]  # one per LOAD_SOURCES
    histogram: tuple[Labels, ...]  # one per bucket (`le`, +Inf last), then _count and _sum

    @classmethod
    def of(cls, name: str) -> BackendLabels:
        backend = {"backend": name}
        return cls(
            backend=backend,
            states=tuple({"backend": name, "state": word} for word in VISIBLE_STATES),
            results=({"backend": name, "result": "pass"}, {"backend": name, "result": "fail"}),
            reasons=tuple({"backend": name, "reason": reason} for reason in FAILURE_REASONS),
            sources=tuple({"backend": name, "source": source} for source in LOAD_SOURCES),
            histogram=(*({"backend": name, "le": le} for le in CHECK_BOUNDS), backend, backend),
        )


@dataclass(frozen=True, slots=True)
class BackendFamily:
    """A metric family with the same few samples for every backend, in the pool's order.

    `read` gives the values of every backend's samples, backend after backend; `suffixes` and `labels`
    say the name suffix and the label set of each sample of one backend, in the same order.
    """

    kind: type[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]
    name: str
    documentation: str
    label_names: tuple[str, ...]
    suffixes: tuple[str, ...]
    labels: Callable[[BackendLabels], tuple[Labels, ...]]
    read: Read

    def metric(self, label_sets: list[Labels], values: list[float], only: list[int] | None = None) -> Metric:
        """The family with every sample, or `only` the samples of these indexes."""
        family = self.kind(self.name, self.documentation, labels=self.label_names)
        names = [self.name + suffix for suffix in self.suffixes]
        if only is None:
            family.samples = list(map(Sample, cycle(names), label_sets, values))
        else:
            per_backend = len(names)
            family.samples = [Sample(names[i % per_backend], label_sets[i], values[i]) for i in only]
        return family


@dataclass(frozen=True, slots=True)
class SampleLabels:
    """The pool's backend names and, for each of BACKEND_FAMILIES, the label set of every sample in order.

    Made once per pool membership (at start, after a reload) and shared by every scrape: 22 dicts a
    backend, which cost more to make than a scrape of what changed takes to format.
    """

    names: tuple[str, ...]
    families: tuple[list[Labels], ...]

    @classmethod
    def of(cls, names: tuple[str, ...]) -> SampleLabels:
        backends = [BackendLabels.of(name) for name in names]
        families = tuple(
            [label_set for backend in backends for label_set in family.labels(backend)]
            for family in BACKEND_FAMILIES
        )
        return cls(names, families)


def _one(labels: BackendLabels) -> tuple[Labels, ...]:
    return (labels.backend,)


def _states(backends: list[Backend], _: ScrapeTime) -> list[float]:
    return [value for backend in backends for value in STATE_SET[backend.state]]


def _sources(backends: list[Backend], _: ScrapeTime) -> list[float]:
    return [value for backend in backends for value in SOURCE_SET[backend.source]]


def _load_ages(backends: list[Backend], time: ScrapeTime) -> list[float]:
    now, started_at = time.now, time.started_at
    return [max(0.0, now - (b.report.at if b.report is not None else started_at)) for b in backends]


def _checks(backends: list[Backend], _: ScrapeTime) -> list[float]:
    return [count for backend in backends for count in (backend.checks_passed, backend.checks_failed)]


def _failures(backends: list[Backend], _: ScrapeTime) -> list[float]:
    return [backend.failures[reason] for backend in backends for reason in FAILURE_REASONS]


def _check_durations(backends: list[Backend], _: ScrapeTime) -> list[float]:
    """Per backend: the cumulative bucket counts (+Inf last), the count, the sum."""
    values: list[float] = []
    for backend in backends:
        values += accumulate(backend.check_durations)
        values += (values[-1], backend.check_duration_sum)
    return values


def _per_backend(
    kind: type[CounterMetricFamily | GaugeMetricFamily], name: str, documentation: str, read: Read
) -> BackendFamily:
    """A family of one sample per backend, labelled with the backend's name."""
    suffix = "_total" if kind is CounterMetricFamily else ""
    return BackendFamily(kind, name, documentation, ("backend",), (suffix,), _one, read)


STATE_SET = {word: [1.0 if other == word else 0.0 for other in VISIBLE_STATES] for word in VISIBLE_STATES}
CHECK_BOUNDS = (*(repr(bound) for bound in CHECK_BUCKETS), "+Inf")
SOURCE_SET = {word: [1.0 if other == word else 0.0 for other in LOAD_SOURCES] for word in LOAD_SOURCES}
BACKEND_FAMILIES = (
    _per_backend(
        CounterMetricFamily,
        "dispatcher_redirects",
        "307 redirects sent to a backend.",
        lambda backends, _: [b.redirects for b in backends],
    ),
    _per_backend(
        GaugeMetricFamily,
        "dispatcher_backend_up",
        "1 if the backend takes new redirects.",
        lambda backends, _: [1.0 if b.usable else 0.0 for b in backends],
    ),
    BackendFamily(
        GaugeMetricFamily,
        "dispatcher_backend_state",
        "Backend state as a state-set (1 for the current state).",
        ("backend", "state"),
        ("",) * len(VISIBLE_STATES),
        lambda labels: labels.states,
        _states,
    ),
    _per_backend(
        CounterMetricFamily,
        "dispatcher_backend_state_changes",
        "Backend state changes.",
        lambda backends, _: [b.state_changes for b in backends],
    ),
    _per_backend(
        GaugeMetricFamily,
        "dispatcher_backend_load",
        "Last load the backend reported.",
        # + 0.0 makes a report of -0 a 0: the two compare equal, so a kept line could not tell them apart.
        lambda backends, _: [b.load + 0.0 for b in backends],
    ),
    _per_backend(
        GaugeMetricFamily,
        "dispatcher_backend_effective_load",
        "Estimated load now (report + redirects since, drained since) / weight: what the choice uses.",
        lambda backends, time: [time.pool.effective_load(b, time.now) for b in backends],
    ),
    _per_backend(
        GaugeMetricFamily,
        "dispatcher_backend_load_age_seconds",
        "Age of the last load report (since start when none yet).",
        _load_ages,
    ),
    _per_backend(
        GaugeMetricFamily,
        "dispatcher_backend_drain_rate",
        "Requests a second the load estimate falls by between reports (its share over busy time).",
        lambda backends, _: [b.rate for b in backends],
    ),
    BackendFamily(
        GaugeMetricFamily,
        "dispatcher_backend_load_source",
        "How the backend's load arrives, as a state-set: poll (check answers) or stream (events).",
        ("backend", "source"),
        ("",) * len(LOAD_SOURCES),
        lambda labels: labels.sources,
        _sources,
    ),
    _per_backend(
        CounterMetricFamily,
        "dispatcher_load_stream_connections",
        "Load streams opened by the backend (a reconnection after silence or an end counts again).",
        lambda backends, _: [b.stream_connections for b in backends],
    ),
    _per_backend(
        CounterMetricFamily,
        "dispatcher_load_stream_events",
        "Load reports received on the backend's load stream.",
        lambda backends, _: [b.stream_events for b in backends],
    ),
    _per_backend(
        GaugeMetricFamily,
        "dispatcher_backend_weight",
        "Configured backend weight.",
        lambda backends, _: [b.weight for b in backends],
    ),
    BackendFamily(
        CounterMetricFamily,
        "dispatcher_health_checks",
        "Health checks by result.",
        ("backend", "result"),
        ("_total", "_total"),
        lambda labels: labels.results,
        _checks,
    ),
    BackendFamily(
        CounterMetricFamily,
        "dispatcher_health_check_failures",
        "Failed health checks by reason.",
        ("backend", "reason"),
        ("_total",) * len(FAILURE_REASONS),
        lambda labels: labels.reasons,
        _failures,
    ),
    BackendFamily(
        HistogramMetricFamily,
        "dispatcher_health_check_duration_seconds",
        "Health check duration, pass or fail (a load stream's checks: the one that opened it).",
        ("backend",),
        ("_bucket",) * len(CHECK_BOUNDS) + ("_count", "_sum"),
        lambda labels: labels.histogram,
        _check_durations,
    ),
)


class PoolCollector(Collector):
    """Reads every backend's figures at scrape time: one family after another, as in BACKEND_FAMILIES."""

    def __init__(self, pool: Pool, now: float) -> None:
        self.pool = pool
        self.time = ScrapeTime(now, pool.started_at, pool)

    def collect(self) -> Iterator[Metric]:
        backends = list(self.pool.backends)  # the list the pool holds now, even if a reload replaces it
        labels = SampleLabels.of(tuple(backend.name for backend in backends))
        for family, label_sets in zip(BACKEND_FAMILIES, labels.families, strict=True):
            yield family.metric(label_sets, family.read(backends, self.time))


class ServerCollector(Collector):
    """Reads the front door's counters at scrape time."""

    def __init__(self, stats: ServerStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self.stats
        responses = CounterMetricFamily(
            "dispatcher_responses",
            "Responses sent by the front door, by status code.",
            labels=["code"],
        )
        for code, count in sorted(stats.responses.items()):
            responses.add_metric([str(code)], count)
        yield responses
        yield GaugeMetricFamily(
            "dispatcher_open_connections",
            "Client connections open now.",
            value=stats.open_connections,
        )
        yield CounterMetricFamily(
            "dispatcher_connections", "Client connections accepted.", value=stats.connections_total
        )
        yield _duration_histogram(stats)
        yield CounterMetricFamily(
            "dispatcher_redirect_loops",
            "Requests refused with 508: a dispatcher's health check reached this front door.",
            value=stats.loops,
        )
        info = GaugeMetricFamily("dispatcher_build_info", "Build information.", labels=["version"])
        info.add_metric([__version__], 1.0)
        yield info


def _cumulative(bounds: tuple[float, ...], counts: list[int]) -> list[tuple[str, float]]:
    """Per-bucket counts (plain ints kept on the hot path) made cumulative, at scrape time."""
    buckets: list[tuple[str, float]] = []
    total = 0
    for bound, count in zip((*bounds, math.inf), list(counts), strict=True):
        total += count
        buckets.append(("+Inf" if bound == math.inf else repr(bound), total))
    return buckets


def _duration_histogram(stats: ServerStats) -> HistogramMetricFamily:
    return HistogramMetricFamily(
        "dispatcher_request_duration_seconds",
        "From a request head read to its answer written to the socket.",
        buckets=_cumulative(DURATION_BUCKETS, stats.duration_counts),
        sum_value=stats.duration_sum,
    )


def _accepts_gzip(accept_encoding: str) -> bool:
    """RFC 9110 §12.5.3: `gzip` listed with a q-value above 0."""
    for item in accept_encoding.split(","):
        coding, _, params = item.strip().partition(";")
        if coding.strip().lower() in ("gzip", "*"):
            q = params.strip().removeprefix("q=").strip() if params else "1"
            try:
                return float(q) > 0
            except ValueError:
                return False
    return False


# A scrape yields after this many samples given to the encoder (1-2 ms of CPU) and after this many bytes
# gzipped (~1 ms), so that the front door never waits longer for the admin listener.
RENDER_STEP = 500
GZIP_STEP = 256 * 1024
T = TypeVar("T")
Steps = Generator[None, None, T]  # a computation in steps: the caller may run other work at each yield
Scrape = tuple[bytes, str, bool]

# Rendered families are kept per encoding (format, version and escaping, as named by the content type
# that choose_encoder gives with it) for this many encodings: Prometheus' choice and a person's curl.
KEPT_ENCODINGS = 2

Encoder = Callable[[Collector], bytes]


@dataclass(frozen=True, slots=True)
class Block:
    """One per-backend family as prometheus-client rendered it: its header (HELP, TYPE) and a line for
    each sample (without its newline); and the backends and figures it shows."""

    names: tuple[str, ...]
    values: list[float]
    header: bytes
    lines: list[bytes]

    def parts(self) -> Iterator[bytes]:
        yield self.header
        if self.lines:
            yield b"\n".join(self.lines)
            yield b"\n"


class Families(Collector):
    """Metric families already built: lets the encoder render one family on its own."""

    def __init__(self, *families: Metric) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


class Metrics:
    """Scrapes of the pool and the server, with the standard process collector.

    prometheus-client formats every sample of every scrape: about 3 us a sample (6 us in OpenMetrics with
    the `underscores` escaping Prometheus 2 gets, hence `_without_needless_escaping`), for the 30,000
    samples of 1,000 backends. Yet between two scrapes (every 15 s or so) many of them do not change:
    states, weights, failure counts, the fail count of a backend that passes, the low buckets of a
    histogram. So each per-backend family is kept as prometheus-client's encoder rendered it, a line per
    sample, with the figures it shows; the next scrape of that encoding has the encoder render only the
    samples whose figures differ, and takes their new lines in place of the old ones. Both encoders write
    a family as its header then one line per sample, and a body as its families in order then an end
    (`# EOF` in OpenMetrics): so the same bytes.
    """

    def __init__(self, pool: Pool, stats: ServerStats) -> None:
        self.pool = pool
        self.stats = stats
        # Both replaced as a whole, never changed in place: a scrape that is between steps reads one
        # version, and two scrapes at once both stay right (the later one's blocks are kept).
        self._labels = SampleLabels.of(())
        self._blocks: dict[str, tuple[Block, ...]] = {}  # by content type, the most recently used last

    def registry(self, now: float) -> CollectorRegistry:
        """A registry for one scrape at trio time `now`, kept nowhere: what `exposition` must equal."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(PoolCollector(self.pool, now))
        self._register_rest(registry)
        return registry

    def _register_rest(self, registry: CollectorRegistry) -> None:
        registry.register(ServerCollector(self.stats))
        ProcessCollector(registry=registry)  # process_cpu_seconds_total, resident memory, fds

    def exposition(
        self, now: float, accept: str | None, accept_encoding: str | None = None
    ) -> tuple[bytes, str, bool]:
        """The whole scrape at once (tests, benchmarks): `scrape` run to its end."""
        steps = self.scrape(now, accept, accept_encoding)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                result: Scrape = done.value
                return result

    def scrape(self, now: float, accept: str | None, accept_encoding: str | None = None) -> Steps[Scrape]:
        """The scrape body, its content type, and whether it is gzipped (as Prometheus asks by default),
        in steps of a millisecond or two: the admin listener lets the front door run between them.

        A scrape of 1,000 backends is 50 ms or more of CPU. In one piece it would hold every client's
        redirect back that long; in a worker thread it would be worse, as the thread keeps the GIL for
        up to 5 ms each time the event loop makes a system call.
        OpenMetrics when the scraper's Accept asks for it, as prometheus-client's own handlers do.
        Several scrapes may interleave: what is kept between scrapes is replaced, never changed.
        """
        encoder, content_type = choose_encoder(accept or "")
        encoder = _without_needless_escaping(encoder)
        kept = self._blocks
        blocks = yield from self._pool_blocks(encoder, kept.get(content_type, ()), now)
        if blocks is None:  # a prometheus-client that lays its output out otherwise: keep nothing
            parts = [encoder(self.registry(now))]
        else:
            self._keep(kept, content_type, tuple(blocks))
            rest = CollectorRegistry(auto_describe=False)
            self._register_rest(rest)
            parts = [part for block in blocks for part in block.parts()] + [encoder(rest)]
        if accept_encoding and _accepts_gzip(accept_encoding):
            return (yield from _gzip(parts)), content_type, True
        return b"".join(parts), content_type, False

    def _pool_blocks(
        self, encoder: Encoder, previous: tuple[Block, ...], now: float
    ) -> Steps[list[Block] | None]:
        """Every per-backend family rendered, from the previous blocks and the samples that changed;
        None if the encoder's output is not laid out as a header and one line per sample."""
        backends = list(self.pool.backends)  # the list the pool holds now, even if a reload replaces it
        names = tuple(backend.name for backend in backends)
        labels = self._labels  # read once: another scrape may replace it
        if labels.names != names:
            labels = self._labels = SampleLabels.of(names)
            yield
        time = ScrapeTime(now, self.pool.started_at, self.pool)
        blocks: list[Block] = []
        for family, label_sets, old in zip(
            BACKEND_FAMILIES, labels.families, previous or [None] * len(BACKEND_FAMILIES), strict=True
        ):
            values = family.read(backends, time)
            if old is not None and old.names == names and old.values == values:
                blocks.append(old)
                continue
            same_backends = old if old is not None and old.names == names else None
            block = yield from _render(encoder, family, names, label_sets, values, same_backends)
            if block is None:
                return None
            blocks.append(block)
        return blocks

    def _keep(self, kept: dict[str, tuple[Block, ...]], content_type: str, blocks: tuple[Block, ...]) -> None:
        """Keep `blocks` as the most recent encoding's, forgetting the least recent beyond KEPT_ENCODINGS."""
        others = [(other, old) for other, old in kept.items() if other != content_type]
        del others[: max(0, len(others) + 1 - KEPT_ENCODINGS)]
        self._blocks = dict([*others, (content_type, blocks)])


def _without_needless_escaping(encoder: Encoder) -> Encoder:
    """The same encoder with `allow-utf-8` escaping where `underscores` or `values` was negotiated.

    Prometheus 2 asks for OpenMetrics without an escaping, so it gets `underscores`; prometheus-client
    0.26 then rewrites every sample's name a character at a time, though names in the legacy character
    set come out unchanged: twice the cost of a scrape. Every name and label name here is in that set
    (a test checks it), and for such names `allow-utf-8` writes the same bytes without the walk. The
    content type still names the escaping that was negotiated.
    """
    if isinstance(encoder, partial) and encoder.keywords.get("escaping") in NEEDLESS_ESCAPINGS:
        return partial(encoder.func, *encoder.args, **{**encoder.keywords, "escaping": openmetrics.ALLOWUTF8})
    return encoder


NEEDLESS_ESCAPINGS = (openmetrics.UNDERSCORES, openmetrics.VALUES)


def _render(
    encoder: Encoder,
    family: BackendFamily,
    names: tuple[str, ...],
    label_sets: list[Labels],
    values: list[float],
    old: Block | None,
) -> Steps[Block | None]:
    """`family` rendered by the encoder: the samples whose figures differ from `old`'s (a block of the
    same backends), the other lines taken from `old`; None if the layout is not as expected. The
    encoder gets RENDER_STEP samples at a time."""
    header, end = _framing(encoder, family)
    if old is None:
        todo: Sequence[int] = range(len(values))
        lines = [b""] * len(values)
    else:
        todo = [i for i, (was, now) in enumerate(zip(old.values, values, strict=True)) if was != now]
        lines = list(old.lines)  # a copy: another scrape may be reading the old block
    for start in range(0, len(todo), RENDER_STEP):
        part = list(todo[start : start + RENDER_STEP])
        fresh = _sample_lines(encoder, header, end, family.metric(label_sets, values, part))
        if fresh is None:
            return None
        for i, line in zip(part, fresh, strict=True):
            lines[i] = line
        yield
    return Block(names, values, header, lines)


def _framing(encoder: Encoder, family: BackendFamily) -> tuple[bytes, bytes]:
    """What the encoder writes before a family's samples (HELP, TYPE) and after the last family."""
    end = encoder(Families())
    return encoder(Families(family.metric([], []))).removesuffix(end), end


def _sample_lines(encoder: Encoder, header: bytes, end: bytes, metric: Metric) -> list[bytes] | None:
    """The encoder's one line per sample of `metric`; None if its output is not `header` (what it makes
    of the family with no samples), a line per sample, then `end` (`# EOF` in OpenMetrics).

    Both of prometheus-client's encoders write a family as HELP and TYPE then one line per sample:
    label values and help texts have their newlines escaped.
    """
    text = encoder(Families(metric))
    if not (text.startswith(header) and text.endswith(end)):
        return None
    lines = text[len(header) : len(text) - len(end)].split(b"\n")
    if lines.pop() != b"" or len(lines) != len(metric.samples):
        return None
    return lines


def _gzip(parts: list[bytes]) -> Steps[bytes]:
    """The body gzipped (level 1: Prometheus asks for gzip for the bytes on the wire, not for the last
    percent of them), GZIP_STEP bytes at a time: 2 MB in one call holds the event loop for ~10 ms."""
    compressor = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)  # 16 +: a gzip header
    body = b"".join(parts)
    out = []
    for start in range(0, len(body), GZIP_STEP):
        out.append(compressor.compress(body[start : start + GZIP_STEP]))
        yield
    out.append(compressor.flush())
    return b"".join(out)
