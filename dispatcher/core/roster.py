"""Backends added and removed at run time through the admin API (HAProxy's `add server` / `del
server`), laid over the backend list a config or DNS gives.

Owns: the rule by which runtime changes combine with a new list: a removed name stays out, an added
backend joins unless the list has a backend of that name (the file wins), and a reload keeps the
changes only with `keep_runtime_backends` (the wiring calls `clear` otherwise).
Rules: plain data; no I/O. Imports settings only.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from dispatcher.settings.config import DEFAULT_POOL, BackendSpec, Settings


@dataclass
class Roster:
    """What the admin API changed since the changes were last dropped, in any pool (backend names are
    unique across pools, so a name says which backend, and `pools` which pool an added one joins)."""

    added: dict[str, BackendSpec] = field(default_factory=dict)
    removed: set[str] = field(default_factory=set)
    pools: dict[str, str] = field(default_factory=dict)  # an added backend's pool, by its name

    def add(self, spec: BackendSpec, pool: str = DEFAULT_POOL) -> None:
        self.added[spec.name] = spec
        self.pools[spec.name] = pool
        self.removed.discard(spec.name)

    def remove(self, name: str) -> None:
        self.added.pop(name, None)
        self.pools.pop(name, None)
        self.removed.add(name)

    def clear(self) -> None:
        self.added.clear()
        self.removed.clear()
        self.pools.clear()

    def overlay(self, given: Iterable[BackendSpec], pool: str = DEFAULT_POOL) -> tuple[BackendSpec, ...]:
        """A pool's backends to run: those given less the removed, then the added to this pool that
        the list does not name."""
        kept = tuple(spec for spec in given if spec.name not in self.removed)
        names = {spec.name for spec in kept}
        joining = (spec for name, spec in self.added.items() if self.pools.get(name) == pool)
        return kept + tuple(spec for spec in joining if spec.name not in names)

    def set_aside(self, settings: Settings) -> list[tuple[str, str]]:
        """The added backends (name, pool) whose pool `settings` no longer has: kept here, not run
        (they return if their pool does), which the reload's log says."""
        pools = {pool.name for pool in settings.all_pools}
        return [(name, pool) for name, pool in self.pools.items() if pool not in pools]

    def over_pools(self, settings: Settings) -> Settings:
        """`settings` with every named pool's backends overlaid (the default pool's are the caller's:
        its given list is the file's or DNS's)."""
        if not self.added and not self.removed:
            return settings
        pools = tuple(
            replace(pool, backends=self.overlay(pool.backends, pool.name)) for pool in settings.pools
        )
        return replace(settings, pools=pools)
