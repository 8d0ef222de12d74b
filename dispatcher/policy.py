"""Choosing a backend: the least effective load, in O(1) per request for a pool of equal weights.

Owns: the index that makes "least loaded" cheap whatever the pool size, and the counting of each
redirect into the load estimate (`since`), because the dispatcher never sees the requests it
redirects: without that correction every request between two checks would go to the same node.
Rules: pure data structures; no I/O, no trio, no clock. It must not import `pool` (the pool owns it).

The index is a list of entries (key, sequence, step, version, backend) kept sorted by key, with a
head: the entries before it are spent. The key is the backend's effective load when the entry was
made, plus what the redirects counted since added; `step` is what one more redirect adds,
1 / (weight x ramp). A redirect takes the entry at the head and files the backend again with its
key plus one step. With equal weights that new key is the largest in the list: the entry is
appended at the end, and the pool's backends take their turns like a round robin among the least
loaded. A redirect then reads the head entry and its backend, and nothing else of the pool.
A heap did the same choice in O(log n), but each redirect moved an entry from the top to the bottom
of the heap, reading two cold entries per level: with 1,000 backends a redirect touched 20 cache
lines of the index, against 2 with 3 backends, and the front door lost a few % of its req/s to it.
Where the new key falls before the end (weights differ, or a report just lowered a key), it is
inserted by bisection: O(log n) comparisons and a move of the tail.

Ties: the key of a fresh entry is nudged by a random fraction of at most TIE of a step, so that
backends that report the same load are taken in a random order (and two dispatchers in front of one
pool do not take them in the same order). After that, redirects add whole steps: equal loads stay in
that order, a rotation. `sequence` orders exact ties without ever comparing backends.
`choose` trusts the version alone: every change to a backend's usability or key bumps it. A report
or a state change files a fresh entry; stale entries are skipped when they reach the head, and the
list is compacted when they outnumber the live ones, so its size stays within a constant of the
pool's.
"""

from __future__ import annotations

import itertools
import random
from bisect import insort
from typing import Generic, Protocol, TypeVar


class Candidate(Protocol):
    """What the policy needs of a backend: its version, and the counters a redirect adds to."""

    version: int
    since: int
    redirects: int


C = TypeVar("C", bound=Candidate)

# Random tie-breaks move a key by less than this share of one redirect's step: they order exact ties,
# and never change a choice between loads further apart than that (a millionth of a redirect).
TIE = 2.0**-20
# The spent entries before the head are dropped once there are this many and they are half the list.
SPENT = 64

# (key, sequence, step, version, backend)
_Entry = tuple[float, int, float, int, C]


class LeastLoaded(Generic[C]):
    """The usable backend with the least (reported load + redirects since) / weight; ties at random."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._order: list[_Entry[C]] = []  # sorted by (key, sequence) from `_head` on
        self._head = 0
        self._random = (rng or random.Random()).random
        self._sequence = itertools.count()
        self._live: dict[int, C] = {}

    def update(self, backend: C, usable: bool, load: float, step: float) -> None:
        """Index a backend after its load report or state changed (its version was bumped): whether
        it is usable, its effective load and its redirect step, which the caller has at hand."""
        if usable:
            self._live[id(backend)] = backend
            self._file(
                (load + self._random() * step * TIE, next(self._sequence), step, backend.version, backend)
            )
        else:
            self._live.pop(id(backend), None)
        if len(self._order) - self._head > 2 * len(self._live) + 16:
            self._compact()

    def choose(self) -> C | None:
        """Pick and count one redirect; None when nothing is usable."""
        order = self._order
        head = self._head
        while head < len(order):
            key, _, step, version, backend = order[head]
            head += 1
            if version == backend.version:
                backend.since += 1
                backend.redirects += 1
                self._head = head
                self._file((key + step, next(self._sequence), step, version, backend))
                return backend
        self._head = head
        return None

    def _file(self, entry: _Entry[C]) -> None:
        """Put an entry in its place in the sorted list: usually the end (a redirect), or just before
        the head (a report lower than every key), in a spent slot."""
        order, head = self._order, self._head
        if head == len(order) or entry[0] >= order[-1][0]:
            order.append(entry)
        elif head and entry[0] < order[head][0]:
            self._head = head = head - 1
            order[head] = entry
        else:
            insort(order, entry, lo=head)
        if self._head >= SPENT and 2 * self._head >= len(order):
            del order[: self._head]
            self._head = 0

    def _compact(self) -> None:
        """Drop the stale entries: each usable backend keeps the one entry of its current version."""
        self._order = [entry for entry in self._order[self._head :] if entry[3] == entry[4].version]
        self._head = 0
