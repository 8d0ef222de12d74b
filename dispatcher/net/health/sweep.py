"""The sweep: every check over plain HTTP, driven by one task from one epoll set.

Owns: the backends' plain sockets in an epoll set of its own (registered once, level-triggered), the
checks in flight on them and their deadlines, the reading of their answers, each answer's duration by
the kernel's receive time, and the sweep's sleep between grid steps.
Rules: it connects, retries and times out through `client` (the path the TLS check takes too), and
hands results, retries and load streams to its owner (`Outcomes`): it never calls the pool, and
imports neither `checks` nor `tls` nor `stream`.

Why one sweep on a grid: it wakes only on the 20 ms grid of check times (and at a check's deadline):
each time it reads every answer that has arrived, fails the checks whose time is up, and the checks
that are due are sent. It never waits for a socket to become readable.
- A task per backend cost about 150 us of the event loop per check with 1,000 backends (a timer, a
  cancel scope, two epoll_ctl calls and a task switch each time).
- A sweep woken by each answer as it arrived still paid a wake-up of trio's loop (a cancel scope, two
  epoll_ctl calls, a task switch) for nearly every answer: about 110 us of a check's 200 us on an
  idle 2-core VM. On the grid a 1,000-backend pool costs 50 wake-ups a second, whatever its size.
- So a check's result is applied at the first grid step after its answer arrived (at most 20 ms
  late), and its duration is measured from when the kernel received the answer (SO_TIMESTAMPNS),
  not from when the sweep read it.
Opening a connection (DNS, happy eyeballs) is rare, and runs as a short task beside it.
"""

from __future__ import annotations

import contextlib
import math
import select
import socket
import struct
import time
from operator import attrgetter
from typing import Protocol

import trio

from dispatcher.core.pool import CheckResult
from dispatcher.net.health.client import CheckFailed, may_retry, timed_out
from dispatcher.net.health.probe import Probe
from dispatcher.net.health.schedule import Timetable, grid_step_after
from dispatcher.protocol.answer import AnswerReader, BadAnswer

# Linux's SO_TIMESTAMPNS (asm-generic/socket.h; Python's socket module does not name it): every read
# of a check socket says when the kernel received its last byte, as a struct timespec of the wall
# clock. Where it cannot be set, a check's duration runs until the sweep read the answer.
SO_TIMESTAMPNS = 35
_TIMESPEC = struct.Struct("qq")
_ANCILLARY_SPACE = socket.CMSG_SPACE(_TIMESPEC.size)


class Outcomes(Protocol):
    """What the health checks do with what the sweep found."""

    def finish(self, probe: Probe, result: CheckResult, now: float) -> None:
        """A check is over: its result."""

    def polled(self, probe: Probe, result: CheckResult, now: float) -> None:
        """A check is over with a whole answer that is not a load stream: its result."""

    def spawn_check(self, probe: Probe, start: float) -> None:
        """The check begun at `start` needs a fresh connection first (a task opens it)."""

    def streaming(
        self, probe: Probe, sock: socket.socket, answer: AnswerReader, started: float, now: float
    ) -> None:
        """The answer is a load stream: its connection is the stream reader's from now on."""


class Sweep:
    """The plain check connections of every backend, and the checks in flight on them."""

    def __init__(self, outcomes: Outcomes) -> None:
        self._outcomes = outcomes
        self._epoll = select.epoll()
        self._by_fd: dict[int, Probe] = {}
        # A check's deadline, filed when it is sent (math.inf once it is over).
        self._in_flight: Timetable[Probe] = Timetable(attrgetter("deadline"))
        self._waiting: trio.CancelScope | None = None  # the sweep's wait, while it waits

    def read(self, now: float) -> None:
        """Read every answer that has arrived (before expiring: one that came in time is no timeout)."""
        by_fd = self._by_fd
        for fd, _ in self._epoll.poll(0):
            probe = by_fd.get(fd)
            if probe is not None:
                self._readable(probe, now)

    def expire(self, now: float) -> None:
        """Fail the checks whose deadline has come."""
        for probe in self._in_flight.pop_due(now):
            assert probe.started is not None
            self.fail(probe, now, probe.started, timed_out(probe.deadline - probe.started))

    async def wait(self, due: float, now: float) -> None:
        """Sleep until the next check is `due`, a deadline comes, or, while checks are in flight, the
        next grid step (when their answers are read)."""
        deadline = self._in_flight.next_at()
        wake = min(due, deadline)
        if deadline < math.inf:
            wake = min(wake, grid_step_after(now))
        self._waiting = trio.CancelScope(deadline=wake)
        await _sleep_in(self._waiting)
        self._waiting = None

    def wake_by(self, at: float) -> None:
        """Another task added a check or a deadline: make the sweep's wait end in time for it."""
        if self._waiting is not None and at < self._waiting.deadline:
            self._waiting.deadline = at

    def adopt(self, probe: Probe, stream: trio.SocketStream) -> None:
        """A new connection for `probe`, taken from trio as a stdlib socket for the sweep's epoll set."""
        # trio sets TCP_NODELAY on its streams; detaching keeps the option and the open descriptor.
        sock = socket.socket(fileno=stream.socket.detach())
        sock.setblocking(False)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        probe.sock, probe.answer = sock, AnswerReader()
        self._by_fd[sock.fileno()] = probe
        # Level-triggered, for the life of the connection: an idle connection the backend closes is
        # seen at once, and no epoll_ctl is made per check.
        self._epoll.register(sock, select.EPOLLIN)

    def close(self, probe: Probe) -> None:
        """Close `probe`'s connection, and forget its check in flight (no result)."""
        sock = self._release(probe)
        if sock is not None:
            sock.close()

    def close_all(self) -> None:
        for probe in list(self._by_fd.values()):
            self.close(probe)
        self._epoll.close()

    def _release(self, probe: Probe) -> socket.socket | None:
        """Take `probe`'s connection out of the sweep, open."""
        sock, probe.sock = probe.sock, None
        probe.started, probe.deadline = None, math.inf
        if sock is not None:
            self._by_fd.pop(sock.fileno(), None)
            self._epoll.unregister(sock)
        return sock

    # --- one check over a plain connection ------------------------------------------------------

    def send(self, probe: Probe, start: float, now: float, *, reused: bool) -> None:
        """Send a check that began at `start` (before its connection was opened, for a new one)."""
        assert probe.sock is not None
        data = probe.client.request()
        probe.answer.begin()
        probe.started, probe.reused, probe.received = start, reused, False
        probe.deadline = start + probe.client.settings.timeout
        self._in_flight.add(probe, probe.deadline)
        if self._waiting is not None:  # sent by a connecting task, not by the sweep itself
            self.wake_by(grid_step_after(now))
        probe.sent_at, probe.arrived = time.time() - (now - start), None  # the wall clock at `start`
        try:
            sent = probe.sock.send(data)
        except OSError as error:
            self._lost(probe, start, f"connection lost: {error}")
            return
        if sent < len(data):  # a fresh or idle socket takes a request of a few hundred bytes whole
            self.fail(probe, start, start, CheckFailed("protocol", "request not sent in one piece"))

    def _readable(self, probe: Probe, now: float) -> None:
        """Read what the socket holds: an answer, usually in one piece, or the end of the stream."""
        while probe.sock is not None and self._read_once(probe, probe.sock, now):
            pass  # part of an answer: the rest, or the end of the stream, may be there too

    def _read_once(self, probe: Probe, sock: socket.socket, now: float) -> bool:
        """One read; True when an answer is under way and more may be waiting."""
        try:
            data, ancillary, _, _ = sock.recvmsg(65536, _ANCILLARY_SPACE)
        except BlockingIOError:
            return False
        except OSError as error:
            if probe.started is None:
                self.close(probe)
            else:
                self._lost(probe, now, f"connection lost: {error}")
            return False
        if probe.started is None:
            self.close(probe)  # an idle connection the backend closed (or spoke on out of turn)
            return False
        if not data and not probe.received:
            self._lost(probe, now, "connection closed before an answer")
            return False
        return self._take(probe, data, ancillary, now)

    def _take(self, probe: Probe, data: bytes, ancillary: list[tuple[int, int, bytes]], now: float) -> bool:
        """Bytes of an answer in flight; True while it is not whole and more may be waiting."""
        # The end of the stream after part of an answer ends a body framed by the close, or breaks
        # the answer: the reader says which.
        probe.received = True
        if ancillary:  # the only message asked for: (SOL_SOCKET, SO_TIMESTAMPNS, timespec)
            seconds, nanoseconds = _TIMESPEC.unpack_from(ancillary[0][2])
            probe.arrived = seconds + nanoseconds * 1e-9
        try:
            whole = probe.answer.feed(data)
        except BadAnswer as error:
            assert probe.started is not None
            self.fail(probe, now, probe.started, CheckFailed("protocol", str(error)), _took(probe, now))
            return False
        if whole:
            self._answered(probe, now)
            return False
        return bool(data)

    def _answered(self, probe: Probe, now: float) -> None:
        answer = probe.answer
        if answer.streaming:
            self._hand_over(probe, now)
            return
        result = probe.client.judge(answer.status, answer.headers, answer.body, _took(probe, now))
        if answer.reusable:
            probe.started, probe.deadline = None, math.inf  # the connection stays for the next check
        else:
            self.close(probe)  # `Connection: close`, or a body framed by the close
        self._outcomes.polled(probe, result, now)

    def _hand_over(self, probe: Probe, now: float) -> None:
        """The answer is a load stream: its connection leaves the sweep for the stream reader, and the
        check stays in flight until the stream's first event (or its timeout)."""
        answer, started = probe.answer, probe.started
        sock = self._release(probe)
        assert started is not None and sock is not None
        probe.answer = AnswerReader()
        self._outcomes.streaming(probe, sock, answer, started, now)

    def _lost(self, probe: Probe, now: float, detail: str) -> None:
        """The connection failed before a whole answer: retried once over a fresh one when it was a
        kept-alive connection that sent nothing of it (`client.may_retry`)."""
        start = probe.started if probe.started is not None else now
        if may_retry(probe.reused, probe.received):
            self.close(probe)
            self._outcomes.spawn_check(probe, start)
        else:
            self.fail(probe, now, start, CheckFailed("protocol", detail))

    def fail(
        self, probe: Probe, now: float, start: float, failure: CheckFailed, took: float | None = None
    ) -> None:
        """The check begun at `start` failed: its connection is closed, and the result goes out."""
        self.close(probe)
        duration = now - start if took is None else took
        self._outcomes.finish(probe, failure.result(duration), now)


def _took(probe: Probe, now: float) -> float:
    """A check's duration: from its request to the kernel's receipt of the answer, which the sweep
    read up to a grid step later (`now`); without a receive timestamp, until it was read."""
    assert probe.started is not None
    read = now - probe.started
    return read if probe.arrived is None else min(read, max(0.0, probe.arrived - probe.sent_at))


async def _sleep_in(scope: trio.CancelScope) -> None:
    """Sleep until `scope`'s deadline (which others may move) without a Cancelled at the deadline.

    trio.sleep_until wakes a task by raising Cancelled into it and catching it at the scope's exit:
    about 60,000 instructions at each of the sweep's 50 wake-ups a second, more than a check costs.
    Here the deadline's cancellation is declined and the task is simply resumed (`Abort.FAILED` and
    a `reschedule`, as trio's wait_task_rescheduled allows). Any other cancellation (shutdown) is
    delivered as usual.
    """
    task = trio.lowlevel.current_task()

    def abort(raise_cancel: object) -> trio.lowlevel.Abort:
        if scope.cancel_called:  # our own deadline (cancellation from outside never sets it)
            trio.lowlevel.reschedule(task)
            return trio.lowlevel.Abort.FAILED
        return trio.lowlevel.Abort.SUCCEEDED

    with scope:
        await trio.lowlevel.wait_task_rescheduled(abort)
