"""The dispatcher's lifecycle: starting, serving, shutting down.

Owns: the two facts that /readyz reports and that tell the front door to end kept-alive connections.
Rules: a leaf, plain data: imports nothing of the package. The wiring creates one and is its only writer
(`dispatcher.wiring.app` in the process that was started, `_worker` in each worker process); the front
door's conversations and the admin listener only read it. So the transport holds no flags of its own
for another part to overwrite, and `--workers` needs no front door in the master to carry them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Lifecycle:
    """Where the dispatcher is in its life: plain booleans, read on every request (no lock, no call)."""

    serving: bool = False  # the front door listens (in this process or in its workers)
    shutting_down: bool = False  # stop was asked for: answers close, idle connections end
