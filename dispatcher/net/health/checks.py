"""The health checks of a pool: every backend on its own schedule, each check over the engine its
backend needs, every result to the pool.

Owns: `HealthChecks`: the backends' probes as they come and go (reloads), the loop that drives the
sweep and starts the checks that are due, the choice for each due check (none in maint, a pass while a
load stream lives, the sweep for plain HTTP, a task for a connect or a TLS check), the hand-over of a
load stream to its reader, and the pool's context for TLS.
Rules: results go to the pool through `Pool.record_check`, `Pool.record_load` and `set_next_check`,
from here only (a backend's load source and stream count are still written here: the pool has no
method for them yet); the engines (`sweep`, `tls`, `stream`) return or hand over what they find.
The top of the package: it may import every other module of it, and only the package's `__init__`
imports it. A slow backend only ever delays its own checks.
"""

from __future__ import annotations

import math
import random
import socket
import ssl
from operator import attrgetter

import trio

from dispatcher.core.health_state import Admin
from dispatcher.core.pool import Backend, CheckResult, Pool
from dispatcher.core.report import Report
from dispatcher.net.health.client import CheckClient, CheckFailed, answer_within, tls_context
from dispatcher.net.health.logs import DebugLog, StreamTroubles
from dispatcher.net.health.probe import Probe
from dispatcher.net.health.schedule import Timetable, first_check_at, next_check_at, stream_silence
from dispatcher.net.health.stream import LoadStream, StreamFailed, StreamReader, read_tls
from dispatcher.net.health.sweep import Sweep
from dispatcher.net.health.tls import TlsCheck
from dispatcher.protocol.answer import AnswerReader
from dispatcher.settings.config import HealthSettings


class HealthChecks:
    """Checks every backend of the pool on its own schedule; backends come and go on reload."""

    def __init__(self, pool: Pool, max_concurrent: int = 100, rng: random.Random | None = None) -> None:
        self.pool = pool
        # Bounds connection bursts (TCP and TLS handshakes) across the pool, never a wait for an answer.
        self._limiter = trio.CapacityLimiter(max_concurrent)
        self._jitter = (rng or random.Random()).random
        self._probes: dict[str, Probe] = {}
        # One entry per backend: its next check. Read by attrgetter, a C call: every check passes here.
        self._due: Timetable[Probe] = Timetable(attrgetter("due"))
        self._sweep = Sweep(self)
        self._nursery: trio.Nursery | None = None
        self._tls: tuple[HealthSettings, ssl.SSLContext] | None = None
        self._streams = StreamReader(self, self._silence)
        self._debug = DebugLog.wanted()
        self._troubles = StreamTroubles()

    def _silence(self, stream: LoadStream) -> float:
        """How long the stream may be quiet: its backend's interval + timeout (its own, if it sets them)."""
        probe = stream.key
        assert isinstance(probe, Probe)
        return stream_silence(probe.backend.spec.health)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.pool.listeners.append(self._transition)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for backend in self.pool.backends:
                    self.add(backend)
                nursery.start_soon(self._streams.run)
                task_status.started()
                await self._drive()
        finally:
            self.pool.listeners.remove(self._transition)
            self._sweep.close_all()
            with trio.CancelScope(shield=True):
                for probe in list(self._probes.values()):
                    if probe.tls is not None:
                        await probe.tls.close()

    async def _drive(self) -> None:
        """The sweep's task: answers first, then deadlines, then the checks that are due."""
        sweep = self._sweep
        while True:
            now = trio.current_time()
            sweep.read(now)
            sweep.expire(now)
            self._start_due(now)
            await sweep.wait(self._due.next_at(), now)

    def add(self, backend: Backend) -> None:
        assert self._nursery is not None, "HealthChecks.run has not started"
        settings = backend.spec.health  # its own path, interval and timeout, if its entry sets them
        probe = Probe(backend, CheckClient(backend, settings, self._limiter, self._tls_context))
        self._probes[backend.name] = probe
        self._schedule(probe, first_check_at(trio.current_time(), settings, self._jitter()))

    def _tls_context(self) -> ssl.SSLContext:
        """The pool's TLS context, loaded again after a reload: a CA bundle rotated in place and a
        SIGHUP apply to the next connection."""
        settings = self.pool.health_settings
        if self._tls is None or self._tls[0] is not settings:
            self._tls = (settings, tls_context(settings.ca_file))
        return self._tls[1]

    def remove(self, backend: Backend) -> None:
        probe = self._probes.pop(backend.name, None)
        if probe is None:
            return
        probe.active, probe.due = False, math.inf  # nothing more is started: its entry is dropped
        if probe.scope is not None:
            probe.scope.cancel()
        self._end_stream(probe)
        self._sweep.close(probe)
        if probe.tls is not None and probe.tls.connected and self._nursery is not None:
            self._nursery.start_soon(probe.tls.close)

    # --- the schedule ---------------------------------------------------------------------------

    def _schedule(self, probe: Probe, at: float) -> None:
        probe.due = at
        self.pool.set_next_check(probe.backend, at)
        self._due.add(probe, at)
        self._sweep.wake_by(at)

    def _schedule_next(self, probe: Probe, now: float) -> None:
        """Settings are read at every round, so a reload's new interval applies from the next check on."""
        settings = probe.backend.spec.health
        self._schedule(probe, next_check_at(probe.due, now, settings, self._jitter()))

    def _start_due(self, now: float) -> None:
        # Started after all are popped: a check that is rescheduled at once waits for the next pass.
        for probe in self._due.pop_due(now):
            if probe.active:
                self._start(probe, now)

    def _start(self, probe: Probe, now: float) -> None:
        if probe.backend.admin is Admin.MAINT:  # HAProxy MAINT: no checks until it leaves
            self._end_stream(probe)
            self._schedule_next(probe, now)
            return
        stream = probe.stream
        if (
            stream is not None
            and not stream.first
            and probe.client.settings.path != probe.backend.spec.health.path
        ):
            # A reload moved the health path: the stream is the old path's answer, which would live on
            # and leave the new path never asked. It ends, and the new path is asked: at once over
            # plain HTTP, at the next check over TLS (its task must close the old connection first).
            self._stop_stream(probe)
            if probe.tls is not None:
                self._schedule_next(probe, now)
                return
            stream = None
        if stream is not None and not stream.first:  # the stream answers this check by living
            self.finish(probe, CheckResult(True, 0.0, self_drain=stream.drain, timed=False), now)
            return
        if stream is not None:  # still waiting for its first event: this check is still in flight
            self._schedule_next(probe, now)
            return
        probe.client.settings = probe.backend.spec.health
        if probe.sock is None or probe.tls is not None:
            self.spawn_check(probe, now)
        else:
            self._sweep.send(probe, now, now, reused=True)

    # --- checks that run in a task --------------------------------------------------------------

    def spawn_check(self, probe: Probe, start: float) -> None:
        """A check over TLS, or the connection a plain check needs first: a task of its own, within
        the check's timeout from `start`."""
        assert self._nursery is not None
        probe.scope = trio.CancelScope()
        self._nursery.start_soon(self._check_in_task, probe, start, probe.scope)

    async def _check_in_task(self, probe: Probe, start: float, scope: trio.CancelScope) -> None:
        try:
            with scope:
                if probe.tls is not None:
                    await self._check_tls(probe, probe.tls, start)
                else:
                    await self._connect_plain(probe, start)
        finally:
            if probe.scope is scope:
                probe.scope = None

    async def _connect_plain(self, probe: Probe, start: float) -> None:
        """A new connection, then the check over it from the sweep."""
        try:
            with answer_within(start, probe.client.settings.timeout):
                stream = await probe.client.connect()
        except CheckFailed as failure:
            self._sweep.fail(probe, trio.current_time(), start, failure)
            return
        assert isinstance(stream, trio.SocketStream)  # plain HTTP: no TLS over it
        self._sweep.adopt(probe, stream)
        self._sweep.send(probe, start, trio.current_time(), reused=False)

    async def _check_tls(self, probe: Probe, tls: TlsCheck, start: float) -> None:
        """A check over TLS; when its answer is a load stream, the stream is read in this task."""
        result = await tls.check(start)
        connection = tls.stream_link
        if connection is None:
            self.finish(probe, result, trio.current_time())
            return
        probe.stream = stream = LoadStream(probe, tls.answer, start, probe.client.settings.timeout)
        try:
            await read_tls(stream, connection, self._silence, self)
        finally:
            await tls.close()

    # --- results --------------------------------------------------------------------------------

    def finish(self, probe: Probe, result: CheckResult, now: float) -> None:
        """A check is over: its result to the pool, and the next one on the schedule (unless removed)."""
        if probe.active:
            self._record(probe.backend, result, now)
            self._schedule_next(probe, now)

    def polled(self, probe: Probe, result: CheckResult, now: float) -> None:
        """A plain check answered without a stream: this backend's load arrives by polling."""
        self.pool.polled(probe.backend)
        self.finish(probe, result, now)

    def _record(self, backend: Backend, result: CheckResult, now: float) -> None:
        if self._debug is not None:
            self._debug.check(backend, result)
        self.pool.record_check(backend, result, now)

    # --- load streams ---------------------------------------------------------------------------

    def streaming(
        self, probe: Probe, sock: socket.socket, answer: AnswerReader, started: float, now: float
    ) -> None:
        """A plain answer is a load stream: the check stays in flight until its first event."""
        probe.stream = LoadStream(probe, answer, started, probe.client.settings.timeout)
        self._streams.adopt(probe.stream, sock, now)

    def _transition(self, backend: Backend, before: str, after: str, result: CheckResult | None) -> None:
        """An operator's maint closes the backend's load stream now (HAProxy MAINT: no checks), not
        at its next check's time: a `ready` before that would have found the old stream still open."""
        probe = self._probes.get(backend.name)
        if after != "maint" or probe is None or probe.stream is None:
            return
        self._stop_stream(probe)

    def _stop_stream(self, probe: Probe) -> None:
        """Close the backend's load stream now, without a failed check."""
        self._end_stream(probe)
        if probe.tls is not None and probe.scope is not None:
            probe.scope.cancel()  # a TLS stream is read in its check's task, which closes it

    def _end_stream(self, probe: Probe) -> None:
        stream, probe.stream = probe.stream, None
        if stream is not None:
            self._streams.close(stream)
            stream.open = False

    def reports(self, stream: LoadStream, reports: list[Report], now: float) -> None:
        """A stream's events: the first completes the check that opened it; each is a fresh report."""
        probe = stream.key
        assert isinstance(probe, Probe)
        if not probe.active or probe.stream is not stream:
            return
        backend = probe.backend
        if stream.first:
            stream.first = False
            self.pool.stream_opened(backend)
            first, reports = reports[0], reports[1:]
            result = CheckResult(True, now - stream.started, load=first.load, self_drain=first.drain)
            self.finish(probe, result, now)
        for report in reports:
            self.pool.record_load(backend, report.load, report.drain, now)
            if self._debug is not None:
                self._debug.event(backend, report)

    def heartbeat(self, stream: LoadStream, now: float) -> None:
        """A heartbeat of a live stream: its backend would have sent an event had its load changed."""
        probe = stream.key
        assert isinstance(probe, Probe)
        if probe.active and probe.stream is stream:
            self.pool.confirm_load(probe.backend, now)

    def failed(self, stream: LoadStream, failure: StreamFailed, now: float) -> None:
        """A stream fell silent, ended or broke: a failed check; the next check connects again."""
        probe = stream.key
        assert isinstance(probe, Probe)
        if probe.stream is not stream:
            return
        probe.stream = None
        if not probe.active:
            return
        if stream.first:  # the check that opened it fails
            result = CheckResult(False, now - stream.started, reason=failure.reason, detail=failure.detail)
            self.finish(probe, result, now)
        else:
            result = CheckResult(False, 0.0, reason=failure.reason, detail=failure.detail, timed=False)
            self._troubles.failed(probe.backend, failure.reason, failure.detail, now)
            self._record(probe.backend, result, now)
