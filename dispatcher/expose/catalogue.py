"""The metrics catalogue: what an operator can read of the pool and the front door, and where each figure
comes from.

Owns: every metric's name, type, help text and label names; what each sample reads of the pool's backends
and of the front door's counters (`BACKEND_FAMILIES`, `ServerCollector`), at scrape time; the label sets
shared between scrapes (`SampleLabels`); the dispatcher's own `CollectorRegistry` (never the global one, so
that several dispatchers can live in one process, as in tests) with the standard process collector.
Rules: a window, not the source of truth: the pool and the front door's stats (core.stats) hold the state,
and this module only reads it, when a scrape asks. Every labelled series exists from start (each backend's
every state, result, reason, source and bucket). Names follow Prometheus practice: `dispatcher_` prefix,
base units, counters end in `_total`, states as a state-set (as HAProxy's `haproxy_server_status{state}`),
every name and label name in the legacy character set. It writes no byte of a scrape and must not import
render.py or prometheus-client's encoders: how samples become bytes is the render engine's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from itertools import accumulate, cycle

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from dispatcher import __version__
from dispatcher.core.health_state import VISIBLE_STATES
from dispatcher.core.membership import BAD_OUTCOMES, OUTCOMES, Membership
from dispatcher.core.pool import CHECK_BUCKETS, FAILURE_REASONS, LOAD_SOURCES, Backend, Pool
from dispatcher.core.pools import Pools
from dispatcher.core.routes import CountLabel, Router, count_labels
from dispatcher.core.stats import DURATION_BUCKETS, ServerStats
from dispatcher.settings.config import DEFAULT_POOL

Labels = dict[str, str]


@dataclass(frozen=True, slots=True)
class ScrapeTime:
    """The trio clock when the scrape began (it runs in steps) and at the pool's start, and the pool
    (whose estimate of a backend's load depends on the time)."""

    now: float
    started_at: float
    pool: Pool | Pools


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
    def of(cls, key: str) -> BackendLabels:
        """The label sets of the backend `pool/name` (a name alone: the default pool's). Neither a
        backend's name nor a pool's can hold a '/' (config), so the key is never ambiguous."""
        pool, _, name = key.rpartition("/")
        backend = {"backend": name, "pool": pool or DEFAULT_POOL}
        return cls(
            backend=backend,
            states=tuple({**backend, "state": word} for word in VISIBLE_STATES),
            results=({**backend, "result": "pass"}, {**backend, "result": "fail"}),
            reasons=tuple({**backend, "reason": reason} for reason in FAILURE_REASONS),
            sources=tuple({**backend, "source": source} for source in LOAD_SOURCES),
            histogram=(*({**backend, "le": le} for le in CHECK_BOUNDS), backend, backend),
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
    return BackendFamily(kind, name, documentation, ("backend", "pool"), (suffix,), _one, read)


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
        "1 if the backend takes new redirects, but for its pool's maintenance (dispatcher_pool_state).",
        lambda backends, _: [1.0 if b.usable else 0.0 for b in backends],
    ),
    BackendFamily(
        GaugeMetricFamily,
        "dispatcher_backend_state",
        "Backend state as a state-set (1 for the current state).",
        ("backend", "pool", "state"),
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
        ("backend", "pool", "source"),
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
        ("backend", "pool", "result"),
        ("_total", "_total"),
        lambda labels: labels.results,
        _checks,
    ),
    BackendFamily(
        CounterMetricFamily,
        "dispatcher_health_check_failures",
        "Failed health checks by reason.",
        ("backend", "pool", "reason"),
        ("_total",) * len(FAILURE_REASONS),
        lambda labels: labels.reasons,
        _failures,
    ),
    BackendFamily(
        HistogramMetricFamily,
        "dispatcher_health_check_duration_seconds",
        "Health check duration, pass or fail (a load stream's checks: the one that opened it).",
        ("backend", "pool"),
        ("_bucket",) * len(CHECK_BOUNDS) + ("_count", "_sum"),
        lambda labels: labels.histogram,
        _check_durations,
    ),
)


class PoolCollector(Collector):
    """Reads every backend's figures at scrape time: one family after another, as in BACKEND_FAMILIES."""

    def __init__(self, pool: Pool | Pools, now: float) -> None:
        self.pool = pool
        self.now = now

    def collect(self) -> Iterator[Metric]:
        reading = PoolReading.of(self.pool, self.now)
        labels = SampleLabels.of(reading.names)
        for family, label_sets in zip(BACKEND_FAMILIES, labels.families, strict=True):
            yield family.metric(label_sets, reading.values(family))


class ServerCollector(Collector):
    """Reads the front door's counters at scrape time."""

    def __init__(self, stats: ServerStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self.stats
        yield _responses(stats)
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
        failures = CounterMetricFamily(
            "dispatcher_tls_handshake_failures",
            "TLS handshakes on the front door that failed (error), were plain HTTP requests (http, "
            "answered with a plain 400) or did not finish in the header timeout.",
            labels=["reason"],
        )
        for reason, count in stats.tls_handshake_failures.items():
            failures.add_metric([reason], count)
        yield failures
        yield _build_info()


def _responses(stats: ServerStats) -> CounterMetricFamily:
    responses = CounterMetricFamily(
        "dispatcher_responses",
        "Responses sent by the front door, by status code.",
        labels=["code"],
    )
    for code, count in sorted(stats.responses.items()):
        responses.add_metric([str(code)], count)
    return responses


def _build_info() -> GaugeMetricFamily:
    info = GaugeMetricFamily("dispatcher_build_info", "Build information.", labels=["version"])
    info.add_metric([__version__], 1.0)
    return info


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


@dataclass(frozen=True, slots=True)
class PoolReading:
    """The pool's backends as one scrape reads them, in the pool's order: the list the pool holds now
    (even if a reload replaces it meanwhile), their names, and the time of the scrape."""

    backends: list[Backend]
    names: tuple[str, ...]
    time: ScrapeTime

    @classmethod
    def of(cls, pool: Pool | Pools, now: float) -> PoolReading:
        backends = list(pool.backends)
        names = tuple(f"{backend.pool}/{backend.name}" for backend in backends)
        return cls(backends, names, ScrapeTime(now, pool.started_at, pool))

    def values(self, family: BackendFamily) -> list[float]:
        """The values of every sample of `family`, backend after backend."""
        return family.read(self.backends, self.time)


# The memberships of the dns:// and dns+srv:// entries (net.discovery), by entry URL, read at scrape.
Memberships = Callable[[], Mapping[str, Membership]]


class DiscoveryCollector(Collector):
    """The DNS entries' figures (issue 14): how often each was asked, how often its answers turned
    bad, its members, its outcome now. Every series of a configured entry exists from the start."""

    def __init__(self, memberships: Memberships) -> None:
        self.memberships = memberships

    def collect(self) -> Iterator[Metric]:
        service = ["service"]
        asked = CounterMetricFamily(
            "dispatcher_discovery_resolutions",
            "DNS answers taken for an entry, whatever came.",
            labels=service,
        )
        failures = CounterMetricFamily(
            "dispatcher_discovery_failures",
            "Times an entry's answers turned bad (no answer, or no records): once per outage, not per query.",
            labels=[*service, "outcome"],
        )
        members = GaugeMetricFamily("dispatcher_discovery_members", "An entry's members now.", labels=service)
        changes = CounterMetricFamily(
            "dispatcher_discovery_member_changes", "Times an entry's member list changed.", labels=service
        )
        state = GaugeMetricFamily(
            "dispatcher_discovery_state",
            "An entry's last outcome, as a state-set.",
            labels=[*service, "state"],
        )
        for url, entry in self.memberships().items():
            asked.add_metric([url], entry.resolutions)
            for outcome in BAD_OUTCOMES:
                failures.add_metric([url, outcome], entry.failures.get(outcome, 0))
            members.add_metric([url], len(entry.members))
            changes.add_metric([url], entry.changes)
            for word in OUTCOMES:
                state.add_metric([url, word], 1.0 if entry.outcome == word else 0.0)
        yield from (asked, failures, members, changes, state)


# The router's counters now, by (route, pool) label (core.routes.count_labels); None without routes.
# A single process reads its router's; the --workers master the sum of its workers' (Master).
RouteCounts = Callable[[], Mapping[CountLabel, int] | None]


def router_counts(router: Router | None) -> Mapping[CountLabel, int] | None:
    """A router's counters by label: what a single process exports."""
    if router is None:
        return None
    return dict(zip(count_labels([route.spec for route in router.routes]), router.counts(), strict=True))


class RoutingCollector(Collector):
    """The pools' and the routes' figures (issue 13): each pool's state, usable backends and fallback
    answers; requests per route (route="" for those no route took) and per variant of a split."""

    def __init__(self, pools: Pools, route_counts: RouteCounts | None) -> None:
        self.pools, self.route_counts = pools, route_counts

    def collect(self) -> Iterator[Metric]:
        yield from self._pool_families()
        counts = self.route_counts() if self.route_counts is not None else None
        if counts is None:
            return
        requests = CounterMetricFamily(
            "dispatcher_route_requests",
            'Requests each route took (route="": none matched, the default pool\'s).',
            labels=["route"],
        )
        variants = CounterMetricFamily(
            "dispatcher_route_variant_requests",
            "Requests each route sent to each of its pools (a split's variants; a plain route's one pool).",
            labels=["route", "pool"],
        )
        for (route, pool), count in counts.items():
            if pool is None:
                requests.add_metric([route], count)
            else:
                variants.add_metric([route, pool], count)
        yield from (requests, variants)

    def _pool_families(self) -> Iterator[Metric]:
        state = GaugeMetricFamily(
            "dispatcher_pool_state",
            "A pool's operator state, as a state-set: maint sends every request to its fallback.",
            labels=["pool", "state"],
        )
        usable = GaugeMetricFamily(
            "dispatcher_pool_usable_backends",
            "Backends of the pool that take redirects now.",
            labels=["pool"],
        )
        fallbacks = CounterMetricFamily(
            "dispatcher_pool_fallback_responses",
            "Answers given by the pool's fallback (no usable backend, or maintenance), by its kind.",
            labels=["pool", "fallback"],
        )
        for pool in self.pools:
            for word in ("ready", "maint"):
                state.add_metric([pool.name, word], 1.0 if (word == "maint") == pool.maintenance else 0.0)
            usable.add_metric([pool.name], pool.usable_count)
            fallbacks.add_metric([pool.name, pool.fallback.kind], pool.fallbacks)
            for kind, count in pool.earlier_fallbacks.items():
                fallbacks.add_metric([pool.name, kind], count)
        yield from (state, usable, fallbacks)


def registry(
    pool: Pool | Pools,
    stats: ServerStats,
    now: float,
    memberships: Memberships | None = None,
    router: RouteCounts | None = None,
) -> CollectorRegistry:
    """Every family of one scrape at trio time `now`, read afresh: what a render must equal."""
    whole = CollectorRegistry(auto_describe=False)
    whole.register(PoolCollector(pool, now))
    _register_rest(whole, stats, memberships, _pools(pool), router)
    return whole


def _pools(pool: Pool | Pools) -> Pools:
    return pool if isinstance(pool, Pools) else Pools(pool)


def rest_registry(
    stats: ServerStats,
    memberships: Memberships | None = None,
    pools: Pools | None = None,
    router: RouteCounts | None = None,
) -> CollectorRegistry:
    """The families after the pool's (the front door's, DNS's, the build's, the process's), afresh."""
    rest = CollectorRegistry(auto_describe=False)
    _register_rest(rest, stats, memberships, pools, router)
    return rest


def _register_rest(
    registry: CollectorRegistry,
    stats: ServerStats,
    memberships: Memberships | None,
    pools: Pools | None = None,
    router: RouteCounts | None = None,
) -> None:
    registry.register(ServerCollector(stats))
    if memberships is not None:
        registry.register(DiscoveryCollector(memberships))
    if pools is not None:
        registry.register(RoutingCollector(pools, router))
    ProcessCollector(registry=registry)  # process_cpu_seconds_total, resident memory, fds
