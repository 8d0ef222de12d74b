"""The health state machine: one test per transition of the table."""

import pytest

from dispatcher.core.health_state import Admin, Health, next_health, visible_state

RISE, FALL = 2, 3


@pytest.mark.parametrize(
    ("health", "streak", "passed", "expected"),
    [
        (Health.STARTING, 0, True, (Health.UP, 0)),  # Envoy: one pass is enough at start
        (Health.STARTING, 0, False, (Health.DOWN, 0)),
        (Health.DOWN, 0, True, (Health.DOWN, 1)),  # not yet `rise` passes
        (Health.DOWN, 1, True, (Health.UP, 0)),  # the rise-th pass
        (Health.DOWN, 1, False, (Health.DOWN, 0)),  # a failure resets the passes
        (Health.UP, 0, True, (Health.UP, 0)),
        (Health.UP, 0, False, (Health.UP, 1)),
        (Health.UP, 1, False, (Health.UP, 2)),
        (Health.UP, 2, False, (Health.DOWN, 0)),  # the fall-th failure
        (Health.UP, 2, True, (Health.UP, 0)),  # a pass resets the failures
    ],
)
def test_transition(health: Health, streak: int, passed: bool, expected: tuple[Health, int]) -> None:
    """Each row of the rise/fall table moves health and streak as HAProxy's rise/fall do."""
    assert next_health(health, streak, passed, RISE, FALL) == expected


def test_rise_one_and_fall_one_flip_on_a_single_result() -> None:
    """rise=1/fall=1 (Traefik's behaviour) flips on every result."""
    assert next_health(Health.DOWN, 0, True, 1, 1) == (Health.UP, 0)
    assert next_health(Health.UP, 0, False, 1, 1) == (Health.DOWN, 0)


@pytest.mark.parametrize(
    ("health", "admin", "self_drain", "shown"),
    [
        (Health.UP, Admin.READY, False, "up"),
        (Health.UP, Admin.DRAIN, False, "draining"),
        (Health.UP, Admin.READY, True, "draining"),
        (Health.DOWN, Admin.DRAIN, False, "down"),
        (Health.STARTING, Admin.READY, False, "down"),
        (Health.UP, Admin.MAINT, False, "maint"),
        (Health.DOWN, Admin.MAINT, False, "maint"),
    ],
)
def test_visible_state(health: Health, admin: Admin, self_drain: bool, shown: str) -> None:
    """maint wins over down, down over draining, draining over up."""
    assert visible_state(health, admin, self_drain) == shown
