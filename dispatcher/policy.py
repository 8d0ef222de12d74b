"""Choosing a backend: the least effective load, in O(1) per request when loads are whole numbers.

Owns: the index that makes "least loaded" cheap whatever the pool size, and the counting of each
redirect into the load estimate (`since`), because the dispatcher never sees the requests it
redirects: without that correction every request between two checks would go to the same node.
Rules: pure data structures; no I/O, no trio, no clock. It must not import `pool` (the pool owns it).

A bucket queue: one FIFO of entries per distinct key, and a heap of the keys that have one. A key
is a backend's effective load: its reported load plus the redirects sent since, over its weight
(`step`, 1 / (weight x ramp), is what one more redirect adds). An entry is (step, version, backend).
A redirect takes the first entry of the least key's FIFO and appends that same entry to the FIFO
of key + step, making the bucket and the key when they are new. With equal weights and loads that
are whole numbers, which is what backends usually report, the keys in use are a few dozen small
numbers: the key heap stays tiny and hot, every redirect is a handful of operations on it and on
two FIFOs, and nothing of the pool is read but the chosen backend. Backends of equal load take
turns (each goes to the end of the next bucket).

Why not a heap of the backends, or a sorted rotation (both tried): every health check replaces a
backend's load + redirects-since with a fresh, usually lower, report. With 1,000 backends checked
every 2 s that is 500 re-keyings a second among some 13,000 redirects, and the reported backends
then climb back together: in a heap each redirect sifted an entry through about ten levels of
entries cold in the CPU cache (LeastLoaded.choose took 4 % of the front door's time with 1,000
backends, against 2 % with 3). Here the backends that climb together share their buckets.
Fractional loads or weights make keys that differ per backend: the buckets then hold one entry
each and the key heap costs what a heap of the backends did, O(log n) a redirect.

Ties: an entry filed by `update` (a report, a state or weight change) goes to a random place in its
bucket, so backends that report the same load are taken in a random order, and two dispatchers in
front of one pool do not take them in the same order. Keys are exact: a lower load always wins.
`choose` trusts the version alone: every change to a backend's usability or key bumps it, and
`update` files a fresh entry. Stale entries are dropped when they reach the front of their bucket,
and the index is rebuilt when they outnumber the live ones, so its size stays within a constant of
the pool's.
"""

from __future__ import annotations

import heapq
import random
from collections import deque
from typing import Generic, Protocol, TypeVar


class Candidate(Protocol):
    """What the policy needs of a backend: its version, and the counters a redirect adds to."""

    version: int
    since: int
    redirects: int


C = TypeVar("C", bound=Candidate)

# (step, version, backend): the key is the bucket's.
_Entry = tuple[float, int, C]


class LeastLoaded(Generic[C]):
    """The usable backend with the least (reported load + redirects since) / weight; ties at random."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._buckets: dict[float, deque[_Entry[C]]] = {}
        self._keys: list[float] = []  # a heap of the keys in `_buckets`, each once
        self._random = (rng or random.Random()).random  # one C call; randrange is several in Python
        self._live: dict[int, C] = {}
        self._entries = 0  # held in the buckets, stale ones included

    def __len__(self) -> int:
        """Entries held, stale ones included."""
        return self._entries

    def update(self, backend: C, usable: bool, load: float, step: float) -> None:
        """Index a backend after its load report or state changed (its version was bumped): whether
        it is usable, its effective load and its redirect step, which the caller has at hand."""
        if usable:
            self._live[id(backend)] = backend
            bucket = self._bucket(load)
            bucket.insert(int(self._random() * (len(bucket) + 1)), (step, backend.version, backend))
            self._entries += 1
        else:
            self._live.pop(id(backend), None)
        if self._entries > 2 * len(self._live) + 16:
            self._rebuild()

    def choose(self) -> C | None:
        """Pick and count one redirect; None when nothing is usable."""
        keys, buckets = self._keys, self._buckets
        while keys:
            key = keys[0]
            bucket = buckets[key]
            while bucket:
                entry = bucket.popleft()
                backend = entry[2]
                if entry[1] != backend.version:
                    self._entries -= 1  # stale: the backend was filed again since
                    continue
                emptied = not bucket
                if emptied:
                    heapq.heappop(keys)
                    del buckets[key]
                key += entry[0]
                onward = buckets.get(key)
                if onward is None:
                    # A rotation empties a bucket just as it opens the next: the FIFO moves on with it.
                    onward = buckets[key] = bucket if emptied else deque()
                    heapq.heappush(keys, key)
                onward.append(entry)
                backend.since += 1
                backend.redirects += 1
                return backend
            heapq.heappop(keys)
            del buckets[key]
        return None

    def _bucket(self, key: float) -> deque[_Entry[C]]:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = deque()
            heapq.heappush(self._keys, key)
        return bucket

    def _rebuild(self) -> None:
        """Drop the stale entries: each usable backend keeps the one entry of its current version."""
        buckets = self._buckets
        self._buckets, self._keys, self._entries = {}, [], 0
        for key in sorted(buckets):
            live = deque(entry for entry in buckets[key] if entry[1] == entry[2].version)
            if live:
                self._buckets[key] = live
                self._keys.append(key)  # ascending: already a heap
                self._entries += len(live)
