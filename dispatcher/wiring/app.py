"""Wiring: one nursery holding the front door, the admin listener and the health checks.

Owns: start-up order (listeners bound before `started` is reported, so a caller can connect at
once), and graceful shutdown: stop accepting, answer what is in flight with `Connection: close`,
close idle keep-alive connections, wait at most the grace period, then cancel the rest.
Rules: no decisions and no protocol here; only lifetimes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

import trio

from dispatcher.core.pool import Pool
from dispatcher.expose.metrics import Metrics
from dispatcher.net.admin import AdminApi
from dispatcher.net.frontdoor import FrontDoor
from dispatcher.net.health import HealthChecks, log_transition
from dispatcher.net.listen import CappedListener, naming, open_listeners, warn_unless_migrating
from dispatcher.processes.workers import Master
from dispatcher.settings import config
from dispatcher.settings.config import Settings

log = logging.getLogger("dispatcher")


# Settings that a reload cannot change in a running process: they need a restart.
RESTART_ONLY = ("listen", "admin_listen", "max_connections", "reuse_port", "workers")
# How often slow-start weights grow and the drain shares are refreshed (Pool.tick).
RAMP_STEP = 0.5


@dataclass(frozen=True, slots=True)
class Running:
    """A started dispatcher: the bound ports and its parts (for tests), and `reload`."""

    port: int
    admin_port: int
    pool: Pool
    front: FrontDoor
    metrics: Metrics
    checks: HealthChecks
    admin: AdminApi
    master: Master | None = None  # with --workers: the worker processes

    def reload(self, new: Settings) -> None:
        """Apply new settings without dropping a connection; backends that stay keep their state.

        With --workers the master first starts new workers with the new settings; once they all
        listen the settings apply here and the old workers drain (nginx's reload, `Master.reload`).
        """
        old = self.front.settings
        for key in RESTART_ONLY:
            if getattr(new, key) != getattr(old, key):
                log.warning("reload: %s changed; that takes a restart, keeping %s", key, getattr(old, key))
        new = replace(new, **{key: getattr(old, key) for key in RESTART_ONLY})
        _warn_about(new)
        if self.master is not None:
            self.master.reload(new, self._apply)
        else:
            self._apply(new)

    def _apply(self, new: Settings) -> None:
        self.pool.health_settings = new.health
        self.pool.slow_start = new.slow_start
        self.pool.set_policy(new.policy)
        added, removed = self.pool.reconcile(new.backends)
        for backend in removed:
            self.checks.remove(backend)
        for backend in added:
            self.checks.add(backend)
        self.front.settings = new
        self.admin.set_token(new.admin_token)
        log.info(
            "reloaded: %s (%d added, %d removed)",
            _backends(len(self.pool.backends)),
            len(added),
            len(removed),
        )


def _warn_about(settings: Settings) -> None:
    """Settings that are allowed but probably not meant (config.warnings), at start and each reload."""
    for warning in config.warnings(settings):
        log.warning("%s", warning)


async def _tick(pool: Pool) -> None:
    """Slow start's weights and the estimate's drain shares, step by step (Pool.tick)."""
    while True:
        await trio.sleep(RAMP_STEP)
        pool.tick(trio.current_time())


def _backends(count: int) -> str:
    return f"{count} backend{'' if count == 1 else 's'}"


def _bound_port(listeners: Sequence[trio.SocketListener]) -> int:
    port: int = listeners[0].socket.getsockname()[1]
    return port


async def run(
    settings: Settings,
    stop: trio.Event,
    *,
    task_status: trio.TaskStatus[Running] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run until `stop` is set, then shut down gracefully and return.

    With `workers` > 1 the front door runs in worker processes (`dispatcher.processes.workers`) and this
    process keeps the health checks, the admin listener and the metrics.
    """
    pool = Pool(settings.backends, settings.health, trio.current_time(), settings.slow_start, settings.policy)
    front = FrontDoor(settings, pool)
    metrics = Metrics(pool, front.stats)
    pool.listeners.append(log_transition)
    admin = AdminApi(pool, metrics, front, settings.admin_token)
    async with trio.open_nursery() as services:
        with naming("admin listener", settings.admin_listen):
            admin_listeners = await trio.open_tcp_listeners(
                settings.admin_listen.port, host=settings.admin_listen.host
            )
        # Bound before anything runs: a port that cannot be bound ends the start at once, in one line,
        # not after the first check results are logged. (With --workers, Master.run reserves the port.)
        listeners = [] if settings.workers > 1 else await open_listeners(settings.listen, settings.reuse_port)
        warn_unless_migrating(settings.reuse_port, settings.workers)
        _warn_about(settings)
        await services.start(trio.serve_listeners, admin.handle, admin_listeners)
        checks = HealthChecks(pool)
        await services.start(checks.run)
        services.start_soon(_tick, pool)
        async with trio.open_nursery() as frontline:
            master = None
            if settings.workers > 1:
                master = Master(settings, pool, front, admin)
                with naming("front door", settings.listen):
                    port = await frontline.start(master.run, stop)
            else:
                port = await frontline.start(
                    front.serve, [CappedListener(listener, front.slots) for listener in listeners], stop
                )
            running = Running(port, _bound_port(admin_listeners), pool, front, metrics, checks, admin, master)
            log.info(
                "front door on %s (%d worker%s), admin on %s, %s",
                settings.listen,
                settings.workers,
                "s" if settings.workers > 1 else "",
                settings.admin_listen,
                _backends(len(pool.backends)),
            )
            task_status.started(running)
        services.cancel_scope.cancel()
    for admin_listener in admin_listeners:
        await admin_listener.aclose()
    log.info("stopped")
