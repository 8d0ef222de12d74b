"""Metrics.exposition keeps rendered families between scrapes: what it serves must be, byte for byte,
what prometheus-client's own encoder makes of the uncached registry at that moment.

A pool in process, changed the ways a running dispatcher changes it (checks, redirects, the operator, a
reload, a new pool), scraped after each change in the text format and in OpenMetrics. A kept block that
was not rendered again after its figures changed would show the old figures and fail the comparison.
The process_* families differ between any two calls (CPU time, memory) and are compared for presence only.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Callable
from dataclasses import dataclass, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.exposition import choose_encoder, generate_latest
from prometheus_client.registry import Collector

from dispatcher.core.health_state import Admin
from dispatcher.core.pool import FAILURE_REASONS, Backend, CheckResult, Pool
from dispatcher.core.stats import ServerStats
from dispatcher.expose.catalogue import BACKEND_FAMILIES, SampleLabels
from dispatcher.expose.render import KEPT_ENCODINGS, RENDER_STEP, Metrics, _framing, _sample_lines
from dispatcher.settings.config import BackendSpec, HealthSettings

TEXT = "text/plain;version=0.0.4"
TEXT_UTF8 = "text/plain;version=1.0.0;escaping=allow-utf-8"
OPENMETRICS = "application/openmetrics-text;version=1.0.0"
ACCEPTS = (TEXT, OPENMETRICS)  # no more than are kept, or each scrape would find its blocks forgotten
PROCESS = b"# HELP process_"
HEALTH = HealthSettings(rise=1, fall=1)


def specs(*names: str) -> list[BackendSpec]:
    return [
        BackendSpec(name, f"http://127.0.0.1:{9000 + i}/", "http", "127.0.0.1", 9000 + i, "")
        for i, name in enumerate(names)
    ]


def check_ok(load: float) -> CheckResult:
    return CheckResult(True, 0.003, load=load)


def check_fail(reason: str) -> CheckResult:
    return CheckResult(False, 0.25, reason=reason)


def plain(metrics: Metrics, now: float, accept: str) -> bytes:
    """prometheus-client's encoder for `accept` over the registry of a scrape that keeps nothing."""
    encoder, _ = choose_encoder(accept)
    return encoder(metrics.registry(now))


def split_process(body: bytes) -> tuple[bytes, bytes]:
    """The body before the process collector's families, and the end: `# EOF` for OpenMetrics."""
    before, found, after = body.partition(PROCESS)
    return before, after.rpartition(b"\n# ")[2] if found else b""


def assert_served_as_plain(metrics: Metrics, now: float) -> list[bytes]:
    """Every encoding's exposition equals prometheus-client's plain output; returns the bodies."""
    bodies = []
    for accept in ACCEPTS:
        served = metrics.exposition(now, accept)[0]
        expected = plain(metrics, now, accept)
        assert split_process(served) == split_process(expected), accept
        assert served.count(b"# EOF") == expected.count(b"# EOF") == (accept == OPENMETRICS)
        bodies.append(served)
    return bodies


@pytest.fixture
def metrics() -> Metrics:
    pool = Pool(specs("a", "b", "c"), HEALTH, started_at=1.0)
    return Metrics(pool, ServerStats())


def test_a_fresh_pool_is_served_as_prometheus_client_renders_it(metrics: Metrics) -> None:
    """Before any check, every encoding's body is prometheus-client's own, `# EOF` once in OpenMetrics."""
    assert_served_as_plain(metrics, 2.0)


def test_each_kind_of_change_shows_in_the_next_scrape(metrics: Metrics) -> None:
    """Load reports, failed checks, redirects, the operator and the clock: each shows in the next body."""
    pool = metrics.pool
    a, b, c = pool.backends
    changes: list[Callable[[], object]] = [
        lambda: pool.record_check(a, check_ok(load=3.0), 3.0),  # a load report: load, age, checks, durations
        lambda: pool.record_check(b, check_ok(load=0.5), 3.5),
        lambda: [pool.choose() for _ in range(5)],  # redirects and effective load
        lambda: pool.record_check(c, check_fail("timeout"), 4.0),  # a state change and a failure reason
        lambda: pool.set_admin(a, Admin.DRAIN),
        lambda: pool.set_admin(b, Admin.MAINT),
        lambda: pool.set_admin(a, Admin.READY),
        lambda: pool.record_check(c, check_ok(load=0.0), 5.0),
        lambda: None,  # only the clock moves: the load ages
    ]
    previous = assert_served_as_plain(metrics, 2.0)
    for step, change in enumerate(changes):
        change()
        bodies = assert_served_as_plain(metrics, 6.0 + step)
        assert [split_process(body) for body in bodies] != [split_process(body) for body in previous]
        previous = bodies


def test_a_figure_back_to_an_earlier_value_is_served_as_it_is_now(metrics: Metrics) -> None:
    """A load going 1 -> 2 -> 1 shows 1, 2, 1: blocks are kept for the figures, not for the moment."""
    a = metrics.pool.backends[0]
    for load in (1.0, 2.0, 1.0, 2.0):
        metrics.pool.record_check(a, check_ok(load=load), 3.0)
        a.check_durations[:] = [0] * len(a.check_durations)  # only the load differs between rounds
        a.check_duration_sum, a.checks_passed = 0.0, 0
        body = assert_served_as_plain(metrics, 3.0)[0]
        assert f'dispatcher_backend_load{{backend="a",pool="default"}} {load}\n'.encode() in body


def test_a_load_of_minus_zero_is_served_as_zero(metrics: Metrics) -> None:
    """-0.0 == 0.0, so a kept line could not tell them apart: a report of -0 shows as 0, plain or kept."""
    a = metrics.pool.backends[0]
    metrics.pool.record_check(a, check_ok(load=0.0), 2.0)
    assert_served_as_plain(metrics, 2.0)
    metrics.pool.record_check(a, check_ok(load=-0.0), 2.0)
    for body in assert_served_as_plain(metrics, 2.0):
        assert b'dispatcher_backend_load{backend="a",pool="default"} 0.0\n' in body


def test_a_reload_that_adds_removes_and_reorders_backends(metrics: Metrics) -> None:
    """Pool.reconcile with a backend gone, one new, the order changed and a new weight: served as plain."""
    pool = metrics.pool
    pool.record_check(pool.backends[0], check_ok(load=2.0), 2.0)
    assert_served_as_plain(metrics, 3.0)
    a, _, c = specs("a", "b", "c")
    (d,) = [replace(spec, port=9100, url="http://127.0.0.1:9100/") for spec in specs("d")]
    pool.reconcile([c, replace(a, weight=2.0), d])
    assert [backend.name for backend in pool.backends] == ["c", "a", "d"]
    body = assert_served_as_plain(metrics, 4.0)[0]
    assert b'backend="b"' not in body
    assert b'dispatcher_backend_weight{backend="a",pool="default"} 2.0\n' in body


def test_a_reload_that_only_renames(metrics: Metrics) -> None:
    """Backend c replaced by d, every figure the same (all 0): the body names d, not c."""
    assert_served_as_plain(metrics, 2.0)
    a, b, _ = specs("a", "b", "c")
    (d,) = [replace(spec, port=9100, url="http://127.0.0.1:9100/") for spec in specs("d")]
    metrics.pool.reconcile([a, b, d])
    body = assert_served_as_plain(metrics, 2.0)[0]
    assert b'backend="c"' not in body
    assert b'backend="d"' in body


def test_a_new_pool_of_the_same_names_is_read_afresh(metrics: Metrics) -> None:
    """A new Pool object with the same backend names: its figures, not the kept ones of the old pool."""
    old = metrics.pool
    for backend in old.backends:
        old.record_check(backend, check_ok(load=7.0), 2.0)
    assert_served_as_plain(metrics, 3.0)
    metrics.pool = Pool(specs("a", "b", "c"), HEALTH, started_at=2.5)
    body = assert_served_as_plain(metrics, 3.0)[0]
    assert b"7.0" not in split_process(body)[0]


def test_a_pool_emptied_and_filled_again(metrics: Metrics) -> None:
    """No backend at all (every family with its header only), then backends again."""
    metrics.pool.reconcile([])
    assert_served_as_plain(metrics, 2.0)
    metrics.pool.reconcile(specs("x", "y"))
    assert_served_as_plain(metrics, 3.0)


def test_more_encodings_than_are_kept(metrics: Metrics) -> None:
    """Scrapers asking for more encodings than KEPT_ENCODINGS in turn, the pool changing between them."""
    accepts = (*ACCEPTS, TEXT_UTF8)
    assert len(ACCEPTS) == KEPT_ENCODINGS < len(accepts)
    a = metrics.pool.backends[0]
    for round_ in range(3):
        for accept in (*accepts, *reversed(accepts)):
            metrics.pool.record_check(a, check_ok(load=float(round_)), 2.0 + round_)
            now = 3.0 + round_
            served = metrics.exposition(now, accept)[0]
            assert split_process(served) == split_process(plain(metrics, now, accept)), accept


def test_gzip_holds_the_same_body(metrics: Metrics) -> None:
    """With Accept-Encoding: gzip the body decompresses to what prometheus-client renders."""
    metrics.pool.record_check(metrics.pool.backends[1], check_ok(load=1.5), 2.0)
    for accept in ACCEPTS:
        body, _, gzipped = metrics.exposition(3.0, accept, "gzip")
        assert gzipped
        assert split_process(gzip.decompress(body)) == split_process(plain(metrics, 3.0, accept))


def test_scrapes_interleaved_step_by_step_with_changes_leave_nothing_wrong() -> None:
    """Several scrapes in steps at once (the admin listener runs them on one event loop), each at its
    own time and encoding, with checks landing between steps: each ends whole, later ones are exact."""
    pool = Pool(specs(*(f"b{i:04d}" for i in range(1200))), HEALTH, started_at=0.0)
    metrics = Metrics(pool, ServerStats())
    scrapes = [metrics.scrape(10.0 + offset % 3, ACCEPTS[offset % 2]) for offset in range(4)]
    finished = 0
    step = 0
    while scrapes:
        for scrape in list(scrapes):
            try:
                next(scrape)
            except StopIteration as done:
                assert done.value[0].count(b"dispatcher_backend_up{") == 1200
                scrapes.remove(scrape)
                finished += 1
        backend = pool.backends[step % len(pool.backends)]
        pool.record_check(backend, check_ok(load=float(step % 7)), float(step % 5))
        step += 1
    assert finished == 4 and step > 4
    for now in (10.0, 11.0, 12.0, 10.0):
        assert_served_as_plain(metrics, now)


@dataclass(frozen=True)
class Check:
    result: CheckResult  # a load report or a failure

    def apply(self, pool: Pool, backend: Backend, now: float) -> float:
        pool.record_check(backend, self.result, now)
        return now


@dataclass(frozen=True)
class Operator:
    admin: Admin

    def apply(self, pool: Pool, backend: Backend, now: float) -> float:
        pool.set_admin(backend, self.admin)
        return now


@dataclass(frozen=True)
class Redirects:
    count: int

    def apply(self, pool: Pool, backend: Backend, now: float) -> float:
        for _ in range(self.count):
            pool.choose()
        return now


@dataclass(frozen=True)
class Tick:
    seconds: float

    def apply(self, pool: Pool, backend: Backend, now: float) -> float:
        return now + self.seconds


# One change to one of 12 backends: a load report, a failed check, the operator, redirects, the clock.
changes = st.tuples(
    st.integers(0, 11),
    st.one_of(
        st.builds(Check, st.builds(check_ok, st.floats(0.0, 1000.0))),
        st.builds(Check, st.builds(check_fail, st.sampled_from(FAILURE_REASONS))),
        st.builds(Operator, st.sampled_from(list(Admin))),
        st.builds(Redirects, st.integers(1, 30)),
        st.builds(Tick, st.floats(0.0, 20.0)),
    ),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(changes, max_size=6), min_size=1, max_size=8))
def test_any_changes_between_scrapes_are_served_as_plain(
    rounds: list[list[tuple[int, Check | Operator | Redirects | Tick]]],
) -> None:
    """Whatever changes between scrapes, each scrape is prometheus-client's plain output of that moment."""
    pool = Pool(specs(*(f"b{i:02d}" for i in range(12))), HealthSettings(rise=2, fall=2), started_at=0.0)
    metrics = Metrics(pool, ServerStats())
    now = 1.0
    for round_ in rounds:
        for index, change in round_:
            now = change.apply(pool, pool.backends[index], now)
        assert_served_as_plain(metrics, now)


def test_an_encoder_without_a_line_per_sample_is_not_spliced() -> None:
    """Output that is not a header and one line per sample is refused (exposition then keeps nothing)."""
    family = BACKEND_FAMILIES[0]
    (label_sets, *_) = SampleLabels.of(("a", "b")).families
    metric = family.metric(label_sets, [1.0, 2.0])

    def two_lines_a_sample(registry: Collector) -> bytes:
        return generate_latest(registry).replace(b"} ", b"}\n ")

    assert _sample_lines(generate_latest, *_framing(generate_latest, family), metric) is not None
    assert _sample_lines(two_lines_a_sample, *_framing(two_lines_a_sample, family), metric) is None


PROMETHEUS_2 = (
    "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,"
    "text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
)
LEGACY_METRIC_NAME = re.compile(rb"[a-zA-Z_:][a-zA-Z0-9_:]*")
LEGACY_LABEL_NAME = re.compile(rb"[a-zA-Z_][a-zA-Z0-9_]*")


def test_prometheus_2s_accept_gets_what_underscores_escaping_renders_and_is_told_so(metrics: Metrics) -> None:
    """Prometheus 2 negotiates `underscores`: the body is what that escaping renders, the type names it,
    and every metric and label name needs no escaping (else allow-utf-8 would differ)."""
    metrics.pool.record_check(metrics.pool.by_name["a"], check_ok(2.0), 3.0)
    body, content_type, _ = metrics.exposition(5.0, PROMETHEUS_2)
    assert content_type == choose_encoder(PROMETHEUS_2)[1]
    assert "escaping=underscores" in content_type
    assert split_process(body) == split_process(plain(metrics, 5.0, PROMETHEUS_2))
    lines = [line for line in body.splitlines() if line and not line.startswith(b"#")]
    names = {line.partition(b"{")[0].partition(b" ")[0] for line in lines}
    labels = set(re.findall(rb'[{,]([^={},"]+)="', body))
    assert names and labels >= {b"backend", b"state", b"le", b"code"}
    assert all(LEGACY_METRIC_NAME.fullmatch(name) for name in names), names
    assert all(LEGACY_LABEL_NAME.fullmatch(label) for label in labels), labels


def test_a_large_scrape_comes_in_steps_of_at_most_render_step_samples() -> None:
    """The admin listener runs the front door between steps: a first scrape of 1,000 backends (every
    sample rendered) must give it control at least once per RENDER_STEP samples, and end as one piece."""
    names = [f"b{i:04d}" for i in range(1000)]
    metrics = Metrics(Pool(specs(*names), HEALTH, started_at=1.0), ServerStats())
    steps = metrics.scrape(2.0, OPENMETRICS, "gzip")
    yields = 0
    while True:
        try:
            next(steps)
        except StopIteration as done:
            body, _, gzipped = done.value
            break
        yields += 1
    samples = sum(len(family.suffixes) for family in BACKEND_FAMILIES) * len(names)
    assert yields >= samples / RENDER_STEP
    assert gzipped
    assert split_process(gzip.decompress(body)) == split_process(plain(metrics, 2.0, OPENMETRICS))
