"""The schedule of checks as plain functions: the grid, jitter, due times and the timetable, no sockets."""

from __future__ import annotations

import math
from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from dispatcher.net.health.schedule import (
    CHECK_GRID,
    Timetable,
    first_check_at,
    grid_step_after,
    next_check_at,
    on_grid,
    stream_silence,
)
from tests.helpers import health


@dataclass
class Entry:
    """Something with a time, as a probe's due time or a stream's deadline."""

    at: float


def test_times_round_up_to_the_grid_and_a_grid_step_stays() -> None:
    """4.01 is checked at 4.02; 4.02 stays 4.02, with no float residue (not 4.0200000000000005)."""
    assert (on_grid(4.01), on_grid(4.02), on_grid(0.0)) == (4.02, 4.02, 0.0)


def test_answers_in_flight_are_read_at_the_next_grid_step() -> None:
    """From a grid step, or a little past one, the next read is one step on."""
    assert (grid_step_after(4.02), grid_step_after(4.021), grid_step_after(0.0)) == (4.04, 4.04, CHECK_GRID)


@given(st.floats(0, 1e6), st.floats(0, 1, exclude_max=True))
def test_every_check_time_sits_on_the_grid(now: float, draw: float) -> None:
    """First and next checks fall on a CHECK_GRID step, never before now."""
    settings = health(interval=2.0, jitter=0.25)
    for at in (first_check_at(now, settings, draw), next_check_at(now, now, settings, draw)):
        assert at >= now - 1e-6
        assert abs(at / CHECK_GRID - round(at / CHECK_GRID)) < 1e-6


def test_first_checks_spread_over_interval_times_jitter_at_most_a_second() -> None:
    """Without jitter every first check is at once; with it, over interval x jitter, capped at 1 s."""
    assert first_check_at(10.0, health(interval=2.0), 0.99) == 10.0
    assert first_check_at(10.0, health(interval=2.0, jitter=0.25), 0.99) == 10.5
    assert first_check_at(10.0, health(interval=60.0, jitter=0.5), 0.99) == 11.0


def test_the_next_check_counts_from_when_the_last_was_due_not_when_it_ran() -> None:
    """A check due at 4 that ran late, at 4.3, is followed at 6: wake-up delays never add up."""
    assert next_check_at(4.0, 4.3, health(interval=2.0), 0.5) == 6.0


def test_an_overdue_next_check_is_due_now_not_in_the_past() -> None:
    """A check that ran past its whole interval (a hang until the timeout) is followed at once."""
    assert next_check_at(4.0, 7.5, health(interval=2.0, timeout=1.5), 0.5) == 7.5


@given(st.floats(0, 1, exclude_max=True))
def test_jitter_keeps_each_interval_within_interval_times_one_plus_or_minus_jitter(draw: float) -> None:
    """Interval 2 with jitter 0.25: the next check is 1.5 to 2.5 s later (and a grid step)."""
    at = next_check_at(100.0, 100.0, health(interval=2.0, jitter=0.25), draw)
    assert 101.5 - 1e-9 <= at <= 102.5 + CHECK_GRID


def test_a_stream_may_be_silent_for_interval_plus_timeout() -> None:
    """The silence allowed a load stream is the health interval and the timeout in force."""
    assert stream_silence(health(interval=2.0, timeout=1.0)) == 3.0


def test_timetable_gives_what_is_due_in_time_order_and_keeps_the_rest() -> None:
    """pop_due takes everything due by now, earliest first; next_at says when the rest is due."""
    table: Timetable[Entry] = Timetable(lambda entry: entry.at)
    entries = [Entry(3.0), Entry(1.0), Entry(2.0)]
    for entry in entries:
        table.add(entry, entry.at)
    assert table.pop_due(2.0) == [entries[1], entries[2]]
    assert table.next_at() == 3.0


def test_timetable_drops_an_entry_whose_time_is_now_infinite() -> None:
    """A check answered (its deadline math.inf) is no longer due: its entry is dropped."""
    table: Timetable[Entry] = Timetable(lambda entry: entry.at)
    answered = Entry(1.0)
    table.add(answered, 1.0)
    answered.at = math.inf
    assert (table.next_at(), table.pop_due(5.0)) == (math.inf, [])


def test_a_timetable_without_moves_drops_entries_filed_for_an_older_time() -> None:
    """Each check in flight files its own deadline: an entry of an earlier check is stale."""
    table: Timetable[Entry] = Timetable(lambda entry: entry.at)
    entry = Entry(1.0)
    table.add(entry, 1.0)
    entry.at = 4.0
    table.add(entry, 4.0)
    assert (table.pop_due(3.0), table.pop_due(4.0)) == ([], [entry])
    assert table.next_at() == math.inf


def test_a_timetable_with_moves_files_a_later_time_again_when_it_comes_up() -> None:
    """A stream heard since its entry was filed is due at its new deadline, once."""
    table: Timetable[Entry] = Timetable(lambda entry: entry.at, moves=True)
    entry = Entry(1.0)
    table.add(entry, 1.0)
    entry.at = 4.0
    assert (table.next_at(), table.pop_due(3.0), table.pop_due(4.0)) == (4.0, [], [entry])


def test_a_timetable_with_moves_keeps_an_entry_due_when_first_filed_if_its_time_moved_earlier() -> None:
    """A deadline that a reload shortened is still kept: due when it was filed, not lost."""
    table: Timetable[Entry] = Timetable(lambda entry: entry.at, moves=True)
    entry = Entry(4.0)
    table.add(entry, 4.0)
    entry.at = 2.0
    assert (table.pop_due(3.0), table.pop_due(4.0)) == ([], [entry])


def test_a_timetable_with_moves_looks_at_an_entry_only_once_its_filed_time_comes() -> None:
    """The stream reader pops due deadlines at every pass, and nearly every stream moved its deadline
    since the last one: an entry not yet due is left where it was filed, unread, or every event
    would cost a heap move."""
    looked: list[Entry] = []

    def when(entry: Entry) -> float:
        looked.append(entry)
        return entry.at

    table: Timetable[Entry] = Timetable(when, moves=True)
    entries = [Entry(3.0 + index) for index in range(3)]
    for entry in entries:
        table.add(entry, entry.at)
        entry.at += 10.0  # heard since: its deadline moved later
    assert table.pop_due(2.9) == []
    assert looked == []
    assert table.pop_due(3.5) == [] and looked == [entries[0]]  # filed again at 13.0, not due
    assert table.pop_due(13.0) == [entries[0]]
