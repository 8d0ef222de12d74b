"""Choosing: least effective load, corrected by redirects since the report, weights respected."""

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from dispatcher.core.health_state import Admin
from dispatcher.core.pool import Backend, CheckResult, Pool
from dispatcher.settings.config import POLICIES, HealthSettings, parse_backend


def pool_with(loads: list[float], weights: list[float] | None = None, policy: str = "least-loaded") -> Pool:
    """A pool whose backends are all up with the given reported loads (no sockets)."""
    weights = weights or [1.0] * len(loads)
    specs = [parse_backend("t", f"http://10.0.0.{i}", f"b{i}", w) for i, w in enumerate(weights)]
    pool = Pool(specs, HealthSettings(), policy=policy)
    for backend, load in zip(pool.backends, loads, strict=True):
        pool.record_check(backend, CheckResult(True, 0.01, load=load), now=1.0)
    return pool


def names(pool: Pool, count: int) -> Counter[str]:
    chosen = [pool.choose() for _ in range(count)]
    return Counter(b.name for b in chosen if b is not None)


def test_burst_spreads_over_the_less_loaded_and_never_reaches_the_most_loaded() -> None:
    """Loads 5, 1, 9 and no new report: eight requests go to the first two, none to the third."""
    counts = names(pool_with([5, 1, 9]), 8)
    assert counts["b2"] == 0
    assert counts["b1"] >= 2 and counts["b0"] >= 2
    assert sum(counts.values()) == 8


def test_weights_divide_the_load() -> None:
    """Weight 2 at the same load takes twice the redirects."""
    counts = names(pool_with([0, 0], [2, 1]), 300)
    assert counts == Counter({"b0": 200, "b1": 100})


def test_ties_are_broken_at_random() -> None:
    """Equal loads: the first pick is not always the same backend."""
    firsts = {names(pool_with([3, 3, 3]), 1).most_common(1)[0][0] for _ in range(60)}
    assert len(firsts) > 1


def test_a_tie_break_never_overrides_a_difference_in_load() -> None:
    """Ties are broken at random, but keys are exact: a load lower by a ten-thousandth always wins."""
    firsts = {names(pool_with([1.0001, 1.0, 1.0001]), 1).most_common(1)[0][0] for _ in range(60)}
    assert firsts == {"b1"}


def test_new_report_resets_the_correction() -> None:
    """A fresh report replaces load + redirects-since."""
    pool = pool_with([0, 4])
    assert names(pool, 4) == Counter({"b0": 4})
    b0 = pool.backends[0]
    pool.record_check(b0, CheckResult(True, 0.01, load=10), now=3.0)
    assert (b0.since, b0.load) == (0, 10)
    assert names(pool, 1) == Counter({"b1": 1})


def test_nothing_usable_gives_none() -> None:
    """A pool whose backends never passed a check chooses nothing."""
    pool = Pool([parse_backend("t", "http://a")], HealthSettings())
    assert pool.choose() is None


def test_equal_loads_take_turns() -> None:
    """Equal loads and weights: every backend gets one redirect before any gets a second (a rotation)."""
    pool = pool_with([2.0] * 7)
    rounds = [names(pool, 7) for _ in range(5)]
    assert all(counts == Counter({f"b{i}": 1 for i in range(7)}) for counts in rounds)


def test_report_below_every_key_takes_the_next_redirect() -> None:
    """A fresh report lower than all the others' loads is chosen next, though redirects had moved on."""
    pool = pool_with([0.0] * 4)
    names(pool, 10)
    b2 = pool.backends[2]
    pool.record_check(b2, CheckResult(True, 0.01, load=0.5), now=2.0)
    assert [pool.choose() for _ in range(2)] == [b2, b2]  # 0.5 and 1.5, below the others' 2 and 3


def test_large_pool_index_stays_small() -> None:
    """Many reports and redirects do not grow the index past a constant of the pool size."""
    pool = pool_with([1.0] * 100)
    for round_ in range(50):
        for backend in pool.backends:
            pool.record_check(backend, CheckResult(True, 0.01, load=round_ % 7), now=round_)
        names(pool, 150)
    assert len(pool.policy) <= 2 * 100 + 16
    live = [entry for entry in pool.policy._heap if entry[2] == entry[4].version]
    assert sorted(b.name for *_, b in live) == sorted(b.name for b in pool.backends)  # one live entry each


actions = st.lists(
    st.tuples(
        st.integers(0, 4),
        st.sampled_from(["pass", "fail", "drain", "maint", "ready", "self_drain", "choose"]),
        st.floats(0, 50),
    ),
    max_size=80,
)


@given(
    actions,
    st.lists(st.sampled_from([0.5, 1.0, 1.0, 3.0]), min_size=5, max_size=5),
    st.sampled_from(POLICIES),
)
def test_no_policy_ever_returns_an_unusable_backend(
    steps: list[tuple[int, str, float]], weights: list[float], policy: str
) -> None:
    """Whatever happens to the pool, every policy returns a usable backend, or None when none is."""
    specs = [parse_backend("t", f"http://10.0.0.{i}", f"b{i}", weight) for i, weight in enumerate(weights)]
    pool = Pool(specs, HealthSettings(), policy=policy)
    for now, (index, action, load) in enumerate(steps):
        apply_action(pool, pool.backends[index], action, load, float(now))
        for _ in range(3):
            chosen = pool.choose(float(now))
            assert (chosen is None) == (not any(b.usable for b in pool.backends))
            assert chosen is None or chosen.usable


def test_round_robin_is_smooth_and_weighted_exactly() -> None:
    """Weights 3 and 1: 300 and 100 of 400, every 8 in a row split 6 and 2 (give or take one), loads
    ignored."""
    pool = pool_with([50, 0], [3, 1], policy="round-robin")
    chosen = [b.name for b in (pool.choose() for _ in range(400)) if b is not None]
    assert Counter(chosen) == Counter({"b0": 300, "b1": 100})
    assert all(1 <= chosen[i : i + 8].count("b1") <= 3 for i in range(len(chosen) - 8))


def test_round_robin_gives_a_returning_backend_its_turn_not_a_burst() -> None:
    """A backend back after a while starts at the current turn: it takes one redirect in N, at once."""
    pool = pool_with([0, 0, 0], policy="round-robin")
    names(pool, 300)
    b2 = pool.backends[2]
    pool.set_admin(b2, Admin.MAINT)
    names(pool, 300)
    pool.set_admin(b2, Admin.READY)
    pool.record_check(b2, CheckResult(True, 0.01, load=0.0), now=5.0)
    assert names(pool, 30)["b2"] == 10


def test_random_draws_by_weight() -> None:
    """Weights 3 and 1: about 3 of 4 draws to the heavy one (within five standard deviations)."""
    pool = pool_with([0, 0], [3, 1], policy="random")
    heavy = names(pool, 4000)["b0"]
    assert abs(heavy - 3000) < 5 * (4000 * 0.75 * 0.25) ** 0.5


def test_power_of_two_takes_the_lesser_of_two() -> None:
    """With two backends both are always drawn: the lesser key wins every time, as least-loaded."""
    pool = pool_with([0, 6], policy="p2c")
    first = [b.name for b in (pool.choose() for _ in range(6)) if b is not None]
    assert first == ["b0"] * 6


def test_power_of_two_spreads_a_burst_over_many_backends() -> None:
    """Equal keys among 20: the draws differ, so a burst never lands on one backend."""
    pool = pool_with([0.0] * 20, policy="p2c")
    assert len(names(pool, 40)) >= 10


@given(actions, st.lists(st.sampled_from([0.5, 1.0, 1.0, 3.0]), min_size=5, max_size=5))
def test_choose_never_returns_an_unusable_backend(
    steps: list[tuple[int, str, float]], weights: list[float]
) -> None:
    """Whatever happens to the pool, choose() returns a usable backend or None, never another, and
    always one with the least key: the soonest expected to drain (weights and reports included)."""
    specs = [parse_backend("t", f"http://10.0.0.{i}", f"b{i}", weight) for i, weight in enumerate(weights)]
    pool = Pool(specs, HealthSettings())
    for now, (index, action, load) in enumerate(steps):
        backend = pool.backends[index]
        apply_action(pool, backend, action, load, float(now))
        keys = {b.name: b.free_at for b in pool.backends if b.usable}
        chosen = pool.choose(float(now))
        if chosen is None:
            assert not keys
        else:
            assert chosen.usable
            assert keys[chosen.name] == min(keys.values())


def apply_action(pool: Pool, backend: Backend, action: str, load: float, now: float) -> None:
    if action in ("pass", "self_drain"):
        pool.record_check(backend, CheckResult(True, 0.0, load=load, self_drain=action == "self_drain"), now)
    elif action == "fail":
        pool.record_check(backend, CheckResult(False, 0.0, reason="status"), now)
    elif action in ("drain", "maint", "ready"):
        pool.set_admin(backend, Admin(action))
