"""What the health checks tell an operator: a line per state change, and with `--log-level debug` a
line per check and per stream event, rate-limited.

Owns: the `dispatcher.health` logger (the name operators filter on, kept from before the checks
became a package), the transition line, and the debug lines' rate limit.
Rules: it reads a backend, never writes one; nothing else of the checks is imported.
"""

from __future__ import annotations

import logging
import math

import trio

from dispatcher.core.pool import Backend, CheckResult
from dispatcher.core.report import Report

log = logging.getLogger("dispatcher.health")

# `--log-level debug` says every check's result and load and every load-stream event, but at most one
# line per backend per this many seconds (with a count of those left out): 1,000 backends checked every
# 2 s would otherwise write 500 lines a second, and a stream 10 events a second each.
DEBUG_EVERY = 1.0


def log_transition(backend: Backend, before: str, after: str, result: CheckResult | None) -> None:
    """One line per state change that a check made: operators grep for these. A change the operator
    asked for is logged by the admin API, with who asked, in its one line."""
    if result is None:
        return
    why = "" if result.passed else f": {result.reason} ({result.detail})"
    level = logging.INFO if after == "up" else logging.WARNING
    log.log(level, "backend %s is %s (was %s)%s", backend.name, after, before, why)


# A live load stream that breaks is logged at most once per backend per this many seconds. Each
# break is one failed check, and a backend whose every stream breaks after its first event (a stream
# that ends, a heartbeat slower than interval + timeout) passes and fails in turn: it never falls, and
# no state change would say a word of it.
STREAM_WARN_EVERY = 60.0


class PerBackend:
    """At most one line per backend per `every` seconds, and how many were left out since."""

    def __init__(self, every: float) -> None:
        self.every = every
        self._last: dict[str, float] = {}
        self._skipped: dict[str, int] = {}

    def allow(self, name: str, now: float) -> int | None:
        """None: too soon, the line is left out (and counted); else the count left out before it."""
        if now - self._last.get(name, -math.inf) < self.every:
            self._skipped[name] = self._skipped.get(name, 0) + 1
            return None
        self._last[name] = now
        return self._skipped.pop(name, 0)


class StreamTroubles:
    """The warning line for a live load stream that failed, rate-limited per backend."""

    def __init__(self) -> None:
        self._limit = PerBackend(STREAM_WARN_EVERY)

    def failed(self, backend: Backend, reason: str, detail: str, now: float) -> None:
        skipped = self._limit.allow(backend.name, now)
        if skipped is None:
            return
        more = f" ({skipped} more in the last {STREAM_WARN_EVERY:g}s)" if skipped else ""
        log.warning(
            "backend %s: load stream failed: %s (%s); a failed check, connecting again at the next%s",
            backend.name,
            reason,
            detail,
            more,
        )


class DebugLog:
    """Debug lines of checks and stream events, rate-limited per backend."""

    def __init__(self) -> None:
        self._limit = PerBackend(DEBUG_EVERY)

    @staticmethod
    def wanted() -> DebugLog | None:
        """A debug log when `--log-level debug` is on, else None: off, a check costs no call."""
        return DebugLog() if log.isEnabledFor(logging.DEBUG) else None

    def check(self, backend: Backend, result: CheckResult) -> None:
        """A check's result, told before the pool applies it (the estimate shown is the one it met)."""
        if result.passed:
            load = "streamed" if result.load is None else f"{result.load:g}"
            self._line(backend, "check passed in %.4fs, load %s", result.duration, load)
        else:
            self._line(backend, "check failed: %s (%s)", result.reason, result.detail)

    def event(self, backend: Backend, report: Report) -> None:
        self._line(backend, "stream event: load %g%s", report.load, ", drain" if report.drain else "")

    def _line(self, backend: Backend, message: str, *args: object) -> None:
        now, name = trio.current_time(), backend.name
        skipped = self._limit.allow(name, now)
        if skipped is None:
            return
        more = f" ({skipped} more since the last line)" if skipped else ""
        estimate = f"; estimate {backend.effective_load(now):.2f}, drain {backend.rate:.1f}/s"
        log.debug("backend %s: " + message + estimate + more, name, *args)
