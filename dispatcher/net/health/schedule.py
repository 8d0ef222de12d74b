"""When checks are due: the schedule of every backend's checks, as plain functions of plain numbers.

Owns: the 20 ms grid of check times, the spread of the first checks, the next check's time with its
jitter, how long a load stream may be silent, and `Timetable`, the heap that keeps things by the
time they are due (checks to send, checks in flight, open streams).
Rules: pure: no sockets, no trio, no clock (callers pass `now` and the random draw), so every rule
here is tested without a backend. It imports nothing of the package but the settings' type.

Why a grid: checks due within the same few milliseconds are then sent in one pass of the sweep and
their answers read in few wake-ups; jitter still spreads them over the interval.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable
from typing import Generic, TypeVar

from dispatcher.settings.config import HealthSettings

# Check times are rounded up to this grid (see on_grid): 20 ms is far below any interval's precision.
CHECK_GRID = 0.02
# The first checks are spread over at most this long: a pool is usable soon after start.
FIRST_SPREAD = 1.0

Item = TypeVar("Item")


def on_grid(at: float) -> float:
    """The next multiple of CHECK_GRID (`at` itself when it is one)."""
    return round(math.ceil(at / CHECK_GRID - 1e-9) * CHECK_GRID, 9)  # 4.02, not 4.0200000000000005


def grid_step_after(now: float) -> float:
    """The first grid step after `now` (itself usually a grid step, or a little past one): when the
    sweep next reads the answers of checks in flight."""
    return round((math.floor(now / CHECK_GRID + 1e-9) + 1) * CHECK_GRID, 9)


def first_check_at(now: float, settings: HealthSettings, draw: float) -> float:
    """A new backend's first check: at once, spread by jitter over at most FIRST_SPREAD (`draw` in
    [0, 1)), so that a large pool is not checked in one burst at start."""
    return on_grid(now + min(FIRST_SPREAD, settings.interval * settings.jitter) * draw)


def next_check_at(due: float, now: float, settings: HealthSettings, draw: float) -> float:
    """The check after the one due at `due`: an interval later, spread by interval x (1 ± jitter).
    From the time it was due, not when it ran, so that wake-up delays do not add up into drift; never
    in the past. The settings are those in force now: a reload's interval applies from the next check."""
    spread = 1 + settings.jitter * (2 * draw - 1)
    return on_grid(max(due + settings.interval * spread, now))


def stream_silence(settings: HealthSettings) -> float:
    """How long a load stream may be quiet before it counts as a failed check: interval + timeout."""
    return settings.interval + settings.timeout


class Timetable(Generic[Item]):
    """Items in a heap by the time each is due, read through `when(item)` when it reaches the top.

    An item whose time is infinite is done and dropped. With `moves`, an item's time may move later
    without filing it again (a stream's deadline moves at every event: filing it each time would cost
    a heap push per event); it is filed again at its new time when it reaches the top. Without, each
    new time is filed anew (a new check in flight) and an entry whose time differs is stale, dropped.
    """

    __slots__ = ("_heap", "_moves", "_order", "_when")

    def __init__(self, when: Callable[[Item], float], *, moves: bool = False) -> None:
        self._when = when
        self._moves = moves
        self._heap: list[tuple[float, int, Item]] = []
        self._order = itertools.count()  # ties never compare items

    def add(self, item: Item, at: float) -> None:
        heapq.heappush(self._heap, (at, next(self._order), item))

    def next_at(self) -> float:
        """When the first item is due (math.inf: none is)."""
        heap = self._heap
        while heap:
            at, _, item = heap[0]
            current = self._when(item)
            if current == at or (self._moves and at > current):  # moved earlier: due as first filed
                return at
            if current == math.inf or not self._moves:
                heapq.heappop(heap)
            else:
                heapq.heapreplace(heap, (current, next(self._order), item))
        return math.inf

    def pop_due(self, now: float) -> list[Item]:
        """Take every item due by `now`, all of them before the caller acts on any.

        Only entries filed for `now` or before are looked at: one whose item moved later is filed
        again here, once its old time comes, not before. Filed again whenever it reached the top (as
        `next_at` files them), every stream's entry was filed anew at each of its events: the reader
        pops at every pass, and between two passes nearly every stream has had an event (1,000
        streams of 10 events a second: 10,000 heap moves a second)."""
        heap, moves, due = self._heap, self._moves, []
        while heap and heap[0][0] <= now:
            at, _, item = heap[0]
            current = self._when(item)
            if current == at or (moves and at > current):  # moved earlier: due as first filed
                heapq.heappop(heap)
                due.append(item)
            elif current == math.inf or not moves:
                heapq.heappop(heap)
            else:
                heapq.heapreplace(heap, (current, next(self._order), item))
        return due
