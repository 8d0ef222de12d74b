"""Prometheus metrics: a window onto the pool and the front door, read at scrape time.

Owns: the dispatcher's own `CollectorRegistry` (never the global one, so that several dispatchers
can live in one process, as in tests), metric names, types and help texts.
Rules: the pool and the server hold the state; this module only reads it (a custom collector),
except the health-check duration histogram, which is observed as checks complete. Every labelled
series exists from start. Names follow Prometheus practice: `dispatcher_` prefix, base units,
counters end in `_total`, states as a state-set (as HAProxy's `haproxy_server_status{state}`).
"""

from __future__ import annotations

import gzip
import math
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from dispatcher import __version__
from dispatcher.pool import CHECK_BUCKETS, FAILURE_REASONS, Backend, Pool
from dispatcher.server import DURATION_BUCKETS, ServerStats
from dispatcher.state import VISIBLE_STATES


class PoolCollector(Collector):
    """Reads the pool and the server counters at scrape time."""

    def __init__(self, pool: Pool, stats: ServerStats, now: float) -> None:
        self.pool = pool
        self.stats = stats
        self.now = now  # the trio clock at the scrape: the collector may run in a worker thread

    def collect(self) -> Iterator[Metric]:
        yield from self._backend_metrics(self.pool.backends, self.now)
        yield from self._server_metrics()

    def _backend_metrics(self, backends: list[Backend], now: float) -> Iterator[Metric]:
        b = ["backend"]
        redirects = CounterMetricFamily("dispatcher_redirects", "307 redirects sent to a backend.", labels=b)
        up = GaugeMetricFamily("dispatcher_backend_up", "1 if the backend takes new redirects.", labels=b)
        state = GaugeMetricFamily(
            "dispatcher_backend_state",
            "Backend state as a state-set (1 for the current state).",
            labels=["backend", "state"],
        )
        changes = CounterMetricFamily("dispatcher_backend_state_changes", "Backend state changes.", labels=b)
        load = GaugeMetricFamily("dispatcher_backend_load", "Last load the backend reported.", labels=b)
        effective = GaugeMetricFamily(
            "dispatcher_backend_effective_load",
            "(Reported load + redirects sent since that report) / weight: what the choice uses.",
            labels=b,
        )
        age = GaugeMetricFamily(
            "dispatcher_backend_load_age_seconds",
            "Age of the last load report (since start when none yet).",
            labels=b,
        )
        weight = GaugeMetricFamily("dispatcher_backend_weight", "Configured backend weight.", labels=b)
        checks = CounterMetricFamily(
            "dispatcher_health_checks", "Health checks by result.", labels=["backend", "result"]
        )
        failures = CounterMetricFamily(
            "dispatcher_health_check_failures",
            "Failed health checks by reason.",
            labels=["backend", "reason"],
        )
        durations = HistogramMetricFamily(
            "dispatcher_health_check_duration_seconds", "Health check duration, pass or fail.", labels=b
        )
        for backend in backends:
            name = [backend.name]
            durations.add_metric(
                name, _cumulative(CHECK_BUCKETS, backend.check_durations), backend.check_duration_sum
            )
            current = backend.state
            redirects.add_metric(name, backend.redirects)
            up.add_metric(name, 1.0 if backend.usable else 0.0)
            for word in VISIBLE_STATES:
                state.add_metric([backend.name, word], 1.0 if word == current else 0.0)
            changes.add_metric(name, backend.state_changes)
            load.add_metric(name, backend.load)
            effective.add_metric(name, backend.effective_load)
            report_at = backend.report.at if backend.report is not None else self.pool.started_at
            age.add_metric(name, max(0.0, now - report_at))
            weight.add_metric(name, backend.weight)
            checks.add_metric([backend.name, "pass"], backend.checks_passed)
            checks.add_metric([backend.name, "fail"], backend.checks_failed)
            for reason in FAILURE_REASONS:
                failures.add_metric([backend.name, reason], backend.failures[reason])
        yield from (redirects, up, state, changes, load, effective, age, weight, checks, failures, durations)

    def _server_metrics(self) -> Iterator[Metric]:
        stats = self.stats
        responses = CounterMetricFamily(
            "dispatcher_responses",
            "Responses sent by the front door, by status code.",
            labels=["code"],
        )
        for code, count in sorted(stats.responses.copy().items()):  # copy: may run in a worker thread
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


class Metrics:
    """Scrapes of the pool and the server, with the standard process collector."""

    def __init__(self, pool: Pool, stats: ServerStats) -> None:
        self.pool = pool
        self.stats = stats

    def registry(self, now: float) -> CollectorRegistry:
        """A registry for one scrape at trio time `now` (cheap: two collectors)."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(PoolCollector(self.pool, self.stats, now))
        ProcessCollector(registry=registry)  # process_cpu_seconds_total, resident memory, fds
        return registry

    def exposition(
        self, now: float, accept: str | None, accept_encoding: str | None = None
    ) -> tuple[bytes, str, bool]:
        """The scrape body, its content type, and whether it is gzipped (as Prometheus asks by default).

        OpenMetrics when the scraper's Accept asks for it, as prometheus-client's own handlers do.
        Safe to call from a worker thread: the collector only reads plain attributes and copies.
        """
        encoder, content_type = choose_encoder(accept or "")
        body = encoder(self.registry(now))
        if accept_encoding and _accepts_gzip(accept_encoding):
            return gzip.compress(body, compresslevel=1), content_type, True
        return body, content_type, False
