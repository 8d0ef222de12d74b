"""Choosing a backend: four policies over one index of the usable backends.

Owns: the index each policy keeps of the usable backends, the choice itself, and the counting of each
redirect into the backend's counters (`since`, `redirects`) and into its key, because the dispatcher
never sees the requests it redirects: without that correction every request between two reports
would go to the same node.
Rules: pure data structures; no I/O, no trio, no clock (`now` is passed in). It must not import
`pool` (the pool owns it) nor `estimate` (the pool computes the keys and hands them over).

The pool files each usable backend with two figures (`update`):
- `key`: when the backend is expected to have drained everything we know it has (the report, plus
  our redirects since, minus what it has served since: `dispatcher.core.estimate`), in seconds of the
  trio clock. The least key is the backend a new request waits least at.
- `step`: what one more redirect adds to that: 1 / the backend's drain rate. With equal drain rates
  and nothing reported, least-key is a rotation; with weights, a smooth weighted rotation.
A redirect moves the key to max(key, now) + step: a backend that has been idle since its key does not
bank credit for the time it sat idle (its queue cannot drop below zero), so it takes one request and
waits its turn like the others, instead of the whole burst.

- `LeastLoaded` (default, `least-loaded`): the least key. A heap, O(log n) per redirect.
- `PowerOfTwo` (`p2c`, Envoy's LEAST_REQUEST, HAProxy's `random(2)`): two backends drawn at random by
  weight, the lesser key of the two. Robust against stale keys, at the price of worse choices when the
  keys are fresh (Mitzenmacher 2000).
- `RoundRobin` (`round-robin`): smooth weighted rotation (stride scheduling: each backend's pass grows
  by 1 / weight per redirect, the least pass goes next), blind to loads. A backend that joins starts at
  the current least pass, so it does not take a burst.
- `Random` (`random`): weighted random, blind to loads.
Weights and slow start reach every policy through `step` (1 / (weight x ramp) for the blind ones).

Stale entries: `update` files a fresh entry under the backend's new version; entries of older
versions are dropped when they surface, and the index is rebuilt when they outnumber the live ones.
"""

from __future__ import annotations

import heapq
import math
import random
from bisect import bisect_right
from itertools import accumulate
from typing import Any, Generic, Protocol, TypeVar


class Candidate(Protocol):
    """What a policy needs of a backend: its version, and the counters a redirect adds to."""

    version: int
    since: int
    redirects: int
    free_at: float
    sent_at: float


C = TypeVar("C", bound=Candidate)

# [key, tie, version, step, backend]: a list, so that a redirect re-keys it in place.
_Entry = list[Any]


class Policy(Protocol[C]):
    """What the pool calls: file a backend after a change, choose one for a redirect."""

    def update(self, backend: C, usable: bool, key: float, step: float) -> None: ...

    def choose(self, now: float = -math.inf) -> C | None: ...

    def least_key(self) -> float:
        """The least key filed (-inf when none, or when the policy keeps no order of keys)."""
        ...

    def __len__(self) -> int: ...


class _Heap(Generic[C]):
    """A heap of [key, tie, version, step, backend] entries, one live entry per usable backend."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._heap: list[_Entry] = []
        self._random = (rng or random.Random()).random
        self._live: dict[int, C] = {}

    def __len__(self) -> int:
        """Entries held, stale ones included."""
        return len(self._heap)

    def _file(self, backend: C, usable: bool, key: float, step: float) -> None:
        if usable:
            self._live[id(backend)] = backend
            heapq.heappush(self._heap, [key, self._random(), backend.version, step, backend])
        else:
            self._live.pop(id(backend), None)
        if len(self._heap) > 2 * len(self._live) + 16:
            self._heap = [e for e in self._heap if e[2] == e[4].version]
            heapq.heapify(self._heap)

    def _top(self) -> _Entry | None:
        """The live entry with the least key, stale ones dropped on the way; None when none is live."""
        heap = self._heap
        while heap:
            entry = heap[0]
            if entry[2] == entry[4].version:
                return entry
            heapq.heappop(heap)  # stale: the backend was filed again since
        return None


def _count(backend: C, now: float) -> C:
    """One redirect sent to `backend`, at `now`."""
    backend.since += 1
    backend.redirects += 1
    backend.sent_at = now
    return backend


class LeastLoaded(_Heap[C]):
    """The usable backend with the least key (expected time to drain), ties at random."""

    def update(self, backend: C, usable: bool, key: float, step: float) -> None:
        self._file(backend, usable, key, step)

    def choose(self, now: float = -math.inf) -> C | None:
        """Pick and count one redirect; None when nothing is usable."""
        entry = self._top()
        if entry is None:
            return None
        backend: C = entry[4]
        key = entry[0]
        entry[0] = backend.free_at = (key if key > now else now) + entry[3]
        heapq.heapreplace(self._heap, entry)  # the same entry, sifted down to its new place
        return _count(backend, now)

    def least_key(self) -> float:
        entry = self._top()
        return -math.inf if entry is None else float(entry[0])


class PowerOfTwo(Generic[C]):
    """Two usable backends drawn by weight, the one with the lesser key."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._random = (rng or random.Random()).random
        self._entries: dict[int, _Entry] = {}
        self._order: list[_Entry] = []
        self._bounds: list[float] = []
        self._dirty = False

    def __len__(self) -> int:
        return len(self._entries)

    def update(self, backend: C, usable: bool, key: float, step: float) -> None:
        old = self._entries.get(id(backend))
        if usable:
            if old is not None and old[3] == step:
                old[0], old[2] = key, backend.version  # only the key moved: the draw stays
                return
            self._entries[id(backend)] = [key, 0.0, backend.version, step, backend]
        elif old is not None:
            del self._entries[id(backend)]
        else:
            return
        self._dirty = True

    def _draw(self) -> int:
        """A backend's place in `_order`, drawn by weight."""
        if self._dirty:
            self._order = list(self._entries.values())
            self._bounds = list(accumulate(1.0 / entry[3] for entry in self._order))
            self._dirty = False
        bounds = self._bounds
        return min(bisect_right(bounds, self._random() * bounds[-1]), len(bounds) - 1)

    def least_key(self) -> float:
        return -math.inf

    def choose(self, now: float = -math.inf) -> C | None:
        if not self._entries:
            return None
        first = second = self._draw()
        count = len(self._order)
        for _ in range(3):  # another backend, by weight: a few draws, then the next one along
            if count == 1 or second != first:
                break
            second = self._draw()
        if second == first and count > 1:
            second = (first + 1) % count
        one, other = self._order[first], self._order[second]
        entry = one if one[0] <= other[0] else other
        backend: C = entry[4]
        key = entry[0]
        entry[0] = backend.free_at = (key if key > now else now) + entry[3]
        return _count(backend, now)


class RoundRobin(_Heap[C]):
    """Smooth weighted rotation: the least pass goes next, and its pass grows by its step."""

    def __init__(self, rng: random.Random | None = None) -> None:
        super().__init__(rng)
        self._passes: dict[int, float] = {}  # the pass of every backend filed, usable or not

    def update(self, backend: C, usable: bool, key: float, step: float) -> None:
        top = self._top()
        least = top[0] if top is not None else 0.0
        start = max(self._passes.get(id(backend), least), least)
        if usable:
            self._passes[id(backend)] = start
        self._file(backend, usable, start, step)

    def least_key(self) -> float:
        return -math.inf

    def choose(self, now: float = -math.inf) -> C | None:
        entry = self._top()
        if entry is None:
            return None
        backend: C = entry[4]
        entry[0] += entry[3]
        self._passes[id(backend)] = entry[0]
        heapq.heapreplace(self._heap, entry)
        return _count(backend, now)


class Random(Generic[C]):
    """A usable backend drawn at random by weight (1 / step)."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._inner: PowerOfTwo[C] = PowerOfTwo(rng)

    def __len__(self) -> int:
        return len(self._inner)

    def update(self, backend: C, usable: bool, key: float, step: float) -> None:
        self._inner.update(backend, usable, key, step)

    def least_key(self) -> float:
        return -math.inf

    def choose(self, now: float = -math.inf) -> C | None:
        inner = self._inner
        if not inner._entries:
            return None
        index = inner._draw()  # first: a draw rebuilds the order after a change
        backend: C = inner._order[index][4]
        return _count(backend, now)


# The policies that go by the load estimate (the others are blind to it; their step is 1 / weight).
LOAD_AWARE = ("least-loaded", "p2c", "hash")

POLICY_CLASSES: dict[str, type] = {
    "least-loaded": LeastLoaded,
    "p2c": PowerOfTwo,
    "round-robin": RoundRobin,
    "random": Random,
}


def make_policy(name: str, rng: random.Random | None = None) -> Policy[C]:
    """The policy of this name (config.POLICIES)."""
    policy: Policy[C] = POLICY_CLASSES[name](rng)
    return policy
