# Starting the servers a scenario loads: the dispatcher over scenario 1's three http.server backends or over
# a pool of backends.py, and the trio + h11 baseline; starting several and loading them in turns.
#
# Owns: the pool sizes (SMALL_POOL, LARGE_POOL) and how long a pool may take to come up, the dispatcher's
# command line and config file, readiness (/readyz says every backend is up) and the one redirect checked by
# hand before any load. Rules: every server is a context manager, stopped on the way out; the dispatcher
# runs as users run it, `python -m dispatcher` (this package must not import `dispatcher`).

import functools
import sys
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from harness import (
    BENCHMARKS_DIR,
    HOST,
    READY_TIMEOUT_SECONDS,
    REPO_ROOT,
    WrkLoad,
    accepts_connections,
    all_backends_up,
    check_redirect,
    free_ports,
    running,
    wait_until_ready,
)

from scenarios.context import Bench, Server, file_name
from scenarios.results import Run

SMALL_POOL = 3
LARGE_POOL = 1000
# A pool of 1,000 must pass 1,000 first checks (at most 100 connecting at once) before /readyz says so.
LARGE_POOL_READY_SECONDS = 60.0
# After /readyz says all are up, let the start-up burst of first checks pass before measuring anything
# idle (CPU, memory).
SETTLE_SECONDS = 1.0


@dataclass(frozen=True)
class Dispatcher(Server):
    """A started `python -m dispatcher` whose backends are all up."""

    admin_port: int
    base_urls: list[str]
    ready_seconds: float  # from the start of the process to all backends up


@contextmanager
def dispatcher_running(
    bench: Bench,
    name: str,
    backend_args: Sequence[str],
    base_urls: list[str],
    cpus: frozenset[int] | None,
    extra: Sequence[str] = (),
    ready_timeout: float = READY_TIMEOUT_SECONDS,
    cwd: Path = REPO_ROOT,
) -> Iterator[Dispatcher]:
    """`python -m dispatcher` on free ports, started in `cwd` (whose `dispatcher` package, if it has
    one, is the one imported); yields once /readyz says every backend is up."""
    port, admin_port = free_ports(2)
    argv = [sys.executable, "-m", "dispatcher", "--listen", f"{HOST}:{port}"]
    argv += ["--admin-listen", f"{HOST}:{admin_port}", *backend_args, *extra]
    log = bench.log(name)
    with running(argv, log, cpus, cwd=cwd) as process:
        ready = functools.partial(all_backends_up, admin_port, len(base_urls))
        waited = wait_until_ready(ready, process, log, ready_timeout)
        check_redirect(port, base_urls, name)
        yield Dispatcher(name, process, port, admin_port, base_urls, waited)


def backend_flags(base_urls: Sequence[str]) -> list[str]:
    return [arg for base_url in base_urls for arg in ("--backend", base_url)]


def pool_config(bench: Bench, count: int, mode: Sequence[str] = ()) -> tuple[list[str], list[str]]:
    """A config file with `count` backends on backends.py (`/b0001`, `/b0002`, ...) started with the
    options `mode`: its flag and URLs."""
    base = f"http://{HOST}:{bench.pool_port(count, mode)}"
    base_urls = [f"{base}/b{index:04d}" for index in range(1, count + 1)]
    entries = (f'[[backends]]\nurl = "{url}"\nname = "{url.rpartition("/")[2]}"\n' for url in base_urls)
    path = bench.settings.log_dir / f"{file_name(' '.join([f'pool-{count}', *mode]))}.toml"
    path.write_text("\n".join(entries))
    return ["--config", str(path)], base_urls


@contextmanager
def baseline_running(bench: Bench, name: str = "baseline") -> Iterator[Server]:
    """benchmarks/baseline.py: trio + h11 answering 307 to itself, nothing else."""
    (port,) = free_ports(1)
    argv = [sys.executable, str(BENCHMARKS_DIR / "baseline.py"), "--listen", f"{HOST}:{port}"]
    log = bench.log(name)
    with running(argv, log, bench.settings.server_cpus) as process:
        wait_until_ready(functools.partial(accepts_connections, port), process, log)
        check_redirect(port, [f"http://{HOST}:{port}"], name)
        yield Server(name, process, port)


def file_dispatcher(
    bench: Bench, name: str = "dispatcher", extra: Sequence[str] = (), pinned: bool = True
) -> AbstractContextManager[Dispatcher]:
    """The dispatcher over scenario 1's three http.server backends."""
    base_urls = bench.file_backends()
    cpus = bench.settings.server_cpus if pinned else None
    return dispatcher_running(bench, name, backend_flags(base_urls), base_urls, cpus, extra)


def pool_dispatcher(
    bench: Bench, count: int, name: str, extra: Sequence[str] = (), mode: Sequence[str] = ()
) -> AbstractContextManager[Dispatcher]:
    """The dispatcher over `count` backends of backends.py (started with the options `mode`), given in
    a config file."""
    flags, base_urls = pool_config(bench, count, mode)
    cpus = bench.settings.server_cpus
    return dispatcher_running(bench, name, flags, base_urls, cpus, extra, pool_timeout(count))


def compared(
    bench: Bench,
    load: WrkLoad,
    starts: Sequence[AbstractContextManager[Server]],
    pinned: bool = True,
    rounds: int | None = None,
) -> list[Run]:
    """Start the servers, one after the other, then load them in turns (Bench.take_turns)."""
    with ExitStack() as stack:
        servers = [stack.enter_context(start) for start in starts]
        return bench.take_turns(load, servers, pinned, rounds)


def pool_timeout(count: int) -> float:
    """How long a dispatcher over `count` backends may take until all are up."""
    return LARGE_POOL_READY_SECONDS if count > SMALL_POOL else READY_TIMEOUT_SECONDS
