"""`--workers N`: N front-door processes on one port, one prober, one pool.

Owns: starting, watching, reloading and stopping the worker processes, and each worker's life.
- The master (the process that was started) keeps the health checks, the admin listener, the
  metrics and the pool's truth; it publishes every change of a backend to the `SharedTable` of
  each generation of workers still running.
- Each worker binds the front door with SO_REUSEPORT (the kernel spreads connections over them),
  serves it with the same `FrontDoor` as a single process, and syncs with its table every
  `shared.SYNC_INTERVAL`: it takes health, load and weights, and adds the other workers'
  redirects since the last report to its estimate, so the choice counts every worker's redirects.
- A worker that dies is started again; it carries on from its predecessor's counters.
- A reload is nginx's ("Controlling nginx": on HUP the master starts new workers with the new
  configuration, then asks the old ones to shut down gracefully). A new generation starts with the
  new settings and a table laid out for the new backend list; once every new worker listens, the
  master applies the reload to its own pool, and the old generation gets SIGTERM and drains as a
  single process does. The kernel's SO_REUSEPORT group holds the new listeners throughout, and the
  old workers serve what was queued for them (with net.ipv4.tcp_migrate_req, what is still in the
  handshake moves to the new ones), so no connection is refused. While both run, each generation's
  choice counts only its own workers' redirects. Reloads are taken one at a time; a generation that
  cannot start is stopped, and the old one keeps serving the running config.
- Counters add up across generations: a scrape sums the tables of every generation still running
  onto what the stopped ones left, and a generation's last counts are carried over before its
  table is released, so no counter goes back in a scrape.
Rules: workers are started with the "spawn" method (forking a running trio process is unsafe);
they get the settings and the table's name, nothing else. Backends are checked once, by the master.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import multiprocessing
import multiprocessing.process
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import replace

import trio

from dispatcher.core.lifecycle import Lifecycle
from dispatcher.core.pool import Backend, Pool
from dispatcher.core.pools import Pools, pools_of
from dispatcher.core.routes import CountLabel, Router, count_labels, needs_router, router_for
from dispatcher.core.stats import ServerStats
from dispatcher.expose import access_log, logs
from dispatcher.net import geoip
from dispatcher.net.frontdoor import FrontDoor
from dispatcher.net.listen import CappedListener, open_listeners
from dispatcher.net.tlsdoor import TlsFrontDoor, redirect_door
from dispatcher.processes.shared import (
    SYNC_INTERVAL,
    Layout,
    SharedTable,
    add_counters,
    empty_counters,
    stats_of,
)
from dispatcher.settings.config import Address, Settings

log = logging.getLogger("dispatcher.workers")

# How often the master looks for dead workers, and how long a worker may take to listen.
WATCH_INTERVAL = 1.0
START_TIMEOUT = 30.0
# Past its grace period a stopping worker gets this long to finish its last sync, then SIGKILL.
KILL_MARGIN = 2.0

# What a reload does to the master's own pool, run once the new workers listen (app.Running).
Apply = Callable[[Settings], None]


class MonotonicClock(trio.abc.Clock):
    """Workers read trio time as time.monotonic(), the clock the master writes check times in."""

    def start_clock(self) -> None:
        pass

    def current_time(self) -> float:
        return time.monotonic()

    def deadline_to_sleep_time(self, deadline: float) -> float:
        return deadline - time.monotonic()


# --- the master's side -----------------------------------------------------------------------------


def _reserve_port(address: Address) -> tuple[socket.socket, Address]:
    """Bind (without listening) to learn the port when 0 was asked for; workers then share it."""
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    reserve = socket.socket(family, socket.SOCK_STREAM)
    reserve.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    reserve.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        reserve.bind((address.host, address.port))
    except OSError:
        reserve.close()
        raise
    return reserve, replace(address, port=reserve.getsockname()[1])


class Generation:
    """Worker processes started together with one set of settings, and the table they share.

    `index` places the master's backends in the table's rows (the settings' backend order). It is
    filled twice on a reload: before the workers start, with the backends the master already has
    (the new workers find those up, with their loads), and at the switch, with those it added.
    """

    def __init__(self, settings: Settings, number: int) -> None:
        self.number = number
        self.count = settings.workers
        self.settings = replace(settings, workers=1)  # what each worker runs: one front door
        # Every pool's backends, the default pool's first: the order the workers' Pools lay them out in.
        specs = [spec for pool in settings.all_pools for spec in pool.backends]
        self.route_labels = count_labels(settings.routes) if needs_router(settings) else []
        layout = Layout(len(specs), settings.workers, len(self.route_labels), len(settings.all_pools))
        self.table = SharedTable.create(layout)
        self._rows = {(spec.name, spec.url): row for row, spec in enumerate(specs)}
        self._pool_rows = {spec.name: row for row, spec in enumerate(settings.all_pools)}
        self.pool_names = [spec.name for spec in settings.all_pools]  # the table's pool rows, in order
        self.pool_kinds = [spec.fallback.kind for spec in settings.all_pools]  # their fallbacks' kinds
        self.index: dict[Backend, int] = {}
        self._frozen: set[Backend] = set()  # no longer published (see `keep_removed`)
        self.retiring = False  # its workers were told to stop
        self._context = multiprocessing.get_context("spawn")
        self.processes: list[multiprocessing.process.BaseProcess] = []

    def adopt(self, backends: Iterable[Backend]) -> None:
        """Take in and publish the master's backends that this generation has a row for: the same
        name and URL, the rule by which a reload keeps a backend (`Pool.reconcile`)."""
        for backend in backends:
            row = self._rows.get((backend.name, backend.spec.url))
            if row is not None:
                self.index[backend] = row
                self.table.publish(row, backend, backend.spec.health.interval)

    def adopt_pools(self, pools: Iterable[Pool]) -> None:
        """Publish the operator state of the master's pools that this generation has a row for (by
        name): a pool held in maintenance stays so in new workers."""
        for pool in pools:
            self.publish_pool(pool)

    def publish_pool(self, pool: Pool) -> None:
        row = self._pool_rows.get(pool.name)
        if row is not None:
            self.table.publish_pool(row, pool)

    def keep_removed(self, successor: Generation) -> None:
        """Before a reload applies: the backends that `successor` has no row for keep, in this
        generation's workers, the state they have now. Their removal puts them in maint, and these
        workers still answer until they have closed their listeners and drained: a pool whose
        backends the reload replaced would answer them with its fallback (nginx's old workers, too,
        finish with the old configuration)."""
        self._frozen = {
            backend for backend in self.index if (backend.name, backend.spec.url) not in successor._rows
        }

    def publish(self, backend: Backend) -> None:
        row = self.index.get(backend)
        if row is not None and backend not in self._frozen:
            self.table.publish(row, backend, backend.spec.health.interval)

    def start(self, index: int) -> multiprocessing.process.BaseProcess:
        level = logging.getLogger().getEffectiveLevel()
        form = logs.current_format()
        process = self._context.Process(
            target=worker_main,
            args=(self.settings, self.table.name, self.table.layout, index, level, self.number, form),
            name=f"dispatcher-worker-{self.number}.{index}",
            daemon=True,
        )
        process.start()
        return process

    async def start_all(self) -> None:
        """Start every worker and return once each listens; OSError when one cannot."""
        for index in range(self.count):
            self.processes.append(self.start(index))
        # Another process: the table's ready flags are all there is to wait on.
        with trio.move_on_after(START_TIMEOUT):
            while not all(self.table.ready(i) for i in range(self.count)):
                for i, process in enumerate(self.processes):
                    if not process.is_alive():
                        raise OSError(f"worker {i} exited with status {process.exitcode} at start")
                await trio.sleep(SYNC_INTERVAL)
            return
        raise OSError(f"the workers were not listening after {START_TIMEOUT:.0f} s")

    def restart_dead(self) -> None:
        """Start a worker again in the place of one that died (it restores its counters)."""
        for index, process in enumerate(self.processes):
            if process.is_alive():
                continue
            log.error("worker %d exited with status %s: starting it again", index, process.exitcode)
            self.table.set_ready(index, False)
            try:
                self.processes[index] = self.start(index)
            except OSError as error:  # tried again at the next look
                log.error("worker %d could not be started again: %s", index, error)
                continue
            process.close()

    async def stop(self) -> None:
        """SIGTERM to every worker; they drain like a single process does; SIGKILL after the grace.

        Cancelled meanwhile (a second SIGTERM/SIGINT to the master, which stops everything at once),
        the workers get a second SIGTERM too, which stops each of them at once."""
        self._terminate()
        try:
            with trio.move_on_after(self.settings.grace_period + KILL_MARGIN):
                for process in self.processes:
                    await _exited(process)
        except trio.Cancelled:
            with trio.CancelScope(shield=True):
                self._terminate()
                with trio.move_on_after(KILL_MARGIN):
                    for process in self.processes:
                        await _exited(process)
                await self._kill_the_rest("did not stop at once")
            raise
        with trio.CancelScope(shield=True):
            await self._kill_the_rest("did not stop within the grace period")

    def _terminate(self) -> None:
        for process in self.processes:
            if process.is_alive():
                process.terminate()

    async def _kill_the_rest(self, why: str) -> None:
        for process in list(self.processes):
            if process.exitcode is None:
                log.error("worker %s %s: killing it", process.name, why)
                process.kill()
                await _exited(process)
            process.close()  # its sentinel's descriptor: a master reloaded often must not leak them
            self.processes.remove(process)


async def _exited(process: multiprocessing.process.BaseProcess) -> None:
    """Until `process` has exited and is reaped: its sentinel, a pipe only the child holds, reads
    as closed when it exits (no polling); it can be reaped an instant later (join, in a thread)."""
    await trio.lowlevel.wait_readable(process.sentinel)
    await trio.to_thread.run_sync(process.join)


class Master:
    """The master's front-door part: the generations of workers, reloads, and their counters.

    `stats` receives the workers' counters at each `gather`, which the wiring calls before every
    admin request (a scrape or the API); the master itself serves no client.
    """

    def __init__(self, settings: Settings, pool: Pool | Pools, stats: ServerStats) -> None:
        self.settings = settings
        self.pool = pool if isinstance(pool, Pools) else Pools(pool)  # every pool: the master checks them all
        for each in self.pool:
            each.chooses = False  # the workers choose; this pool checks, and shows their redirects
        self.stats = stats
        self.listen = settings.listen
        self.generations: list[Generation] = []  # every one still running: starting, current, old
        self.current: Generation | None = None
        # What stopped generations counted, carried so that counters never go back.
        self._carried: dict[Backend, int] = {}
        self._carried_counters = empty_counters()  # the front door's, in the table's order
        self._carried_routes: dict[CountLabel, int] = {}  # the routes' counters, by label
        # Each pool's fallback answers, by pool name and the fallback's kind when they were given.
        self._carried_fallbacks: dict[tuple[str, str], int] = {}
        self._numbers = itertools.count()
        self._reloads_in, self._reloads = trio.open_memory_channel[tuple[Settings, Apply]](math.inf)
        self._retiring: trio.Nursery | None = None  # where generations drain (see run)

    def reload(self, settings: Settings, apply: Apply) -> None:
        """Start new workers with `settings`; once they listen, `apply` them here and stop the old."""
        self._reloads_in.send_nowait((settings, apply))

    async def run(
        self, stop: trio.Event, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Start the workers, publish the pool to them, reload them, stop them."""
        reserve, self.listen = _reserve_port(self.settings.listen)
        for each in self.pool:
            each.change_listeners.append(self._publish)
            each.maintenance_listeners.append(self._publish_pool)
        try:
            # Generations drain in this nursery, which stopping does not cancel: a stop lets an old
            # generation that a reload retired finish its drain. Only a second SIGTERM/SIGINT, which
            # cancels everything, cuts the drains short, and each generation then stops its workers
            # at once (Generation.stop).
            async with trio.open_nursery() as retiring:
                self._retiring = retiring
                try:
                    await self._serve(stop, task_status)
                finally:
                    for generation in self.generations:
                        if not generation.retiring:
                            self._retire_soon(generation)
        finally:
            for each in self.pool:
                with contextlib.suppress(ValueError):
                    each.change_listeners.remove(self._publish)
                with contextlib.suppress(ValueError):
                    each.maintenance_listeners.remove(self._publish_pool)
            reserve.close()

    async def _serve(self, stop: trio.Event, task_status: trio.TaskStatus[int]) -> None:
        self.current = await self._start_generation(self.settings)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch, stop)
            nursery.start_soon(self._take_reloads)
            task_status.started(self.listen.port)
            await stop.wait()
            nursery.cancel_scope.cancel()

    async def _start_generation(self, settings: Settings) -> Generation:
        generation = self._new_generation(settings)
        await generation.start_all()
        return generation

    def _new_generation(self, settings: Settings) -> Generation:
        """A table for `settings`' backends, with the master's figures in it; no worker yet."""
        generation = Generation(replace(settings, listen=self.listen, reuse_port=True), next(self._numbers))
        self.generations.append(generation)  # counted and stopped from here on, even if it fails
        generation.adopt(self.pool.backends)
        generation.adopt_pools(self.pool)
        return generation

    async def _take_reloads(self) -> None:
        """One reload at a time: one that comes during a swap waits for it, and of several that
        waited only the newest applies (each read the whole config: the newest includes the rest)."""
        async for request in self._reloads:
            while True:
                try:
                    request = self._reloads.receive_nowait()
                except trio.WouldBlock:
                    break
            await self._swap(*request)

    async def _swap(self, settings: Settings, apply: Apply) -> None:
        """New workers with the new settings first; the old ones drain once the new ones listen."""
        old, new = self.current, None
        try:
            new = self._new_generation(settings)
            await new.start_all()
        except Exception as error:
            log.error(
                "reload failed, the running workers and config stay: new workers did not start: %s",
                error,
                exc_info=not isinstance(error, OSError),
            )
            if new is not None:
                self._retire_soon(new)
            return
        if old is not None:
            old.keep_removed(new)
        apply(settings)  # the master's pool: backends added, removed, reweighted
        for each in self.pool:  # a pool the reload added: its redirects are the workers'
            if each.chooses:
                each.chooses = False
                each.change_listeners.append(self._publish)
                each.maintenance_listeners.append(self._publish_pool)
        new.adopt(self.pool.backends)  # with those added now
        new.adopt_pools(self.pool)
        self.current = new
        if old is not None:
            log.info("reload: generation %d of workers listens; generation %d drains", new.number, old.number)
            self._retire_soon(old)

    def _retire_soon(self, generation: Generation) -> None:
        assert self._retiring is not None
        generation.retiring = True
        self._retiring.start_soon(self._retire, generation)

    async def _retire(self, generation: Generation) -> None:
        """Stop a generation (gracefully), then carry its last counts over and release its table
        (also when the stop was cut short: the shared memory must not outlive the master)."""
        try:
            await generation.stop()
        finally:
            self._fold(generation)
        log.info("workers of generation %d stopped", generation.number)

    def _fold(self, generation: Generation) -> None:
        live = set(self.pool.backends)
        for backend, row in generation.index.items():
            if backend in live:
                self._carried[backend] = self._carried.get(backend, 0) + generation.table.redirects(row)[1]
        add_counters(self._carried_counters, generation.table.counters(), gauges=False)
        for label, count in zip(generation.route_labels, generation.table.route_counts(), strict=True):
            self._carried_routes[label] = self._carried_routes.get(label, 0) + count
        for key, count in zip(_pool_keys(generation), generation.table.fallbacks(), strict=True):
            self._carried_fallbacks[key] = self._carried_fallbacks.get(key, 0) + count
        self._carried = {backend: n for backend, n in self._carried.items() if backend in live}
        self.generations.remove(generation)
        generation.table.close()

    def _publish(self, backend: Backend) -> None:
        for generation in self.generations:
            generation.publish(backend)

    def _publish_pool(self, pool: Pool) -> None:
        for generation in self.generations:
            generation.publish_pool(pool)

    def reopen_logs(self) -> None:
        """SIGUSR1 to every worker still running: each reopens its own access log."""
        for generation in self.generations:
            for process in generation.processes:
                if process.pid is not None and process.is_alive():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(process.pid, signal.SIGUSR1)

    def route_counts(self) -> dict[CountLabel, int] | None:
        """The routes' counters summed over every generation's workers (and those stopped), for the
        labels of the routes running now; None without routes."""
        if self.current is None or not self.current.route_labels:
            return None
        totals = {label: self._carried_routes.get(label, 0) for label in self.current.route_labels}
        for generation in self.generations:
            for label, count in zip(generation.route_labels, generation.table.route_counts(), strict=True):
                if label in totals:
                    totals[label] += count
        return totals

    def gather(self) -> None:
        """Sum the workers' counters into the master's pool and stats, for one scrape or API call."""
        since = dict.fromkeys(self.pool.backends, 0)
        redirects = {backend: self._carried.get(backend, 0) for backend in self.pool.backends}
        counters = list(self._carried_counters)
        fallbacks = dict(self._carried_fallbacks)
        for generation in self.generations:
            for backend, row in generation.index.items():
                if backend in since:
                    more_since, more = generation.table.redirects(row)
                    since[backend] += more_since
                    redirects[backend] += more
            add_counters(counters, generation.table.counters())
            for key, count in zip(_pool_keys(generation), generation.table.fallbacks(), strict=True):
                fallbacks[key] = fallbacks.get(key, 0) + count
        for backend in self.pool.backends:
            self.pool.set_counts(backend, since[backend], redirects[backend])
        for each in self.pool:  # the workers answer from the fallbacks; the master counts them here
            kind = each.fallback.kind
            each.fallbacks = fallbacks.get((each.name, kind), 0)
            each.earlier_fallbacks = {
                k: n for (name, k), n in fallbacks.items() if name == each.name and k != kind
            }
        # In place: the metrics collector holds this very object.
        front, stats = self.stats, stats_of(counters)
        front.open_connections, front.connections_total = stats.open_connections, stats.connections_total
        front.loops, front.responses = stats.loops, stats.responses
        front.duration_counts, front.duration_sum = stats.duration_counts, stats.duration_sum

    async def _watch(self, stop: trio.Event) -> None:
        """Start a worker of the current generation again when one dies, until shutdown."""
        while True:
            await trio.sleep(WATCH_INTERVAL)
            if self.current is not None and not stop.is_set():
                self.current.restart_dead()


# --- a worker's side -------------------------------------------------------------------------------


def worker_main(
    settings: Settings,
    name: str,
    layout: Layout,
    index: int,
    log_level: int,
    generation: int,
    log_format: str = "text",
) -> None:
    """The entry point of a worker process; its log lines, in the master's format, say which
    generation it is of."""
    logs.configure(log_level, log_format, {"worker": f"worker-{generation}.{index}"})
    # SIGUSR1 (reopen the access log) kills by default: ignored until the worker's receiver takes it.
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    with contextlib.suppress(KeyboardInterrupt):
        trio.run(_worker, settings, name, layout, index, clock=MonotonicClock())


async def _worker(settings: Settings, name: str, layout: Layout, index: int) -> None:
    table = SharedTable.attach(name, layout)
    try:
        pool = pools_of(settings, trio.current_time())
        default = pool.default
        stats, lifecycle = ServerStats(), Lifecycle()
        # Over TLS each worker loads the certificates itself (a reload's new workers, the new files).
        front = (TlsFrontDoor if settings.tls.enabled else FrontDoor)(settings, default, stats, lifecycle)
        database = geoip.CountryDatabase.open(settings.geoip_db) if settings.geoip_db else None
        router = router_for(settings, pool.by_pool, database.country_of if database else None)
        front.replies.router, front.replies.pools = router, pool
        if router is not None:
            router.restore(table.restored_routes(index))
        table.restore(index, pool, stats)
        # Synced before listening: the first client already finds the backends up, and "listening"
        # (the ready flag, the socket) means this worker's counters are in the table.
        seen = [-1.0] * len(pool.backends)
        table.sync(index, pool, stats, seen)
        # SIGTERM from the master (a reload or a stop), or SIGINT from a terminal's Ctrl-C: drain and
        # exit. Caught before listening, so that a SIGTERM as soon as this worker listens drains it.
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGUSR1) as signals:
            listeners = await open_listeners(settings.listen, True)
            stop = trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_sync, table, index, pool, stats, seen, router)
                nursery.start_soon(_watch_signals, signals, stop, lifecycle, nursery.cancel_scope)
                async with trio.open_nursery() as frontline:
                    capped = [CappedListener(listener, front.slots) for listener in listeners]
                    await frontline.start(front.serve, capped, stop)
                    await _serve_redirects(frontline, front, stop)
                    lifecycle.serving = True
                    table.set_ready(index, True)
                nursery.cancel_scope.cancel()  # served and drained: stop syncing
        table.sync(index, pool, stats, [-1.0] * len(pool.backends))  # the last counts
        if router is not None:
            table.publish_routes(index, router.counts())
    finally:
        table.set_ready(index, False)
        table.close()


async def _serve_redirects(nursery: trio.Nursery, front: FrontDoor, stop: trio.Event) -> None:
    """With tls.redirect_listen: every worker serves the plain listener of 308s too, on a shared port
    (SO_REUSEPORT), as it serves the front door; its connections count against max_connections."""
    settings = front.settings
    if not settings.tls.enabled or settings.tls.redirect_listen is None:
        return
    replies = front.replies
    door = redirect_door(
        replace(settings, access_log=None), replies.pool, front.stats, replies.lifecycle, settings.listen.port
    )
    door.slots = front.slots
    listeners = await open_listeners(settings.tls.redirect_listen, True)
    await nursery.start(door.serve, [CappedListener(listener, door.slots) for listener in listeners], stop)


async def _sync(
    table: SharedTable, index: int, pool: Pools, stats: ServerStats, seen: list[float], router: Router | None
) -> None:
    while True:
        await trio.sleep(SYNC_INTERVAL)
        table.sync(index, pool, stats, seen)
        if router is not None:
            table.publish_routes(index, router.counts())
        pool.tick(trio.current_time())


async def _watch_signals(
    signals: AsyncIterator[int], stop: trio.Event, lifecycle: Lifecycle, scope: trio.CancelScope
) -> None:
    """SIGUSR1 reopens the access log. Otherwise the first signal drains, a second stops at once, as in
    a single process (cli). The lifecycle says shutting down before the front door hears `stop`: what
    it answers from then on closes."""
    async for signum in signals:
        if signum == signal.SIGUSR1:
            access_log.reopen_all()
            continue
        if stop.is_set():
            scope.cancel()
            return
        lifecycle.shutting_down = True
        stop.set()


def _pool_keys(generation: Generation) -> list[tuple[str, str]]:
    """A generation's pool rows as (pool, the fallback's kind then): what its fallback counts count."""
    return list(zip(generation.pool_names, generation.pool_kinds, strict=True))
