"""The health state machine: a table of transitions, pure and exhaustive.

Owns: how one check result moves a backend between starting, up and down (HAProxy's rise/fall),
written as a table of transitions (`TRANSITIONS`) that `walk` follows, as h11's `_state.py` does;
and how the operator's word (ready/drain/maint) combines with health into the state users see.
Nothing else in the package sets a backend's health: the pool applies `walk`'s answer.
Rules: no I/O, no time, no imports from the rest of the package; every transition has a test.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Health(Enum):
    """What the checks say. STARTING: never checked; it takes no traffic (Envoy's rule)."""

    STARTING = "starting"
    UP = "up"
    DOWN = "down"


class Admin(Enum):
    """What the operator says, in HAProxy's words for server states."""

    READY = "ready"
    DRAIN = "drain"
    MAINT = "maint"


# The state-set exposed to operators (metrics, admin API), in this order.
VISIBLE_STATES = ("up", "down", "draining", "maint")


class Event(Enum):
    """What moves health: a check's result, the operator taking a backend out of maint, or the
    master's word for a worker's mirror of a backend (`--workers`)."""

    PASS = "pass"
    FAIL = "fail"
    RESUME = "resume"  # out of maint: its old health is stale (it was not checked), it starts over
    MIRROR_UP = "mirror up"  # a worker takes the master's health as it is, with no streak of its own
    MIRROR_DOWN = "mirror down"


class Guard(Enum):
    """When a row applies, by the streak this event would make (streak + 1) against rise or fall."""

    ALWAYS = "always"
    REACHED = "reached"  # streak + 1 >= the threshold
    SHORT = "short"  # streak + 1 < the threshold


class Streak(Enum):
    RESET = "reset"  # to 0
    COUNT = "count"  # to streak + 1


@dataclass(frozen=True)
class Transition:
    """One row: from `health`, on `event`, while `guard` holds, to `then`, the streak reset or counted."""

    health: Health
    event: Event
    guard: Guard
    then: Health
    streak: Streak


S, U, D = Health.STARTING, Health.UP, Health.DOWN
A, R, SH = Guard.ALWAYS, Guard.REACHED, Guard.SHORT
RESET, COUNT = Streak.RESET, Streak.COUNT

# Every transition there is (tests/core/test_health_state.py: one test per row). `streak` counts
# passes in a row while down, failures in a row while up. At start one pass is enough (Envoy: hosts
# are usable after their first successful check); a backend whose first check failed is down and
# needs `rise` passes like any other (HAProxy's rise/fall).
TRANSITIONS = (
    Transition(S, Event.PASS, A, U, RESET),
    Transition(S, Event.FAIL, A, D, RESET),
    Transition(D, Event.PASS, R, U, RESET),  # the rise-th pass in a row
    Transition(D, Event.PASS, SH, D, COUNT),
    Transition(D, Event.FAIL, A, D, RESET),  # a failure resets the passes
    Transition(U, Event.PASS, A, U, RESET),  # a pass resets the failures
    Transition(U, Event.FAIL, R, D, RESET),  # the fall-th failure in a row
    Transition(U, Event.FAIL, SH, U, COUNT),
    *(Transition(h, Event.RESUME, A, S, RESET) for h in Health),
    *(Transition(h, Event.MIRROR_UP, A, U, RESET) for h in Health),
    *(Transition(h, Event.MIRROR_DOWN, A, D, RESET) for h in Health),
)

# The rows by (health, event): one row, or a REACHED and a SHORT one.
_TABLE: dict[tuple[Health, Event], tuple[Transition, ...]] = {}
for _row in TRANSITIONS:
    _TABLE[_row.health, _row.event] = (*_TABLE.get((_row.health, _row.event), ()), _row)


def threshold(health: Health, rise: int, fall: int) -> int:
    """The streak that moves a backend: rise passes while down, fall failures while up."""
    return rise if health is Health.DOWN else fall


def walk(health: Health, streak: int, event: Event, rise: int, fall: int) -> tuple[Health, int]:
    """Walk the table: the new health and streak after one event."""
    rows = _TABLE[health, event]
    row = rows[0]
    if row.guard is not Guard.ALWAYS:
        reached = streak + 1 >= threshold(health, rise, fall)
        row = next(r for r in rows if (r.guard is Guard.REACHED) is reached)
    return row.then, (0 if row.streak is Streak.RESET else streak + 1)


def next_health(health: Health, streak: int, passed: bool, rise: int, fall: int) -> tuple[Health, int]:
    """One check result applied: returns the new health and the new streak."""
    return walk(health, streak, Event.PASS if passed else Event.FAIL, rise, fall)


def visible_state(health: Health, admin: Admin, self_drain: bool) -> str:
    """The one word shown for a backend: maint wins, then down, then draining, else up."""
    if admin is Admin.MAINT:
        return "maint"
    if health is not Health.UP:
        return "down"
    if admin is Admin.DRAIN or self_drain:
        return "draining"
    return "up"
