"""The load estimate between reports: drain, in-flight redirects, head starts, the redirect rate."""

import math

import pytest

from dispatcher.core import estimate
from dispatcher.core.pool import CheckResult, Pool
from dispatcher.settings.config import HealthSettings, parse_backend


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


def test_drain_rate_is_the_share_over_busy_time() -> None:
    """Busy 90 % of the time, a backend serves its share in 90 % of the time; at most MAX_BOOST."""
    assert estimate.drain_rate(45.0, busy=0.9) == pytest.approx(50.0)
    assert estimate.drain_rate(45.0, busy=0.1) == pytest.approx(45.0 * estimate.MAX_BOOST)


def test_busy_averages_the_first_reports_plainly_then_in_an_ewma() -> None:
    """A pool just started learns how busy its backends are in a few reports, not in 20 intervals."""
    busy = estimate.BUSY_PRIOR
    for samples in range(4):  # four reports of a busy backend, each held for one 2 s interval
        busy = estimate.next_busy(busy, 3.0, 2.0, samples)
    assert busy == pytest.approx((estimate.BUSY_PRIOR + 4) / 5)
    settled = estimate.next_busy(busy, 0.0, 2.0, 100)  # later: one report moves it by the EWMA's weight
    assert settled == pytest.approx(busy * (1 - estimate.BUSY_WEIGHT))


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


def test_a_rise_in_traffic_is_drained_at_once_so_estimates_do_not_grow() -> None:
    """After a quiet spell the redirect rate is taken at its rise, not at its average's pace: a drain
    that lagged would let every estimate grow, and a fresh low report would herd again."""
    rate = estimate.RedirectRate(0.0)
    rate.observe(0, 30.0)
    assert rate.observe(180, 30.5) == pytest.approx(360.0)
    assert rate.observe(180, 31.0) < 360.0  # a fall goes at the average's pace
    assert rate.observe(180, 31.0) > estimate.MIN_RATE


def test_a_fresh_report_below_everyone_gains_at_most_credit_requests() -> None:
    """However low a report is against the others' estimates, it takes at most CREDIT + 1 in a row."""
    pool = up_pool(4)
    now = 0.0
    for _ in range(400):
        now += 0.001
        pool.choose(now)  # estimates grow: 100 each, far above what a backend really holds
    pool.record_check(pool.backends[0], CheckResult(True, 0.001, load=0.0), now)
    firsts = [pool.choose(now) for _ in range(10)]
    run = next(i for i, b in enumerate(firsts) if b is not pool.backends[0])
    assert 1 <= run <= estimate.CREDIT + 1


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


def test_an_old_report_settles_towards_the_pools_usual_queue() -> None:
    """Nothing at once, most of the mean after a few SETTLE times, never more than the mean."""
    assert estimate.settled(4.0, 0.0, 0.02) == 0.0
    assert estimate.settled(4.0, estimate.SETTLE * 0.02, 0.02) == pytest.approx(4.0 * (1 - math.exp(-1)))
    assert estimate.settled(4.0, 1e6, 0.02) == pytest.approx(4.0)


def test_a_tick_raises_a_drained_old_estimate_to_the_settled_floor_and_no_further() -> None:
    """Reports of 4 everywhere, then one backend's estimate drains to empty: a tick puts it back near
    the usual queue, its settled floor; a backend whose estimate is above its floor is left alone."""
    pool = up_pool(2)
    low, high = pool.backends
    for t in range(1, 200):  # a long run of reports of 4: the pool's usual queue becomes 4
        pool.record_check(low, CheckResult(True, 0.001, load=4.0), t * 0.01)
        pool.record_check(high, CheckResult(True, 0.001, load=4.0), t * 0.01)
    assert pool.mean_load == pytest.approx(4.0, rel=0.01)
    pool.record_check(high, CheckResult(True, 0.001, load=400.0), 2.0)
    now = 2.0 + 10 * estimate.SETTLE / low.rate  # long after: `low` has drained to empty
    pool.tick(now)
    floor = now + estimate.settled(pool.mean_load, now - low.report.at, 1 / low.rate) / low.rate
    assert low.free_at == pytest.approx(floor)
    assert high.free_at > floor  # 400 reported: its own estimate is above the floor


def test_idle_reports_of_nothing_keep_the_usual_queue_and_the_busy_share() -> None:
    """A pool that sits idle (nothing sent, nothing reported: a quiet night, another dispatcher's turn)
    keeps the usual queue and busy share it learned under traffic, for the traffic that comes back;
    a report of a queue while idle still counts (another dispatcher's traffic)."""
    pool = up_pool(2)
    for t in range(1, 200):
        for backend in pool.backends:
            pool.record_check(backend, CheckResult(True, 0.001, load=4.0), t * 0.01)
    for backend in pool.backends:  # the first report of 0 after a queue of 4 still tells: it has drained
        pool.record_check(backend, CheckResult(True, 0.001, load=0.0), 2.0)
    usual, busy = pool.mean_load, [backend.busy for backend in pool.backends]
    for t in range(201, 400):  # idle: reports of 0 and no redirect between them
        for backend in pool.backends:
            pool.record_check(backend, CheckResult(True, 0.001, load=0.0), t * 0.01)
    assert pool.mean_load == pytest.approx(usual)
    assert [backend.busy for backend in pool.backends] == busy
    pool.record_check(pool.backends[0], CheckResult(True, 0.001, load=8.0), 4.0)
    assert pool.mean_load > usual


def test_a_pool_with_no_usable_backend_keeps_its_drain_rates_sane() -> None:
    """Every backend down: the share of a redirect rate over no weight is not taken (it was 1e9 a
    second in /backends and the metrics); each backend keeps the drain rate it had."""
    pool = up_pool(3)
    for t in range(1, 40):  # traffic: 30 redirects a second
        for _ in range(15):
            assert pool.choose(t * 0.5) is not None
        pool.tick(t * 0.5)
    before = [backend.rate for backend in pool.backends]
    for backend in pool.backends:
        for _ in range(3):
            pool.record_check(backend, CheckResult(False, 0.001, reason="refused"), 20.0)
    assert pool.usable_count == 0
    for t in range(41, 60):
        pool.tick(t * 0.5)
        for backend in pool.backends:  # still down: each check's result files it again
            pool.record_check(backend, CheckResult(False, 0.001, reason="refused"), t * 0.5)
    assert [backend.rate for backend in pool.backends] == pytest.approx(before, rel=0.5)
    assert max(backend.rate for backend in pool.backends) < 100


def _streamed(
    pool: Pool, loads: dict[str, float], start: float, end: float, every: float = 0.1
) -> dict[str, int]:
    """Stream events of `loads` (by backend name) every `every` s and 100 redirects a second from
    `start` to `end`; returns the redirects each backend took."""
    taken = {backend.spec.name: 0 for backend in pool.backends}
    for tick in range(round(start * 100), round(end * 100)):
        now = tick / 100
        pool.tick(now)
        if tick % round(every * 100) == 0:
            for backend in pool.backends:
                pool.record_load(backend, loads[backend.spec.name], False, now)
        chosen = pool.choose(now)
        assert chosen is not None
        taken[chosen.spec.name] += 1
    return taken


@pytest.mark.parametrize("spike", [1e5, 1e308])
def test_one_backends_absurd_report_moves_no_other_backends_estimate(spike: float) -> None:
    """One backend reports an absurd load for 0.2 s, then its own again: the pool's usual queue hardly
    moves, so no other backend's estimate is raised and the split is what it was (it was 50/50, every
    estimate near 700 and falling 15 a second, and near 1e306 for minutes after 1e308)."""
    pool = up_pool(2)
    idle = pool.backends[0]
    usual = {"b0": 0.0, "b1": 5.0}
    before = _streamed(pool, usual, 0.01, 10.0)
    mean, estimates = pool.mean_load, [pool.effective_load(b, 9.99) for b in pool.backends]
    _streamed(pool, {"b0": 0.0, "b1": spike}, 10.0, 10.2)
    assert pool.mean_load < 2 * mean
    assert pool.effective_load(idle, 10.19) < 5  # it took every redirect for 0.2 s, no more
    after = _streamed(pool, usual, 10.2, 20.0)
    assert [pool.effective_load(b, 19.99) for b in pool.backends] == pytest.approx(estimates, abs=1.5)
    assert after["b0"] / sum(after.values()) == pytest.approx(before["b0"] / sum(before.values()), abs=0.05)


def test_a_report_past_any_queue_is_taken_as_the_bound() -> None:
    """1e308 stays finite through every product with a step (it was inf in /backends)."""
    pool = up_pool(1)
    (backend,) = pool.backends
    pool.record_check(backend, CheckResult(True, 0.001, load=1e308), 1.0)
    assert backend.report is not None and backend.report.value == estimate.MAX_LOAD
    assert math.isfinite(backend.free_at) and math.isfinite(pool.effective_load(backend, 1.0))


def test_the_usual_queue_takes_a_rise_from_nothing_within_a_few_rounds() -> None:
    """The cap on one report's weight grows with the average: a pool that goes from idle to a queue
    of 20 everywhere has its usual queue near 20 within 12 rounds of reports, as an uncapped one would."""
    pool = up_pool(4)
    for round_ in range(1, 13):
        for backend in pool.backends:
            pool.record_check(backend, CheckResult(True, 0.001, load=20.0), float(round_))
    assert pool.mean_load > 0.7 * 20
    assert estimate.usual_sample(20.0, 9.0) == 20.0  # an ordinary report passes whole
