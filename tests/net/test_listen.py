"""Listening: the connection cap (HAProxy maxconn: wait in the backlog) and SO_REUSEPORT."""

import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from dispatcher.net import listen
from dispatcher.net.listen import CappedListener, drain_backlog, open_listeners
from dispatcher.settings.config import Address
from tests.helpers import exchange, settings_for, start_backends, start_dispatcher, status_lines, wait_all_up

GET = b"GET /x HTTP/1.1\r\nhost: t\r\n\r\n"


async def test_past_the_cap_new_connections_wait_and_open_ones_are_served(nursery: trio.Nursery) -> None:
    """With max_connections=2, a third client waits unserved until one of the two closes."""
    backends = await start_backends(nursery, 0)
    dispatcher = await start_dispatcher(nursery, settings_for(backends, max_connections=2))
    await wait_all_up(dispatcher)
    first = await trio.open_tcp_stream("127.0.0.1", dispatcher.port)
    second = await trio.open_tcp_stream("127.0.0.1", dispatcher.port)
    await first.send_all(GET)
    await second.send_all(GET)
    assert (await first.receive_some(4096)).startswith(b"HTTP/1.1 307")
    assert (await second.receive_some(4096)).startswith(b"HTTP/1.1 307")
    answered = trio.Event()

    async def third_client() -> None:
        assert status_lines(await exchange(dispatcher.port, GET, read_until_close=False)) == [
            b"HTTP/1.1 307 Temporary Redirect"
        ]
        answered.set()

    nursery.start_soon(third_client)
    await trio.testing.wait_all_tasks_blocked()
    assert not answered.is_set()  # in the backlog, not accepted
    await first.send_all(GET)  # open connections keep being served past the cap
    assert (await first.receive_some(4096)).startswith(b"HTTP/1.1 307")
    assert dispatcher.running.front.stats.open_connections == 2
    await first.aclose()
    await answered.wait()
    await second.aclose()


async def test_two_listeners_share_a_port_with_reuse_port() -> None:
    """--reuse-port lets a second process (here: a second socket) bind the same port."""
    first = await open_listeners(Address("127.0.0.1", 0), reuse_port=True)
    port = first[0].socket.getsockname()[1]
    second = await open_listeners(Address("127.0.0.1", port), reuse_port=True)
    assert second[0].socket.getsockname()[1] == port
    for listener in first + second:
        await listener.aclose()


def _file_limit_300() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_NOFILE, (300, 300))


async def test_default_cap_is_lowered_to_fit_a_low_descriptor_limit() -> None:
    """HAProxy's rule: with ulimit -n 300 the default cap of 10,000 is lowered to fit, and it says so."""
    argv = [sys.executable, "-m", "dispatcher", "--backend", "http://127.0.0.1:9"]
    argv += ["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"]
    process = await trio.lowlevel.open_process(argv, stderr=subprocess.PIPE, preexec_fn=_file_limit_300)
    assert process.stderr is not None
    text = b""
    try:
        with trio.fail_after(10):
            while b"front door on" not in text:
                text += await process.stderr.receive_some(4096)
    finally:
        process.terminate()
        await process.wait()
        await process.stderr.aclose()
    assert b"max_connections lowered to 235 to fit the file descriptor limit (300)" in text


async def queued_clients(count: int) -> tuple[CappedListener, list[socket.socket], trio.Semaphore]:
    """A capped listener on a free port with `count` clients whose handshakes the kernel completed:
    they wait in its accept queue."""
    [inner] = await trio.open_tcp_listeners(0, host="127.0.0.1")
    slots = trio.Semaphore(100)
    listener = CappedListener(inner, slots)
    port = inner.socket.getsockname()[1]
    return listener, [socket.create_connection(("127.0.0.1", port)) for _ in range(count)], slots


async def test_one_wait_for_a_connection_takes_the_queued_ones_too() -> None:
    """HAProxy's maxaccept: once an accept has waited, the connections already queued are handed out
    without a checkpoint, so trio's serving loop starts all their handlers in one pass."""
    listener, clients, slots = await queued_clients(10)
    try:
        first = await listener.accept()
        with trio.testing.assert_no_checkpoints():
            rest = [await listener.accept() for _ in range(9)]
        peers = {stream.socket.getpeername() for stream in [first, *rest]}
        assert peers == {client.getsockname() for client in clients}
        assert slots.value == 90  # each holds its slot
        for stream in [first, *rest]:
            await stream.aclose()
    finally:
        await listener.aclose()
        for client in clients:
            client.close()


async def test_a_batch_of_accepts_never_takes_more_than_the_free_slots(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With 3 slots free and 10 clients queued, 3 are accepted; the fourth waits for a slot."""
    listener, clients, slots = await queued_clients(10)
    try:
        for _ in range(97):
            slots.acquire_nowait()
        accepted = [await listener.accept() for _ in range(3)]
        assert slots.value == 0
        with trio.testing.assert_checkpoints():
            with trio.move_on_after(60) as waiting:  # virtual time: only the deadline can end it
                await listener.accept()
        assert waiting.cancelled_caught
        slots.release()
        accepted.append(await listener.accept())
        assert len({stream.socket.getpeername() for stream in accepted}) == 4
        for stream in accepted:
            await stream.aclose()
    finally:
        await listener.aclose()
        for client in clients:
            client.close()


@pytest.fixture
def migration_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel as it is by default: net.ipv4.tcp_migrate_req = 0 (read from a file of the test's)."""
    sysctl = tmp_path / "tcp_migrate_req"
    sysctl.write_text("0\n")
    monkeypatch.setattr(listen, "MIGRATE_SYSCTL", str(sysctl))


def migration_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "tcp_migrate_req" in r.getMessage()]


async def test_opening_a_shared_socket_does_not_warn(
    migration_off: None, caplog: pytest.LogCaptureFixture
) -> None:
    """Each --workers worker opens its own SO_REUSEPORT socket, each generation again: none warns."""
    listeners = await open_listeners(Address("127.0.0.1", 0), reuse_port=True)
    for listener in listeners:
        await listener.aclose()
    assert migration_warnings(caplog) == []


@pytest.mark.parametrize(
    ("overrides", "flags"),
    [({"reuse_port": True}, "--reuse-port"), ({"workers": 2}, "--workers")],
    ids=["reuse-port", "two-workers"],
)
async def test_without_migration_the_start_warns_once(
    nursery: trio.Nursery,
    migration_off: None,
    caplog: pytest.LogCaptureFixture,
    overrides: dict[str, Any],
    flags: str,
) -> None:
    """--reuse-port or --workers 2 on a kernel that does not migrate handshakes: one warning, at start."""
    backends = await start_backends(nursery, 0)
    await start_dispatcher(nursery, settings_for(backends, **overrides))
    [warning] = migration_warnings(caplog)
    assert warning.startswith(f"{flags}: net.ipv4.tcp_migrate_req is 0: ")


async def test_draining_a_listener_that_is_already_closed_finds_nothing() -> None:
    """A stop and a cancellation at once: trio closed the listener first, and the drain finds no queue
    (it raised EBADF, which failed the shutdown)."""
    [inner] = await open_listeners(Address("127.0.0.1", 0), reuse_port=False)
    listener = CappedListener(inner, trio.Semaphore(1))
    await listener.aclose()
    assert drain_backlog(listener) == []
