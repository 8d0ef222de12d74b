"""How long the dispatcher takes to stop: from SIGTERM to its `stopped` line, and from that line to
the process's exit (issue 15, item 12: "exits 1.2-1.5 s after it logs `stopped`").

What it measures: a real `python -m dispatcher`, started as a user starts it (a TOML file, a real
`python -m http.server` backend), in six setups: one process, an open keep-alive client, SIGINT
instead of SIGTERM, after a SIGHUP reload, and `--workers 2` with and without a reload before. Each
is started `--rounds` times; the table gives the median of each interval. Wall-clock, so a busy
machine adds to every figure alike; no baseline is needed, since the bound is "promptly".

    python benchmarks/shutdown.py            # 3 rounds, about a minute
"""

from __future__ import annotations

import argparse
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SETTLE = 2.5  # seconds after start (and after a reload) before the signal: checks have run


@dataclass(frozen=True)
class Setup:
    label: str
    flags: tuple[str, ...] = ()
    reload: bool = False
    keepalive: bool = False
    stop_signal: signal.Signals = signal.SIGTERM


SETUPS = (
    Setup("one process"),
    Setup("one process, a keep-alive client open", keepalive=True),
    Setup("one process, SIGINT", stop_signal=signal.SIGINT),
    Setup("one process, after a SIGHUP reload", reload=True),
    Setup("--workers 2", ("--workers", "2")),
    Setup("--workers 2, after a SIGHUP reload", ("--workers", "2"), reload=True),
)


@dataclass
class Timing:
    to_stopped: list[float] = field(default_factory=list)
    to_exit: list[float] = field(default_factory=list)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def config_file(backend_port: int) -> str:
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as file:
        file.write(f'[[backends]]\nurl = "http://127.0.0.1:{backend_port}"\nname = "b1"\n')
        file.write('[health]\npath = "/"\n')
        return file.name


def one_stop(setup: Setup, config: str) -> tuple[float, float]:
    """Start, wait, (reload,) signal; returns (signal -> `stopped`, `stopped` -> exit) in seconds."""
    port, admin = free_port(), free_port()
    argv = [sys.executable, "-m", "dispatcher", "--config", config, "--listen", f"127.0.0.1:{port}"]
    argv += ["--admin-listen", f"127.0.0.1:{admin}", *setup.flags]
    process = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    assert process.stderr is not None
    for line in process.stderr:
        if "front door on" in line:
            break
    time.sleep(SETTLE)
    if setup.reload:
        process.send_signal(signal.SIGHUP)
        time.sleep(SETTLE)
    client = None
    if setup.keepalive:
        client = socket.create_connection(("127.0.0.1", port))
        client.sendall(b"GET / HTTP/1.1\r\nhost: bench\r\n\r\n")
        client.recv(4096)
    sent = time.monotonic()
    process.send_signal(setup.stop_signal)
    stopped = None
    for line in process.stderr:
        if stopped is None and line.rstrip().endswith(" dispatcher: stopped"):
            stopped = time.monotonic()
    process.wait()
    exited = time.monotonic()
    if client is not None:
        client.close()
    stopped = exited if stopped is None else stopped
    return stopped - sent, exited - stopped


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="how long the dispatcher takes to stop")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    backend_port = free_port()
    backend = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(backend_port), "--bind", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    config = config_file(backend_port)
    timings = {setup.label: Timing() for setup in SETUPS}
    try:
        for _ in range(args.rounds):
            for setup in SETUPS:
                to_stopped, to_exit = one_stop(setup, config)
                timings[setup.label].to_stopped.append(to_stopped)
                timings[setup.label].to_exit.append(to_exit)
    finally:
        backend.kill()
        Path(config).unlink()
    width = max(len(label) for label in timings)
    print(f"{'setup':<{width}}  signal -> stopped   stopped -> exit   (median of {args.rounds}, ms)")
    for label, timing in timings.items():
        median_stop = statistics.median(timing.to_stopped) * 1e3
        median_exit = statistics.median(timing.to_exit) * 1e3
        print(f"{label:<{width}}  {median_stop:>16.0f}   {median_exit:>15.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
