"""The load estimate between reports: drain, in-flight redirects, capacity, the redirect rate."""

import math

import pytest

from dispatcher import estimate
from dispatcher.config import HealthSettings, parse_backend
from dispatcher.pool import CheckResult, Pool


def up_pool(count: int, weights: list[float] | None = None) -> Pool:
    """A pool of `count` backends, all up with load 0 at time 0 (no sockets)."""
    weights = weights or [1.0] * count
    specs = [parse_backend("t", f"http://10.0.0.{i}", f"b{i}", w) for i, w in enumerate(weights)]
    pool = Pool(specs, HealthSettings())
    for backend in pool.backends:
        pool.record_check(backend, CheckResult(True, 0.001, load=0.0), 0.0)
    return pool


def test_unseen_counts_only_redirects_within_the_round_trip() -> None:
    """Redirects whose last was sent before the round trip are all seen; else at the average pace."""
    assert estimate.unseen(10, age=2.0, last=0.5, delay=0.01) == 0.0
    assert estimate.unseen(10, age=2.0, last=0.001, delay=0.01) == 1.0  # at least the last one
    assert estimate.unseen(400, age=2.0, last=0.001, delay=0.01) == pytest.approx(2.0)
    assert estimate.unseen(3, age=0.005, last=0.001, delay=0.01) == 3.0  # all sent within it
    assert estimate.unseen(0, age=2.0, last=math.inf, delay=0.01) == 0.0


def test_capacity_is_measured_only_while_busy_and_probes_upwards_otherwise() -> None:
    """Busy on both reports: served = before + arrivals - load over the time; idle: it only grows."""
    assert estimate.next_capacity(0.0, before=5, arrivals=20, load=5, elapsed=2.0) == 10.0
    assert estimate.next_capacity(0.0, before=0, arrivals=20, load=5, elapsed=2.0) == 0.0
    grown = estimate.next_capacity(10.0, before=0, arrivals=4, load=0, elapsed=1.0)
    assert grown == pytest.approx(10.0 * math.exp(estimate.CAPACITY_PROBE))
    averaged = estimate.next_capacity(10.0, before=5, arrivals=40, load=5, elapsed=2.0)
    assert 10.0 < averaged < 20.0


def test_drain_rate_is_the_share_over_busy_time_unless_clearly_slower() -> None:
    """Busy half the time, the share doubles (at most MAX_BOOST); a capacity well below it wins."""
    assert estimate.drain_rate(45.0, busy=0.9, capacity=0.0) == pytest.approx(50.0)
    assert estimate.drain_rate(45.0, busy=0.1, capacity=0.0) == pytest.approx(45.0 * estimate.MAX_BOOST)
    assert estimate.drain_rate(45.0, busy=1.0, capacity=40.0) == 45.0  # within the idle moments' error
    assert estimate.drain_rate(45.0, busy=1.0, capacity=12.0) == 12.0


def test_redirect_rate_follows_the_redirects_and_never_drops_below_the_minimum() -> None:
    """An EWMA of redirects per second from a running total."""
    rate = estimate.RedirectRate(0.0)
    for second in range(1, 21):
        rate.observe(100 * second, float(second))
    assert rate.rate == pytest.approx(100.0, rel=0.01)
    for second in range(21, 60):
        rate.observe(2000, float(second))
    assert rate.rate == estimate.MIN_RATE


def test_estimate_falls_between_reports_at_the_drain_rate() -> None:
    """A backend's effective load is its report plus redirects since, less what it drained since."""
    pool = up_pool(1)
    backend = pool.backends[0]
    pool.record_check(backend, CheckResult(True, 0.001, load=8.0), 10.0)
    rate = backend.rate
    assert pool.effective_load(backend, 10.0) == pytest.approx(8.0)
    assert pool.effective_load(backend, 10.0 + 2 / rate) == pytest.approx(6.0)
    pool.choose(10.0 + 2 / rate)
    assert pool.effective_load(backend, 10.0 + 2 / rate) == pytest.approx(7.0)
    assert pool.effective_load(backend, 10.0 + 100 / rate) == 0.0  # never below empty


def test_a_fresh_low_report_takes_a_few_redirects_not_a_whole_interval_of_them() -> None:
    """The herd the old rule made: after an interval of redirects, the backend whose report just came
    back low took them all until it caught up. Now the others' estimates drained too."""
    pool = up_pool(4)
    now = 0.0
    for _ in range(400):  # an interval of traffic at 200 a second, reports of the true queue (1 each)
        now += 0.005
        pool.choose(now)
        pool.tick(now)
    for backend in pool.backends[1:]:
        pool.record_check(backend, CheckResult(True, 0.001, load=1.0), now)
    pool.record_check(pool.backends[0], CheckResult(True, 0.001, load=0.0), now)
    firsts = [pool.choose(now + i * 0.005) for i in range(8)]
    assert sum(1 for b in firsts if b is pool.backends[0]) <= 3


def test_a_backend_that_stays_busy_is_measured_slower_and_gets_less() -> None:
    """A backend that serves 10 a second while its share is 50 reports a queue that persists: that
    measures its capacity, which its estimate then drains at, and it is sent less than its share."""
    pool = up_pool(2)
    slow, fast = pool.backends
    now, queue = 0.0, 0.0
    for _ in range(20):  # intervals of 2 s at 100 redirects a second
        before = slow.redirects
        for _ in range(200):
            now += 0.01
            pool.choose(now)
            pool.tick(now)
        queue = max(0.0, queue + slow.redirects - before - 10 * 2.0)
        pool.record_check(slow, CheckResult(True, 0.001, load=queue), now)
        pool.record_check(fast, CheckResult(True, 0.001, load=0.0), now)
    assert 0 < slow.capacity < estimate.CAPACITY_TRUST * pool.share_per_weight
    assert slow.rate == slow.capacity < fast.rate
    sent = slow.redirects, fast.redirects
    for _ in range(200):
        now += 0.01
        pool.choose(now)
    assert slow.redirects - sent[0] < (fast.redirects - sent[1]) / 2


def test_redirect_rate_sets_the_drain_shares_by_weight() -> None:
    """After a tick the drain share is the redirect rate split by weight among the usable backends."""
    pool = up_pool(2, [3.0, 1.0])
    now = 0.0
    for _ in range(8000):
        now += 0.001
        pool.choose(now)
        pool.tick(now)
    assert pool.redirect_rate.rate == pytest.approx(1000.0, rel=0.05)
    heavy, light = pool.backends
    assert heavy.rate / light.rate == pytest.approx(3.0)
    assert heavy.redirects / light.redirects == pytest.approx(3.0, rel=0.01)
