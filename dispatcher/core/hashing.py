"""Consistent hashing with bounded loads: the `hash` policy (issue 13, item 4).

Owns: the ring of the usable backends (points placed by each backend's name), the load bound, and
the running sums that make the bound O(1) per choice.
Rules: as core.policy: pure data structures; no I/O, no trio, no clock (`now` is passed in). It
imports only core.policy (the protocol and the counting of a redirect), never `pool` nor `estimate`.
Beyond core.policy's protocol: `choose(now, hash_key)`, and `home(hash_key)`, a key's first choice
before the bound (what stickiness is measured against). Without a clock (`now = -inf`, the protocol's
default) loads cannot be told and the bound is off.

A request's key (a cookie, a header, the path or the client address: the caller picks it and hands
the bytes over) goes to the first backend clockwise from the key's point on the ring, as in HAProxy's
`hash-type consistent`, Envoy's `RING_HASH` and ketama: adding or removing one backend of N moves only
the keys of the arcs it gains or loses, about 1/N of them, where `hash % N` moves (N - 1)/N. A backend
is skipped while it is full (Mirrokni, Thorup, Zadimoghaddam, "Consistent Hashing with Bounded Loads",
SODA 2018, arXiv:1608.01350; HAProxy's `hash-balance-factor`, Envoy's `hash_balance_factor`): the walk
goes on clockwise to the first backend under the bound, so a hot key spills onto its ring successors,
always the same ones, and no backend holds more than `balance_factor` x the mean.

**The bound, in the pool's figures.** The pool files each usable backend with `key`, when it is
expected to have drained what it has (seconds), and `step`, what one redirect adds to that
(1 / its drain rate, which scales with weight x slow-start ramp). At `now`, backend i has

    r_i = max(0, key_i - now)     its time to drain: its load per unit of drain rate (of weight),
    load_i = r_i / step_i         its load in requests.

With R = the sum of load_i and W = the sum of 1 / step_i over the usable backends (the pool's load
and its drain rate), the mean load per unit of rate, counting the request being placed, is
(R + 1) / W: the time the whole pool, evenly loaded, would take to drain all it has and this request.
Backend i may take the request while

    r_i < balance_factor x (R + 1) / W,   i.e.   key_i < now + balance_factor x (R + 1) / W:

its load is below its capacity, balance_factor x (R + 1) x its share of the rate. After taking the
request its load per unit of rate is therefore below balance_factor x the mean plus that one request
(r_i + step_i): the paper's rule (a bin takes a ball while its load is below ceil(c x m / n), m
counting the ball) and HAProxy's (`served < slots`, the slots rounded up and never 0), here on loads
that are fractional estimates. The stricter "load after taking it <= c x mean" would refuse every
backend of a pool whose backends each hold a sliver (ten at 0.01 requests: 1.01 > 1.25 x 1.1 / 10),
which HAProxy escapes only because its counts are whole.
There is always a backend under the bound when balance_factor >= 1: the rate-weighted mean of the r_i
is R / W < (R + 1) / W, so the backend with the least r_i (the least key) is under it; an idle one
(r_i = 0) always is, and an idle pool takes every request where the hash sends it.
`balance_factor = math.inf` is plain consistent hashing (HAProxy's `hash-balance-factor 0`, its default).

R costs O(1) a choice: running sums over the backends whose key is ahead of `now`,
S = sum of (key_i - origin) / step_i and B = sum of 1 / step_i, give R = S - (now - origin) x B; a
backend whose key falls behind `now` leaves the sums when a choice finds it at the top of a heap
ordered by key. Every key change pushes one heap entry (O(log n), as LeastLoaded's), and the sums
are summed afresh after RESUM_AFTER changes and at every change of the ring, so that rounding
cannot drift.

**The ring.** A backend has POINTS_PER_WEIGHT x its configured weight points (`spec.weight`: the
weight inside `step` moves with slow start and the estimate, and a point count that followed it would
move keys), placed by a stable hash of its name: blake2b, the same in every worker process and after
every restart, never Python's `hash()` (randomised per process) nor `id()`. Point j of a backend is
the same whatever its count, so a change of weight moves only the keys of the points it adds or
removes. The ring holds the usable backends in buckets by their points' first bits (RING_LOAD points
a bucket or so): a backend joins or leaves in O(its points), 0.1 to 0.3 ms for 160, where re-sorting
a ring of 1,000 backends (160,000 points) at each change would hold the event loop for 80 to 130 ms on
this project's 2-core VM (benchmarks/hashing.py). An update of the key alone, which every load report
makes, touches no point.
The key is hashed with blake2b too: about 0.5 µs of a choice here; zlib.crc32 costs a sixth of
that, but it is linear (keys that differ in a few bytes, as client addresses do, land on a lattice)
and 32 bits wide, and the key's hash is the one thing every worker must agree on forever.

**No key** (the request lacks the cookie or header hashed on): the least key, as LeastLoaded. HAProxy
falls back to round-robin there; here the keys are drain estimates, the least of them is always under
the bound (above), and a rotation blind to the loads would send keyless requests to the backends that
the bound is busy relieving of their hot keys.
"""

from __future__ import annotations

import heapq
import math
import random
from bisect import bisect_left
from collections.abc import Iterator
from hashlib import blake2b
from typing import Generic, Protocol, TypeVar

from dispatcher.core.policy import Candidate, _count

# The paper's c: no backend above 1.25 x the mean. HAProxy's `hash-balance-factor` is the same figure
# as a percentage (0, its default, is off; its documentation's example is 150); 1.25 is the default of
# brpc's bounded-load hash and of liblb's. Lower spills more keys off their home; higher lets a hot
# backend further above the mean.
DEFAULT_BALANCE_FACTOR = 1.25
# A backend holding fewer than this many requests (its estimate) is never full, whatever the mean. At
# little traffic the estimate drains at the dispatcher's own low redirect rate, so one visitor's few
# requests stayed on its home for seconds and passed the bound over a pool of idle backends: the same
# key went round three backends of four at a request every 0.5 s. HAProxy counts the connections a
# server holds, which a finished request leaves at once; this is the estimate's allowance for the same.
# Under real load the mean is above it and the bound is the paper's.
MIN_FULL = 8.0
# Points per unit of weight: ketama's 160 per server (libketama, Tengine's consistent hash), ten times
# HAProxy's 16 (BE_WEIGHT_SCALE). A backend's share of the ring is the sum of its points' arcs, off its
# weight's share by about 1 / sqrt(points): 8 % at 160, 25 % at 16. Some 90 bytes a point: 14 MB for 1,000.
POINTS_PER_WEIGHT = 160
# A guard for large weights (DNS SRV weights go up to 65535): beyond weight 102.4 the ring gives no
# more keys, though the bound still holds such a backend to its weight through its step.
MAX_POINTS = 1 << 14
# 64-bit points, compared as bytes (big-endian, so in numeric order): no two points of a ring collide
# (a million points: one chance in 30 million), and one blake2b digest of 64 bytes gives 8 points.
POINT_BYTES = 8
_POINTS_PER_DIGEST = 64 // POINT_BYTES
# Points per bucket of the ring, on average: 16, halved or doubled when it leaves 4..32.
RING_LOAD = 16
# The running sums of the bound are summed afresh after this many changes (plus 4 per backend, so
# that the O(n) sum stays O(1) a change).
RESUM_AFTER = 4096


class WeightedSpec(Protocol):
    """A backend's configuration, as far as the ring needs it."""

    @property
    def weight(self) -> float: ...


class HashCandidate(Candidate, Protocol):
    """A backend the ring can place: a name to hash and its configured weight (the pool's Backend)."""

    @property
    def name(self) -> str: ...

    @property
    def spec(self) -> WeightedSpec: ...


H = TypeVar("H", bound=HashCandidate)


def key_point(hash_key: bytes) -> bytes:
    """Where a request's key falls on the ring: the same in every process and after every restart."""
    return blake2b(hash_key, digest_size=POINT_BYTES).digest()


def backend_points(name: str, count: int) -> list[bytes]:
    """A backend's first `count` points: point j depends on its name and j only."""
    points: list[bytes] = []
    for block in range(-(-count // _POINTS_PER_DIGEST)):
        digest = blake2b(f"{name}#{block}".encode(), digest_size=64).digest()
        points.extend(digest[i : i + POINT_BYTES] for i in range(0, 64, POINT_BYTES))
    return points[:count]


def points_for(weight: float) -> int:
    """How many points a backend of this weight has: at least one, at most MAX_POINTS."""
    return max(1, min(MAX_POINTS, round(POINTS_PER_WEIGHT * weight)))


class _Filed(Generic[H]):
    """A usable backend as filed: its figures, its points, and whether it is in the sums."""

    __slots__ = ("backend", "busy", "key", "points", "rate", "stamp", "step", "weight")

    def __init__(self, backend: H, points: list[bytes]) -> None:
        self.backend = backend
        self.weight = backend.spec.weight
        self.points = points  # those on the ring
        self.key = 0.0
        self.step = self.rate = 1.0
        self.busy = False  # its key is ahead of now (as last seen): it is in the sums
        self.stamp = -1  # its current heap entry; -1: none (withdrawn)


# (key, tie, stamp, filed): the stamp is unique, so that no comparison ever reaches the _Filed.
_Item = tuple[float, float, int, _Filed[H]]


class _Ring(Generic[H]):
    """The points of the usable backends in order, in buckets by their first 16 bits or fewer.

    Concatenated, the buckets are the sorted ring; each one is short, so that a point goes in or out
    by an insertion into a short list."""

    __slots__ = ("owners", "points", "shift", "size")

    def __init__(self) -> None:
        self.points: list[list[bytes]] = [[]]
        self.owners: list[list[_Filed[H]]] = [[]]  # the backend of each point
        self.shift = 16  # a point's bucket: its first 16 bits >> shift
        self.size = 0

    def add(self, filed: _Filed[H], points: list[bytes]) -> None:
        for point in points:
            bucket = (point[0] << 8 | point[1]) >> self.shift
            index = bisect_left(self.points[bucket], point)
            self.points[bucket].insert(index, point)
            self.owners[bucket].insert(index, filed)
        self.size += len(points)
        while self.size > 2 * RING_LOAD * len(self.points) and self.shift > 0:
            self._rebucket(self.shift - 1)

    def remove(self, filed: _Filed[H], points: list[bytes]) -> None:
        for point in points:
            bucket = (point[0] << 8 | point[1]) >> self.shift
            index = bisect_left(self.points[bucket], point)
            while self.owners[bucket][index] is not filed:  # another backend's point, equal to this one
                index += 1
            del self.points[bucket][index], self.owners[bucket][index]
        self.size -= len(points)
        while self.size < RING_LOAD // 4 * len(self.points) and self.shift < 16:
            self._rebucket(self.shift + 1)

    def _rebucket(self, shift: int) -> None:
        """Twice the buckets (shift - 1: each is cut in two where its next bit turns 1), or half (shift + 1:
        each pair joined). The points stay in order, so this is slicing, not sorting."""
        if shift < self.shift:
            points: list[list[bytes]] = []
            owners: list[list[_Filed[H]]] = []
            for bucket, (bucket_points, bucket_owners) in enumerate(
                zip(self.points, self.owners, strict=True)
            ):
                upper = ((bucket << self.shift) + (1 << shift)).to_bytes(2)  # the upper half's first prefix
                cut = bisect_left(bucket_points, upper)
                points += (bucket_points[:cut], bucket_points[cut:])
                owners += (bucket_owners[:cut], bucket_owners[cut:])
        else:
            points = [low + high for low, high in zip(self.points[::2], self.points[1::2], strict=True)]
            owners = [low + high for low, high in zip(self.owners[::2], self.owners[1::2], strict=True)]
        self.points, self.owners, self.shift = points, owners, shift

    def walk(self, point: bytes) -> Iterator[_Filed[H]]:
        """The owners of the points clockwise from `point` (the first at or after it), once round."""
        bucket = (point[0] << 8 | point[1]) >> self.shift
        start = bisect_left(self.points[bucket], point)
        count = len(self.owners)
        yield from self.owners[bucket][start:]
        for ahead in range(1, count):
            yield from self.owners[(bucket + ahead) % count]
        yield from self.owners[bucket][:start]


class BoundedLoadHash(Generic[H]):
    """The first backend clockwise from the key's point whose load is under the bound."""

    def __init__(
        self, rng: random.Random | None = None, balance_factor: float = DEFAULT_BALANCE_FACTOR
    ) -> None:
        if not balance_factor >= 1.0:  # NaN too
            raise ValueError(f"balance_factor must be 1 or more, not {balance_factor}")
        self.balance_factor = balance_factor
        self._bounded = balance_factor != math.inf
        self._random = (rng or random.Random()).random
        self._filed: dict[int, _Filed[H]] = {}
        self._ring: _Ring[H] = _Ring()
        self._points: dict[str, list[bytes]] = {}  # by name: a backend coming back is not hashed again
        self._busy: list[_Item[H]] = []  # heap, by key, of the backends in the sums
        self._idle: list[_Item[H]] = []  # heap, by key, of the others (their key is behind now)
        self._stamps = 0
        self._rate = 0.0  # W: the usable backends' drain rate
        self._busy_load = 0.0  # S
        self._busy_rate = 0.0  # B
        self._origin = 0.0
        self._changes = 0
        self._resum_at = RESUM_AFTER  # changes
        self._heap_cap = 16  # entries in a heap before its stale ones are dropped

    def __len__(self) -> int:
        """Usable backends filed."""
        return len(self._filed)

    # --- filing ------------------------------------------------------------------------------------

    def update(self, backend: H, usable: bool, key: float, step: float) -> None:
        """File a backend's new figures. A change of usability or weight moves its points; a change of
        key or step alone (a load report) moves none."""
        filed = self._filed.get(id(backend))
        if filed is not None:
            self._leave(filed)
            self._rate -= filed.rate
            if not usable:
                self._withdraw(filed)
                return
            if filed.weight != backend.spec.weight:
                self._reweigh(filed)
        elif usable:
            filed = self._filed[id(backend)] = _Filed(backend, self._points_of(backend))
            self._ring.add(filed, filed.points)
            self._ring_changed()
        else:
            return
        filed.key, filed.step, filed.rate = key, step, 1.0 / step
        self._rate += filed.rate
        self._enter(filed)  # ahead of now until a choice finds it is not: update() has no clock

    def _withdraw(self, filed: _Filed[H]) -> None:
        del self._filed[id(filed.backend)]
        filed.stamp = -1  # its heap entries are stale
        self._ring.remove(filed, filed.points)
        self._ring_changed()

    def _reweigh(self, filed: _Filed[H]) -> None:
        """A new weight: the points it gains or loses, and only those (point j is the same at any count)."""
        filed.weight = filed.backend.spec.weight
        old, new = len(filed.points), points_for(filed.weight)
        if new < old:
            self._ring.remove(filed, filed.points[new:])
            filed.points = filed.points[:new]
        elif new > old:
            filed.points = self._points_of(filed.backend)
            self._ring.add(filed, filed.points[old:])
        self._ring_changed()

    def _points_of(self, backend: H) -> list[bytes]:
        """Its points at its weight, hashed once per name and count."""
        count = points_for(backend.spec.weight)
        points = self._points.get(backend.name, [])
        if len(points) < count:
            points = self._points[backend.name] = backend_points(backend.name, count)
        if len(self._points) > 2 * len(self._filed) + 64:  # names gone for good (a DNS service's churn)
            names = {filed.backend.name for filed in self._filed.values()} | {backend.name}
            self._points = {name: each for name, each in self._points.items() if name in names}
        return points[:count]

    def _ring_changed(self) -> None:
        """Sum afresh at the next choice; the heaps' size follows the pool's."""
        self._resum_at = -1
        self._heap_cap = 2 * len(self._filed) + 16

    def _enter(self, filed: _Filed[H]) -> None:
        """Into the sums and the heap of the backends whose key is ahead of now."""
        filed.busy = True
        self._busy_load += (filed.key - self._origin) * filed.rate
        self._busy_rate += filed.rate
        self._changes += 1
        self._stamps = filed.stamp = self._stamps + 1
        heapq.heappush(self._busy, (filed.key, self._random(), self._stamps, filed))
        if len(self._busy) > self._heap_cap:
            self._busy = self._compacted(self._busy)

    def _leave(self, filed: _Filed[H]) -> None:
        """Out of the sums: its key is about to change, or has fallen behind now."""
        if filed.busy:
            filed.busy = False
            self._busy_load -= (filed.key - self._origin) * filed.rate
            self._busy_rate -= filed.rate
            self._changes += 1

    @staticmethod
    def _compacted(heap: list[_Item[H]]) -> list[_Item[H]]:
        """The heap without its stale entries (of a backend re-keyed since, or withdrawn)."""
        live = [item for item in heap if item[2] == item[3].stamp]
        heapq.heapify(live)
        return live

    # --- choosing ----------------------------------------------------------------------------------

    def home(self, hash_key: bytes) -> H | None:
        """The key's first choice, before the bound: the first backend clockwise from its point."""
        for filed in self._ring.walk(key_point(hash_key)):
            return filed.backend
        return None

    def choose(self, now: float = -math.inf, hash_key: bytes | None = None) -> H | None:
        """Pick and count one redirect for this key (None: the least key); None when nothing is usable.

        In one piece, for every request comes here: the bound, the key's home in its bucket, and the
        redirect's move of the key and of the sums are inline; the rarer paths are helpers."""
        if not self._filed:
            return None
        if self._changes > self._resum_at:
            self._resum(now)
        busy = self._busy
        if busy and busy[0][0] <= now:
            self._expire(now)
        if hash_key is None:
            filed = self._least()
        else:
            point = blake2b(hash_key, digest_size=POINT_BYTES).digest()  # key_point(), inline
            limit = math.inf  # no bound, or no clock to measure loads by
            if self._bounded and now != -math.inf:
                load = self._busy_load - (now - self._origin) * self._busy_rate  # R
                limit = now + self.balance_factor * ((load if load > 0.0 else 0.0) + 1.0) / self._rate
            ring = self._ring
            bucket = (point[0] << 8 | point[1]) >> ring.shift
            index = bisect_left(ring.points[bucket], point)
            owners = ring.owners[bucket]
            if index < len(owners) and (
                (home := owners[index]).key < limit or (home.key - now) * home.rate < MIN_FULL
            ):
                filed = home  # the usual case: its home, in the key's own bucket, not full
            else:
                filed = self._spill(bucket, index, limit, now)
        key, rate = filed.key, filed.rate
        moved = filed.key = filed.backend.free_at = (key if key > now else now) + filed.step
        if filed.busy:
            self._busy_load += (moved - key) * rate
        else:
            filed.busy = True
            self._busy_load += (moved - self._origin) * rate
            self._busy_rate += rate
        self._changes += 1
        self._stamps = filed.stamp = self._stamps + 1
        heapq.heappush(busy, (moved, self._random(), self._stamps, filed))
        if len(busy) > self._heap_cap:
            self._busy = self._compacted(busy)
        return _count(filed.backend, now)

    def _expire(self, now: float) -> None:
        """The backends whose key has fallen behind `now` leave the sums (their load is 0 now) for the
        heap of the others."""
        busy, idle, origin = self._busy, self._idle, self._origin
        while busy and busy[0][0] <= now:
            item = heapq.heappop(busy)
            filed = item[3]
            if item[2] == filed.stamp:  # current, so in the sums: _leave(), inline
                filed.busy = False
                self._busy_load -= (filed.key - origin) * filed.rate
                self._busy_rate -= filed.rate
                self._changes += 1
                heapq.heappush(idle, item)
        if len(idle) > self._heap_cap:
            self._idle = self._compacted(idle)

    def _spill(self, bucket: int, index: int, limit: float, now: float) -> _Filed[H]:
        """The first backend clockwise from point `index` of `bucket` whose key is below `limit` (the key's
        home is full): the walk of `_Ring.walk`, without a generator's cost per point."""
        buckets = self._ring.owners
        owners = buckets[bucket]
        for filed in owners[index:]:
            if filed.key < limit or (filed.key - now) * filed.rate < MIN_FULL:
                return filed
        count = len(buckets)
        for ahead in range(1, count + 1):  # the next buckets, and round to this one's first points
            for filed in buckets[(bucket + ahead) % count]:
                if filed.key < limit or (filed.key - now) * filed.rate < MIN_FULL:
                    return filed
        return self._least()  # never, but for rounding: the least key is always under the bound

    def _least(self) -> _Filed[H]:
        """The backend with the least key, ties at random (one backend is filed at least): the least
        current entry of either heap, the stale ones above it dropped on the way."""
        idle, busy = self._idle, self._busy
        while idle and idle[0][2] != idle[0][3].stamp:
            heapq.heappop(idle)
        while busy and busy[0][2] != busy[0][3].stamp:
            heapq.heappop(busy)
        if idle and (not busy or idle[0] < busy[0]):
            return idle[0][3]
        return busy[0][3]

    def least_key(self) -> float:
        """The least key filed (-inf when none), as LeastLoaded's: the pool bounds a report's credit by it."""
        return self._least().key if self._filed else -math.inf

    def _resum(self, now: float) -> None:
        """The sums afresh, from `now` so that they hold small numbers."""
        if now != -math.inf:
            self._origin = now
        filed = self._filed.values()
        self._rate = math.fsum(each.rate for each in filed)
        self._busy_load = math.fsum((each.key - self._origin) * each.rate for each in filed if each.busy)
        self._busy_rate = math.fsum(each.rate for each in filed if each.busy)
        self._changes = 0
        self._resum_at = RESUM_AFTER + 4 * len(self._filed)
