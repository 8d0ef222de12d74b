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
over the sum of the usable backends'), since in a steady state a backend serves what it is sent; over
the share of time the pool's backends are busy, since it serves only while it has work. That share is
what this dispatcher adds to it, so several dispatchers in front of one pool each drain their own
share: none of them herds on another's redirects. The redirect rate follows a rise at once: a drain
slower than the backends are sent makes every estimate grow, and a fresh low report would herd again.
A fresh report below every other backend's estimate gains at most CREDIT requests on them.

Measured and left out (benchmarks/distribution.py, live): a per-backend capacity learned from the
completions between reports, meant for slow backends. A backend sent a little less than its share
serves a little less, which read as a lower capacity, which sent it less: live, with checks every 2 s,
it starved two of eight backends and overloaded the rest (4.7x round-robin's mean). Slow backends are
left to their reports (a persistent queue keeps them skipped), and to load streams, which correct
within a request.
"""

from __future__ import annotations

import math

# The redirect rate is an average over about this long (an EWMA): long enough that one second's
# burst does not throw every step off, short enough to follow a day's traffic.
RATE_WINDOW = 2.0
# Below this the rate is taken as this: a pool with no traffic yet still rotates (steps of seconds).
MIN_RATE = 1.0
# How busy a backend is, is averaged over about this long, and over 20 reports at least.
BUSY_WINDOW = 10.0
BUSY_WEIGHT = 0.05
# How busy a backend is taken to be before its reports say: always, so that its drain is its share
# exactly and a pool without reports yet is a weighted rotation (a lower figure drains faster than
# the backends are sent requests: every estimate sits at empty and the weights blur).
BUSY_PRIOR = 1.0
# A backend that is rarely busy drains at most this many times its share while it is.
MAX_BOOST = 1.5
# A fresh report may put a backend at most this many requests ahead of the least-loaded other.
CREDIT = 3.0
# An old report's estimate settles towards the pool's usual queue over about this many of the
# backend's service times (steps): an M/M/1 queue at load 0.9 forgets where it stood over tens of
# service times. benchmarks/simulate.py, 8 backends at 0.9: 25 helps two dispatchers most and costs
# nothing with checks every 5 s; 100 costs 3 % there.
SETTLE = 25.0
# The pool's usual queue is an average over about this many rounds of reports from every backend.
MEAN_ROUNDS = 8.0
# One report counts in the pool's usual queue as at most this many times that queue, plus this many
# requests: the usual queue raises every backend's estimate (settled), so one backend's absurd report
# (1e5, a bug's 1e308) must not raise the others'. An M/M/1 queue at load 0.9 (mean 9) passes 40
# about 1 % of the time: the cap costs the average about 1 %, and a rise from nothing still reaches
# its level within a few rounds (the cap grows with the average, about 1.45x a round).
OUTLIER = 4.0
# A load above this is taken as this: far past any queue, and finite after any arithmetic on it.
MAX_LOAD = 1e9
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


def settled(mean: float, age: float, step: float) -> float:
    """The queue a backend is expected to hold at least, `age` seconds after its report, when the
    pool's backends hold `mean` on average: nothing at first, then towards the mean.

    Drained on its own, an old report's estimate falls to empty and stays there, while the backend's
    real queue, unseen, wanders back to the usual: every old estimate then looks better than a fresh
    report of an ordinary queue, and the fresh one is passed over. Worst with several dispatchers,
    each seeing only its own redirects (simulation, 7 seeds, checks every 2 s: two dispatchers 0.90x
    round-robin's mean without this floor, 0.87x with it; one, 0.87x and 0.86x)."""
    return mean * -math.expm1(-age / (SETTLE * step)) if age > 0 else 0.0


def usual_sample(load: float, mean: float) -> float:
    """What one report of `load` (per unit of weight) brings to the pool's usual queue `mean`."""
    return min(load, OUTLIER * (mean + 1.0))


def smoothing(elapsed: float, window: float, most: float = 1.0) -> float:
    """The weight of a new sample taken over `elapsed` seconds in an EWMA over `window` seconds, at
    most `most`: a figure read from reports seconds apart is then still an average of many."""
    return min(most, 1.0 - math.exp(-elapsed / window)) if elapsed > 0 else 0.0


def next_busy(busy: float, load: float, elapsed: float, samples: int) -> float:
    """The share of time a backend is busy (reports 1 or more), after `load` held for `elapsed` s,
    `samples` reports having been folded in before.

    The first reports are averaged plainly (the starting figure counts as one of them), the later
    ones in an EWMA: with checks every 2 s an EWMA alone would take 40 s to leave its starting
    figure, and a pool that has just started, or come back, would drain at the wrong rate all that
    while (benchmarks/simulate.py: 0.98x round-robin over the first 11 s, 0.86x later)."""
    weight = smoothing(elapsed, BUSY_WINDOW, BUSY_WEIGHT)
    if samples < 1.0 / BUSY_WEIGHT:
        weight = max(weight, 1.0 / (samples + 2))
    return busy + weight * ((1.0 if load >= 1 else 0.0) - busy)


def drain_rate(share: float, busy: float) -> float:
    """What the estimate falls by each second while the backend holds requests.

    It serves its share of our redirects, but only while it is busy: a backend busy 90 % of the time
    serves at share / 0.9 while it has work (at most MAX_BOOST x its share)."""
    return share / max(busy, 1.0 / MAX_BOOST)


class RedirectRate:
    """This dispatcher's redirects per second, as an EWMA over RATE_WINDOW, from a running total."""

    __slots__ = ("_at", "_average", "_total", "rate")

    def __init__(self, now: float) -> None:
        self.rate = self._average = MIN_RATE
        self._at = now
        self._total = 0

    def observe(self, total: int, now: float) -> float:
        """Fold in the redirects counted up to `now`; returns the rate."""
        elapsed = now - self._at
        if elapsed > 0:
            sample = (total - self._total) / elapsed
            average = self._average + smoothing(elapsed, RATE_WINDOW) * (sample - self._average)
            self._average = max(MIN_RATE, average)
            # A rate that lags a rise makes every estimate drain slower than the backends are sent
            # requests: they grow, and a fresh low report then herds, as the old rule did. Rises are
            # taken at once, falls at the average's pace: draining a little fast only rotates.
            self.rate = max(self._average, sample)
            self._at, self._total = now, total
        return self.rate
