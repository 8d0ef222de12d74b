"""The access log: its two line formats, its batches, its reopen, and its lines from a real dispatcher.

The formats and batches are tested on `AccessLog` with a fixed wall clock; the one-second flush under
trio's MockClock; the lines of every kind of answer through a dispatcher over loopback; the workers of
`python -m dispatcher --workers 2`, SIGUSR1 and the refusal of a path that cannot be opened through
the command line.
"""

from __future__ import annotations

import json
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import pytest
import trio
import trio.testing

from dispatcher.core.health_state import Admin
from dispatcher.expose.access_log import BATCH_BYTES, FLUSH_INTERVAL, AccessLog, check_path
from dispatcher.net.frontdoor import access_logging
from dispatcher.settings.config import ConfigError, Settings
from dispatcher.wiring import cli
from tests.helpers import (
    TestBackend,
    dispatcher_command,
    exchange,
    poll_admin,
    receive_responses,
    settings_for,
    start_backends,
    start_dispatcher,
    unused_port,
    wait_all_up,
)

# 2026-12-06 23:00:17.250 UTC
WALL = 1796598017.25
REDIRECT = (b"GET", b"/some/path?x=1", b"1.1", 307, 143, "web-1", None)
NO_HEAD = (b"", b"", b"", 400, 120, None, None)
SECRET = "Bearer s3cret-token"


def lines_of(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_a_text_line_is_the_combined_format_with_backend_and_duration(tmp_path: Path) -> None:
    """Client, - -, [time], "request line", status, bytes, "backend", seconds; "-" where unknown."""
    access = AccessLog(str(tmp_path / "access.log"), wall=lambda: WALL)
    access.write(("127.0.0.1", 53422), [REDIRECT, NO_HEAD], 0.000213)
    access.close()
    assert lines_of(tmp_path / "access.log") == [
        '127.0.0.1 - - [06/Dec/2026:23:00:17 +0000] "GET /some/path?x=1 HTTP/1.1" 307 143 "web-1" 0.000213',
        '127.0.0.1 - - [06/Dec/2026:23:00:17 +0000] "-" 400 120 "-" 0.000213',
    ]


def test_a_json_line_has_every_field_and_nulls_where_unknown(tmp_path: Path) -> None:
    """JSON lines: time in UTC with milliseconds, the client's host and port, null for what is unknown."""
    access = AccessLog(str(tmp_path / "access.log"), "json", wall=lambda: WALL)
    access.write(("::1", 40000), [REDIRECT, NO_HEAD], 0.5)
    access.close()
    first, second = (json.loads(line) for line in lines_of(tmp_path / "access.log"))
    assert first == {
        "time": "2026-12-06T23:00:17.250Z",
        "client": "::1",
        "client_port": 40000,
        "method": "GET",
        "target": "/some/path?x=1",
        "version": "1.1",
        "status": 307,
        "bytes": 143,
        "backend": "web-1",
        "duration": 0.5,
    }
    assert (second["method"], second["target"], second["backend"], second["status"]) == (
        None,
        None,
        None,
        400,
    )


@pytest.mark.parametrize("form", ["text", "json"])
def test_a_target_cannot_break_or_forge_a_line(tmp_path: Path, form: str) -> None:
    """Quotes, backslashes and bytes outside printable ASCII are written as \\xHH: one line, one request."""
    access = AccessLog(str(tmp_path / "access.log"), form, wall=lambda: WALL)
    access.write(("127.0.0.1", 1), [(b"GET", b'/a"b\\c\xff', b"1.1", 307, 1, "b", None)], 0.0)
    access.close()
    [line] = lines_of(tmp_path / "access.log")
    if form == "json":
        assert json.loads(line)["target"] == "/a\\x22b\\x5Cc\\xFF"
    else:
        assert '"GET /a\\x22b\\x5Cc\\xFF HTTP/1.1"' in line


def test_lines_wait_for_a_full_batch_or_a_flush(tmp_path: Path) -> None:
    """Nothing is written until the buffer passes BATCH_BYTES or `flush` is called; then all at once."""
    path = tmp_path / "access.log"
    access = AccessLog(str(path), wall=lambda: WALL)
    access.write(("127.0.0.1", 1), [REDIRECT], 0.0)
    assert path.read_text() == ""
    line = len(path.read_text()) or 100  # a line is about 100 bytes
    count = 0
    while path.stat().st_size == 0:
        access.write(("127.0.0.1", 1), [REDIRECT], 0.0)
        count += 1
        assert count * line < 2 * BATCH_BYTES
    assert path.read_text().endswith("\n")
    assert path.stat().st_size >= BATCH_BYTES
    access.write(("127.0.0.1", 1), [REDIRECT], 0.0)
    written = path.stat().st_size
    access.flush()
    assert path.stat().st_size > written
    access.close()
    assert len(lines_of(path)) == count + 2


def test_reopen_writes_the_old_file_then_opens_the_path_again(tmp_path: Path) -> None:
    """logrotate moves the file, SIGUSR1 reopens: waiting lines go to the moved file, new ones to the path."""
    path, rotated = tmp_path / "access.log", tmp_path / "access.log.1"
    access = AccessLog(str(path), wall=lambda: WALL)
    access.write(("127.0.0.1", 1), [REDIRECT], 0.0)
    path.rename(rotated)
    access.reopen()
    access.write(("127.0.0.2", 1), [REDIRECT], 0.0)
    access.close()
    assert [line.split()[0] for line in lines_of(rotated)] == ["127.0.0.1"]
    assert [line.split()[0] for line in lines_of(path)] == ["127.0.0.2"]


def test_a_path_that_cannot_be_reopened_keeps_the_old_file(tmp_path: Path) -> None:
    """The directory is gone at reopen: one error line, and the lines still reach the open file."""
    directory = tmp_path / "logs"
    directory.mkdir()
    access = AccessLog(str(directory / "access.log"), wall=lambda: WALL)
    (directory / "access.log").rename(tmp_path / "kept.log")
    directory.rmdir()
    access.reopen()
    access.write(("127.0.0.1", 1), [REDIRECT], 0.0)
    access.close()
    assert len(lines_of(tmp_path / "kept.log")) == 1


def test_a_path_that_cannot_be_opened_is_refused_naming_the_key(tmp_path: Path) -> None:
    """check_path raises a ConfigError naming the key and the path; stdout and no log pass."""
    with pytest.raises(ConfigError) as caught:
        check_path("access_log", str(tmp_path / "no" / "such" / "dir.log"))
    assert str(caught.value).startswith("access_log = ")
    assert "No such file or directory" in str(caught.value)
    check_path("access_log", "-")
    check_path("access_log", None)


def test_the_command_line_exits_2_for_a_log_it_cannot_open(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--access-log into a missing directory: one line on stderr naming access_log, exit status 2."""
    bad = str(tmp_path / "missing" / "access.log")
    assert cli.main(["--backend", "http://127.0.0.1:1", "--access-log", bad]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("dispatcher: access_log = ") and bad in line


async def test_the_log_is_flushed_every_second(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """A line written at t is in the file at t + FLUSH_INTERVAL, not before; the rest at the end."""
    path = tmp_path / "access.log"
    settings = Settings(access_log=str(path))
    async with trio.open_nursery() as nursery, access_logging(settings, nursery) as access:
        assert access is not None
        start = trio.current_time()
        access.write(("127.0.0.1", 1), [REDIRECT], 0.0)
        await trio.sleep(FLUSH_INTERVAL * 0.99)
        assert path.read_text() == ""
        await trio.sleep(FLUSH_INTERVAL * 0.02)
        assert len(lines_of(path)) == 1
        assert trio.current_time() - start == pytest.approx(FLUSH_INTERVAL * 1.01)
        access.write(("127.0.0.1", 1), [REDIRECT], 0.0)
    assert len(lines_of(path)) == 2


async def test_a_real_dispatcher_logs_every_answer_and_no_credential(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """Over loopback: a 307 with its backend, a 503, a 400 before any head, one line each; the
    Authorization and Cookie the clients sent appear nowhere."""
    path = tmp_path / "access.log"
    backends = await start_backends(nursery, 0)
    dispatcher = await start_dispatcher(nursery, settings_for(backends, access_log=str(path)))
    await wait_all_up(dispatcher)
    secret_headers = f"Authorization: {SECRET}\r\nCookie: session=s3cret-cookie\r\n"
    head = f"GET /x?y=1 HTTP/1.1\r\nHost: f\r\n{secret_headers}Connection: close\r\n\r\n"
    await exchange(dispatcher.port, head.encode())
    dispatcher.pool.set_admin(dispatcher.pool.backends[0], Admin.MAINT)  # none usable: a 503
    await exchange(dispatcher.port, b"POST /y HTTP/1.1\r\nHost: f\r\nConnection: close\r\n\r\n")
    await exchange(dispatcher.port, b"\x00\x01 not http\r\n\r\n")
    dispatcher.stop.set()
    with trio.fail_after(5):
        while not path.read_text().count("\n") >= 3:  # written once the front door has drained
            await trio.sleep(0.01)
    redirect, unavailable, malformed = lines_of(path)
    assert '"GET /x?y=1 HTTP/1.1" 307 ' in redirect and ' "b1" ' in redirect
    assert redirect.startswith("127.0.0.1 - - [")
    assert '"POST /y HTTP/1.1" 503 ' in unavailable and ' "-" ' in unavailable
    assert '"-" 400 ' in malformed
    assert "s3cret" not in path.read_text()


@pytest.mark.parametrize("form", ["text", "json"])
async def test_behind_a_trusted_proxy_the_line_names_the_client_it_forwarded(
    nursery: trio.Nursery, tmp_path: Path, form: str
) -> None:
    """nginx's realip: from a trusted proxy the line's client is the one routes see (the first
    untrusted hop from the right), in JSON with the proxy as `peer`; from a peer nobody trusts, or
    a trusted one that forwarded nothing, the peer, as always."""
    path = tmp_path / "access.log"
    backends = await start_backends(nursery, 0)
    settings = settings_for(
        backends, access_log=str(path), access_log_format=form, trusted_proxies=("127.0.0.1",)
    )
    dispatcher = await start_dispatcher(nursery, settings)
    await wait_all_up(dispatcher)
    for forwarded in ("X-Forwarded-For: 198.51.100.4, 203.0.113.9\r\n", ""):
        head = f"GET /x HTTP/1.1\r\nHost: f\r\n{forwarded}Connection: close\r\n\r\n"
        await exchange(dispatcher.port, head.encode())
    dispatcher.stop.set()
    with trio.fail_after(5):
        while not path.read_text().count("\n") >= 2:
            await trio.sleep(0.01)
    proxied, direct = lines_of(path)
    if form == "text":
        assert proxied.startswith("203.0.113.9 - - [") and direct.startswith("127.0.0.1 - - [")
    else:
        proxied_json, direct_json = json.loads(proxied), json.loads(direct)
        assert (proxied_json["client"], proxied_json["peer"]) == ("203.0.113.9", "127.0.0.1")
        assert (direct_json["client"], "peer" in direct_json) == ("127.0.0.1", False)


async def test_sigusr1_reopens_the_log(nursery: trio.Nursery, tmp_path: Path) -> None:
    """`python -m dispatcher`: the file is moved, SIGUSR1, and the new lines go to a new file."""
    path, rotated = tmp_path / "access.log", tmp_path / "access.log.1"
    async with _dispatcher_process(nursery, f"--access-log={path}") as (port, process):
        await _requests(port, 20, "/before")
        await _wait_lines(path, 20)
        path.rename(rotated)
        process.send_signal(signal.SIGUSR1)
        await _wait_lines(path, 0)  # reopened: the lines that waited went to the moved file first
        await _requests(port, 20, "/after")
    assert {line.split()[6] for line in lines_of(rotated)} >= {"/before"}
    assert "/after" in path.read_text() and "/before" not in path.read_text()


async def test_workers_append_whole_lines_to_one_file(nursery: trio.Nursery, tmp_path: Path) -> None:
    """`--workers 2`: each worker writes its own batches to the same file; every line is whole."""
    path = tmp_path / "access.log"
    flags = (f"--access-log={path}", "--workers=2", "--access-log-format=json")
    async with _dispatcher_process(nursery, *flags) as (port, _), trio.open_nursery() as clients:
        for client in range(8):
            clients.start_soon(_requests, port, 50, f"/c{client}")
    targets = [json.loads(line)["target"] for line in lines_of(path)]
    assert sorted(targets) == sorted(f"/c{client}" for client in range(8) for _ in range(50))


@asynccontextmanager
async def _dispatcher_process(nursery: trio.Nursery, *flags: str) -> AsyncIterator[tuple[int, trio.Process]]:
    """`python -m dispatcher` with `flags` in front of a backend, until the body is done; then SIGTERM,
    and it must exit 0 (its access log is complete by then)."""
    backend = TestBackend("b1")
    await nursery.start(backend.serve)
    port, admin_port = unused_port(), unused_port()
    command = dispatcher_command(port, admin_port, [backend.url], "--log-level=warning", *flags)
    process: trio.Process = await nursery.start(partial(trio.run_process, command, check=False))
    try:
        await poll_admin(admin_port, "/readyz", lambda status, _: status == 200)
        yield port, process
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(10):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()


async def _requests(port: int, count: int, target: str) -> None:
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        for _ in range(count):
            await stream.send_all(f"GET {target} HTTP/1.1\r\nHost: f\r\n\r\n".encode())
            await receive_responses(stream, 1, timeout=5)


async def _wait_lines(path: Path, count: int) -> None:
    """Another process writes the file (at its one-second flush): polled, bounded."""
    with trio.fail_after(5):
        while not (path.exists() and path.read_text().count("\n") >= count):
            await trio.sleep(0.05)


async def test_refusals_are_logged_with_what_is_known(nursery: trio.Nursery, tmp_path: Path) -> None:
    """A 431 (its head was read: method and target known) and a 408 (a head never finished: "-")."""
    path = tmp_path / "access.log"
    backends = await start_backends(nursery, 0)
    settings = settings_for(backends, access_log=str(path), header_timeout=0.2)
    dispatcher = await start_dispatcher(nursery, settings)
    await wait_all_up(dispatcher)
    many = "".join(f"x-h{i}: v\r\n" for i in range(150))
    await exchange(dispatcher.port, f"GET /big HTTP/1.1\r\nHost: f\r\n{many}\r\n".encode())
    await exchange(dispatcher.port, b"GET /slow HTTP/1.1\r\nHost: f\r\n")  # the header timeout passes
    dispatcher.stop.set()
    await _wait_lines(path, 2)
    too_large, timed_out = lines_of(path)
    assert '"GET /big HTTP/1.1" 431 ' in too_large
    assert '"GET /slow HTTP/1.1" 408 ' in timed_out  # its request line had arrived whole


@pytest.mark.parametrize(
    ("head", "line"),
    [
        (b"GET /a HTTP/1.1\r\n\r\n", '"GET /a HTTP/1.1" 400 '),  # no Host: h11 refuses, the line is known
        (b"GET /b HTTP/1.1\r\nHost: f\r\nHost: g\r\n\r\n", '"GET /b HTTP/1.1" 400 '),
        (b"POST /c HTTP/1.1\r\nHost: f\r\nTransfer-Encoding: gzip\r\n\r\n", '"POST /c HTTP/1.1" 400 '),
        (b"\x00\x01 not http\r\n\r\n", '"-" 400 '),  # no request line to name
        (b"GET /d\x7f HTTP/1.1\r\n\r\n", '"-" 400 '),  # not a well-formed one
    ],
    ids=["no-host", "two-hosts", "te-gzip", "garbage", "bad-target"],
)
async def test_a_head_h11_refuses_is_logged_with_its_request_line(
    nursery: trio.Nursery, tmp_path: Path, head: bytes, line: str
) -> None:
    """nginx logs the request line of a 400 when it read one: so do we, when it arrived whole and is
    well formed; otherwise `-`."""
    path = tmp_path / "access.log"
    backends = await start_backends(nursery, 0)
    dispatcher = await start_dispatcher(nursery, settings_for(backends, access_log=str(path)))
    await wait_all_up(dispatcher)
    await exchange(dispatcher.port, head)
    dispatcher.stop.set()
    await _wait_lines(path, 1)
    (logged,) = lines_of(path)
    assert line in logged
