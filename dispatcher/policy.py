"""Choosing a backend: the least effective load, in O(1) per request when loads are even.

Owns: the index that makes "least loaded" cheap whatever the pool size, and the counting of each
redirect into the load estimate (`since`), because the dispatcher never sees the requests it
redirects: without that correction every request between two checks would go to the same node.
Rules: pure data structures; no I/O, no trio, no clock. It must not import `pool` (the pool owns it).

Entries are (key, sequence, step, version, backend): the key is the backend's effective load when
the entry was made plus the steps its redirects added since; `step` is what one more redirect
adds, 1 / (weight x ramp). The index keeps them in two orders, and a choice takes the least of
their two fronts:
- the rotation: a list sorted by key, with a head (the entries before it are spent). A redirect
  takes the head entry and files the backend again with one more step; with equal weights that
  key is the largest of all, so the entry is appended: backends with equal loads take turns, and a
  redirect reads the head entry and its backend and nothing else of the pool;
- the low heap: every entry whose key falls below the rotation's last one, which is what a load
  report usually makes (it replaces load + redirects since with a lower figure), and what uneven
  weights make. A backend there is chosen until its key catches up and its entry joins the end of
  the rotation. With even loads only the recently reported backends are in it: a small heap whose
  entries are in the CPU cache.
A heap alone did the same choice in O(log n), but with 1,000 backends each redirect moved an entry
from the top to the bottom of the whole heap, reading two cold entries per level: about 20 cache
lines of the index per request, against 2 with 3 backends, which cost the front door a few % of
its req/s. A sorted list alone made every report, and every redirect after one, an insertion in
the middle: a bisection and a move of the tail. With loads spread wide most entries live in the
low heap, and the index costs what the heap did.

Ties: the key of a fresh entry is nudged by a random fraction of at most TIE of a step, so that
backends that report the same load are taken in a random order (and two dispatchers in front of one
pool do not take them in the same order); redirects then add whole steps, so equal loads keep that
order. `sequence` orders exact ties without ever comparing backends.
`choose` trusts the version alone: every change to a backend's usability or key bumps it. A report
or a state change files a fresh entry; stale entries are dropped when they reach a front, and the
index is rebuilt when they outnumber the live ones, so its size stays within a constant of the
pool's.
"""

from __future__ import annotations

import heapq
import itertools
import random
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
# The spent entries before the rotation's head are dropped once there are this many and they are half
# of it.
SPENT = 64

# (key, sequence, step, version, backend)
_Entry = tuple[float, int, float, int, C]


class LeastLoaded(Generic[C]):
    """The usable backend with the least (reported load + redirects since) / weight; ties at random."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._order: list[_Entry[C]] = []  # the rotation: sorted by (key, sequence) from `_head` on
        self._head = 0
        self._low: list[_Entry[C]] = []  # the low heap
        self._random = (rng or random.Random()).random
        self._sequence = itertools.count()
        self._live: dict[int, C] = {}

    def __len__(self) -> int:
        """Entries held, stale ones included (the rotation's spent ones not)."""
        return len(self._order) - self._head + len(self._low)

    def update(self, backend: C, usable: bool, load: float, step: float) -> None:
        """Index a backend after its load report or state changed (its version was bumped): whether
        it is usable, its effective load and its redirect step, which the caller has at hand."""
        if usable:
            self._live[id(backend)] = backend
            key = load + self._random() * step * TIE
            self._file((key, next(self._sequence), step, backend.version, backend))
        else:
            self._live.pop(id(backend), None)
        if len(self._order) - self._head + len(self._low) > 2 * len(self._live) + 16:  # len(self)
            self._rebuild()

    def choose(self) -> C | None:
        """Pick and count one redirect; None when nothing is usable."""
        order, low = self._order, self._low
        head = self._head
        while head < len(order) and order[head][3] != order[head][4].version:
            head += 1  # stale: the backend was re-filed since
        while low and low[0][3] != low[0][4].version:
            heapq.heappop(low)
        if low and (head == len(order) or low[0] < order[head]):
            key, _, step, version, backend = low[0]
            entry = (key + step, next(self._sequence), step, version, backend)
            if head == len(order) or entry[0] >= order[-1][0]:
                heapq.heappop(low)
                order.append(entry)  # caught up: it joins the end of the rotation
            else:
                heapq.heapreplace(low, entry)
        elif head < len(order):
            key, _, step, version, backend = order[head]
            head += 1
            entry = (key + step, next(self._sequence), step, version, backend)
            if head == len(order) or entry[0] >= order[-1][0]:
                order.append(entry)
            else:
                heapq.heappush(low, entry)
        else:
            self._head = head
            return None
        backend.since += 1
        backend.redirects += 1
        if head >= SPENT and 2 * head >= len(order):
            del order[:head]
            head = 0
        self._head = head
        return backend

    def _file(self, entry: _Entry[C]) -> None:
        """At the end of the rotation if no key there is larger, else in the low heap."""
        order = self._order
        if self._head == len(order) or entry[0] >= order[-1][0]:
            order.append(entry)
        else:
            heapq.heappush(self._low, entry)

    def _rebuild(self) -> None:
        """Drop the stale entries: each usable backend keeps the one entry of its current version."""
        entries = self._order[self._head :] + self._low
        self._order = sorted(entry for entry in entries if entry[3] == entry[4].version)
        self._head = 0
        self._low = []
