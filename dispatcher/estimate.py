"""The load estimate between reports: what a backend has now, from what it said and what we sent since.

Owns: the rules that turn a stale load report into a figure that stays sane as it ages:
- the **drain rate** at which a backend's estimated queue falls between reports;
- the redirects sent just before a report that the report **cannot have seen yet** (they were still
  on their way: the client's round trip), which are kept on top of it;
- the dispatcher's own **redirect rate**, from which a backend's share is drawn.
Rules: pure arithmetic on plain numbers; no I/O, no clock, no imports from the package.

Why (issue 6): a backend reports its queue every check (2 s by default, a hundred service times of a
20 ms request). The old rule, report + redirects since, only ever grew between reports: the backend
whose report had just arrived dropped to its true, lower queue and took every redirect until it
passed the others, a herd refreshed at every report (Mitzenmacher, "How Useful Is Old Information?",
IEEE TPDS 2000). Here every backend's estimate falls at its drain rate as well, so the others' figures
stay near their true queues and a fresh report moves the choice by what it really says, a request or
two, not a whole interval of arrivals. When reports are old, the estimate of every backend is "what
we sent it lately": least-estimate is then a rotation weighted by drain rate, never a herd.

The drain rate of a backend is its share of this dispatcher's redirect rate (weight x slow-start ramp
over the sum of the usable backends'), since in a steady state a backend serves what it is sent. That
share is what this dispatcher adds to it, so several dispatchers in front of one pool each drain their
own share: none of them herds on another's redirects. A backend can be slower than its share: its
reports then show a queue that persists, and while it does, the completions between two reports
(previous load + arrivals it saw - new load, over the time) measure its capacity. The drain rate is
the lesser of the share and the measured capacity; a capacity measured while the backend was not busy
is only a lower bound, so it is raised towards what was seen and grows slowly (CAPACITY_PROBE a
second) until the backend is busy again and measured anew: a backend that recovered is not held to
its worst figure forever.
"""

from __future__ import annotations

import math

# The redirect rate is an average over about this long (an EWMA): long enough that one second's
# burst does not throw every step off, short enough to follow a day's traffic.
RATE_WINDOW = 2.0
# Below this the rate is taken as this: a pool with no traffic yet still rotates (steps of seconds).
MIN_RATE = 1.0
# Capacity samples are averaged over about this long, and over 5 reports at least.
CAPACITY_WINDOW = 4.0
CAPACITY_WEIGHT = 0.2
# While a backend is not busy its measured capacity may be an underestimate: it grows this much a
# second (multiplicatively), probing, until a busy interval measures it again.
CAPACITY_PROBE = 0.1
# How busy a backend is, is averaged over about this long, and over 20 reports at least.
BUSY_WINDOW = 10.0
BUSY_WEIGHT = 0.05
# A backend that is rarely busy drains at most this many times its share while it is.
MAX_BOOST = 2.0
# A capacity measured over busy intervals includes their idle moments, so it reads low by the idle
# fraction: only one clearly below the share says that the backend is slower than its share.
CAPACITY_TRUST = 0.8
# The in-flight allowance never counts redirects older than this (a report sees what is a second old).
MAX_DELAY = 1.0


def unseen(since: int, age: float, last: float, delay: float) -> float:
    """Of `since` redirects sent over the last `age` seconds, the last of them `last` seconds ago, those
    expected within the last `delay` (the clients' round trip): the report cannot have counted them.
    None when the last is older than that; else at least that one, and the rest at the average pace."""
    delay = min(delay, MAX_DELAY)
    if since <= 0 or last > delay:
        return 0.0
    if age <= delay:
        return float(since)
    return min(float(since), max(1.0, since * delay / age))


def smoothing(elapsed: float, window: float, most: float = 1.0) -> float:
    """The weight of a new sample taken over `elapsed` seconds in an EWMA over `window` seconds, at
    most `most`: a figure read from reports seconds apart is then still an average of many."""
    return min(most, 1.0 - math.exp(-elapsed / window)) if elapsed > 0 else 0.0


def next_capacity(capacity: float, before: float, arrivals: float, load: float, elapsed: float) -> float:
    """The measured capacity after a report: `before` was the last report's load, `arrivals` the
    redirects it received since (as far as we know), `load` the new report, over `elapsed` seconds.
    0 means not measured."""
    if elapsed <= 0:
        return capacity
    served = max(0.0, before + arrivals - load) / elapsed
    busy = before >= 1 and load >= 1
    if busy:
        if capacity <= 0:
            return served
        return capacity + smoothing(elapsed, CAPACITY_WINDOW, CAPACITY_WEIGHT) * (served - capacity)
    if capacity <= 0:
        return 0.0
    return max(capacity, served) * math.exp(CAPACITY_PROBE * elapsed)


def next_busy(busy: float, load: float, elapsed: float) -> float:
    """The share of time a backend is busy (reports 1 or more), after `load` held for `elapsed` s."""
    return busy + smoothing(elapsed, BUSY_WINDOW, BUSY_WEIGHT) * ((1.0 if load >= 1 else 0.0) - busy)


def drain_rate(share: float, busy: float, capacity: float) -> float:
    """What the estimate falls by each second while the backend holds requests.

    It serves its share of our redirects, but only while it is busy: a backend busy 90 % of the time
    serves at share / 0.9 while it has work (at most MAX_BOOST x its share). A measured capacity
    clearly below the share (CAPACITY_TRUST) is a slow backend: that rate then."""
    rate = share / max(busy, 1.0 / MAX_BOOST)
    if 0 < capacity < CAPACITY_TRUST * share:
        return capacity
    return rate


class RedirectRate:
    """This dispatcher's redirects per second, as an EWMA over RATE_WINDOW, from a running total."""

    __slots__ = ("_at", "_total", "rate")

    def __init__(self, now: float) -> None:
        self.rate = MIN_RATE
        self._at = now
        self._total = 0

    def observe(self, total: int, now: float) -> float:
        """Fold in the redirects counted up to `now`; returns the rate."""
        elapsed = now - self._at
        if elapsed > 0:
            sample = (total - self._total) / elapsed
            self.rate = max(MIN_RATE, self.rate + smoothing(elapsed, RATE_WINDOW) * (sample - self.rate))
            self._at, self._total = now, total
        return self.rate
