"""Backends added and removed at run time through the admin API (HAProxy's `add server` / `del
server`), laid over the backend list a config or DNS gives.

Owns: the rule by which runtime changes combine with a new list: a removed name stays out, an added
backend joins unless the list has a backend of that name (the file wins), and a reload keeps the
changes only with `keep_runtime_backends` (the wiring calls `clear` otherwise).
Rules: plain data; no I/O. Imports settings only.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from dispatcher.settings.config import BackendSpec


@dataclass
class Roster:
    """What the admin API changed since the changes were last dropped."""

    added: dict[str, BackendSpec] = field(default_factory=dict)
    removed: set[str] = field(default_factory=set)

    def add(self, spec: BackendSpec) -> None:
        self.added[spec.name] = spec
        self.removed.discard(spec.name)

    def remove(self, name: str) -> None:
        self.added.pop(name, None)
        self.removed.add(name)

    def clear(self) -> None:
        self.added.clear()
        self.removed.clear()

    def overlay(self, given: Iterable[BackendSpec]) -> tuple[BackendSpec, ...]:
        """The backends to run: those given less the removed, then the added the list does not name."""
        kept = tuple(spec for spec in given if spec.name not in self.removed)
        names = {spec.name for spec in kept}
        return kept + tuple(spec for name, spec in self.added.items() if name not in names)
