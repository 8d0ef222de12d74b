"""`--workers N`: N front-door processes on one port, one prober, one pool.

Owns: starting, watching and stopping the worker processes, and each worker's life.
- The master (the process that was started) keeps the health checks, the admin listener, the
  metrics and the pool's truth; it publishes every change of a backend to a `SharedTable`.
- Each worker binds the front door with SO_REUSEPORT (the kernel spreads connections over them),
  serves it with the same `FrontDoor` as a single process, and syncs with the table every
  `shared.SYNC_INTERVAL`: it takes health, load and weights, and adds the other workers'
  redirects since the last report to its estimate, so the choice counts every worker's redirects.
- A worker that dies is started again; it carries on from its predecessor's counters.
Rules: workers are started with the "spawn" method (forking a running trio process is unsafe);
they get the settings and the table's name, nothing else. Backends are checked once, by the master.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.process
import signal
import socket
import time
from dataclasses import replace

import trio

from dispatcher.admin import AdminApi
from dispatcher.config import Address, Settings
from dispatcher.listen import CappedListener, open_listeners
from dispatcher.pool import Backend, Pool
from dispatcher.server import FrontDoor
from dispatcher.shared import SYNC_INTERVAL, Layout, SharedTable

log = logging.getLogger("dispatcher.workers")

# How often the master looks for dead workers, and how long a worker may take to listen.
WATCH_INTERVAL = 1.0
START_TIMEOUT = 30.0


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


class Workers:
    """The worker processes of one master."""

    def __init__(self, settings: Settings, table: SharedTable) -> None:
        self.count = table.layout.workers
        self.settings = replace(settings, workers=1)  # what each worker runs: one front door
        self.table = table
        self._context = multiprocessing.get_context("spawn")
        self.processes: list[multiprocessing.process.BaseProcess] = []

    def start(self, index: int) -> multiprocessing.process.BaseProcess:
        level = logging.getLogger().getEffectiveLevel()
        process = self._context.Process(
            target=worker_main,
            args=(self.settings, self.table.name, self.table.layout, index, level),
            name=f"dispatcher-worker-{index}",
            daemon=True,
        )
        process.start()
        return process

    async def start_all(self) -> None:
        self.processes = [self.start(index) for index in range(self.count)]
        await self._until_ready(range(self.count))

    async def _until_ready(self, indexes: range | list[int]) -> None:
        # Another process: the table's ready flag is all there is to wait on.
        with trio.fail_after(START_TIMEOUT):
            while not all(self.table.ready(i) for i in indexes):
                for i in indexes:
                    if not self.processes[i].is_alive():
                        raise OSError(f"worker {i} exited with status {self.processes[i].exitcode} at start")
                await trio.sleep(SYNC_INTERVAL)

    async def watch(self, stopping: trio.Event) -> None:
        """Start a worker again when one dies, until shutdown."""
        while not stopping.is_set():
            await trio.sleep(WATCH_INTERVAL)
            for index, process in enumerate(self.processes):
                if not process.is_alive() and not stopping.is_set():
                    log.error("worker %d exited with status %s: starting it again", index, process.exitcode)
                    self.table.set_ready(index, False)
                    self.processes[index] = self.start(index)

    async def stop(self, grace: float) -> None:
        """SIGTERM to every worker; they drain like a single process does; SIGKILL after the grace."""
        for process in self.processes:
            if process.is_alive() and process.pid is not None:
                process.terminate()
        deadline = time.monotonic() + grace + 2
        for process in self.processes:
            await trio.to_thread.run_sync(process.join, max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.error("worker %s did not stop within the grace period: killing it", process.name)
                process.kill()
                await trio.to_thread.run_sync(process.join)


async def run_workers(
    settings: Settings,
    pool: Pool,
    front: FrontDoor,
    admin: AdminApi,
    stop: trio.Event,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """The master's front-door part: start the workers, publish the pool to them, stop them."""
    reserve, listen = _reserve_port(settings.listen)
    table = SharedTable.create(Layout(len(pool.backends), settings.workers))
    index = {id(backend): i for i, backend in enumerate(pool.backends)}

    def publish(backend: Backend) -> None:
        if id(backend) in index:
            table.publish(index[id(backend)], backend, pool.health_settings.interval)

    try:
        for backend in pool.backends:
            publish(backend)
        pool.change_listeners.append(publish)
        admin.refresh = lambda: table.gather(pool, front.stats)
        workers = Workers(replace(settings, listen=listen, reuse_port=True), table)
        await workers.start_all()
        front.serving = True
        async with trio.open_nursery() as nursery:
            nursery.start_soon(workers.watch, stop)
            task_status.started(listen.port)
            await stop.wait()
            front.shutting_down = True
            nursery.cancel_scope.cancel()
        with trio.CancelScope(shield=True):
            await workers.stop(settings.grace_period)
    finally:
        with contextlib.suppress(ValueError):
            pool.change_listeners.remove(publish)
        table.gather(pool, front.stats)
        table.close()
        reserve.close()


# --- a worker's side -------------------------------------------------------------------------------


def worker_main(settings: Settings, name: str, layout: Layout, index: int, log_level: int) -> None:
    """The entry point of a worker process."""
    logging.basicConfig(
        level=log_level, format=f"%(asctime)s %(levelname)s worker-{index} %(name)s: %(message)s"
    )
    with contextlib.suppress(KeyboardInterrupt):
        trio.run(_worker, settings, name, layout, index, clock=MonotonicClock())


async def _worker(settings: Settings, name: str, layout: Layout, index: int) -> None:
    table = SharedTable.attach(name, layout)
    try:
        pool = Pool(settings.backends, settings.health, trio.current_time(), settings.slow_start)
        front = FrontDoor(settings, pool)
        table.restore(index, pool, front.stats)
        # Synced before listening: the first client already finds the backends up, and "listening"
        # (the ready flag, the socket) means this worker's counters are in the table.
        seen = [-1.0] * len(pool.backends)
        table.sync(index, pool, front.stats, seen)
        listeners = [CappedListener(lst, front.slots) for lst in await open_listeners(settings.listen, True)]
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_sync, table, index, pool, front, seen)
            nursery.start_soon(_watch_signals, stop)
            async with trio.open_nursery() as frontline:
                await frontline.start(front.serve, listeners, stop)
                table.set_ready(index, True)
            nursery.cancel_scope.cancel()  # served and drained: stop syncing
        table.sync(index, pool, front.stats, [-1.0] * len(pool.backends))  # the last counts
    finally:
        table.set_ready(index, False)
        table.close()


async def _sync(table: SharedTable, index: int, pool: Pool, front: FrontDoor, seen: list[float]) -> None:
    while True:
        await trio.sleep(SYNC_INTERVAL)
        table.sync(index, pool, front.stats, seen)


async def _watch_signals(stop: trio.Event) -> None:
    """SIGTERM from the master, or SIGINT from a terminal's Ctrl-C: drain and exit."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            stop.set()
