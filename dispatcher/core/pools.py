"""Pools: the default pool and the named ones, as one roster for the readers that span them all.

Owns: the order of the pools (the default first, then the file's), which pool a backend is in, and
the views that span pools (every backend, in order; a backend by name, the names being unique across
pools, as `config.check` makes sure).
Rules: no I/O, no trio. Each `Pool` stays the only writer of its own backends: this only finds the
pool and asks it. The admin API, the metrics and the status page read through it; routing holds the
pools themselves.
"""

from __future__ import annotations

from collections.abc import Iterator

from dispatcher.core.health_state import Admin
from dispatcher.core.pool import Backend, BackendView, Pool
from dispatcher.settings.config import PoolSpec, Settings


def named_pool(spec: PoolSpec, settings: Settings, now: float) -> Pool:
    """A pool of `settings` ([pools.NAME], or the top level's): its health settings over the global
    ones, its policy; slow start is the file's, for every pool."""
    health = spec.health(settings.health)
    return Pool(spec.backends, health, now, settings.slow_start, spec.policy, spec=spec)


def pools_of(settings: Settings, now: float) -> Pools:
    """Every pool of `settings`, the default one first: the master's and each worker's, alike."""
    pools = Pools(named_pool(settings.default_pool, settings, now))
    for spec in settings.pools:
        pools.add(named_pool(spec, settings, now))
    return pools


class Pools:
    """The pools by name, the default one first."""

    def __init__(self, default: Pool) -> None:
        self.default = default
        self.by_pool: dict[str, Pool] = {default.name: default}

    def __iter__(self) -> Iterator[Pool]:
        return iter(self.by_pool.values())

    def __len__(self) -> int:
        return len(self.by_pool)

    def add(self, pool: Pool) -> None:
        self.by_pool[pool.name] = pool

    def remove(self, name: str) -> None:
        del self.by_pool[name]

    @property
    def started_at(self) -> float:
        return self.default.started_at

    @property
    def backends(self) -> list[Backend]:
        """Every backend of every pool, the default pool's first: the metrics' and the API's order."""
        if len(self.by_pool) == 1:
            return self.default.backends
        return [backend for pool in self.by_pool.values() for backend in pool.backends]

    @property
    def by_name(self) -> dict[str, Backend]:
        if len(self.by_pool) == 1:
            return self.default.by_name
        return {name: backend for pool in self.by_pool.values() for name, backend in pool.by_name.items()}

    def pool_of(self, backend: Backend) -> Pool:
        """The pool a backend is in (its own pool's name, kept on it by the pool that made it)."""
        return self.by_pool.get(backend.pool, self.default)

    @property
    def usable_count(self) -> int:
        return sum(pool.usable_count for pool in self.by_pool.values())

    def effective_load(self, backend: Backend, now: float) -> float:
        return self.pool_of(backend).effective_load(backend, now)

    def view(self, now: float) -> list[BackendView]:
        return [view for pool in self.by_pool.values() for view in pool.view(now)]

    def view_of(self, backend: Backend, now: float) -> BackendView:
        return self.pool_of(backend).view_of(backend, now)

    def set_admin(self, backend: Backend, admin: Admin) -> None:
        self.pool_of(backend).set_admin(backend, admin)

    # --- --workers: the shared table's reader and writer go through here (processes/shared.py) --------

    def set_counts(self, backend: Backend, since: int, redirects: int) -> None:
        self.pool_of(backend).set_counts(backend, since, redirects)

    def take_master_report(self, backend: Backend, load: float, now: float) -> None:
        self.pool_of(backend).take_master_report(backend, load, now)

    def mirror(
        self, backend: Backend, usable: bool, weight: float, ramp: float, others: int, now: float
    ) -> None:
        self.pool_of(backend).mirror(backend, usable, weight, ramp, others, now)

    def set_next_check(self, backend: Backend, at: float) -> None:
        self.pool_of(backend).set_next_check(backend, at)

    def set_others_totals(self, totals: dict[str, int]) -> None:
        """The other workers' redirects in all, per pool: each pool's redirect rate counts its own."""
        for pool in self.by_pool.values():
            pool.others_total = totals.get(pool.name, 0)

    def tick(self, now: float) -> None:
        for pool in list(self.by_pool.values()):
            pool.tick(now)
