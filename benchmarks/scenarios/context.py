# What the scenarios of one invocation share: the settings, the backends (started on first use and
# stopped when the invocation ends), fresh log files, and loading servers in turns.
#
# Owns: `Settings` (the wrk load, the CPUs for servers and the rest, the scenarios' knobs), `Server` (a
# started server ready for load), `Bench` and its turns: `rounds` rounds of one wrk run per side, in the
# order A B, B A, A B ..., the side not being loaded parked on the wrk CPUs.
# Rules: every helper process is entered into the invocation's ExitStack, so that it is stopped in a
# `finally`; no scenario's figures here. It must not import `dispatcher`.

import functools
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path

from harness import (
    BENCHMARKS_DIR,
    HOST,
    REPO_ROOT,
    WrkLoad,
    accepts_connections,
    answers_ok,
    cpu_snapshot,
    free_ports,
    may_leave_idle,
    move_to,
    others_cpu_percent,
    run_when_idle,
    run_wrk,
    running,
    stop,
    wait_until_ready,
)

from scenarios.results import Run

FILE_BACKEND_COUNT = 3  # scenario 1's pool: three `python -m http.server`


@dataclass(frozen=True)
class Settings:
    """What every scenario shares: the wrk load, the CPUs for servers and the rest, logs, and the knobs of
    the scenarios that are not wrk runs."""

    duration_seconds: int
    connections: int
    threads: int
    rounds: int
    server_cpus: frozenset[int] | None
    wrk_cpus: frozenset[int] | None
    log_dir: Path
    idle_seconds: float  # scenario 3: the idle CPU window
    idle_connections: int  # scenario 5
    profile_seconds: int  # scenario 7
    py_spy: str | None  # the py-spy executable, if found
    versus: str | None = None  # scenario 12: the git revision whose dispatcher this tree's is compared with

    def load(self) -> WrkLoad:
        """The standard wrk load: saturating, from the wrk CPUs."""
        return WrkLoad(self.threads, self.connections, self.duration_seconds, self.wrk_cpus)


@dataclass(frozen=True)
class Server:
    """A started server, ready for load: what its runs are called, its process, its port."""

    name: str
    process: subprocess.Popen[bytes]
    port: int


def file_name(name: str) -> str:
    """A server's or pool's name as a file name: each run of other characters becomes one `-`."""
    return re.sub(r"[^A-Za-z0-9]+", "-", name)


class Bench:
    """What the scenarios of one invocation share: the settings, which sides of scenario 1 run, the
    backends (started on first use and stopped when the invocation ends), and the figure scenario 4 takes
    from scenario 1."""

    def __init__(self, settings: Settings, sides: frozenset[str], stack: ExitStack) -> None:
        self.settings = settings
        self.sides = sides  # of scenario 1: "baseline", "dispatcher"
        self.saturation_rps: float | None = None  # scenario 1's dispatcher req/s
        self._stack = stack
        self._file_backends: list[str] | None = None
        self._pool_ports: dict[tuple[int, tuple[str, ...]], int] = {}
        self._helpers: list[subprocess.Popen[bytes]] = []
        self._park_idle = may_leave_idle()  # parked servers run under SCHED_IDLE
        self._logs = 0

    def log(self, name: str) -> Path:
        """A fresh log file: runs of the same server must not overwrite each other's log."""
        self._logs += 1
        return self.settings.log_dir / f"{self._logs:02d}-{file_name(name)}.log"

    def helper_pids(self) -> list[int]:
        """The backends' pids: their CPU time is ours, not another process's."""
        return [helper.pid for helper in self._helpers if helper.poll() is None]

    def file_backends(self) -> list[str]:
        """Scenario 1's three `python -m http.server` backends (each serves a `health` file)."""
        if self._file_backends is None:
            base_urls = []
            for index, port in enumerate(free_ports(FILE_BACKEND_COUNT)):
                root = Path(self._stack.enter_context(tempfile.TemporaryDirectory(prefix="backend-")))
                (root / "health").write_text("ok\n")
                argv = [sys.executable, "-m", "http.server", "--bind", HOST, str(port)]
                ready = functools.partial(answers_ok, port, "/health")
                self._start_helper(argv, f"backend-{index}", ready, cwd=root)
                base_urls.append(f"http://{HOST}:{port}")
            self._file_backends = base_urls
        return self._file_backends

    def pool_port(self, count: int, mode: Sequence[str] = ()) -> int:
        """The port of the benchmarks/backends.py serving the pool of `count` backends (`/bNNNN`
        prefixes on one port), started with the options `mode` (`--stream`, `--vary-load`). Each pool
        has its own, so that two dispatchers running side by side are never answered by the same
        process, and each process counts one pool's checks."""
        key = (count, tuple(mode))
        if key not in self._pool_ports:
            (port,) = free_ports(1)
            argv = [sys.executable, str(BENCHMARKS_DIR / "backends.py"), "--listen", f"{HOST}:{port}", *mode]
            name = " ".join([f"pool-{count}-backends", *mode])
            self._start_helper(argv, name, functools.partial(accepts_connections, port))
            self._pool_ports[key] = port
        return self._pool_ports[key]

    def _start_helper(
        self, argv: list[str], name: str, ready: Callable[[], bool], cwd: Path = REPO_ROOT
    ) -> None:
        log = self.log(name)
        # On the wrk side: health checks are light, and the server's core stays the server's own.
        process = self._stack.enter_context(running(argv, log, self.settings.wrk_cpus, cwd=cwd))
        self._helpers.append(process)
        wait_until_ready(ready, process, log)
        # And only when wrk leaves the CPU idle: 1,000 backends' answers (about 200 us of Python each,
        # 500 or 1,000 a second) must not delay the load generator, which would starve the server and
        # be counted against it. wrk itself uses a sixth of its core.
        run_when_idle(process.pid)

    def take_turns(
        self, load: WrkLoad, servers: Sequence[Server], pinned: bool = True, rounds: int | None = None
    ) -> list[Run]:
        """Load the servers, all up at once, in turns: one wrk run each per round, in the order A B,
        then B A, then A B again. A drift of the machine within a round then falls on both sides alike,
        and one that lasts longer is cancelled by the alternation; each server also runs as long as the
        other, warm, without a restart between rounds. The servers not being loaded are parked on the
        wrk CPUs (when `pinned`), so that their own background work (health checks) never takes the
        loaded server's core. Then every server is stopped; the last run of each says how it ended."""
        pids = [server.process.pid for server in servers]
        runs = []
        for round_ in range(rounds or self.settings.rounds):
            for server in servers if round_ % 2 == 0 else list(reversed(servers)):
                if pinned:
                    self._park_all_but(server, servers)
                before = cpu_snapshot(pids, self.helper_pids())
                figures = run_wrk(load, server.port)
                others = others_cpu_percent(before, cpu_snapshot(pids, self.helper_pids()))
                runs.append(Run(server.name, load.describe(), figures, others, ""))
        for server in servers:
            last = max(i for i, run in enumerate(runs) if run.name == server.name)
            runs[last] = replace(runs[last], shutdown=stop(server.process))
        return runs

    def _park_all_but(self, loaded: Server, servers: Sequence[Server]) -> None:
        """The loaded server on the server CPUs; the others on the wrk CPUs, and there only when wrk
        leaves them idle (where they may be given the normal policy back: see may_leave_idle), so
        that their health checks do not delay the load generator either."""
        server_cpus, wrk_cpus = self.settings.server_cpus, self.settings.wrk_cpus
        if server_cpus is None or wrk_cpus is None:
            return
        for server in servers:
            parked = server is not loaded
            if self._park_idle:
                run_when_idle(server.process.pid, parked)
            move_to(server.process.pid, wrk_cpus if parked else server_cpus)
