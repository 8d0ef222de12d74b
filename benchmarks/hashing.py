"""The `hash` policy (dispatcher/core/hashing.py) against its baselines, in process and in virtual time.

Issue 13, item 4: "the same key goes to the same backend while that backend's load stays under the
balance factor times the mean; adding or removing one backend of N moves about 1/N of the keys, not
all. Measure both." The policies are the dispatcher's own, fed as the pool feeds them (`update` with
a key and a step, `choose(now, key)`), over small stand-ins for the pool's backends: no sockets, no
trio, no Pool (the figures do not depend on the pool's estimate, only on what it hands over).

a) Keys remapped when one backend of N joins or leaves, 100,000 keys: the bounded hash at low load
   (every backend idle at each choice: the bound never binds, so this is its ring), plain consistent
   hashing (c = inf) and `hash(key) % N`, the naive baseline. Expected: about 1/N against (N - 1)/N.
b) Load spread under skewed keys: Poisson arrivals of Zipf-distributed keys (s = 1.1 over 10,000 keys:
   the hottest key alone is 15 % of the traffic, more than one backend's share of 12.5 %) to 8
   backends, each request held by its backend for an exponential service time (M/M/inf: a backend's
   load is the requests it holds). The policy's key of a backend moves as the pool moves it: by a
   step (1 / its share of the redirect rate) per redirect, drained by time passing, and set to
   now + load x step by a load report every --report seconds (the pool's health-check interval).
   Every policy sees the same arrivals, keys and service times (common random numbers). Figures:
   the busiest backend's time-average load over the mean, the same at each instant (averaged over
   arrivals), the share of requests served at their key's first-choice backend, and how many backends
   the hottest key was spread over. LeastLoaded, the default policy, is the reference for spread.
c) Cost: microseconds per choice, the key's hash included, with 8, 100 and 1,000 backends, beside
   LeastLoaded.choose in the same run (best of --rounds); and what a backend joining or leaving a ring
   of 1,000 costs, beside a full re-sort of that ring.

    python benchmarks/hashing.py            # about a minute on a 2-core VM
    python benchmarks/hashing.py --quick    # a smoke run of seconds
"""

from __future__ import annotations

import argparse
import heapq
import math
import platform
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from itertools import accumulate
from operator import itemgetter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the dispatcher of this checkout

from dispatcher.core.hashing import BoundedLoadHash, backend_points, key_point, points_for
from dispatcher.core.policy import LeastLoaded

STEP = 0.01  # seconds a redirect adds to a backend's key: a share of 100 redirects a second
FACTORS = (1.25, 2.0, math.inf)


@dataclass(frozen=True)
class Spec:
    weight: float = 1.0


@dataclass(eq=False)
class Node:
    """What a policy sees of the pool's Backend."""

    name: str
    spec: Spec = field(default_factory=Spec)
    version: int = 0
    since: int = 0
    redirects: int = 0
    free_at: float = 0.0
    sent_at: float = -math.inf


def nodes_named(count: int) -> list[Node]:
    return [Node(f"10.0.{i // 250}.{i % 250}:8080") for i in range(count)]


def hash_policy(nodes: Sequence[Node], factor: float, step: float = STEP) -> BoundedLoadHash[Node]:
    policy: BoundedLoadHash[Node] = BoundedLoadHash(random.Random(1), factor)
    for node in nodes:
        policy.update(node, True, 0.0, step)
    return policy


def factor_label(factor: float) -> str:
    return "c = inf" if factor == math.inf else f"c = {factor:g}"


@dataclass
class Subject:
    """A policy over backends of its own, as this benchmark drives it."""

    nodes: list[Node]
    choose: Callable[[float, bytes], Node | None]
    file: Callable[[int, float], None]  # a load report: backend i's key is now this


def least_subject(size: int) -> Subject:
    """LeastLoaded, the default policy: choose(now), the key unused."""
    nodes = nodes_named(size)
    least: LeastLoaded[Node] = LeastLoaded(random.Random(1))

    def file(i: int, key: float) -> None:
        nodes[i].version += 1  # LeastLoaded drops the entries of older versions: the pool bumps them
        least.update(nodes[i], True, key, STEP)

    for i in range(size):
        file(i, 0.0)
    return Subject(nodes, lambda now, key: least.choose(now), file)


def hash_subject(size: int, factor: float, keyed: bool = True) -> Subject:
    """BoundedLoadHash: choose(now, key), or choose(now) for requests without the key."""
    nodes = nodes_named(size)
    policy = hash_policy(nodes, factor)
    choose = policy.choose if keyed else lambda now, key: policy.choose(now)
    return Subject(nodes, choose, lambda i, key: policy.update(nodes[i], True, key, STEP))


# --- a) keys remapped ----------------------------------------------------------------------------


def ring_homes(nodes: Sequence[Node], keys: Sequence[bytes], factor: float) -> list[str]:
    """Each key's backend at low load: every choice 10 s after the one before, so every backend idle."""
    policy = hash_policy(nodes, factor)
    names = []
    for turn, key in enumerate(keys):
        chosen = policy.choose(10.0 * (turn + 1), key)
        names.append(chosen.name if chosen is not None else "")
    return names


def modulo_homes(nodes: Sequence[Node], keys: Sequence[bytes]) -> list[str]:
    """hash(key) % N: the naive baseline."""
    return [nodes[int.from_bytes(key_point(key)) % len(nodes)].name for key in keys]


def moved(before: Sequence[str], after: Sequence[str]) -> float:
    return sum(1 for old, new in zip(before, after, strict=True) if old != new) / len(before)


def remap_table(sizes: Sequence[int], count: int) -> None:
    keys = [f"session-{i}".encode() for i in range(count)]
    print(f"\n### a) Keys remapped when one backend joins or leaves ({count:,} keys)\n")
    print("| backends | change | bounded hash, c = 1.25, low load | plain ring, c = inf | hash % N | 1/N |")
    print("|---:|---|---:|---:|---:|---:|")
    for size in sizes:
        nodes = nodes_named(size + 1)
        pools = {
            "join": (nodes[:size], nodes),
            "leave": (nodes[:size], nodes[: size // 2] + nodes[size // 2 + 1 : size]),
        }
        for change, (before, after) in pools.items():
            cells = [moved(ring_homes(before, keys, f), ring_homes(after, keys, f)) for f in (1.25, math.inf)]
            cells.append(moved(modulo_homes(before, keys), modulo_homes(after, keys)))
            ideal = 1 / len(after) if change == "join" else 1 / size
            row = " | ".join(f"{cell:.1%}" for cell in cells)
            print(f"| {size} | {change} ({size} → {len(after)}) | {row} | {ideal:.1%} |", flush=True)


# --- b) load spread under skewed keys ------------------------------------------------------------


@dataclass
class Traffic:
    """The same arrivals, keys and service times for every policy."""

    arrivals: list[float]
    keys: list[bytes]
    services: list[float]
    hottest: bytes  # the key of rank 1


def zipf_traffic(requests: int, keys: int, skew: float, rate: float, service: float) -> Traffic:
    rng = random.Random(13)
    names = [f"user-{rank}".encode() for rank in range(keys)]
    chosen = rng.choices(
        names, cum_weights=list(accumulate(1 / (r + 1) ** skew for r in range(keys))), k=requests
    )
    arrivals = list(accumulate(rng.expovariate(rate) for _ in range(requests)))
    return Traffic(arrivals, chosen, [rng.expovariate(1 / service) for _ in range(requests)], names[0])


@dataclass
class Spread:
    busiest: float  # the busiest backend's time-average load / the mean
    peak: float  # max / mean at each arrival, averaged
    at_home: float  # share of requests served at their key's first choice
    hot_backends: int  # backends the hottest key went to


def simulate(subject: Subject, traffic: Traffic, homes: dict[bytes, str], report: float) -> Spread:
    """One policy over the traffic: M/M/inf backends, a load report of each every `report` seconds."""
    count = len(subject.nodes)
    place = {id(node): i for i, node in enumerate(subject.nodes)}
    held, departures = [0] * count, list[tuple[float, int]]()
    totals, peaks, at_home, hot_backends = [0] * count, 0.0, 0, set()
    next_report = report
    for now, key, service in zip(traffic.arrivals, traffic.keys, traffic.services, strict=True):
        while departures and departures[0][0] <= now:
            held[heapq.heappop(departures)[1]] -= 1
        if report and now >= next_report:
            for i in range(count):
                subject.file(i, now + held[i] * STEP)  # as the pool's take_report: now + load x step
            next_report += report
        load = sum(held)
        if load:
            peaks += max(held) * count / load
        for i in range(count):
            totals[i] += held[i]  # what arrivals see is the time average (PASTA)
        chosen = subject.choose(now, key)
        assert chosen is not None
        i = place[id(chosen)]
        held[i] += 1
        heapq.heappush(departures, (now + service, i))
        at_home += chosen.name == homes[key]
        if key == traffic.hottest:
            hot_backends.add(i)
    requests = len(traffic.keys)
    return Spread(max(totals) * count / sum(totals), peaks / requests, at_home / requests, len(hot_backends))


def spread_table(requests: int, backends: int, report: float) -> None:
    service, load = 0.1, 10.0  # 100 ms a request, 10 held per backend on average
    rate = backends * load / service
    traffic = zipf_traffic(requests, 10_000, 1.1, rate, service)
    ring = hash_policy(nodes_named(backends), math.inf)
    homes = {key: node.name for key in set(traffic.keys) if (node := ring.home(key)) is not None}
    hottest = traffic.keys.count(traffic.hottest) / requests
    print(
        f"\n### b) Load spread, Zipf s = 1.1 over 10,000 keys, {backends} backends, {requests:,} requests\n\n"
        f"Poisson arrivals at {rate:.0f}/s, exponential service of {service * 1000:.0f} ms (M/M/inf: "
        f"{load:.0f} requests held per backend on average), a load report every {report:g} s. The "
        f"hottest key is {hottest:.1%} of the requests; one backend's share is {1 / backends:.1%}.\n"
    )
    print(
        "| policy | busiest / mean | max / mean at an instant | at the key's home | hottest key's backends |"
    )
    print("|---|---:|---:|---:|---:|")
    subjects: list[tuple[str, Callable[[], Subject]]] = [
        (f"hash, {factor_label(factor)}", partial(hash_subject, backends, factor)) for factor in FACTORS
    ]
    subjects.append(("least-loaded (reference)", partial(least_subject, backends)))
    for label, make in subjects:
        spread = simulate(make(), traffic, homes, report)
        cells = f"{spread.busiest:.2f} | {spread.peak:.2f} | {spread.at_home:.1%} | {spread.hot_backends}"
        print(f"| {label} | {cells} |", flush=True)


# --- c) cost -------------------------------------------------------------------------------------


def microseconds(subject: Subject, keys: Sequence[bytes], now: float) -> tuple[float, float]:
    """One run from `now`: a choice per key, the clock moving at 90 % of the pool's drain, a load report
    (load 0) every 26 choices. Returns the µs per choice, and the clock at the end."""
    size = len(subject.nodes)
    tick, choose, file = STEP / size / 0.9, subject.choose, subject.file
    started = time.perf_counter()
    for turn, key in enumerate(keys):
        now += tick
        choose(now, key)
        if turn % 26 == 0:
            file(turn % size, now)
    return (time.perf_counter() - started) / len(keys) * 1e6, now


def cost_runs(size: int, keys: Sequence[bytes], rounds: int) -> dict[str, float]:
    """Best of `rounds` for each way of choosing, in turns so that a drift of the machine hits each alike;
    each one's clock goes on from run to run, and its loads with it."""
    subjects = {
        "least-loaded": least_subject(size),
        "hash c = 1.25": hash_subject(size, 1.25),
        "hash c = inf": hash_subject(size, math.inf),
        "hash, no key": hash_subject(size, 1.25, keyed=False),
    }
    best, clocks = dict.fromkeys(subjects, math.inf), dict.fromkeys(subjects, 0.0)
    for _ in range(rounds):
        for name, subject in subjects.items():
            cost, clocks[name] = microseconds(subject, keys, clocks[name])
            best[name] = min(best[name], cost)
    return best


def ring_change_ms(size: int) -> tuple[float, float, float]:
    """One backend of `size` leaving and coming back (ms each), and a full re-sort of the ring (ms)."""
    nodes = nodes_named(size)
    policy = hash_policy(nodes, 1.25)
    started = time.perf_counter()
    policy.update(nodes[size // 2], False, 0.0, STEP)
    left = time.perf_counter()
    policy.update(nodes[size // 2], True, 0.0, STEP)
    back = time.perf_counter()
    pairs = [
        (point, i) for i, node in enumerate(nodes) for point in backend_points(node.name, points_for(1.0))
    ]
    sorting = time.perf_counter()
    pairs.sort(key=itemgetter(0))
    ring, owners = [point for point, _ in pairs], [i for _, i in pairs]
    done = time.perf_counter()
    assert len(ring) == len(owners)
    return (left - started) * 1e3, (back - left) * 1e3, (done - sorting) * 1e3


def cost_table(sizes: Sequence[int], choices: int, rounds: int) -> None:
    rng = random.Random(5)
    keys = rng.choices(
        [f"user-{r}".encode() for r in range(10_000)],
        cum_weights=list(accumulate(1 / (r + 1) ** 1.1 for r in range(10_000))),
        k=choices,
    )
    print(f"\n### c) Cost of one choice, µs (best of {rounds} runs of {choices:,}; a load report every 26)\n")
    print(
        "| backends | least-loaded | hash c = 1.25 | hash c = inf | hash, no key | c = 1.25 / least-loaded |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for size in sizes:
        best = cost_runs(size, keys, rounds)
        cells = " | ".join(f"{best[name]:.2f}" for name in best)
        print(f"| {size} | {cells} | {best['hash c = 1.25'] / best['least-loaded']:.2f}x |", flush=True)
    size = sizes[-1]
    leave, join, resort = ring_change_ms(size)
    print(
        f"\nA ring of {size:,} backends ({size * points_for(1.0):,} points): one backend leaves in "
        f"{leave:.2f} ms and joins again in {join:.2f} ms (its points are cached by name); re-sorting "
        f"the whole ring would take {resort:.1f} ms."
    )


def main() -> int:
    parser = argparse.ArgumentParser(description="The hash policy: remapping, load spread and cost")
    parser.add_argument("--quick", action="store_true", help="fewer keys and requests: a smoke run")
    parser.add_argument("--requests", type=int, default=200_000, help="requests of the spread simulation")
    parser.add_argument("--report", type=float, default=2.0, help="seconds between load reports (0: none)")
    parser.add_argument("--rounds", type=int, default=5, help="runs per cost figure (the best is kept)")
    args = parser.parse_args()
    keys, requests, choices, rounds = (
        (10_000, 20_000, 20_000, 1) if args.quick else (100_000, args.requests, 100_000, args.rounds)
    )
    print(f"python: {platform.python_implementation()} {platform.python_version()}")
    remap_table((10, 100), keys)
    spread_table(requests, 8, args.report)
    cost_table((8, 100, 1000), choices, rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
