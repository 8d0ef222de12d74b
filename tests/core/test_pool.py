"""The pool: the one writer of a backend's state, with each backend's own health settings."""

from dataclasses import replace

from dispatcher.core.health_state import Health
from dispatcher.core.pool import CheckResult, Pool
from dispatcher.settings.config import HealthSettings, parse_backend

FAIL = CheckResult(False, 0.001, reason="refused")
PASS = CheckResult(True, 0.001, load=0.0)


def pool_of(**own: object) -> Pool:
    """Two backends under rise 2 / fall 3; `own` overrides the second one's health settings."""
    first = parse_backend("t", "http://10.0.0.1", "shared", 1)
    second = replace(parse_backend("t", "http://10.0.0.2", "own", 1), health_overrides=tuple(own.items()))
    pool = Pool([first, second], HealthSettings(rise=2, fall=3))
    for backend in pool.backends:
        pool.record_check(backend, PASS, 0.0)
    return pool


def test_a_backend_with_its_own_fall_goes_down_on_its_own_count() -> None:
    """`fall = 1` in a backend's entry takes it down at its first failure; the other needs three."""
    pool = pool_of(fall=1)
    shared, own = pool.backends
    for backend in pool.backends:
        pool.record_check(backend, FAIL, 1.0)
    assert (shared.health, own.health) == (Health.UP, Health.DOWN)
    for t in (2.0, 3.0):
        pool.record_check(shared, FAIL, t)
    assert shared.health is Health.DOWN


def test_a_backend_with_its_own_rise_comes_back_on_its_own_count() -> None:
    """`rise = 4` in a backend's entry: the other is back after two passes, it after four."""
    pool = pool_of(rise=4, fall=1)
    shared, own = pool.backends
    for t in (1.0, 2.0, 3.0):
        pool.record_check(shared, FAIL, t)
    pool.record_check(own, FAIL, 1.0)
    for t in (4.0, 5.0):
        for backend in pool.backends:
            pool.record_check(backend, PASS, t)
    assert (shared.health, own.health) == (Health.UP, Health.DOWN)
    for t in (6.0, 7.0):
        pool.record_check(own, PASS, t)
    assert own.health is Health.UP


def test_a_reload_gives_a_kept_backend_its_new_settings() -> None:
    """A reload that changes the global fall reaches every backend that does not set its own."""
    pool = pool_of(fall=1)
    pool.health_settings = HealthSettings(rise=2, fall=5)
    pool.reconcile([backend.spec for backend in pool.backends])
    shared, own = pool.backends
    assert (shared.spec.health.fall, own.spec.health.fall) == (5, 1)
