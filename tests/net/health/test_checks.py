"""The probe loop and its HTTP client: real `HealthChecks` against real backends on loopback.

Every interval and timeout runs in virtual time (`autojump_clock`); with no jitter the check times
are exact, so the tests assert them exactly. A check over loopback takes no virtual time; the sweep
reads its answer, and the pool gets its result, at the next grid step: READ after it was sent.
A timeout is applied at the deadline itself.
"""

from __future__ import annotations

import logging
import random
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from itertools import pairwise
from typing import TypeVar

import pytest
import trio
import trio.testing

from dispatcher.core.pool import FAILURE_REASONS, Backend, CheckResult, LoadReport, Pool
from dispatcher.net.health import CHECK_GRID, HealthChecks
from dispatcher.net.health.sweep import SO_TIMESTAMPNS, _sleep_in
from dispatcher.settings import config
from tests.helpers import (
    CountingBackend,
    TestBackend,
    health,
    on_check,
    pool_for,
    record_checks,
    record_transitions,
    settings_for,
    start_dispatcher,
    unused_port,
    wait_for,
    wait_for_state,
)

AnyBackend = TypeVar("AnyBackend", bound=TestBackend)
# When an answered check's result is applied: the sweep reads answers on the grid of check times.
READ = CHECK_GRID


async def started(nursery: trio.Nursery, backend: AnyBackend) -> AnyBackend:
    await nursery.start(backend.serve)
    return backend


def checked(backend: Backend) -> int:
    return backend.checks_passed + backend.checks_failed


def script_modes(pool: Pool, backend: TestBackend, modes: list[str]) -> None:
    """After each check of `backend`, switch its mode to the next of `modes` (then stay on the last)."""
    upcoming: Iterator[str] = iter(modes)

    def switch(checked_backend: Backend, result: CheckResult) -> None:
        if checked_backend.name == backend.name:
            backend.mode = next(upcoming, backend.mode)

    on_check(pool, switch)


# --- start ------------------------------------------------------------------------------------------


async def test_backend_is_usable_after_its_first_passing_check_and_not_before(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """At start nothing is chosen; the first passing check (at once) makes the backend usable."""
    backend = await started(nursery, TestBackend("b1", load=2))
    settings = health(interval=2.0)
    pool = pool_for([backend], settings)
    chosen_while_checking: list[Backend | None] = []
    on_check(pool, lambda b, r: chosen_while_checking.append(pool.choose()))
    t0 = trio.current_time()
    assert pool.choose() is None
    nursery.start_soon(HealthChecks(pool).run)
    assert await wait_for_state(pool, "b1", "up") == t0 + READ
    assert chosen_while_checking == [None]  # while the first result was being recorded
    assert pool.choose() is pool.by_name["b1"]


async def test_backend_whose_first_check_fails_needs_rise_passes(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """A first failing check leaves the backend down; it comes up only after `rise` passes in a row."""
    backend = await started(nursery, TestBackend("b1", mode="status"))
    settings = health(interval=2.0, rise=2, fall=3)
    pool = pool_for([backend], settings)
    script_modes(pool, backend, ["ok"])
    seen = record_checks(pool)
    t0 = trio.current_time()
    nursery.start_soon(HealthChecks(pool).run)
    assert await wait_for_state(pool, "b1", "up") == t0 + 4 + READ
    assert [(c.at - t0, c.passed) for c in seen] == [(READ, False), (2 + READ, True), (4 + READ, True)]
    assert pool.choose() is pool.by_name["b1"]


# --- failure reasons --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "reason", "fails_after"),
    [
        ("status", "status", READ),
        ("hang", "timeout", 1.5),  # exactly the timeout
        ("garbage", "protocol", READ),
        ("close", "protocol", READ),
    ],
)
async def test_failed_check_is_counted_with_its_reason(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, mode: str, reason: str, fails_after: float
) -> None:
    """Each way a backend can misbehave fails the check with its own reason, at the right time."""
    backend = await started(nursery, TestBackend("b1", mode=mode))
    settings = health(interval=5.0, timeout=1.5)
    pool = pool_for([backend], settings)
    seen = record_checks(pool)
    t0 = trio.current_time()
    nursery.start_soon(HealthChecks(pool).run)
    await wait_for(pool, lambda: checked(pool.by_name["b1"]) == 1)
    state = pool.by_name["b1"]
    assert [(c.at - t0, c.passed, c.reason) for c in seen] == [(fails_after, False, reason)]
    # A timeout lasts its whole time; an answer's never longer than until the sweep read it (not
    # always less: see kernel_receive_times, below).
    assert seen[0].duration == 1.5 if mode == "hang" else 0 <= seen[0].duration <= READ
    assert state.failures == {r: int(r == reason) for r in FAILURE_REASONS}
    assert (state.checks_passed, state.checks_failed, state.state) == (0, 1, "down")
    assert pool.choose() is None


@pytest.fixture
def kernel_receive_times() -> Iterator[None]:
    """Until the test ends, the kernel stamps every packet it receives with its time.

    Linux turns receive timestamps on for everyone once any socket asks for them (SO_TIMESTAMPNS),
    but from a work queue, a moment later; TCP reports no time for a segment that arrived before.
    A sweep whose check socket was the first to ask may then read its first answers without one, and
    falls back to the time it read them (a grid step late). So one socket asks first, and holds it,
    and this waits (bounded: there is no event to wait on) until a segment comes back stamped.
    """
    with (
        socket.create_server(("127.0.0.1", 0)) as server,
        socket.create_connection(server.getsockname()) as client,
    ):
        peer, _ = server.accept()
        with peer:
            client.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            for _ in range(1000):
                peer.send(b"x")
                if client.recvmsg(16, socket.CMSG_SPACE(16))[1]:
                    break
                time.sleep(0.001)
            else:
                pytest.fail("the kernel never stamped a received segment")
            yield


@pytest.mark.usefixtures("kernel_receive_times")
async def test_an_answers_duration_runs_until_the_kernel_received_it(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """On a kept-alive connection a check's duration ends when the kernel received the answer (real
    time: at once over loopback), not a grid step later when the sweep read it."""
    backend = await started(nursery, TestBackend("b1"))
    settings = health(interval=2.0)
    pool = pool_for([backend], settings)
    seen = record_checks(pool)
    t0 = trio.current_time()
    nursery.start_soon(HealthChecks(pool).run)
    await wait_for(pool, lambda: checked(pool.by_name["b1"]) == 2)
    assert [c.at - t0 for c in seen] == [READ, 2 + READ]  # the second one read a grid step late
    assert 0 <= seen[1].duration < READ


async def test_nothing_listening_fails_as_refused(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """A backend address where nothing listens fails the check with reason `refused`, at once."""
    spec = config.parse_backend("test", f"http://127.0.0.1:{unused_port()}", name="gone")
    settings = health(interval=5.0, timeout=1.5)
    pool = Pool([spec], settings)
    seen = record_checks(pool)
    t0 = trio.current_time()
    nursery.start_soon(HealthChecks(pool).run)
    await wait_for(pool, lambda: checked(pool.by_name["gone"]) == 1)
    assert [(c.at - t0, c.reason) for c in seen] == [(0.0, "refused")]
    assert pool.by_name["gone"].failures == {r: int(r == "refused") for r in FAILURE_REASONS}


async def test_backend_that_went_away_fails_as_refused_not_protocol(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """When an up backend stops listening, its stale kept-alive connection is not blamed: `refused`."""
    backend = TestBackend("b1")
    backend_scope = trio.CancelScope()

    async def serve_until_cancelled(*, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        with backend_scope:
            await backend.serve(task_status=task_status)

    await nursery.start(serve_until_cancelled)
    settings = health(interval=2.0)
    pool = pool_for([backend], settings)
    t0 = trio.current_time()
    nursery.start_soon(HealthChecks(pool).run)
    await wait_for_state(pool, "b1", "up")
    backend_scope.cancel()
    await wait_for(pool, lambda: pool.by_name["b1"].checks_failed == 1)
    assert trio.current_time() == t0 + 2
    assert pool.by_name["b1"].failures == {r: int(r == "refused") for r in FAILURE_REASONS}


@pytest.mark.parametrize(
    ("status", "passes"), [(200, True), (202, True), (301, False), (404, False), (500, False)]
)
async def test_only_2xx_passes(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, status: int, passes: bool
) -> None:
    """A 2xx answer passes the check; any other status fails it with reason `status`."""
    backend = await started(nursery, TestBackend("b1", mode="status", status=status))
    settings = health()
    pool = pool_for([backend], settings)
    seen = record_checks(pool)
    nursery.start_soon(HealthChecks(pool).run)
    await wait_for(pool, lambda: checked(pool.by_name["b1"]) == 1)
    assert [(c.passed, c.reason) for c in seen] == [(passes, None if passes else "status")]
    assert pool.by_name["b1"].state == ("up" if passes else "down")


# --- rise and fall ----------------------------------------------------------------------------------


async def test_fall_failures_take_a_backend_down_and_rise_passes_bring_it_back(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """Interval 2, fall 3, rise 2: down at the 3rd failing check, up again at the 2nd passing one."""
    backend = await started(nursery, TestBackend("b1"))
    settings = health(interval=2.0, fall=3, rise=2)
    pool = pool_for([backend], settings)
    transitions = record_transitions(pool)
    t0 = trio.current_time()
    nursery.start_soon(HealthChecks(pool).run)
    assert await wait_for_state(pool, "b1", "up") == t0 + READ
    backend.mode = "status"  # checks at t0+2, t0+4, t0+6 fail
    assert await wait_for_state(pool, "b1", "down") == t0 + 6 + READ
    backend.mode = "ok"  # checks at t0+8, t0+10 pass
    assert await wait_for_state(pool, "b1", "up") == t0 + 10 + READ
    assert transitions == [
        ("b1", "starting", "up", t0 + READ),
        ("b1", "up", "down", t0 + 6 + READ),
        ("b1", "down", "up", t0 + 10 + READ),
    ]
    assert pool.by_name["b1"].failures["status"] == 3


async def test_streaks_must_be_unbroken(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """A pass resets the failure streak and a failure resets the pass streak: flapping moves nothing."""
    backend = await started(nursery, TestBackend("b1"))
    settings = health(interval=2.0, fall=3, rise=2)
    pool = pool_for([backend], settings)
    transitions = record_transitions(pool)
    # checks: ok | status status ok status status ok | status status status | ok status ok status ok ok
    modes = ["status", "status", "ok", "status", "status", "ok", "status", "status", "status"]
    script_modes(pool, backend, [*modes, "ok", "status", "ok", "status", "ok", "ok"])
    t0 = trio.current_time()
    nursery.start_soon(HealthChecks(pool).run)
    await wait_for(pool, lambda: checked(pool.by_name["b1"]) == 16)
    assert transitions == [
        ("b1", "starting", "up", t0 + READ),
        ("b1", "up", "down", t0 + 2 * 9 + READ),  # the 3rd failure in a row (the 7th overall)
        ("b1", "down", "up", t0 + 2 * 15 + READ),  # the 2nd pass in a row (the 4th since down)
    ]


async def test_an_operator_change_is_not_logged_twice_and_leaving_maint_goes_on_from_down(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Drain, ready and maint through the pool log no transition line (the admin API logs the request
    and its result in one line, `is down (was maint)` for the ready); the first check after it goes on
    from there, `is up (was down)`, once."""
    from dispatcher.core.health_state import Admin

    caplog.set_level(logging.INFO)
    backend = await started(nursery, TestBackend("b1"))
    dispatcher = await start_dispatcher(nursery, settings_for([backend], health=health(interval=2.0)))
    pool = dispatcher.pool
    state = pool.by_name["b1"]
    await wait_for_state(pool, "b1", "up")
    caplog.clear()
    for word in (Admin.DRAIN, Admin.READY, Admin.MAINT):
        pool.set_admin(state, word)
    pool.set_admin(state, Admin.READY)
    await wait_for_state(pool, "b1", "up")
    lines = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "dispatcher.health"]
    assert lines == [(logging.INFO, "backend b1 is up (was down)")]


async def test_state_changes_are_logged_one_line_each(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The running app logs each state change as one line naming backend, new and old state and why."""
    caplog.set_level(logging.INFO, logger="dispatcher.health")
    backend = await started(nursery, TestBackend("b1"))
    dispatcher = await start_dispatcher(nursery, settings_for([backend], health=health(fall=2, rise=2)))
    pool = dispatcher.pool
    await wait_for_state(pool, "b1", "up")
    backend.mode = "status"
    await wait_for_state(pool, "b1", "down")
    backend.mode = "ok"
    await wait_for_state(pool, "b1", "up")
    lines = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "dispatcher.health"]
    assert len(lines) == 3
    assert lines[0][0] == logging.INFO and lines[0][1].startswith("backend b1 is up (was ")
    assert lines[1:] == [
        (logging.WARNING, "backend b1 is down (was up): status (status 503)"),
        (logging.INFO, "backend b1 is up (was down)"),
    ]
    assert all("\n" not in message for _, message in lines)


async def test_backend_down_from_the_start_is_logged(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A backend whose first check fails gets a log line saying it is down, and why."""
    caplog.set_level(logging.INFO, logger="dispatcher.health")
    spec = config.parse_backend("test", f"http://127.0.0.1:{unused_port()}", name="gone")
    dispatcher = await start_dispatcher(nursery, replace(settings_for([]), backends=(spec,)))
    gone = dispatcher.pool.by_name["gone"]
    await wait_for(dispatcher.pool, lambda: gone.checks_failed == 1)
    lines = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "dispatcher.health"]
    assert len(lines) == 1, f"expected one line for the first failed check, got {lines}"
    [(level, message)] = lines
    assert level == logging.WARNING
    assert message.startswith("backend gone is down (was ") and "refused" in message


# --- schedule ---------------------------------------------------------------------------------------


async def test_checks_run_every_interval_exactly_without_jitter(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """With no jitter, the first check is at once and the next ones exactly one interval apart."""
    backend = await started(nursery, TestBackend("b1"))
    settings = health(interval=3.0)
    pool = pool_for([backend], settings)
    seen = record_checks(pool)
    t0 = trio.current_time()
    nursery.start_soon(HealthChecks(pool).run)
    await wait_for(pool, lambda: checked(pool.by_name["b1"]) == 5)
    assert [c.at - t0 for c in seen] == [t + READ for t in (0.0, 3.0, 6.0, 9.0, 12.0)]
    assert backend.health_checks == 5


async def test_jitter_spreads_checks_and_keeps_each_interval_within_bounds(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """With jitter, a large pool is not checked in one burst, and every interval is interval*(1±jitter)."""
    backend = await started(nursery, TestBackend("shared"))
    interval, jitter, count = 2.0, 0.25, 40
    specs = [config.parse_backend("test", backend.url, name=f"b{i}") for i in range(count)]
    settings = health(interval=interval, jitter=jitter)
    pool = Pool(specs, settings)
    seen = record_checks(pool)
    t0 = trio.current_time()
    nursery.start_soon(HealthChecks(pool, rng=random.Random(1)).run)
    await wait_for(pool, lambda: all(checked(b) >= 6 for b in pool.backends))
    times = {name: [c.at - t0 for c in seen if c.backend == name] for name in pool.by_name}
    first = [t[0] for t in times.values()]
    # Check times sit on a CHECK_GRID (20 ms) grid, so that checks due together share wake-ups.
    assert all(0 <= f < interval * jitter + CHECK_GRID for f in first)
    slots = interval * jitter / CHECK_GRID
    assert len(set(first)) >= slots / 2, "first checks in too few instants"
    assert max(first) - min(first) > interval * jitter / 2, "first checks bunched together"
    gaps = [later - earlier for t in times.values() for earlier, later in pairwise(t)]
    low, high = interval * (1 - jitter) - CHECK_GRID, interval * (1 + jitter) + CHECK_GRID
    assert all(low - 1e-9 <= gap <= high + 1e-9 for gap in gaps)
    distinct = len({round(gap, 9) for gap in gaps})
    assert distinct > min(len(gaps) // 2, (high - low) / CHECK_GRID / 2), "intervals not jittered"


async def test_hanging_backend_does_not_delay_another_backends_checks(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """While other backends hang until the timeout, a healthy backend is checked exactly on time."""
    hanging = await started(nursery, TestBackend("hang", mode="hang"))
    healthy = await started(nursery, TestBackend("ok"))
    specs = [config.parse_backend("test", hanging.url, name=f"hang{i}") for i in range(3)]
    specs.insert(1, config.parse_backend("test", healthy.url, name="ok"))
    settings = health(interval=2.0, timeout=1.5)
    pool = Pool(specs, settings)
    seen = record_checks(pool)
    t0 = trio.current_time()
    nursery.start_soon(HealthChecks(pool).run)
    await wait_for(pool, lambda: checked(pool.by_name["ok"]) == 4)
    assert [c.at - t0 for c in seen if c.backend == "ok"] == [t + READ for t in (0.0, 2.0, 4.0, 6.0)]
    assert [c.at - t0 for c in seen if c.backend == "hang0"] == [1.5, 3.5, 5.5]


async def test_many_hanging_backends_do_not_delay_a_healthy_backends_checks(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """More hanging backends than the app's check concurrency (100) still do not delay a healthy one."""
    hanging = await started(nursery, TestBackend("hang", mode="hang"))
    healthy = await started(nursery, TestBackend("ok"))
    specs = [config.parse_backend("test", hanging.url, name=f"hang{i}") for i in range(200)]
    specs.insert(100, config.parse_backend("test", healthy.url, name="ok"))
    # All 201 are due at t0, t0+2, t0+4; each hanging check takes its 1.5 s timeout. Were checks
    # capped at 100 at once, some hanging ones would hold every slot whenever the healthy one is due.
    settings = health(interval=2.0, timeout=1.5)
    pool = Pool(specs, settings)
    seen = record_checks(pool)
    t0 = trio.current_time()
    nursery.start_soon(HealthChecks(pool).run)  # as the app calls it
    await wait_for(pool, lambda: checked(pool.by_name["ok"]) == 3)
    assert [c.at - t0 for c in seen if c.backend == "ok"] == [t + READ for t in (0.0, 2.0, 4.0)]


# --- the request and its connection -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "path", "target"),
    [
        ("", "/health", "/health"),
        ("/app", "/health", "/app/health"),
        ("/app/", "/health", "/app/health"),
        ("/app", "/ping", "/app/ping"),
    ],
)
async def test_check_is_get_of_backend_prefix_plus_health_path(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, prefix: str, path: str, target: str
) -> None:
    """The check is `GET <backend URL path><health path>` with the backend's Host, e.g. /app/health."""
    backend = await started(nursery, CountingBackend("b1", health_path=target))
    settings = health(path=path)
    pool = Pool([config.parse_backend("test", backend.url + prefix, name="b1")], settings)
    nursery.start_soon(HealthChecks(pool).run)
    await wait_for_state(pool, "b1", "up")
    [request] = backend.health_requests
    assert (request.method, request.target) == ("GET", target)
    assert request.headers["host"] == f"127.0.0.1:{backend.port}"
    assert backend.received == []  # nothing reached a non-health path


async def test_connection_is_kept_alive_between_checks(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """Successive checks of one backend reuse one connection."""
    backend = await started(nursery, CountingBackend("b1"))
    settings = health(interval=2.0)
    pool = pool_for([backend], settings)
    nursery.start_soon(HealthChecks(pool).run)
    await wait_for(pool, lambda: pool.by_name["b1"].checks_passed == 5)
    assert (backend.connections, backend.health_checks) == (1, 5)


async def test_connection_closed_by_backend_is_reopened_without_a_failed_check(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """A backend that closed the idle connection is reconnected and its check passes on time."""
    backend = await started(nursery, CountingBackend("b1"))
    settings = health(interval=2.0, fall=1)
    pool = pool_for([backend], settings)
    seen = record_checks(pool)
    t0 = trio.current_time()
    nursery.start_soon(HealthChecks(pool).run)
    await wait_for_state(pool, "b1", "up")
    await backend.drop_connections()
    await wait_for(pool, lambda: checked(pool.by_name["b1"]) == 3)
    assert [(c.at - t0, c.passed) for c in seen] == [(t + READ, True) for t in (0.0, 2.0, 4.0)]
    assert pool.by_name["b1"].state == "up"
    assert backend.connections == 2


async def test_failed_status_keeps_the_connection(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """A well-formed non-2xx answer fails the check but does not cost a new connection."""
    backend = await started(nursery, CountingBackend("b1", mode="status"))
    settings = health(interval=2.0)
    pool = pool_for([backend], settings)
    nursery.start_soon(HealthChecks(pool).run)
    await wait_for(pool, lambda: pool.by_name["b1"].checks_failed == 3)
    assert backend.connections == 1


@dataclass(eq=False)
class ClosingUnanswered(TestBackend):
    """Answers the first `answered` checks on a connection, then closes it when the next one arrives,
    unanswered: as a backend whose idle timeout fires just as the check is sent."""

    __test__ = False
    answered: int = 1
    connections: int = 0

    async def handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        try:
            for _ in range(self.answered):
                await stream.receive_some(65536)
                self.health_checks += 1
                await stream.send_all(b"HTTP/1.1 200 OK\r\nx-load: 1\r\ncontent-length: 0\r\n\r\n")
            await stream.receive_some(65536)
        finally:
            await trio.aclose_forcefully(stream)


async def test_kept_alive_connection_closed_unanswered_is_retried_once_fresh(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """A reused connection that ends before any answer is retried on a new one: the check passes."""
    backend = await started(nursery, ClosingUnanswered("b1"))
    settings = health(interval=2.0, fall=1)
    pool = pool_for([backend], settings)
    seen = record_checks(pool)
    t0 = trio.current_time()
    nursery.start_soon(HealthChecks(pool).run)
    await wait_for(pool, lambda: checked(pool.by_name["b1"]) == 4)
    # The retry's answer is read a grid step after the closed connection was seen.
    assert [(c.at - t0, c.passed) for c in seen] == [(READ, True)] + [
        (t + 2 * READ, True) for t in (2.0, 4.0, 6.0)
    ]
    assert (backend.connections, backend.health_checks) == (4, 4)


@dataclass(eq=False)
class CloseFramed(TestBackend):
    """Answers like an HTTP/1.0 server of old: no length, the body ends when the connection does."""

    __test__ = False

    async def handle(self, stream: trio.SocketStream) -> None:
        try:
            await stream.receive_some(65536)
            self.health_checks += 1
            await stream.send_all(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n")
            await stream.send_all(b"6\n")
        finally:
            await trio.aclose_forcefully(stream)


async def test_answer_framed_by_the_close_passes_and_reconnects(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """A body that ends with the connection is whole at the close: the check passes, the next one
    opens a new connection."""
    backend = await started(nursery, CloseFramed("b1"))
    settings = health(interval=2.0)
    pool = pool_for([backend], settings)
    seen = record_checks(pool)
    t0 = trio.current_time()
    nursery.start_soon(HealthChecks(pool).run)
    await wait_for(pool, lambda: checked(pool.by_name["b1"]) == 2)
    assert [(c.at - t0, c.passed) for c in seen] == [(READ, True), (2 + READ, True)]
    assert pool.by_name["b1"].load == 6.0


async def test_fresh_connection_closed_unanswered_fails_as_protocol_without_retry(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """Only a reused connection earns a retry: a new one closed unanswered is the backend's fault."""
    backend = await started(nursery, ClosingUnanswered("b1", answered=0))
    settings = health(interval=2.0)
    pool = pool_for([backend], settings)
    seen = record_checks(pool)
    nursery.start_soon(HealthChecks(pool).run)
    await wait_for(pool, lambda: checked(pool.by_name["b1"]) == 2)
    assert [(c.passed, c.reason) for c in seen] == [(False, "protocol"), (False, "protocol")]
    assert backend.connections == 2


# --- load reports -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "body", "load"),
    [
        ([("X-Load", "2.5")], b"", 2.5),
        ([("X-Load", "7")], b'{"load": 3}', 7.0),  # the header wins
        ([], b'{"load": 4, "backend": "b1"}', 4.0),
        ([], b"12\n", 12.0),
        ([], b"OK", 0.0),
        ([], b"", 0.0),
        ([], b"<html><body>fine</body></html>", 0.0),
        ([], b'{"status": "fine"}', 0.0),
    ],
)
async def test_load_report_forms(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    headers: list[tuple[str, str]],
    body: bytes,
    load: float,
) -> None:
    """The load comes from X-Load, else a JSON "load", else a bare number; anything else counts as 0."""
    backend = await started(nursery, TestBackend("b1", body=body, extra_headers=headers))
    settings = health()
    pool = pool_for([backend], settings)
    t0 = trio.current_time()
    nursery.start_soon(HealthChecks(pool).run)
    await wait_for_state(pool, "b1", "up")
    assert pool.by_name["b1"].report == LoadReport(load, t0 + READ)


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        ([("X-Load", "busy")], b""),
        ([("X-Load", "-1")], b""),
        ([("X-Load", "NaN")], b""),
        ([("X-Load", "inf")], b'{"load": 1}'),
        ([], b'{"load": "high"}'),
        ([], b'{"load": -2}'),
        ([], b'{"load": NaN}'),
        ([], b"-3"),
    ],
)
async def test_bad_load_fails_the_check(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    headers: list[tuple[str, str]],
    body: bytes,
) -> None:
    """A load that is present but not a finite number >= 0 fails the check as `bad_load`, not as 0."""
    backend = await started(nursery, TestBackend("b1", body=body, extra_headers=headers))
    settings = health()
    pool = pool_for([backend], settings)
    nursery.start_soon(HealthChecks(pool).run)
    await wait_for(pool, lambda: checked(pool.by_name["b1"]) == 1)
    state = pool.by_name["b1"]
    assert state.failures == {r: int(r == "bad_load") for r in FAILURE_REASONS}
    assert (state.report, state.state) == (None, "down")
    assert pool.choose() is None


async def test_passing_check_records_report_keeps_previous_and_resets_since(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """A pass stores (load, time) as the report and zeroes `since`."""
    backend = await started(nursery, TestBackend("b1", load=3))
    settings = health(interval=2.0)
    pool = pool_for([backend], settings)
    state = pool.by_name["b1"]
    t0 = trio.current_time()
    nursery.start_soon(HealthChecks(pool).run)
    await wait_for_state(pool, "b1", "up")
    assert (state.report, state.since) == (LoadReport(3, t0 + READ), 0)
    for _ in range(4):
        assert pool.choose() is state
    assert (state.since, pool.effective_load(state, trio.current_time())) == (4, 7.0)
    backend.load = 5
    await wait_for(pool, lambda: state.checks_passed == 2)
    assert state.report == LoadReport(5, t0 + 2 + READ)
    assert (state.since, state.redirects, pool.effective_load(state, trio.current_time())) == (0, 4, 5.0)


async def test_failed_check_keeps_the_last_report_and_since(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """A failing check does not touch the load report nor the redirects counted since it."""
    backend = await started(nursery, TestBackend("b1", load=3))
    settings = health(interval=2.0, fall=3)
    pool = pool_for([backend], settings)
    state = pool.by_name["b1"]
    t0 = trio.current_time()
    nursery.start_soon(HealthChecks(pool).run)
    await wait_for_state(pool, "b1", "up")
    pool.choose()
    pool.choose()
    backend.mode = "status"
    await wait_for(pool, lambda: state.checks_failed == 1)
    assert (state.report, state.since) == (LoadReport(3, t0 + READ), 2)
    assert state.state == "up"  # one failure of fall 3


# --- the sweep's sleep ------------------------------------------------------------------------------


async def test_sweep_sleep_ends_at_its_deadline_without_cancelled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The sweep's sleep returns at its scope's deadline, and returns: no Cancelled escapes or is caught."""
    t0 = trio.current_time()
    scope = trio.CancelScope(deadline=t0 + 0.5)
    await _sleep_in(scope)
    assert (trio.current_time() - t0, scope.cancelled_caught) == (0.5, False)


async def test_sweep_sleep_wakes_early_when_its_deadline_moves(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """Moving the deadline earlier (a check added or sent by another task) ends the sleep then."""
    t0 = trio.current_time()
    scope = trio.CancelScope(deadline=t0 + 10)

    async def move_deadline() -> None:
        await trio.sleep(1)
        scope.deadline = trio.current_time() + 0.25

    nursery.start_soon(move_deadline)
    await _sleep_in(scope)
    assert trio.current_time() - t0 == 1.25


async def test_sweep_sleep_is_still_cancelled_from_outside(autojump_clock: trio.testing.MockClock) -> None:
    """Shutdown still reaches the sweep: an enclosing cancellation is delivered as usual."""
    t0 = trio.current_time()
    with trio.move_on_after(2) as outer:
        await _sleep_in(trio.CancelScope(deadline=t0 + 10))
    assert (outer.cancelled_caught, trio.current_time() - t0) == (True, 2)


def test_a_name_that_does_not_resolve_is_a_dns_failure_not_refused() -> None:
    """What failed is what the reason says: name resolution is `dns`, a refused connection `refused`."""
    from dispatcher.net.health.client import _connect_failed

    dns = _connect_failed("web.internal", socket.gaierror(socket.EAI_NONAME, "Name or service not known"))
    assert (dns.reason, dns.detail) == ("dns", "cannot resolve web.internal: Name or service not known")
    refused = _connect_failed("10.0.0.1", ConnectionRefusedError(111, "Connection refused"))
    assert refused.reason == "refused"


async def test_a_404_on_the_health_path_says_to_set_health_path(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """A backend without the health route (python -m http.server, say) fails with a hint, not a riddle."""
    backend = await started(nursery, TestBackend("b1", mode="status", status=404))
    settings = health()
    pool = pool_for([backend], settings)
    nursery.start_soon(HealthChecks(pool).run)
    await wait_for(pool, lambda: pool.by_name["b1"].checks_failed == 1)
    last = pool.by_name["b1"].last_check
    assert last is not None and last.detail == (
        "status 404: set health.path to a route that backend serves (it is /health)"
    )


async def test_a_backend_with_its_own_interval_and_path_is_checked_by_them(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """Per-backend health overrides (HAProxy's per-server `inter`): `own` is checked every second on
    its own path, `shared` every 4 s on the global one, both under the same HealthChecks."""
    shared = await started(nursery, TestBackend("shared", load=1))
    own = await started(nursery, TestBackend("own", load=1, health_path="/ready"))
    specs = [
        config.parse_backend("test", shared.url, name="shared"),
        replace(
            config.parse_backend("test", own.url, name="own"),
            health_overrides=(("interval", 1.0), ("path", "/ready")),
        ),
    ]
    pool = Pool(specs, health(interval=4.0, jitter=0.0), started_at=trio.current_time())
    seen = record_checks(pool)
    t0 = trio.current_time()
    nursery.start_soon(HealthChecks(pool).run)
    await trio.sleep_until(t0 + 8.5)
    counts = {
        name: sum(1 for check in seen if check.backend == name and check.passed) for name in ("shared", "own")
    }
    assert counts == {"shared": 3, "own": 9}  # at 0, 4, 8 s; at 0, 1, ..., 8 s
    assert pool.by_name["own"].state == "up"  # its own path answered
