"""SIGHUP and SIGUSR1 before the signal watcher runs: held, never the process's end, done once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from dispatcher.wiring import entry
from tests.helpers import poll_admin, start_backends, unused_port


def test_a_signal_held_before_the_watcher_is_done_once_at_deliver() -> None:
    """Real signals to this process: held (their default action would end it), done once, in order."""
    done: list[str] = []
    previous = entry.hold()
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGHUP)
        os.kill(os.getpid(), signal.SIGHUP)  # twice before the app runs: one reload is enough
        entry.deliver(
            {signal.SIGHUP: lambda: done.append("reload"), signal.SIGUSR1: lambda: done.append("reopen")}
        )
        assert done == ["reload", "reopen"]
        entry.deliver({signal.SIGHUP: lambda: done.append("again")})
        assert done == ["reload", "reopen"]  # delivered once
    finally:
        entry.release(previous)
    assert signal.getsignal(signal.SIGHUP) == previous[signal.SIGHUP]


def _up(backends_json: str) -> list[str]:
    try:
        return [b["name"] for b in json.loads(backends_json) if b["state"] == "up"]
    except ValueError:
        return []


def _catches_sighup(pid: int) -> bool:
    """Whether the process has a handler for SIGHUP (its SigCgt mask in /proc, bit 0 for signal 1)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    caught = next(line for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(caught.split()[1], 16) & (1 << (signal.SIGHUP - 1)))


async def _until_it_holds_sighup(pid: int) -> None:
    """Until the process has its SIGHUP handler (`entry.hold`, before its imports), polled every
    millisecond and for 10 s at most: another process's signal mask offers no event to wait on."""
    with trio.fail_after(10):
        while not _catches_sighup(pid):
            await trio.sleep(0.001)


async def test_a_sighup_as_soon_as_the_process_catches_it_reloads_and_never_kills(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """A real process, SIGHUP sent the moment it holds the signal (while it is still importing): it
    lives, and the reload it asked for applies the file as it is by then."""
    b1, b2 = await start_backends(nursery, 0, 0)
    port, admin = unused_port(), unused_port()
    path = tmp_path / "dispatcher.toml"
    head = f'listen = "127.0.0.1:{port}"\nadmin_listen = "127.0.0.1:{admin}"\n'
    path.write_text(head + f'[[backends]]\nurl = "{b1.url}"\n')
    argv = [sys.executable, "-m", "dispatcher", "--config", str(path), "--health-interval", "0.1"]
    process = await trio.lowlevel.open_process(argv, stderr=subprocess.DEVNULL)
    try:
        await _until_it_holds_sighup(process.pid)
        path.write_text(head + f'[[backends]]\nurl = "{b1.url}"\n[[backends]]\nurl = "{b2.url}"\n')
        with pytest.raises(OSError):  # still starting: the admin listener is not up yet
            await trio.open_tcp_stream("127.0.0.1", admin)
        process.send_signal(signal.SIGHUP)
        await poll_admin(admin, "/backends", lambda _, text: len(_up(text)) == 2)
        assert process.poll() is None
    finally:
        process.send_signal(signal.SIGTERM)
        assert await process.wait() == 0


def test_only_interrupts_count_as_a_ctrl_c() -> None:
    """A KeyboardInterrupt, or a group of nothing else, is a Ctrl-C; anything else is not."""
    assert entry.interrupted(KeyboardInterrupt())
    assert entry.interrupted(BaseExceptionGroup("", [KeyboardInterrupt(), KeyboardInterrupt()]))
    assert not entry.interrupted(BaseExceptionGroup("", [KeyboardInterrupt(), ValueError()]))
    assert not entry.interrupted(SystemExit(2))


async def test_a_ctrl_c_while_starting_ends_with_130_and_no_traceback(tmp_path: Path) -> None:
    """SIGINT to a real process still importing: exit status 130, nothing on stderr but what it
    logged (no traceback)."""
    path = tmp_path / "dispatcher.toml"
    path.write_text('[[backends]]\nurl = "http://127.0.0.1:9"\n')
    argv = [
        sys.executable,
        "-m",
        "dispatcher",
        "--config",
        str(path),
        "--listen",
        f"127.0.0.1:{unused_port()}",
    ]
    process = await trio.lowlevel.open_process(argv, stderr=subprocess.PIPE)
    await _until_it_holds_sighup(process.pid)
    process.send_signal(signal.SIGINT)
    assert process.stderr is not None
    with trio.fail_after(10):
        stderr = b"".join([chunk async for chunk in process.stderr])
        assert await process.wait() == entry.INTERRUPTED
    assert b"Traceback" not in stderr
