"""The health state machine: a table of transitions, pure and exhaustive.

Owns: how one check result moves a backend between starting, up and down (HAProxy's rise/fall),
and how the operator's word (ready/drain/maint) combines with health into the state users see.
Rules: no I/O, no time, no imports from the rest of the package; every transition has a test.
"""

from __future__ import annotations

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


def next_health(health: Health, streak: int, passed: bool, rise: int, fall: int) -> tuple[Health, int]:
    """One check result applied: returns the new health and the new streak.

    `streak` counts passes in a row while down, failures in a row while up. At start one pass is
    enough (Envoy: hosts are usable after their first successful check); a backend whose first check
    failed is down and needs `rise` passes like any other.
    """
    if health is Health.STARTING:
        return (Health.UP, 0) if passed else (Health.DOWN, 0)
    if health is Health.DOWN:
        if not passed:
            return Health.DOWN, 0
        return (Health.UP, 0) if streak + 1 >= rise else (Health.DOWN, streak + 1)
    if passed:
        return Health.UP, 0
    return (Health.DOWN, 0) if streak + 1 >= fall else (Health.UP, streak + 1)


def visible_state(health: Health, admin: Admin, self_drain: bool) -> str:
    """The one word shown for a backend: maint wins, then down, then draining, else up."""
    if admin is Admin.MAINT:
        return "maint"
    if health is not Health.UP:
        return "down"
    if admin is Admin.DRAIN or self_drain:
        return "draining"
    return "up"
