"""Backends that fail and a dispatcher that stops: no redirect to the dead, no request lost.

A backend killed with SIGKILL under load (real `python -m http.server` processes, real time) stops
getting redirects within fall x interval + timeout; with every backend down clients get 503 with
Retry-After, and traffic resumes at the check that brings one back (virtual time); a flapping backend
never takes traffic; a backend URL that leads to a dispatcher's front door never comes up (508). A
dispatcher stopped by SIGTERM while clients run answers every request it accepted and exits 0.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import trio
import trio.testing

from dispatcher.core.pool import Backend, CheckResult
from dispatcher.settings import config
from tests.helpers import (
    ProcessBackend,
    RawResponse,
    admin_get,
    dispatcher_command,
    exchange,
    health,
    metric,
    on_check,
    one_response,
    parse_responses,
    poll_admin,
    receive_responses,
    record_transitions,
    request_head,
    settings_for,
    start_backends,
    start_dispatcher,
    unused_port,
    wait_all_up,
    wait_for,
    wait_for_state,
)


def port_of(response: RawResponse) -> int | None:
    location = response.header(b"location")
    return None if location is None else urlsplit(location.decode()).port


# --- kill -9 under load ---------------------------------------------------------------------------

INTERVAL, TIMEOUT, FALL = 0.5, 0.25, 2
# The bound. The margin covers scheduling on a shared machine: three backend processes, two
# clients and the dispatcher's own loop share this test's cores, and a check can start late by that.
DETECTION_BOUND = FALL * INTERVAL + TIMEOUT
DETECTION_MARGIN = 0.5


@dataclass
class Traffic:
    """What the clients saw: (trio time the request was sent, status, Location port) per request.

    The send time, not the receive time: a redirect chosen just before the backend was marked down
    may arrive just after it, and that is no fault.
    """

    seen: list[tuple[float, int, int | None]] = field(default_factory=list)
    stop: trio.Event = field(default_factory=trio.Event)


async def keep_alive_client(port: int, traffic: Traffic) -> None:
    """Requests back to back on one connection, never following the redirect, until `stop`."""
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        sent = 0
        while not traffic.stop.is_set():
            sent_at = trio.current_time()
            await stream.send_all(request_head(f"/load/{sent}", "Host: f"))
            [response] = await receive_responses(stream, 1, timeout=5)
            traffic.seen.append((sent_at, response.status, port_of(response)))
            sent += 1


async def test_backend_killed_under_load_gets_no_redirect_after_fall_x_interval_plus_timeout(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """SIGKILL one of 3 backend processes under load: its last redirect within fall x interval + timeout."""
    backends = []
    for i in range(3):
        (tmp_path / f"b{i}").mkdir()
        backend = ProcessBackend(str(tmp_path / f"b{i}"))
        await backend.start(nursery)
        backends.append(backend)
    specs = tuple(config.parse_backend("test", b.url, name=f"p{i}") for i, b in enumerate(backends))
    checks = health(interval=INTERVAL, timeout=TIMEOUT, fall=FALL, rise=2)
    dispatcher = await start_dispatcher(nursery, replace(settings_for([], health=checks), backends=specs))
    await wait_all_up(dispatcher)
    traffic = Traffic()
    victim = backends[1]
    async with trio.open_nursery() as clients:
        for _ in range(2):
            clients.start_soon(keep_alive_client, dispatcher.port, traffic)
        await trio.sleep(2 * INTERVAL)  # load before the kill: a duration, not a synchronisation
        await victim.kill()
        killed_at = trio.current_time()
        down_at = await wait_for_state(dispatcher.pool, "p1", "down")
        await trio.sleep(2 * INTERVAL)  # load after it: any redirect still sent to the victim shows
        traffic.stop.set()
    to_victim = [at for at, _, port in traffic.seen if port == victim.port]
    detection = max(to_victim) - killed_at
    print(f"kill -9 detection: last redirect {detection:.3f}s, marked down {down_at - killed_at:.3f}s after")
    assert {status for _, status, _ in traffic.seen} == {307}
    assert any(at < killed_at for at in to_victim), "the victim took no traffic before the kill"
    assert not any(at > down_at for at in to_victim)
    assert any(at > down_at for at, _, _ in traffic.seen), "no traffic after the victim was marked down"
    assert detection <= DETECTION_BOUND + DETECTION_MARGIN
    assert down_at - killed_at <= DETECTION_BOUND + DETECTION_MARGIN


# --- every backend down, then one back --------------------------------------------------------------


async def test_all_down_gets_503_with_retry_after_and_the_first_recovery_resumes_traffic(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """All down: 503, Retry-After = seconds to the next check; at the check that brings one up: 307, ready."""
    b1, b2 = await start_backends(nursery, 0, 0)
    settings = settings_for([b1, b2], health=health(interval=2.0, fall=2, rise=2))
    dispatcher = await start_dispatcher(nursery, settings)
    await wait_all_up(dispatcher)
    t0 = trio.current_time()
    pool = dispatcher.pool
    b1.mode = b2.mode = "status"
    await wait_for(pool, lambda: pool.usable_count == 0)
    assert trio.current_time() == t0 + 4  # the 2nd failing checks, at t0+2 and t0+4
    retry_after = []
    for pause in (0.0, 1.5):  # at t0+4 the next check is 2 s away, at t0+5.5 0.5 s (rounded up: 1)
        await trio.sleep(pause)
        response = one_response(
            await exchange(dispatcher.port, request_head("/x", "Host: f", "Connection: close"))
        )
        assert (response.status, response.header(b"location")) == (503, None)
        retry_after.append(response.header(b"retry-after"))
    assert retry_after == [b"2", b"1"]
    assert (await admin_get(dispatcher, "/readyz")).status_code == 503
    b1.mode = "ok"  # passes at t0+6 and t0+8: up at the 2nd (rise 2)
    assert await wait_for_state(pool, "b1", "up") == t0 + 8
    response = one_response(
        await exchange(dispatcher.port, request_head("/back", "Host: f", "Connection: close"))
    )
    assert (response.status, response.header(b"location")) == (307, f"{b1.url}/back".encode())
    ready = await admin_get(dispatcher, "/readyz")
    assert (ready.status_code, ready.text.strip()) == (200, "ready: 1 of 2 backends up")


async def test_flapping_backend_never_comes_up_nor_gets_a_redirect(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """rise 2, a backend alternating fail/pass from its first check: never up, never a Location to it."""
    stable, flapping = await start_backends(nursery, 5, 0)  # the flapping one would win on load
    flapping.mode = "status"
    pool_settings = settings_for([stable, flapping], health=health(interval=2.0, rise=2, fall=2))
    dispatcher = await start_dispatcher(nursery, pool_settings)
    pool = dispatcher.pool
    transitions = record_transitions(pool)
    flaps = pool.by_name["b2"]

    def flip(backend: Backend, result: CheckResult) -> None:
        if backend is flaps:
            flapping.mode = "ok" if flapping.mode == "status" else "status"

    on_check(pool, flip)
    ports = Counter[int | None]()
    for checks in range(1, 13):
        await wait_for(pool, partial(lambda n: flaps.checks_passed + flaps.checks_failed == n, checks))
        response = one_response(
            await exchange(dispatcher.port, request_head("/f", "Host: f", "Connection: close"))
        )
        ports[port_of(response)] += 1
    assert (flaps.checks_passed, flaps.checks_failed) == (6, 6)
    assert [t for t in transitions if t[0] == "b2"][1:] == []  # nothing after its first verdict
    assert flaps.state == "down"
    assert ports == Counter({stable.port: 12})


# --- redirect loops ---------------------------------------------------------------------------------


async def test_dispatcher_listed_as_its_own_backend_never_comes_up(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Its own front door as backend: every check gets 508, counted; logged as a loop; clients get 503."""
    port = unused_port()
    spec = config.parse_backend("test", f"http://127.0.0.1:{port}", name="self")
    settings = replace(
        settings_for([], health=health(interval=2.0)),
        listen=config.Address("127.0.0.1", port),
        backends=(spec,),
    )
    dispatcher = await start_dispatcher(nursery, settings)
    pool, stats = dispatcher.pool, dispatcher.running.front.stats
    me = pool.by_name["self"]
    await wait_for(pool, lambda: me.checks_failed == 3)
    assert (me.checks_passed, me.state, me.failures["status"]) == (0, "down", 3)
    assert me.last_check is not None and "redirect loop" in me.last_check.detail
    assert any("redirect loop" in r.getMessage() for r in caplog.records if r.name == "dispatcher.health")
    assert (stats.loops, stats.responses[508]) == (3, 3)
    scrape = (await admin_get(dispatcher, "/metrics")).text
    assert metric(scrape, "dispatcher_redirect_loops_total") == 3
    response = one_response(
        await exchange(dispatcher.port, request_head("/x", "Host: f", "Connection: close"))
    )
    assert (response.status, response.header(b"location")) == (503, None)


async def test_backend_that_is_another_dispatchers_front_door_never_comes_up(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A's backend is B's front door: B answers A's checks 508 and counts them; A's clients get 503."""
    [real] = await start_backends(nursery, 0)
    b = await start_dispatcher(nursery, settings_for([real], health=health(interval=2.0)))
    await wait_all_up(b)
    spec = config.parse_backend("test", b.url, name="to-b")
    a = await start_dispatcher(
        nursery, replace(settings_for([], health=health(interval=2.0)), backends=(spec,))
    )
    to_b = a.pool.by_name["to-b"]
    await wait_for(a.pool, lambda: to_b.checks_failed == 4)
    assert (to_b.checks_passed, to_b.state) == (0, "down")
    assert b.running.front.stats.loops == 4  # A's checks only; B's own checks of its backend pass
    assert metric((await admin_get(b, "/metrics")).text, "dispatcher_redirect_loops_total") == 4
    assert metric((await admin_get(a, "/metrics")).text, "dispatcher_redirect_loops_total") == 0
    lines = [r.getMessage() for r in caplog.records if r.name == "dispatcher.health"]
    assert any(line.startswith("backend to-b is down") and "redirect loop" in line for line in lines)
    response = one_response(await exchange(a.port, request_head("/x", "Host: f", "Connection: close")))
    assert (response.status, response.header(b"location")) == (503, None)
    response = one_response(await exchange(b.port, request_head("/x", "Host: f", "Connection: close")))
    assert (response.status, response.header(b"location")) == (307, f"{real.url}/x".encode())


# --- shutdown ----------------------------------------------------------------------------------------


async def test_request_reaching_an_idle_keep_alive_connection_as_shutdown_begins_is_not_dropped(
    nursery: trio.Nursery,
) -> None:
    """A request reaching an idle kept-alive connection as shutdown begins is answered or never read."""
    # Never read: the server closes with the request unread, the kernel resets the connection and the
    # client may retry. Read, counted as a 307 and then cut off before it is sent: a lost request that
    # the client cannot tell from a clean close. The server's own count of 307s tells the two apart.
    [backend] = await start_backends(nursery, 0)
    outcomes = Counter[str]()
    lost = []
    for attempt in range(20):  # trio runs the tasks woken together in either order: try both, often
        async with trio.open_nursery() as inner:
            settings = settings_for([backend], health=health(interval=3600.0))
            dispatcher = await start_dispatcher(inner, settings)
            await wait_all_up(dispatcher)
            async with await trio.open_tcp_stream("127.0.0.1", dispatcher.port) as stream:
                await stream.send_all(request_head("/first", "Host: f"))
                await receive_responses(stream, 1)
                await trio.testing.wait_all_tasks_blocked()  # the handler is idle, waiting for a head
                # The request and the stop in one step, no checkpoint between: both wake together.
                os.write(stream.socket.fileno(), request_head(f"/second/{attempt}", "Host: f"))
                dispatcher.stop.set()
                received = b""
                try:
                    with trio.fail_after(5):
                        while chunk := await stream.receive_some(65536):
                            received += chunk
                    outcomes["answered" if received else "clean close, no answer"] += 1
                except trio.BrokenResourceError:
                    outcomes["reset, never read"] += 1
        delivered = 1 + len(parse_responses(received)[0])
        built = dispatcher.running.front.stats.responses[307]  # the server's count of its 307s
        if built != delivered:
            lost.append(f"attempt {attempt}: {built} redirects built, {delivered} delivered")
    assert lost == [], f"{len(lost)} of 20 requests lost: {dict(outcomes)}; {lost[:3]}"


async def test_with_idle_close_on_response_an_idle_connection_is_answered_then_closed(
    nursery: trio.Nursery,
) -> None:
    """HAProxy's idle-close-on-response: the stop leaves an idle kept-alive connection open; the
    request the client sends on it later is answered, with `Connection: close`, and the connection
    closes after it. Without the option the same connection is closed at once (end of stream)."""
    [backend] = await start_backends(nursery, 0)
    for option in (True, False):
        async with trio.open_nursery() as inner:
            settings = replace(
                settings_for([backend], health=health(interval=3600.0)), idle_close_on_response=option
            )
            dispatcher = await start_dispatcher(inner, settings)
            await wait_all_up(dispatcher)
            async with await trio.open_tcp_stream("127.0.0.1", dispatcher.port) as stream:
                await stream.send_all(request_head("/first", "Host: f"))
                await receive_responses(stream, 1)
                await trio.testing.wait_all_tasks_blocked()  # idle, waiting for a head
                dispatcher.stop.set()
                await trio.testing.wait_all_tasks_blocked()  # the stop has run: listener closed
                if not option:
                    with trio.fail_after(5):
                        assert await stream.receive_some(65536) == b""  # closed idle, at once
                    continue
                await stream.send_all(request_head("/second", "Host: f"))
                received = b""
                with trio.fail_after(5):
                    while chunk := await stream.receive_some(65536):
                        received += chunk
                [response] = parse_responses(received)[0]
                assert (response.status, response.header(b"connection")) == (307, b"close")
                assert response.header(b"location") == f"{backend.url}/second".encode()


@dataclass
class Tally:
    """Requests by outcome, as the clients saw them during a shutdown."""

    outcomes: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)


async def lifecycle_client(port: int, keep_alive: bool, tally: Tally) -> None:
    """Requests back to back until the listener refuses; each one's outcome counted.

    A reused keep-alive connection that closes before any answer byte was closed idle by the server:
    the request was not accepted, and is retried on a new connection (RFC 9112 §9.3.1, as clients do).
    Anything else that is not a whole 307 on an accepted connection is a failure.
    """
    stream: trio.SocketStream | None = None
    sent = 0
    try:
        while True:
            reused = stream is not None
            if stream is None:
                try:
                    stream = await trio.open_tcp_stream("127.0.0.1", port)
                except OSError:
                    tally.outcomes["refused"] += 1
                    return
            headers = ["Host: f"] if keep_alive else ["Host: f", "Connection: close"]
            received = b""
            try:
                await stream.send_all(request_head(f"/c/{sent}", *headers))
                with trio.fail_after(10):
                    while not parse_responses(received)[0]:
                        chunk = await stream.receive_some(65536)
                        if not chunk:
                            break
                        received += chunk
            except trio.BrokenResourceError:
                pass
            sent += 1
            responses, _ = parse_responses(received)
            if responses and responses[0].status == 307:
                tally.outcomes["answered"] += 1
                if responses[0].closes or not keep_alive:
                    await stream.aclose()
                    stream = None
                continue
            await stream.aclose()
            stream = None
            if reused and not received:
                tally.outcomes["closed idle, retried"] += 1
                continue
            tally.failures.append(f"{'reused' if reused else 'new'} connection: {received[:120]!r}")
    finally:
        if stream is not None:
            await stream.aclose()


async def test_sigterm_under_load_answers_every_accepted_request_and_exits_0(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """SIGTERM with clients running (keep-alive and new connections): no accepted request fails; exit 0."""
    [backend] = await start_backends(nursery, 0)
    port, admin_port, grace = unused_port(), unused_port(), 5.0
    command = dispatcher_command(port, admin_port, [backend.url], f"--grace-period={grace:g}")
    log_path = tmp_path / "stderr"
    tally = Tally()
    with log_path.open("wb") as log_file:
        run = partial(trio.run_process, command, check=False, stderr=log_file)
        process: trio.Process = await nursery.start(run)
        await poll_admin(admin_port, "/readyz", lambda status, _: status == 200)
        with trio.fail_after(20):
            async with trio.open_nursery() as clients:
                for i in range(8):
                    clients.start_soon(lifecycle_client, port, i % 2 == 0, tally)
                await trio.sleep(0.5)  # traffic before the signal: a duration, not a synchronisation
                answered_before = tally.outcomes["answered"]
                process.send_signal(signal.SIGTERM)
                signalled = trio.current_time()
            status = await process.wait()
        stopped_in = trio.current_time() - signalled
    log = log_path.read_text()
    print(f"SIGTERM under load: {dict(tally.outcomes)}, exited {stopped_in:.3f}s after the signal")
    assert tally.failures == []
    assert answered_before > 0 and tally.outcomes["refused"] == 8
    assert status == 0, log[-2000:]
    assert stopped_in <= grace
    assert "Traceback" not in log
