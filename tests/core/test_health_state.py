"""The health state machine: one test per transition of the table."""

import pytest

from dispatcher.core.health_state import (
    TRANSITIONS,
    Admin,
    Event,
    Guard,
    Health,
    Streak,
    Transition,
    next_health,
    visible_state,
    walk,
)

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


def streak_for(row: Transition) -> int:
    """A streak at which the row's guard holds, with rise 2 and fall 3."""
    threshold = RISE if row.health is Health.DOWN else FALL
    return {Guard.ALWAYS: 1, Guard.REACHED: threshold - 1, Guard.SHORT: threshold - 2}[row.guard]


@pytest.mark.parametrize(
    "row", TRANSITIONS, ids=lambda r: f"{r.health.value}-{r.event.value}-{r.guard.value}"
)
def test_each_row_of_the_table(row: Transition) -> None:
    """Walking the table from a row's state, on its event, with its guard holding, lands where it says."""
    streak = streak_for(row)
    expected = 0 if row.streak is Streak.RESET else streak + 1
    assert walk(row.health, streak, row.event, RISE, FALL) == (row.then, expected)


def test_the_table_has_one_way_out_of_every_state_on_every_event() -> None:
    """Every (health, event) has one ALWAYS row, or exactly a REACHED and a SHORT one."""
    for health in Health:
        for event in Event:
            guards = sorted(r.guard.value for r in TRANSITIONS if (r.health, r.event) == (health, event))
            assert guards in (["always"], ["reached", "short"]), (health, event)


def test_leaving_maint_starts_over_from_any_health() -> None:
    """Out of maint a backend's old health is stale: it is starting again, whatever it was."""
    for health in Health:
        assert walk(health, 2, Event.RESUME, RISE, FALL) == (Health.STARTING, 0)


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
