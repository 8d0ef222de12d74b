"""The dispatcher as a process: graceful stop on SIGTERM/SIGINT, and exit status 2 for bad input.

`python -m dispatcher` runs as a child process in front of a backend served by this test's trio loop.
Ports are picked by binding port 0 and closing the socket, since a child's port 0 can't be read
from outside. Readiness is polled on /readyz (another process: no event to wait on), bounded.
"""

from __future__ import annotations

import signal
import socket
import sys
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio

from tests.helpers import (
    TestBackend,
    dispatcher_command,
    poll_admin,
    read_until_close,
    receive_responses,
    unused_port,
)

DISPATCHER = [sys.executable, "-m", "dispatcher"]


async def wait_ready(admin_port: int, process: trio.Process, limit: float = 5.0) -> None:
    """Poll /readyz until 200 (bounded): the child process offers no event to wait on."""
    async with httpx.AsyncClient() as client:
        with trio.fail_after(limit):
            while True:
                assert process.returncode is None, f"dispatcher exited early with {process.returncode}"
                try:
                    response = await client.get(f"http://127.0.0.1:{admin_port}/readyz")
                    if response.status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await trio.sleep(0.02)


def get(target: str) -> bytes:
    return f"GET {target} HTTP/1.1\r\nHost: front\r\n\r\n".encode()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_signal_stops_gracefully_with_exit_status_0(
    nursery: trio.Nursery, tmp_path: Path, signum: signal.Signals
) -> None:
    """SIGTERM/SIGINT: idle keep-alive closed, the request in flight answered with close, exit status 0."""
    backend = TestBackend("b1")
    await nursery.start(backend.serve)
    port, admin_port = unused_port(), unused_port()
    command = dispatcher_command(port, admin_port, [backend.url], "--log-level=warning")
    with (tmp_path / "stderr").open("wb") as stderr:
        process: trio.Process = await nursery.start(
            partial(trio.run_process, command, check=False, stderr=stderr)
        )
        await wait_ready(admin_port, process)
        async with (
            await trio.open_tcp_stream("127.0.0.1", port) as idle,
            await trio.open_tcp_stream("127.0.0.1", port) as inflight,
        ):
            await idle.send_all(get("/before"))
            [before] = await receive_responses(idle, 1, timeout=5)
            await inflight.send_all(b"GET /inflight HTTP/1.1\r\n")
            # A round trip on the other connection: the server has read the half head by now.
            await idle.send_all(get("/just-before"))
            [just_before] = await receive_responses(idle, 1, timeout=5)
            process.send_signal(signum)
            assert await read_until_close(idle, timeout=5) == b""
            await inflight.send_all(b"Host: front\r\n\r\n")
            [answered] = await receive_responses(inflight, 1, timeout=5)
            assert await read_until_close(inflight, timeout=5) == b""
        with trio.fail_after(5):
            status = await process.wait()
    log = (tmp_path / "stderr").read_text()
    assert status == 0, log
    assert "Traceback" not in log
    assert (before.status, just_before.status) == (307, 307)
    assert just_before.header(b"location") == f"{backend.url}/just-before".encode()
    assert (answered.status, answered.closes) == (307, True)
    assert answered.header(b"location") == f"{backend.url}/inflight".encode()


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--health-interval", "abc", "--backend", "http://127.0.0.1:1"], ["--health-interval", "abc"]),
        (["--backend", "ftp://x"], ["--backend", "ftp://x"]),
        (["--config", "{config}", "--backend", "http://127.0.0.1:1"], ["health.rise", "0"]),
        ([], ["--backend"]),
        (["--no-such-flag", "--backend", "http://127.0.0.1:1"], ["--no-such-flag"]),
    ],
    ids=["bad-flag-value", "bad-url", "bad-config-value", "no-backends", "unknown-flag"],
)
async def test_bad_input_exits_2_with_one_line_naming_it(
    tmp_path: Path, args: list[str], named: list[str]
) -> None:
    """A bad flag, URL or config value, or no backend: exit status 2 and one stderr line naming it."""
    config_file = tmp_path / "dispatcher.toml"
    config_file.write_text("[health]\nrise = 0\n")
    command = [*DISPATCHER, *(arg.format(config=config_file) for arg in args)]
    with trio.fail_after(10):
        result = await trio.run_process(command, check=False, capture_stdout=True, capture_stderr=True)
    stderr = result.stderr.decode()
    assert result.returncode == 2, stderr
    assert len(stderr.splitlines()) == 1 and stderr.endswith("\n"), stderr
    assert "Traceback" not in stderr
    for word in named:
        assert word in stderr
    assert result.stdout == b""


async def test_listen_address_in_use_exits_without_traceback(tmp_path: Path) -> None:
    """A front door port already taken: a non-zero exit and one line saying so, never a traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        command = [*DISPATCHER, f"--listen=127.0.0.1:{port}", f"--admin-listen=127.0.0.1:{unused_port()}"]
        with trio.fail_after(10):
            result = await trio.run_process(
                [*command, "--backend=http://127.0.0.1:1", "--log-level=error"],
                check=False,
                capture_stderr=True,
            )
    stderr = result.stderr.decode()
    assert result.returncode not in (0, None)
    assert "Traceback" not in stderr
    assert len(stderr.splitlines()) == 1, stderr


@pytest.mark.parametrize("workers", [1, 2], ids=["one-process", "two-workers"])
async def test_a_second_signal_stops_at_once(nursery: trio.Nursery, tmp_path: Path, workers: int) -> None:
    """The first SIGTERM drains, and a request in flight holds the drain for the whole grace period;
    a second SIGTERM stops at once: the process exits 0 without a traceback and no worker is left
    listening on the port."""
    backend = TestBackend("b1")
    await nursery.start(backend.serve)
    port, admin_port = unused_port(), unused_port()
    # A half head in flight outlasts the first signal: the drain waits for it for up to 300 s.
    flags = (f"--workers={workers}", "--grace-period=300", "--header-timeout=300")
    command = dispatcher_command(port, admin_port, [backend.url], "--log-level=warning", *flags)
    with (tmp_path / "stderr").open("wb") as stderr:
        process: trio.Process = await nursery.start(
            partial(trio.run_process, command, check=False, stderr=stderr)
        )
        await wait_ready(admin_port, process, limit=15)
        async with await trio.open_tcp_stream("127.0.0.1", port) as inflight:
            await inflight.send_all(get("/before"))
            [before] = await receive_responses(inflight, 1, timeout=5)
            await inflight.send_all(b"GET /inflight HTTP/1.1\r\n")  # half a head: the drain waits for it
            process.send_signal(signal.SIGTERM)
            await poll_admin(admin_port, "/readyz", lambda status, _: status == 503)  # signal taken
            assert process.returncode is None  # draining, for up to 300 s
            process.send_signal(signal.SIGTERM)
            with trio.fail_after(10):
                status = await process.wait()
            await read_until_close(inflight, timeout=5)
    log = (tmp_path / "stderr").read_text()
    assert (status, before.status) == (0, 307), log
    assert "second SIGTERM: stopping now" in log
    assert "Traceback" not in log
    with pytest.raises(OSError):
        await trio.open_tcp_stream("127.0.0.1", port)
