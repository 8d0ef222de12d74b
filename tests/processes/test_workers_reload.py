"""--workers and SIGHUP: nginx's reload. New workers start with the new config, then the old ones drain.

A real master with two workers runs as a child process, configured by a file that each test
rewrites before sending SIGHUP, in front of backends served by this test's trio loop. The master's
log lines are events (read from its stderr); what only shows in other processes (which workers
run and listen, which tables the master maps) is polled, bounded, through the admin listener and
/proc: nothing else can be waited on.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from dispatcher.net.listen import migrate_enabled
from tests.helpers import (
    TestBackend,
    exchange,
    listens,
    one_response,
    parse_responses,
    poll_admin,
    read_until_close,
    receive_responses,
    request_head,
    start_backends,
    unused_port,
    worker_pids,
)

CLOSE = request_head("/r", "Host: f", "Connection: close")
KEEP_ALIVE = request_head("/k", "Host: f")


@dataclass
class Log:
    """The master's stderr, read as it comes; `wait_for` is woken by each new chunk."""

    text: str = ""
    grew: trio.Event = field(default_factory=trio.Event)

    async def read(self, process: trio.Process) -> None:
        assert process.stderr is not None
        async for chunk in process.stderr:
            self.text += chunk.decode(errors="replace")
            self.grew.set()
            self.grew = trio.Event()

    async def wait_for(self, needle: str, limit: float = 10.0) -> None:
        with trio.fail_after(limit):
            while needle not in self.text:
                await self.grew.wait()

    def lines(self, needle: str) -> list[str]:
        return [line for line in self.text.splitlines() if needle in line]


def write_config(
    path: Path, port: int, admin: int, backends: list[TestBackend], extra: str = "", workers: int = 2
) -> None:
    """These backends (with their names), health checks every minute: only the first check of a
    backend matters here, and it comes at once (no jitter)."""
    entries = "".join(f'[[backends]]\nurl = "{b.url}"\nname = "{b.name}"\n' for b in backends)
    path.write_text(
        f'listen = "127.0.0.1:{port}"\nadmin_listen = "127.0.0.1:{admin}"\nworkers = {workers}\n{extra}\n'
        f"[health]\ninterval = 60\njitter = 0\n{entries}"
    )


@dataclass
class Master:
    """A `--workers 2` dispatcher process and its config file."""

    process: trio.Process
    config: Path
    port: int
    admin: int
    log: Log = field(default_factory=Log)

    def reload(self, backends: list[TestBackend], extra: str = "", workers: int = 2) -> None:
        """Rewrite the config file and send SIGHUP."""
        write_config(self.config, self.port, self.admin, backends, extra, workers)
        self.process.send_signal(signal.SIGHUP)

    async def workers_listening(self, other_than: Collection[int] = ()) -> list[int]:
        """Once exactly two workers run, none of `other_than`, and both listen: their pids."""
        found: list[int] = []

        def ready(status: int, text: str) -> bool:
            found[:] = worker_pids(self.process.pid)
            fresh = not set(found) & set(other_than)
            return len(found) == 2 and fresh and all(listens(pid, self.port) for pid in found)

        await poll_admin(self.admin, "/healthz", ready)
        return found

    def tables(self) -> int:
        """How many shared-memory tables the master has mapped."""
        maps = Path(f"/proc/{self.process.pid}/maps").read_text().splitlines()
        return len({line.split()[-1] for line in maps if "/dev/shm/psm_" in line})


async def start_master(
    nursery: trio.Nursery, tmp_path: Path, backends: list[TestBackend], cwd: Path | None = None
) -> Master:
    """The master, once its workers listen and every backend is up."""
    port, admin, config = unused_port(), unused_port(), tmp_path / "dispatcher.toml"
    write_config(config, port, admin, backends)
    argv = [sys.executable, "-m", "dispatcher", "--config", str(config), "--log-level", "info"]
    process = await trio.lowlevel.open_process(argv, stderr=subprocess.PIPE, cwd=cwd)
    master = Master(process, config, port, admin)
    nursery.start_soon(master.log.read, process)
    ready = f"ready: {len(backends)} of {len(backends)}"
    await poll_admin(admin, "/readyz", lambda _, text: text.startswith(ready))
    return master


async def stop_master(master: Master) -> None:
    master.process.send_signal(signal.SIGTERM)
    with trio.fail_after(20):
        assert await master.process.wait() == 0
    assert "Traceback" not in master.log.text, master.log.text
    assert "did not stop within the grace period" not in master.log.text, master.log.text


def samples(text: str) -> dict[str, float]:
    """Every counter sample of a scrape, keyed by name and labels."""
    return {
        s.name + "{" + ",".join(f"{k}={v}" for k, v in sorted(s.labels.items())) + "}": s.value
        for family in text_string_to_metric_families(text)
        if family.type in ("counter", "histogram")
        for s in family.samples
        if not s.name.endswith("_created")
    }


# --- traffic through the swap ------------------------------------------------------------------------


@dataclass
class Traffic:
    """What the clients saw: per phase, the Location of every 307; anything else is a failure."""

    port: int
    phase: str = "before"
    locations: dict[str, list[bytes]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    retried: int = 0  # keep-alive requests sent as an idle connection was closed (RFC 9112 §9.3.1)
    counted: trio.Event = field(default_factory=trio.Event)
    wanted: int = 0  # `counted` is set when the current phase has this many answers
    stop: trio.Event = field(default_factory=trio.Event)

    def record(self, phase: str, raw: bytes) -> bool:
        """One answer; True when it is a 307 that lets the connection stay open."""
        try:
            response = one_response(raw)
        except (AssertionError, ValueError):
            self.failures.append(f"{phase}: not one whole response: {raw!r}")
            return False
        if response.status != 307:
            self.failures.append(f"{phase}: {response.status} {response.body!r}")
            return False
        seen = self.locations.setdefault(phase, [])
        seen.append(response.header(b"location") or b"")
        if phase == self.phase and len(seen) >= self.wanted:
            self.counted.set()
        return not response.closes

    async def until(self, phase: str, answers: int) -> None:
        """Switch to `phase` and return once it has `answers` answers."""
        self.phase, self.wanted, self.counted = phase, answers, trio.Event()
        with trio.fail_after(10):
            await self.counted.wait()

    def to(self, backend: TestBackend, phase: str) -> int:
        return sum(
            1 for location in self.locations.get(phase, []) if location.startswith(backend.url.encode())
        )


async def new_connections(traffic: Traffic) -> None:
    """A new connection for every request: a refused or reset connection is a failure."""
    while not traffic.stop.is_set():
        phase = traffic.phase
        try:
            stream = await trio.open_tcp_stream("127.0.0.1", traffic.port)
        except OSError as error:
            traffic.failures.append(f"{phase}: connect: {error}")
            continue
        async with stream:
            try:
                await stream.send_all(CLOSE)
                raw = await read_until_close(stream, timeout=5)
            except (trio.BrokenResourceError, trio.TooSlowError) as error:
                traffic.failures.append(f"{phase}: {error!r}")
                continue
        traffic.record(phase, raw)


async def keep_alive(traffic: Traffic) -> None:
    """Requests one after another on one connection while the server keeps it, then on a new one.

    A kept-alive connection closed before any byte of the next answer is retried on a new one, as
    clients do (RFC 9112 §9.3.1): old workers close idle connections as they stop, as nginx's do.
    Anything else (a refused connection, a cut answer, a status other than 307) is a failure.
    """
    stream: trio.SocketStream | None = None
    reused = False
    while not traffic.stop.is_set():
        phase = traffic.phase
        if stream is None:
            try:
                stream, reused = await trio.open_tcp_stream("127.0.0.1", traffic.port), False
            except OSError as error:
                traffic.failures.append(f"{phase}: connect: {error}")
                continue
        raw, error = await ask(stream)
        keep = False
        if not raw and reused and not isinstance(error, trio.TooSlowError):
            traffic.retried += 1
        elif not raw:
            traffic.failures.append(f"{phase}: {error!r}, nothing received on a new connection")
        else:
            keep = traffic.record(phase, raw)
        if keep:
            reused = True
        else:
            await stream.aclose()
            stream = None
    if stream is not None:
        await stream.aclose()


async def ask(stream: trio.SocketStream) -> tuple[bytes, Exception | None]:
    """Send one keep-alive request; what came back until one whole answer, EOF or an error."""
    raw = b""
    try:
        await stream.send_all(KEEP_ALIVE)
        with trio.fail_after(5):
            while not parse_responses(raw)[0]:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    break
                raw += chunk
    except (trio.BrokenResourceError, trio.TooSlowError) as error:
        return raw, error
    return raw, None


def needs_migration() -> None:
    """Without net.ipv4.tcp_migrate_req the kernel resets handshakes queued on a closing listener."""
    if not migrate_enabled():
        message = "net.ipv4.tcp_migrate_req is not 1 (.ci/run sets it)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


async def test_reload_swaps_the_workers_without_a_failed_request_and_counters_add_up(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """SIGHUP that adds one backend and removes another, under traffic on new and kept-alive
    connections: every request gets its 307; the added backend gets redirects and the removed one
    none; the kept ones keep their health, drain state and counts; no counter goes back in a
    scrape, and at the end each one equals what the clients received."""
    needs_migration()
    kept, drained, removed, added = await start_backends(nursery, 0, 0, 0, 0)
    master = await start_master(nursery, tmp_path, [kept, drained, removed])
    try:
        async with httpx.AsyncClient(trust_env=False) as client:
            url = f"http://127.0.0.1:{master.admin}/backends/{drained.name}/state"
            assert (await client.post(url, content="drain")).status_code == 200
        old_workers = worker_pids(master.process.pid)
        traffic = Traffic(master.port)
        scrapes: list[dict[str, float]] = []
        async with trio.open_nursery() as clients:
            for client_task in (new_connections, new_connections, keep_alive, keep_alive):
                clients.start_soon(client_task, traffic)
            clients.start_soon(scrape, master.admin, scrapes, traffic.stop)
            await traffic.until("before", 100)
            master.reload([kept, drained, added])
            traffic.phase = "swap"
            await master.log.wait_for("workers of generation 0 stopped")
            await poll_admin(master.admin, f"/backends/{added.name}", lambda _, text: '"up"' in text)
            await traffic.until("after", 100)
            traffic.stop.set()
        assert traffic.failures == []
        assert traffic.retried <= 4  # an idle close at most once per kept-alive client and old worker
        assert {phase: len(seen) >= 100 for phase, seen in traffic.locations.items()} == {
            "before": True,
            "swap": True,
            "after": True,
        }
        assert traffic.to(added, "after") > 0 and traffic.to(removed, "after") == 0
        # Drained before the traffic began (the workers take it up to 10 ms later), never after.
        assert traffic.to(drained, "swap") == traffic.to(drained, "after") == 0
        await master.workers_listening(other_than=old_workers)
        assert master.tables() == 1  # the old generation's table is released
        text = await poll_admin(master.admin, f"/backends/{drained.name}", lambda status, _: status == 200)
        assert '"state": "draining"' in text
        assert drained.health_checks == kept.health_checks == 1  # kept: never checked again from scratch
        # No counter went back in a scrape, through the swap and the old generation's end.
        for before, after in itertools.pairwise(scrapes):
            went_back = {k: (v, after[k]) for k, v in before.items() if k in after and after[k] < v}
            assert went_back == {}
        assert len(scrapes) >= 10
        # Each adds up to what the clients saw: the old generation's counts were carried over.
        every = [location for seen in traffic.locations.values() for location in seen]
        by_backend = Counter(location.rsplit(b"/", 1)[0].decode() for location in every)
        expected = {
            f"dispatcher_redirects_total{{backend={b.name},pool=default}}": float(by_backend[b.url])
            for b in (kept, drained, added)
        }
        expected["dispatcher_responses_total{code=307}"] = float(len(every))
        expected["dispatcher_request_duration_seconds_count{}"] = float(len(every))
        final: dict[str, float] = {}

        def added_up(status: int, text: str) -> bool:
            final.update(samples(text))
            return all(final.get(k) == v for k, v in expected.items())

        with contextlib.suppress(trio.TooSlowError):  # another process: its last sync is 10 ms late
            await poll_admin(master.admin, "/metrics", added_up, limit=2)
        assert {k: final.get(k) for k in expected} == expected
    finally:
        await stop_master(master)


async def scrape(admin: int, scrapes: list[dict[str, float]], stop: trio.Event) -> None:
    """Scrape /metrics back to back (a sample every 10 ms) until `stop`."""
    async with httpx.AsyncClient(trust_env=False) as client:
        while not stop.is_set():
            response = await client.get(f"http://127.0.0.1:{admin}/metrics")
            scrapes.append(samples(response.text))
            await trio.sleep(0.01)


# --- settings, reloads in a row, a reload that fails -------------------------------------------------


async def test_reload_applies_front_door_settings_in_the_new_workers(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """Timeouts and the discard limit reach the new workers; a change of `workers` or
    `max_connections` still takes a restart, with the usual warning."""
    (backend,) = await start_backends(nursery, 0)
    master = await start_master(nursery, tmp_path, [backend])
    try:
        old_workers = worker_pids(master.process.pid)
        extra = "header_timeout = 0.2\nkeepalive_timeout = 0.2\nmax_discard = 16\n"
        master.reload([backend], extra + "max_connections = 5\n", workers=3)
        await master.log.wait_for("workers of generation 0 stopped")
        await master.workers_listening(other_than=old_workers)  # still two: `workers` needs a restart
        for key in ("workers", "max_connections"):
            assert len(master.log.lines(f"reload: {key} changed; that takes a restart, keeping ")) == 1
        async with await trio.open_tcp_stream("127.0.0.1", master.port) as stream:
            await stream.send_all(b"GET /slow HTTP/1.1\r\n")  # a head that never ends: 408 at 0.2 s
            assert one_response(await read_until_close(stream, timeout=5)).status == 408
        async with await trio.open_tcp_stream("127.0.0.1", master.port) as stream:
            await stream.send_all(request_head("/idle", "Host: f"))  # kept alive, then idle: closed
            assert one_response(await read_until_close(stream, timeout=5)).status == 307
        async with await trio.open_tcp_stream("127.0.0.1", master.port) as stream:
            await stream.send_all(request_head("/post", "Host: f", "Content-Length: 17", method="POST"))
            await stream.send_all(b"x" * 17)  # over max_discard: the 307 closes the connection
            answer = one_response(await read_until_close(stream, timeout=5))
            assert (answer.status, answer.closes) == (307, True)
    finally:
        await stop_master(master)


async def test_reloads_in_a_row_are_taken_one_at_a_time(nursery: trio.Nursery, tmp_path: Path) -> None:
    """A SIGHUP while the workers of the one before still start: one swap after the other, the
    newest config wins, two workers and one table remain, and a killed worker of the newest
    generation is started again."""
    b1, b2, b3 = await start_backends(nursery, 50, 50, 0)
    master = await start_master(nursery, tmp_path, [b1])
    try:
        first = worker_pids(master.process.pid)
        master.reload([b1, b2])

        def swapping(status: int, text: str) -> bool:
            return bool(set(worker_pids(master.process.pid)) - set(first))

        await poll_admin(master.admin, "/healthz", swapping)  # new workers exist; not yet listening
        master.reload([b1, b2, b3])
        await master.log.wait_for("workers of generation 1 stopped")
        await master.log.wait_for("workers of generation 0 stopped")
        assert len(master.log.lines("reloaded: ")) == 2
        workers = await master.workers_listening(other_than=first)
        assert master.tables() == 1
        # b3 reports the least load: once the workers have its first check, it gets the redirects.
        to_b3 = f"{b3.url}/r".encode()
        with trio.fail_after(5):
            while one_response(await exchange(master.port, CLOSE)).header(b"location") != to_b3:
                pass
        await trio.run_process(["kill", "-9", str(workers[0])])
        await master.log.wait_for("exited with status -9: starting it again")
        await master.workers_listening(other_than=[workers[0]])
        assert len(master.log.lines("exited with status -9: starting it again")) == 1
    finally:
        await stop_master(master)


async def test_a_reload_whose_workers_cannot_start_leaves_the_old_ones_serving(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """New workers cannot be spawned (the master's working directory is gone): one log line, the
    old workers keep serving the old config, and the new table is released."""
    b1, b2 = await start_backends(nursery, 0, 0)
    (tmp_path / "run").mkdir()
    master = await start_master(nursery, tmp_path, [b1], cwd=tmp_path / "run")
    try:
        workers = worker_pids(master.process.pid)
        (tmp_path / "run").rmdir()
        master.reload([b1, b2])
        await master.log.wait_for("workers of generation 1 stopped")
        [failed] = master.log.lines("reload failed")
        assert "the running workers and config stay" in failed and "No such file" in failed
        assert sorted(worker_pids(master.process.pid)) == sorted(workers)
        assert master.tables() == 1
        async with httpx.AsyncClient(trust_env=False) as client:
            listed = (await client.get(f"http://127.0.0.1:{master.admin}/backends")).json()
        assert [b["name"] for b in listed] == [b1.name]
        for _ in range(6):
            answer = one_response(await exchange(master.port, CLOSE))
            assert answer.header(b"location") == f"{b1.url}/r".encode()
    finally:
        await stop_master(master)


async def test_a_stop_lets_the_workers_a_reload_retired_finish_their_drain(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """SIGTERM while a reload's old workers still drain: they keep draining (a request in flight
    on one of them gets its answer), and the master then exits 0."""
    (backend,) = await start_backends(nursery, 0)
    master = await start_master(nursery, tmp_path, [backend])
    async with await trio.open_tcp_stream("127.0.0.1", master.port) as stream:
        await stream.send_all(KEEP_ALIVE)
        [kept] = await receive_responses(stream, 1, timeout=5)  # kept alive by a worker of generation 0
        assert kept.status == 307
        await stream.send_all(b"GET /inflight HTTP/1.1\r\n")  # half a head: generation 0 drains on it
        master.reload([backend])
        await master.log.wait_for("generation 0 drains")
        master.process.send_signal(signal.SIGTERM)
        await master.log.wait_for("workers of generation 1 stopped")  # idle: they stop at once
        await stream.send_all(b"Host: f\r\n\r\n")
        answer = one_response(await read_until_close(stream, timeout=5))
    assert (answer.status, answer.closes) == (307, True)
    assert answer.header(b"location") == f"{backend.url}/inflight".encode()
    with trio.fail_after(20):
        assert await master.process.wait() == 0
    assert "Traceback" not in master.log.text, master.log.text
