"""Reload (SIGHUP) and slow start: backends come and go without losing the state of those that stay."""

import json
import logging
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing

from dispatcher.core.health_state import Admin
from dispatcher.core.pool import MIN_RAMP, CheckResult, Pool
from dispatcher.settings import config
from dispatcher.settings.config import HealthSettings, parse_backend
from tests.helpers import (
    exchange,
    poll_admin,
    settings_for,
    start_backends,
    start_dispatcher,
    status_lines,
    unused_port,
    wait_all_up,
    wait_for,
)

GET = b"GET /x HTTP/1.1\r\nhost: t\r\n\r\n"


async def test_reload_adds_removes_reweights_and_keeps_state(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """Kept backends keep drain state and counters; removed ones get nothing; added ones are checked."""
    b1, b2, b3 = await start_backends(nursery, 0, 0, 0)
    dispatcher = await start_dispatcher(nursery, settings_for([b1, b2]))
    await wait_all_up(dispatcher)
    pool = dispatcher.pool
    client = await trio.open_tcp_stream("127.0.0.1", dispatcher.port)
    await client.send_all(GET)
    assert (await client.receive_some(4096)).startswith(b"HTTP/1.1 307")
    pool.set_admin(pool.by_name["b1"], Admin.DRAIN)
    before = pool.by_name["b1"]
    redirects_before, checks_before = before.redirects, before.checks_passed

    new = settings_for([b1, b3])
    new = replace(new, backends=(replace(new.backends[0], weight=3.0), new.backends[1]))
    dispatcher.running.reload(new)
    # b1, drained, is the only backend that stays, and is not usable: b3 is checked first, b2 answering
    # until then (a reload never leaves a pool with nothing to send to for want of a first check).
    await wait_for(pool, lambda: [b.name for b in pool.backends] == ["b1", "b3"])

    assert [b.name for b in pool.backends] == ["b1", "b3"]
    assert pool.by_name["b1"] is before and before.state == "draining" and before.weight == 3.0
    assert (before.redirects, before.checks_passed) == (redirects_before, checks_before)
    await wait_for(pool, lambda: pool.by_name["b3"].state == "up")
    await client.send_all(GET)  # a connection opened before the reload still works
    answer = await client.receive_some(4096)
    assert f"location: {b3.url}/x".encode() in answer
    await client.aclose()
    checks_of_b2 = b2.health_checks
    for _ in range(5):
        assert b2.url.encode() not in await exchange(dispatcher.port, GET, read_until_close=False)
    await wait_for(pool, lambda: pool.by_name["b3"].checks_passed >= 3)
    assert b2.health_checks == checks_of_b2  # its check loop has stopped


async def test_reload_keeps_listen_address_and_logs_why(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    """A listen change cannot apply without a restart: it is logged and ignored."""
    backends = await start_backends(nursery, 0)
    dispatcher = await start_dispatcher(nursery, settings_for(backends))
    with caplog.at_level(logging.WARNING, "dispatcher"):
        dispatcher.running.reload(replace(settings_for(backends), listen=config.Address("127.0.0.1", 1)))
    assert "listen changed; that takes a restart" in caplog.text
    assert dispatcher.running.front.settings.listen == config.Address("127.0.0.1", 0)


def test_slow_start_ramps_a_recovered_backends_weight() -> None:
    """Back from down, a backend starts at 10 % of its weight and reaches 100 % after slow_start."""
    specs = [parse_backend("t", f"http://10.0.0.{i}", f"b{i}") for i in range(2)]
    pool = Pool(specs, HealthSettings(rise=1, fall=1), slow_start=10.0)
    b0, b1 = pool.backends
    for backend in pool.backends:
        pool.record_check(backend, CheckResult(True, 0.0, load=5.0), now=0.0)
    assert b0.ramp == 1.0  # no ramp at start: every backend begins together
    pool.record_check(b0, CheckResult(False, 0.0, reason="status"), now=1.0)
    pool.record_check(b0, CheckResult(True, 0.0, load=0.0), now=2.0)
    assert b0.ramp == MIN_RAMP
    chosen = [pool.choose() for _ in range(20)]
    # Not stampeded despite reporting load 0: 2 or 3 of 20, as a tie falls (without the ramp it would
    # take 12: 0..5, then half).
    assert 2 <= sum(1 for b in chosen if b is b0) <= 3
    assert pool.advance_ramps(now=7.0) and b0.ramp == pytest.approx(0.5)
    assert not pool.advance_ramps(now=12.0) and b0.ramp == 1.0
    assert b1.ramp == 1.0


def test_slow_start_ramps_a_backend_out_of_maint_too() -> None:
    """maint then ready: the backend starts over (unchecked while in maint), and its first passing
    check brings it back at 10 % of its weight, as back from down, not at once at its whole weight
    (HAProxy's slowstart applies when a server leaves maintenance)."""
    specs = [parse_backend("t", f"http://10.0.0.{i}", f"b{i}") for i in range(2)]
    pool = Pool(specs, HealthSettings(rise=2, fall=1), slow_start=10.0)
    b0, _ = pool.backends
    for now in (0.0, 1.0):
        for backend in pool.backends:
            pool.record_check(backend, CheckResult(True, 0.0, load=5.0), now=now)
    pool.set_admin(b0, Admin.MAINT)
    pool.set_admin(b0, Admin.READY)
    pool.record_check(b0, CheckResult(True, 0.0, load=0.0), now=5.0)
    assert (b0.state, b0.ramp) == ("up", MIN_RAMP)
    assert pool.advance_ramps(now=10.0) and b0.ramp == pytest.approx(0.5)


async def test_sighup_reloads_the_config_file_and_refuses_a_bad_one(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """A real process: SIGHUP applies a new backend list; a broken file is refused and the old one stays."""
    b1, b2 = await start_backends(nursery, 0, 0)
    port, admin = unused_port(), unused_port()
    path = tmp_path / "dispatcher.toml"

    def write(*backends: str, extra: str = "") -> None:
        entries = "".join(f'[[backends]]\nurl = "{url}"\n' for url in backends)
        path.write_text(f'listen = "127.0.0.1:{port}"\nadmin_listen = "127.0.0.1:{admin}"\n{extra}{entries}')

    write(b1.url)
    argv = [sys.executable, "-m", "dispatcher", "--config", str(path), "--health-interval", "0.1"]
    process = await trio.lowlevel.open_process(argv, stderr=subprocess.PIPE)
    refused = trio.Event()
    nursery.start_soon(_watch_log, process, "reload refused", refused)
    try:
        async with httpx.AsyncClient() as client:
            await poll_admin(admin, "/backends", lambda _, text: _up(text) == [_name(b1.url)])
            write(b1.url, b2.url)
            process.send_signal(signal.SIGHUP)
            text = await poll_admin(admin, "/backends", lambda _, text: len(_up(text)) == 2)
            assert _up(text) == [_name(b1.url), _name(b2.url)]
            write(b1.url, extra="[health]\nrise = 0\n")
            process.send_signal(signal.SIGHUP)
            await refused.wait()
            response = await client.get(f"http://127.0.0.1:{admin}/backends")
            assert [b["name"] for b in response.json()] == [_name(b1.url), _name(b2.url)]
            lines = status_lines(await exchange(port, GET, read_until_close=False))
            assert lines == [b"HTTP/1.1 307 Temporary Redirect"]
    finally:
        process.send_signal(signal.SIGTERM)
        assert await process.wait() == 0


async def _watch_log(process: trio.Process, needle: str, seen: trio.Event) -> None:
    """Set `seen` when the process logs a line containing `needle`."""
    assert process.stderr is not None
    text = ""
    async for chunk in process.stderr:
        text += chunk.decode(errors="replace")
        if needle in text and not seen.is_set():
            assert len([line for line in text.splitlines() if needle in line]) == 1
            seen.set()


def _name(url: str) -> str:
    return url.removeprefix("http://")


def _up(backends_json: str) -> list[str]:
    """The names of the backends that are up, from GET /backends."""
    try:
        return [b["name"] for b in json.loads(backends_json) if b["state"] == "up"]
    except ValueError:
        return []
