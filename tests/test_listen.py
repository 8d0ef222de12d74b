"""Listening: the connection cap (HAProxy maxconn: wait in the backlog) and SO_REUSEPORT."""

import subprocess
import sys

import trio
import trio.testing

from dispatcher.config import Address
from dispatcher.listen import open_listeners
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
