"""The pool shared between processes (`--workers N`): one prober, N front doors, one truth.

Owns: the layout of a shared-memory table and the code that reads and writes it.
- The master (health checks, admin, metrics) writes per backend: whether it takes redirects, its
  load, the sequence number of its report, its weight and slow-start ramp, when it is checked next;
  and per pool whether the operator holds it in maintenance.
- Each worker writes only its own cells: per backend the redirects it sent since the report it last
  saw and in all; its router's counters; per pool the answers its fallback gave; and its
  front-door counters. One writer per cell: no locks.
Workers sync every SYNC_INTERVAL: they take the master's figures and add the other workers'
redirects-since-report to their estimate, so the least-loaded choice counts every worker's
redirects (up to one interval late). The master reads the workers' counters, summed, at scrape
time, so metrics add up in one scrape (prometheus-client's multiprocess mode does the same with
files). A table is laid out for one backend list and one generation of workers: a reload that
changes the list makes a new table (`dispatcher.processes.workers`), it never resizes one in use.
Rules: no trio and no sockets here; time is the monotonic clock (trio's clocks differ by process).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing import shared_memory

from dispatcher.core.health_state import Health
from dispatcher.core.pool import Backend, Pool
from dispatcher.core.pools import Pools
from dispatcher.core.stats import DURATION_BUCKETS, RESPONSE_CODES, ServerStats

# A worker's view of the other workers is at most this old; a report reaches it this late at most.
SYNC_INTERVAL = 0.01

# Master cells per backend (float64).
_USABLE, _LOAD, _SEQ, _WEIGHT, _RAMP, _NEXT_CHECK = range(6)
_MASTER_FIELDS = 6
# Worker cells (int64): per backend since and total; then its counters.
_SINCE, _TOTAL = range(2)
_STATS = ["open", "total", "loops", *(f"r{code}" for code in RESPONSE_CODES)]
_OPEN = 0  # a gauge among the counters
_STATS += [f"d{i}" for i in range(len(DURATION_BUCKETS) + 1)]
# The duration sum (float) is kept in microseconds, as an integer cell.


@dataclass(frozen=True, slots=True)
class Layout:
    backends: int
    workers: int
    routes: int = 0  # the router's counters (core.routes.Router.counts), after the backends' cells
    # Per pool (Settings.all_pools order): after the backends' master cells, its maintenance; after a
    # worker's router counters, the answers its fallback gave (Pool.fallbacks).
    pools: int = 0

    @property
    def fallbacks_start(self) -> int:
        """Where a worker's per-pool fallback counters start among its cells."""
        return 2 * self.backends + self.routes

    @property
    def stats_start(self) -> int:
        """Where a worker's front-door counters start among its cells."""
        return 2 * self.backends + self.routes + self.pools

    @property
    def worker_cells(self) -> int:
        return self.stats_start + len(_STATS) + 2  # + the duration sum, + the ready flag

    @property
    def size(self) -> int:
        return 8 * (_MASTER_FIELDS * self.backends + self.pools + self.workers * self.worker_cells)


class SharedTable:
    """A view of the shared memory; `create` in the master, `attach` in a worker."""

    def __init__(self, memory: shared_memory.SharedMemory, layout: Layout, owner: bool) -> None:
        self.memory, self.layout, self._owner = memory, layout, owner
        buffer = memory.buf
        assert buffer is not None
        split = 8 * _MASTER_FIELDS * layout.backends
        pools_end = split + 8 * layout.pools
        self.master = buffer[:split].cast("d")
        self.pool_cells = buffer[split:pools_end].cast("d")
        self.cells = buffer[pools_end : layout.size].cast("q")

    @classmethod
    def create(cls, layout: Layout) -> SharedTable:
        return cls(shared_memory.SharedMemory(create=True, size=layout.size), layout, owner=True)

    @classmethod
    def attach(cls, name: str, layout: Layout) -> SharedTable:
        # Workers are spawned by the master and share its resource tracker, which unlinks the block
        # only if the master leaks it: attaching here registers nothing new.
        return cls(shared_memory.SharedMemory(name=name), layout, owner=False)

    @property
    def name(self) -> str:
        return self.memory.name

    def close(self) -> None:
        self.master.release()
        self.pool_cells.release()
        self.cells.release()
        self.memory.close()
        if self._owner:
            self.memory.unlink()

    # --- the master's side -------------------------------------------------------------------------

    def publish(self, index: int, backend: Backend, next_check_in: float) -> None:
        """What choosing needs of one backend, after any change in the master's pool."""
        base = index * _MASTER_FIELDS
        master = self.master
        if backend.report is not None and backend.report.value != master[base + _LOAD]:
            master[base + _LOAD] = backend.report.value
        if backend.reports != master[base + _SEQ]:
            master[base + _LOAD] = backend.load
            master[base + _SEQ] = backend.reports  # a check's answer or a stream's event
        master[base + _USABLE] = 1.0 if backend.usable else 0.0
        master[base + _WEIGHT] = backend.weight
        master[base + _RAMP] = backend.ramp
        master[base + _NEXT_CHECK] = time.monotonic() + next_check_in

    def publish_pool(self, index: int, pool: Pool) -> None:
        """A pool's operator state (the admin API's maintenance), row `index` of the pools."""
        self.pool_cells[index] = 1.0 if pool.maintenance else 0.0

    def redirects(self, index: int) -> tuple[int, int]:
        """Backend `index`'s redirects summed over the workers: since the last report, and in all."""
        cells, per, row = self.cells, self.layout.worker_cells, 2 * index
        since = sum(cells[w * per + row + _SINCE] for w in range(self.layout.workers))
        return since, sum(cells[w * per + row + _TOTAL] for w in range(self.layout.workers))

    def route_counts(self) -> list[int]:
        """The router's counters summed over the workers, in `Router.counts` order."""
        per, start, width = self.layout.worker_cells, 2 * self.layout.backends, self.layout.routes
        totals = [0] * width
        for w in range(self.layout.workers):
            for i, value in enumerate(self.cells[w * per + start : w * per + start + width]):
                totals[i] += value
        return totals

    def publish_routes(self, worker: int, counts: Sequence[int]) -> None:
        """A worker's router counters (core.routes.Router.counts), as they are now."""
        start = worker * self.layout.worker_cells + 2 * self.layout.backends
        for i, value in enumerate(counts[: self.layout.routes]):
            self.cells[start + i] = value

    def restored_routes(self, worker: int) -> list[int]:
        """What a restarted worker's predecessor had counted: so that the route counters never go back."""
        start = worker * self.layout.worker_cells + 2 * self.layout.backends
        return list(self.cells[start : start + self.layout.routes])

    def fallbacks(self) -> list[int]:
        """Each pool's fallback answers summed over the workers, in Settings.all_pools order."""
        per, start, width = self.layout.worker_cells, self.layout.fallbacks_start, self.layout.pools
        return [
            sum(self.cells[w * per + start + i] for w in range(self.layout.workers)) for i in range(width)
        ]

    def counters(self) -> list[int]:
        """The workers' front-door counters, summed, as integers in cell order (`stats_of` reads
        them): sums of sums stay exact, so a counter added up across tables never goes back."""
        per, start = self.layout.worker_cells, self.layout.stats_start
        totals = empty_counters()
        for w in range(self.layout.workers):
            add_counters(totals, self.cells[w * per + start : (w + 1) * per - 1])
        return totals

    # --- a worker's side ---------------------------------------------------------------------------

    def restore(self, worker: int, pool: Pool | Pools, stats: ServerStats) -> None:
        """A restarted worker carries on from its predecessor's totals, so counters never go back.

        Its front-door counters too: its first sync overwrites the cells with `stats`. Open
        connections are not carried: the predecessor's died with it.
        """
        base = worker * self.layout.worker_cells
        pool = _pools(pool)
        for index, backend in enumerate(pool.backends):
            pool.set_counts(backend, backend.since, self.cells[base + 2 * index + _TOTAL])
        start = base + self.layout.fallbacks_start
        for index, each in enumerate(list(pool)[: self.layout.pools]):
            each.fallbacks = self.cells[start + index]
        before = stats_of(self.cells[base + self.layout.stats_start : base + self.layout.worker_cells - 1])
        stats.connections_total, stats.loops = before.connections_total, before.loops
        stats.responses, stats.duration_counts = before.responses, before.duration_counts
        stats.duration_sum = before.duration_sum

    def sync(self, worker: int, pool: Pool | Pools, stats: ServerStats, seen: list[float]) -> None:
        """Publish this worker's counters; take the master's figures and the other workers' redirects.

        `seen` holds, per backend, the report sequence number this worker last took.
        """
        cells, master, layout = self.cells, self.master, self.layout
        per = layout.worker_cells
        mine = worker * per
        now = time.monotonic()
        pool = _pools(pool)
        others_totals = dict.fromkeys((each.name for each in pool), 0)
        for index, backend in enumerate(pool.backends):
            base = index * _MASTER_FIELDS
            changed = master[base + _SEQ] != seen[index]
            if changed:  # a new report: what this worker sent before it is in it
                seen[index] = master[base + _SEQ]
                pool.take_master_report(backend, master[base + _LOAD], now)
            cells[mine + 2 * index + _TOTAL] = backend.redirects
            cells[mine + 2 * index + _SINCE] = backend.since
            row = [w * per + 2 * index for w in range(layout.workers) if w != worker]
            others = sum(cells[cell + _SINCE] for cell in row)
            others_totals[backend.pool] += sum(cells[cell + _TOTAL] for cell in row)
            usable = master[base + _USABLE] == 1.0
            weight, ramp = master[base + _WEIGHT] or backend.spec.weight, master[base + _RAMP] or 1.0
            pool.set_next_check(backend, master[base + _NEXT_CHECK])
            if changed or (usable, others, ramp, weight) != (
                backend.health is Health.UP,
                backend.others,
                backend.ramp,
                backend.spec.weight,
            ):
                pool.mirror(backend, usable, weight, ramp, others, now)
        pool.set_others_totals(others_totals)
        fallbacks = mine + layout.fallbacks_start
        for index, (each, flag) in enumerate(zip(pool, self.pool_cells, strict=False)):
            each.set_maintenance(flag == 1.0)
            cells[fallbacks + index] = each.fallbacks
        self._publish_stats(mine + layout.stats_start, stats)

    def set_ready(self, worker: int, ready: bool) -> None:
        """A worker says it listens (and, at its end, that it no longer does)."""
        self.cells[(worker + 1) * self.layout.worker_cells - 1] = 1 if ready else 0

    def ready(self, worker: int) -> bool:
        return self.cells[(worker + 1) * self.layout.worker_cells - 1] == 1

    def _publish_stats(self, start: int, stats: ServerStats) -> None:
        values = [stats.open_connections, stats.connections_total, stats.loops]
        values += [stats.responses.get(code, 0) for code in RESPONSE_CODES]
        values += stats.duration_counts
        values.append(round(stats.duration_sum * 1e6))  # not int(): restored, n / 1e6 * 1e6 may be n - 1
        for offset, value in enumerate(values):
            self.cells[start + offset] = value


def _pools(pool: Pool | Pools) -> Pools:
    """Every pool, the default one's backends first: the rows of the table in order."""
    return pool if isinstance(pool, Pools) else Pools(pool)


def empty_counters() -> list[int]:
    """Front-door counters at zero, in cell order."""
    return [0] * (len(_STATS) + 1)


def add_counters(into: list[int], more: Sequence[int], *, gauges: bool = True) -> None:
    """Add `more` to `into`, cell by cell. Without `gauges`, open connections are left out: what a
    stopped generation of workers counted is carried on, but its connections are closed."""
    for i, value in enumerate(more):
        into[i] += value
    if not gauges:
        into[_OPEN] -= more[_OPEN]


def stats_of(counters: Sequence[int]) -> ServerStats:
    """Counters in cell order (a worker's cells, or a sum of them), as the front door keeps them."""
    codes = len(RESPONSE_CODES)
    return ServerStats(
        open_connections=counters[_OPEN],
        connections_total=counters[1],
        loops=counters[2],
        responses=dict(zip(RESPONSE_CODES, counters[3 : 3 + codes], strict=True)),
        duration_counts=list(counters[3 + codes : len(_STATS)]),
        duration_sum=counters[len(_STATS)] / 1e6,
    )
