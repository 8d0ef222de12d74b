"""Wiring: one nursery holding the front door, the admin listener and the health checks.

Owns: start-up order (listeners bound before `started` is reported, so a caller can connect at
once), and graceful shutdown: stop accepting, answer what is in flight with `Connection: close`,
close idle keep-alive connections, wait at most the grace period, then cancel the rest.
It owns the lifecycle (`dispatcher.core.lifecycle`) and is its only writer: serving once the front
door (or with --workers, every worker) listens; shutting down as soon as `stop` comes, before the front
door hears of it, so that every answer from then on closes and /readyz says 503.
Rules: no decisions and no protocol here; only lifetimes. Parts that need another part get it, or a
callback, from here, rather than importing across rooms (the master's `gather` for the admin listener).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import trio

from dispatcher.core.lifecycle import Lifecycle
from dispatcher.core.pool import Backend, Moving, Pool
from dispatcher.core.pools import Pools, named_pool, pools_of
from dispatcher.core.roster import Roster
from dispatcher.core.routes import CountryOf, router_for
from dispatcher.core.stats import ServerStats
from dispatcher.expose import access_log
from dispatcher.expose.catalogue import router_counts
from dispatcher.expose.render import Metrics
from dispatcher.net import geoip
from dispatcher.net.admin import AdminApi
from dispatcher.net.discovery import Discovery
from dispatcher.net.frontdoor import FrontDoor
from dispatcher.net.health import HealthChecks, log_transition
from dispatcher.net.health.schedule import FIRST_SPREAD
from dispatcher.net.listen import CappedListener, naming, open_listeners, warn_unless_migrating
from dispatcher.net.tlsdoor import TlsFrontDoor, redirect_door
from dispatcher.processes.workers import Master
from dispatcher.settings import config
from dispatcher.settings.config import DEFAULT_POOL, BackendSpec, Settings

log = logging.getLogger("dispatcher")


# Settings that a reload cannot change in a running process: they need a restart.
# The access log is opened where the front door serves, once (SIGUSR1 reopens the same path).
RESTART_ONLY: tuple[str, ...] = ("listen", "admin_listen", "max_connections", "reuse_port", "workers")
RESTART_ONLY += ("access_log", "access_log_format")
# How often slow-start weights grow and the drain shares are refreshed (Pool.tick).
RAMP_STEP = 0.5


@dataclass(slots=True)
class Running:
    """A started dispatcher: the bound ports and its parts (for tests), and `reload`."""

    port: int
    admin_port: int
    settings: Settings  # those running now: a reload replaces them
    pool: Pool
    stats: ServerStats
    lifecycle: Lifecycle
    front: FrontDoor | None  # None with --workers: the worker processes serve
    metrics: Metrics
    checks: HealthChecks
    admin: AdminApi
    master: Master | None = None  # with --workers: the worker processes
    discovery: Discovery | None = None  # with dns:// or dns+srv:// backends
    roster: Roster = field(default_factory=Roster)  # the admin API's POST and DELETE /backends
    pools: Pools | None = None  # every pool, the default one (`pool`) first
    # The named pools' health checks, each in its own cancel scope (a reload may remove a pool).
    pool_checks: dict[str, tuple[HealthChecks, trio.CancelScope]] = field(default_factory=dict)
    nursery: trio.Nursery | None = None  # where a pool added by a reload runs its checks
    country_of: CountryOf | None = None  # the GeoIP database's lookup, when one is configured
    redirects: FrontDoor | None = None  # tls.redirect_listen's plain listener of 308s
    _reloads: int = 0  # reloads asked for: one waiting on new pools' first checks knows if it is the last

    def reload(self, new: Settings) -> None:
        """Apply new settings without dropping a connection; backends that stay keep their state.

        With --workers the master first starts new workers with the new settings; once they all
        listen the settings apply here and the old workers drain (nginx's reload, `Master.reload`).
        Backends added or removed through the admin API are dropped unless `keep_runtime_backends`.
        """
        old = self.settings
        for key in RESTART_ONLY:
            if getattr(new, key) != getattr(old, key):
                log.warning("reload: %s changed; that takes a restart, keeping %s", key, getattr(old, key))
        new = replace(new, **{key: getattr(old, key) for key in RESTART_ONLY})
        try:
            config.check(new)  # the CLI has checked a file; a caller with settings of its own may not have
            self._reopen_geoip(old, new)
        except config.ConfigError as error:
            log.error("reload refused, the running config stays: %s", error)
            return
        _warn_about(new)
        if not new.keep_runtime_backends:
            self.roster.clear()
        for name, pool in self.roster.set_aside(new):
            log.warning(
                "reload: backend %s, added through the admin API to pool %s, is set aside: the file "
                "has no pool %s now (it comes back if the pool does)",
                name,
                pool,
                pool,
            )
        new = self.roster.over_pools(new)  # the named pools' runtime changes (the default's: `_swap`)
        given = self.discovery.reconfigure(new) if self.discovery is not None else new.backends
        new = _reload_tls(self.front, old, new)
        self._reloads += 1
        fresh = self._open_pools(new)
        staged = self._stage_backends(new, given, fresh)
        if (fresh or staged) and self.nursery is not None:
            self.nursery.start_soon(self._swap_once_checked, fresh, staged, new, given, self._reloads)
        else:
            self._swap(new, given, "reloaded")

    def _reopen_geoip(self, old: Settings, new: Settings) -> None:
        """The GeoIP database is opened again at each reload, as nginx's geoip2 module reads it: a
        `geoipupdate` then a SIGHUP puts the new data in force (the routes switch to it with the
        reload's router). With --workers each new worker opens it itself. A file that cannot be used
        refuses the reload (ConfigError), and the running routes keep the database they have."""
        if self.front is None or (old.geoip_db is None and new.geoip_db is None):
            return  # --workers; or none configured (a caller may have given a country_of of its own)
        database = geoip.CountryDatabase.open(new.geoip_db) if new.geoip_db is not None else None
        if database is not None:
            log.info("%s", database.describe())
            if database.warning() is not None:
                log.warning("%s", database.warning())
        # The one it replaces is closed when nothing holds it: the running router's look-ups use it
        # until the reload's router takes over.
        self.country_of = database.country_of if database is not None else None

    def _open_pools(self, new: Settings) -> list[Pool]:
        """The pools a reload adds, made and checked now, before any route can send to them: the
        routes switch once each has answered (`_swap_once_checked`). Until then their requests go
        where the running routes send them, never to a fallback for want of a first check."""
        assert self.pools is not None
        fresh = []
        for spec in new.pools:
            if spec.name not in self.pools.by_pool and self.nursery is not None:
                pool = named_pool(spec, new, trio.current_time())
                pool.listeners.append(log_transition)
                self.pools.add(pool)
                self.pool_checks[spec.name] = start_checks(self.nursery, pool)
                fresh.append(pool)
        return fresh

    def _stage_backends(
        self, new: Settings, given: Sequence[BackendSpec], fresh: Sequence[Pool]
    ) -> list[tuple[Pool, Backend]]:
        """A running pool that the reload leaves with no usable backend it has now, all its backends
        new: those are added now, beside the ones that go, and checked before the swap (as a new
        pool's are), which keeps them. Until then the old ones answer; without it the pool would
        answer 503 until a first check came back. With --workers the master checks them the same
        way; the new generation's table has their rows and takes their health at the switch
        (`Generation.adopt`), and the old one has none for them, so its workers never see them."""
        if self.nursery is None:
            return []
        pools = self._pools()
        everywhere = {(b.name, b.spec.url): b for pool in pools for b in pool.backends}
        wanted = [
            (pools.by_pool[name], specs)
            for name, specs in self._specs_by_pool(new, self.roster.overlay(given))
            if name in pools.by_pool
        ]
        staged: list[tuple[Pool, Backend]] = []
        for pool, specs in wanted:
            keys = [(spec.name, spec.url) for spec in specs]
            if pool in fresh or any(everywhere[key].usable for key in keys if key in everywhere):
                continue  # new and checked already, or something usable stays or moves in
            newcomers = [spec for spec in specs if (spec.name, spec.url) not in everywhere]
            newcomers = [spec for spec in newcomers if spec.name not in pool.by_name]
            if not newcomers:
                continue
            added, _ = pool.reconcile([backend.spec for backend in pool.backends] + newcomers)
            for backend in added:
                self._checks_of(pool).add(backend)
                staged.append((pool, backend))
        return staged

    async def _swap_once_checked(
        self,
        fresh: list[Pool],
        staged: list[tuple[Pool, Backend]],
        new: Settings,
        given: Sequence[BackendSpec],
        number: int,
    ) -> None:
        """Apply a reload once every backend of the pools it adds, and every backend it stages in a
        pool it renews (`_stage_backends`), has had its first check (or after the longest a first
        check can take): then its routes find them checked. A later reload supersedes this one,
        which then applies nothing."""
        checked = trio.Event()
        waiting = [backend for pool in fresh for backend in pool.backends] + [b for _, b in staged]
        watched = list({id(pool): pool for pool in [*fresh, *(pool for pool, _ in staged)]}.values())

        def heard(_: Backend) -> None:
            if all(backend.last_check is not None for backend in waiting):
                checked.set()

        for pool in watched:
            pool.change_listeners.append(heard)
        heard_already = all(backend.last_check is not None for backend in waiting)
        longest = FIRST_SPREAD + max(backend.spec.health.timeout for backend in waiting) + 1.0
        with trio.move_on_after(longest):
            if not heard_already:
                await checked.wait()
        for pool in watched:
            pool.change_listeners.remove(heard)
        if number == self._reloads:  # the new pools' backends, and those staged, are added by it too
            self._swap(new, given, "reloaded", len(waiting))

    def reopen_logs(self) -> None:
        """SIGUSR1 (logrotate's postrotate): the access log opened again, here or in every worker."""
        access_log.reopen_all()  # the front door's (and the TLS door's 308 listener's)
        if self.master is not None:
            self.master.reopen_logs()

    def add_backend(self, spec: BackendSpec, pool: str = DEFAULT_POOL) -> None:
        """POST /backends: one more backend in `pool`, checked before it takes traffic, as a reload
        adds one."""
        self.roster.add(spec, pool)
        self._swap(self.settings, self._given(), "backends changed")

    def remove_backend(self, name: str) -> None:
        """DELETE /backends/<name>: no new redirect goes to it; its metrics series go with it."""
        self.roster.remove(name)
        self._swap(self.settings, self._given(), "backends changed")

    def _given(self) -> tuple[BackendSpec, ...]:
        """The backend list before the admin API's changes: the config's, with DNS's members."""
        return self.discovery.specs if self.discovery is not None else self.settings.backends

    def _swap(self, new: Settings, given: Sequence[BackendSpec], why: str, opened: int = 0) -> None:
        """Apply `new` (with --workers, once the new workers listen); `opened`: backends the reload
        added and checked beforehand (`_open_pools`' new pools, `_stage_backends`' renewed ones),
        which the log counts as added."""
        specs = self.roster.overlay(given)
        new = self.roster.over_pools(new)
        if self.master is not None:
            self.master.reload(replace(new, backends=specs), lambda _: self._apply(new, specs, why, opened))
        else:
            self._apply(new, specs, why, opened)

    def _apply(self, new: Settings, specs: Sequence[BackendSpec], why: str, opened: int = 0) -> None:
        self.pool.health_settings = new.health
        self.pool.slow_start = new.slow_start
        self.pool.set_spec(new.default_pool)
        moving = self._release_moved(new, specs)
        added, removed = apply_backends(self.pool, self.checks, specs, moving)
        more, fewer = self._apply_pools(new, moving)
        more += opened - len(moving)  # a moved backend is neither: it is kept, in another pool
        self.settings = new
        if self.front is not None:
            self.front.settings = new
            self._route(new)
        if self.redirects is not None:  # its timeouts and HSTS follow the reload too (its log stays off)
            self.redirects.settings = replace(new, access_log=None)
        self.admin.set_token(new.admin_token)
        count = sum(len(pool.backends) for pool in self._pools())
        log.info(
            "%s: %s (%d added, %d removed)",
            why,
            _backends(count, len(self._pools().by_pool), len(new.routes)),
            len(added) + more,
            len(removed) + fewer,
        )
        if count == 0:  # a start refuses a file with none; here the admin API's removals left none
            log.warning("%s: no backend is left in any pool: every request gets its pool's fallback", why)

    def _pools(self) -> Pools:
        assert self.pools is not None
        return self.pools

    def _release_moved(self, new: Settings, specs: Sequence[BackendSpec]) -> dict[tuple[str, str], Moving]:
        """The backends the file moves from one running pool to another (the same name and URL: names
        are unique across pools, so it is the same backend), released from the pool they leave, for
        the one they join to adopt with their health, load, counters and operator state. A pool new
        in this reload made its own (`_open_pools`, checked before the swap): nothing moves there."""
        wanted = {
            (spec.name, spec.url): name for name, each in self._specs_by_pool(new, specs) for spec in each
        }
        pools = self._pools()
        moving: dict[tuple[str, str], Moving] = {}
        for pool in list(pools):
            for backend in list(pool.backends):
                key = (backend.name, backend.spec.url)
                target = pools.by_pool.get(wanted.get(key, pool.name))
                if target is None or target is pool or backend.name in target.by_name:
                    continue
                self._checks_of(pool).remove(backend)
                moving[key] = pool.release(backend)
        return moving

    def _specs_by_pool(
        self, new: Settings, specs: Sequence[BackendSpec]
    ) -> list[tuple[str, Sequence[BackendSpec]]]:
        """Each pool's name and the backends the reload gives it: the default pool's `specs` (the
        file's with the admin API's laid over), then the named pools' own lists."""
        return [(self.pool.name, specs), *((pool.name, pool.backends) for pool in new.pools)]

    def _checks_of(self, pool: Pool) -> HealthChecks:
        return self.checks if pool is self.pool else self.pool_checks[pool.name][0]

    def _apply_pools(
        self, new: Settings, moving: Mapping[tuple[str, str], Moving] | None = None
    ) -> tuple[int, int]:
        """The named pools of a reload: kept ones take their new settings and backends (those that stay
        keep their state), new ones start their checks, removed ones stop them. (added, removed)"""
        pools, added, removed = self._pools(), 0, 0
        wanted = {spec.name: spec for spec in new.pools}
        for name in [pool.name for pool in pools if pool is not self.pool and pool.name not in wanted]:
            _, scope = self.pool_checks.pop(name)
            removed += len(pools.by_pool[name].backends)
            scope.cancel()
            pools.remove(name)
        for spec in new.pools:
            pool = pools.by_pool.get(spec.name)
            if pool is None:
                assert self.nursery is not None
                pool = named_pool(spec, new, trio.current_time())
                pool.listeners.append(log_transition)
                pools.add(pool)
                self.pool_checks[spec.name] = start_checks(self.nursery, pool)
                added += len(pool.backends)
                continue
            pool.health_settings, pool.slow_start = spec.health(new.health), new.slow_start
            pool.set_spec(spec)
            more, fewer = apply_backends(pool, self.pool_checks[spec.name][0], spec.backends, moving)
            added, removed = added + len(more), removed + len(fewer)
        return added, removed

    def _route(self, settings: Settings) -> None:
        """The front door's router for these settings over the pools now (None: the default pool alone)."""
        assert self.front is not None
        pools, old = self._pools(), self.front.replies.router
        router = router_for(settings, pools.by_pool, self.country_of)
        if router is not None and old is not None:
            router.carry_on(old)
        self.front.replies.router, self.front.replies.pools = router, pools


def start_checks(nursery: trio.Nursery, pool: Pool) -> tuple[HealthChecks, trio.CancelScope]:
    """A named pool's health checks, in a scope of their own that a reload removing the pool cancels."""
    checks = HealthChecks(pool)
    scope = trio.CancelScope()

    async def run() -> None:
        with scope:
            await checks.run()

    nursery.start_soon(run)
    return checks, scope


def apply_backends(
    pool: Pool,
    checks: HealthChecks,
    specs: Sequence[BackendSpec],
    moving: Mapping[tuple[str, str], Moving] | None = None,
) -> tuple[list[Backend], list[Backend]]:
    """Run this backend list: those that stay keep their state, new ones are checked before they take
    traffic, removed ones take no new redirect (a reload, DNS's members, the admin API alike); those
    `moving` here from another pool come with their state (`Pool.reconcile`)."""
    added, removed = pool.reconcile(specs, moving)
    for backend in removed:
        checks.remove(backend)
    for backend in added:
        checks.add(backend)
    return added, removed


@dataclass(slots=True)
class _MemberChanges:
    """DNS's members came or went: the backend list with them, the admin API's changes laid over. With
    --workers, once running, each change is a new generation of workers (their shared table is laid
    out for one backend list), as a reload or the admin API's change is."""

    pool: Pool
    checks: HealthChecks
    roster: Roster
    running: Running | None = None

    def __call__(self, specs: tuple[BackendSpec, ...]) -> None:
        running = self.running
        if running is not None and running.master is not None:
            running._swap(running.settings, specs, "DNS members changed")
        else:
            apply_backends(self.pool, self.checks, self.roster.overlay(specs))


def _reload_tls(front: FrontDoor | None, old: Settings, new: Settings) -> Settings:
    """Reread the certificates: new connections get them, open ones keep theirs; a bad one is refused
    in one line and the running ones stay. Turning TLS on or off, or moving the redirect listener,
    takes a restart."""
    if (new.tls.enabled, new.tls.redirect_listen) != (old.tls.enabled, old.tls.redirect_listen):
        log.warning("reload: TLS turned on or off, or tls.redirect_listen moved; that takes a restart")
        new = replace(new, tls=old.tls)
    if isinstance(front, TlsFrontDoor):
        front.certificates.reload(new.tls)
    return new


def _warn_about(settings: Settings) -> None:
    """Settings that are allowed but probably not meant (config.warnings), at start and each reload."""
    for warning in config.warnings(settings):
        log.warning("%s", warning)


async def _tick(pools: Pools) -> None:
    """Slow start's weights and the estimate's drain shares, step by step (Pool.tick), in every pool."""
    while True:
        await trio.sleep(RAMP_STEP)
        now = trio.current_time()
        for pool in list(pools):
            pool.tick(now)


def _backends(count: int, pools: int = 1, routes: int = 0) -> str:
    """`3 backends`; with named pools or routes, `5 backends in 3 pools, 4 routes`: a reload that
    changed only routes or pools says so in its line, not only `(0 added, 0 removed)`."""
    text = f"{count} backend{'' if count == 1 else 's'}"
    if pools > 1 or routes:
        text += f" in {pools} pool{'' if pools == 1 else 's'}, {routes} route{'' if routes == 1 else 's'}"
    return text


def _bound_port(listeners: Sequence[trio.SocketListener]) -> int:
    port: int = listeners[0].socket.getsockname()[1]
    return port


def _front_or_master(
    settings: Settings, pools: Pools, stats: ServerStats, lifecycle: Lifecycle
) -> tuple[FrontDoor | None, Master | None]:
    """The front door of a single process, or with --workers the master of the processes that serve."""
    pool = pools.default
    if settings.workers > 1:
        return None, Master(settings, pools, stats)
    if settings.tls.enabled:
        return TlsFrontDoor(settings, pool, stats, lifecycle), None
    return FrontDoor(settings, pool, stats, lifecycle), None


async def _start_redirects(
    nursery: trio.Nursery, front: FrontDoor | None, https_port: int, stop: trio.Event
) -> FrontDoor | None:
    """With tls.redirect_listen: the plain listener whose every answer is a 308 to the TLS front door.
    Its connections count against max_connections with the front door's. Its 308s are not in the
    access log: a second writer of the file would miss SIGUSR1's reopen, which reaches the front door."""
    if front is None or front.settings.tls.redirect_listen is None:
        return None
    address = front.settings.tls.redirect_listen
    with naming("TLS redirect listener", address):
        listeners = await trio.open_tcp_listeners(address.port, host=address.host)
    settings = replace(front.settings, access_log=None)
    door = redirect_door(settings, front.replies.pool, front.stats, front.replies.lifecycle, https_port)
    door.slots = front.slots
    await nursery.start(door.serve, [CappedListener(listener, door.slots) for listener in listeners], stop)
    return door


async def _start_front(
    nursery: trio.Nursery,
    parts: tuple[FrontDoor | None, Master | None],
    listeners: Sequence[trio.SocketListener],
    settings: Settings,
    stop: trio.Event,
) -> int:
    """Start serving in `nursery`; the port the front door listens on."""
    front, master = parts
    if master is not None:
        with naming("front door", settings.listen):
            port: int = await nursery.start(master.run, stop)
        return port
    assert front is not None
    capped = [CappedListener(listener, front.slots) for listener in listeners]
    served: int = await nursery.start(front.serve, capped, stop)
    return served


async def _shut_down_on(stop: trio.Event, lifecycle: Lifecycle, stopping: trio.Event) -> None:
    """At `stop`, the lifecycle says shutting down first; then the front door (or master) hears it."""
    await stop.wait()
    lifecycle.shutting_down = True
    stopping.set()


async def _open_admin(settings: Settings) -> list[trio.SocketListener]:
    with naming("admin listener", settings.admin_listen):
        return await trio.open_tcp_listeners(settings.admin_listen.port, host=settings.admin_listen.host)


def _attach(running: Running, discovery: Discovery | None, roster: Roster) -> None:
    """The parts that need the running dispatcher: the admin API's POST and DELETE /backends, and
    the metrics of DNS's entries."""
    running.discovery, running.roster = discovery, roster
    running.admin.roster = running
    if discovery is not None:
        running.metrics.memberships = lambda: discovery.memberships


async def _start_discovery(
    nursery: trio.Nursery, settings: Settings, deliver: Callable[[tuple[BackendSpec, ...]], None]
) -> Discovery | None:
    """With dns:// or dns+srv:// backends: their members known at start are in the pool (`deliver`)
    before the front door serves."""
    if not settings.services:
        return None
    discovery = Discovery(settings, deliver)
    await nursery.start(discovery.run)
    return discovery


def _log_start(settings: Settings, backends: int) -> None:
    log.info(
        "front door on %s (%d worker%s), admin on %s, %s",
        settings.listen,
        settings.workers,
        "s" if settings.workers > 1 else "",
        settings.admin_listen,
        _backends(backends, 1 + len(settings.pools), len(settings.routes)),
    )


async def run(
    settings: Settings,
    stop: trio.Event,
    *,
    country_of: CountryOf | None = None,
    task_status: trio.TaskStatus[Running] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run until `stop` is set, then shut down gracefully and return.

    With `workers` > 1 the front door runs in worker processes (`dispatcher.processes.workers`) and this
    process keeps the health checks, the admin listener and the metrics.
    """
    pools = pools_of(settings, trio.current_time())
    pool = pools.default
    lifecycle, stats = Lifecycle(), ServerStats()
    front, master = parts = _front_or_master(settings, pools, stats, lifecycle)
    metrics = Metrics(pools, stats)
    for each in pools:
        each.listeners.append(log_transition)
    admin = AdminApi(pools, metrics, lifecycle, settings.admin_token, master.gather if master else None)
    admin.loopback = config.is_loopback(settings.admin_listen.host)
    async with trio.open_nursery() as services:
        admin_listeners = await _open_admin(settings)
        # Bound before anything runs: a port that cannot be bound ends the start at once, in one line,
        # not after the first check results are logged. (With --workers, Master.run reserves the port.)
        listeners = [] if master else await open_listeners(settings.listen, settings.reuse_port)
        warn_unless_migrating(settings.reuse_port, settings.workers)
        _warn_about(settings)
        await services.start(trio.serve_listeners, admin.handle, admin_listeners)
        checks = HealthChecks(pool)
        await services.start(checks.run)
        pool_checks = {each.name: start_checks(services, each) for each in pools if each is not pool}
        roster = Roster()
        members = _MemberChanges(pool, checks, roster)
        discovery = await _start_discovery(services, settings, members)
        if master is not None and discovery is not None:
            # The first generation of workers is laid out for the members known now, not the file's list.
            master.settings = replace(master.settings, backends=tuple(b.spec for b in pool.backends))
        services.start_soon(_tick, pools)
        async with trio.open_nursery() as frontline:
            stopping = trio.Event()
            frontline.start_soon(_shut_down_on, stop, lifecycle, stopping)
            port = await _start_front(frontline, parts, listeners, settings, stopping)
            redirects = await _start_redirects(frontline, front, port, stopping)
            lifecycle.serving = True
            admin_port = _bound_port(admin_listeners)
            running = Running(
                port, admin_port, settings, pool, stats, lifecycle, front, metrics, checks, admin, master
            )
            _attach(running, discovery, roster)
            running.pools, running.pool_checks, running.nursery = pools, pool_checks, services
            running.country_of = country_of
            running.redirects = redirects
            members.running = running
            if front is not None:
                running._route(settings)
                metrics.router = lambda: router_counts(front.replies.router)
            elif master is not None:
                metrics.router = master.route_counts
            _log_start(settings, len(pools.backends))
            task_status.started(running)
        services.cancel_scope.cancel()
    for admin_listener in admin_listeners:
        await admin_listener.aclose()
    log.info("stopped")
