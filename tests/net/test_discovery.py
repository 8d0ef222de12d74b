"""Discovery against a real DNS server: Debian's dnsmasq on loopback, its records changed while it runs.

Each test starts dnsmasq on 127.0.0.1 and a free port, with only the records it writes (no upstream,
no /etc/hosts): A and AAAA records in an --addn-hosts file that SIGHUP rereads, SRV records on its
command line (a restart on the same port changes them). Without dnsmasq the tests are skipped, except
in CI (CI=true), where .ci/run installs it and a missing binary is a failure. Real time, since the
server is real: every wait is bounded by trio.fail_after and polls a condition.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import replace
from itertools import pairwise
from pathlib import Path

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import httpx
import pytest
import trio

from dispatcher.core.membership import EMPTY, FAILED, MIN_TTL, OK, Answer
from dispatcher.core.pool import Pool
from dispatcher.net.discovery import Discovery
from dispatcher.net.health import HealthChecks
from dispatcher.settings import config
from dispatcher.settings.config import BackendSpec, ServiceSpec, Settings, apply
from dispatcher.wiring.app import apply_backends
from tests.helpers import TestBackend, health, poll_admin, start_dispatcher, unused_port, wait_for_state

WAIT = 10.0  # seconds any one condition may take to come true: generous, for a loaded machine
POLL = 0.02


def dnsmasq_binary() -> str:
    """dnsmasq's path (Debian puts it in /usr/sbin, off a user's PATH); skip without it, but fail in
    CI, where .ci/run must have installed it."""
    found = shutil.which("dnsmasq") or shutil.which("dnsmasq", path="/usr/sbin:/sbin")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("dnsmasq is not installed, and CI=true requires it (.ci/run installs dnsmasq-base)")
        pytest.skip("needs dnsmasq (Debian's dnsmasq-base; .ci/run installs it)")
    return found


def free_port() -> int:
    """A port free for both UDP and TCP on loopback (dnsmasq listens on both)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port: int = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
        return port


class Dnsmasq:
    """A real DNS server on 127.0.0.1:`port` that answers for `.test` names only (NXDOMAIN for the
    rest of .test, --local), from `hosts` (A and AAAA) and `srv` (name, target, port, priority, weight)."""

    def __init__(self, binary: str, directory: Path) -> None:
        self.binary, self.port = binary, free_port()
        self.hosts = directory / "hosts"
        self.hosts.write_text("")
        self.srv: list[tuple[str, str, int, int, int]] = []
        self.ttl = 0  # dnsmasq's --local-ttl: the TTL of every answer
        self.process: subprocess.Popen[bytes] | None = None
        self.log = directory / "dnsmasq.log"

    def start(self) -> None:
        args = [
            self.binary,
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            f"--port={self.port}",
            "--local=/test/",
            f"--local-ttl={self.ttl}",
            f"--addn-hosts={self.hosts}",
            "--pid-file=",
            *(
                f"--srv-host={name},{target},{port},{priority},{weight}"
                for name, target, port, priority, weight in self.srv
            ),
        ]
        if os.geteuid() == 0:
            args.append("--user=root")  # as root it would drop to a user that cannot read pytest's tmp_path
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=log)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=WAIT)
            self.process = None

    def restart(self) -> None:
        """Its command line read again (the SRV records), on the same port."""
        self.stop()
        self.start()

    def write_hosts(self, *lines: str) -> None:
        """New A and AAAA records (`10.0.0.1 web.test`), reread at once (SIGHUP)."""
        self.hosts.write_text("".join(line + "\n" for line in lines))
        assert self.process is not None
        self.process.send_signal(signal.SIGHUP)


@pytest.fixture
def dnsmasq(tmp_path: Path) -> Iterator[Dnsmasq]:
    server = Dnsmasq(dnsmasq_binary(), tmp_path)
    yield server
    server.stop()


def settings_with(server: Dnsmasq, *backends: str, interval: float = 0.2, timeout: float = 0.3) -> Settings:
    dns = {"resolver": f"127.0.0.1:{server.port}", "interval": interval, "timeout": timeout}
    return apply(Settings(), {"backends": list(backends), "dns": dns})


class Recorder:
    """The discovery's deliveries, each the backend list's names; and the times each entry was asked."""

    def __init__(self) -> None:
        self.deliveries: list[list[str]] = []

    def __call__(self, specs: tuple[BackendSpec, ...]) -> None:
        self.deliveries.append([spec.name for spec in specs])

    @property
    def last(self) -> list[str]:
        return self.deliveries[-1]


class TimedDiscovery(Discovery):
    """A discovery that notes when each resolution ended, and its outcome (trio's clock)."""

    def __init__(self, settings: Settings, deliver: Callable[[tuple[BackendSpec, ...]], None]) -> None:
        super().__init__(settings, deliver)
        self.answered: list[tuple[float, str]] = []

    async def resolve(self, service: ServiceSpec) -> Answer:
        answer = await super().resolve(service)
        self.answered.append((trio.current_time(), answer.outcome))
        return answer


async def until(condition: Callable[[], bool], seconds: float = WAIT) -> None:
    """Poll `condition` until it holds; fail the test if it does not within `seconds`."""
    with trio.fail_after(seconds):
        while not condition():
            await trio.sleep(POLL)


async def answering(server: Dnsmasq) -> None:
    """Wait until the server answers: a throwaway discovery of one name gets an answer, any answer."""
    probe = Discovery(settings_with(server, "dns://ready.test:80", timeout=0.2), lambda specs: None)
    [service] = probe.memberships.values()

    async def answers() -> bool:
        return (await probe.resolve(service.service)).outcome != FAILED

    with trio.fail_after(WAIT):
        while not await answers():
            await trio.sleep(POLL)


@asynccontextmanager
async def following(discovery: Discovery) -> AsyncIterator[None]:
    """`discovery` running (first answers in) for the block, cancelled after it."""
    async with trio.open_nursery() as nursery:
        await nursery.start(discovery.run)
        yield
        nursery.cancel_scope.cancel()


async def started(server: Dnsmasq) -> Dnsmasq:
    server.start()
    await answering(server)
    return server


async def test_members_appear_and_disappear_as_the_records_change(dnsmasq: Dnsmasq) -> None:
    """dns://: every A and AAAA record at the port, after the backends given by URL; SIGHUP changes them."""
    dnsmasq.hosts.write_text("10.0.0.1 web.test\n")
    await started(dnsmasq)
    record = Recorder()
    discovery = Discovery(settings_with(dnsmasq, "http://10.9.9.9:80", "dns://web.test:8080"), record)
    async with following(discovery):
        assert record.deliveries == [["10.9.9.9:80", "10.0.0.1:8080"]]  # in before run reports started
        dnsmasq.write_hosts("10.0.0.1 web.test", "10.0.0.2 web.test", "2001:db8::7 web.test")
        await until(lambda: len(record.deliveries) == 2)
        assert record.last == ["10.9.9.9:80", "10.0.0.1:8080", "10.0.0.2:8080", "[2001:db8::7]:8080"]
        dnsmasq.write_hosts("10.0.0.2 web.test")
        await until(lambda: len(record.deliveries) == 3)
        assert record.last == ["10.9.9.9:80", "10.0.0.2:8080"]
    [membership] = discovery.memberships.values()
    assert (membership.outcome, membership.changes, membership.failures) == (OK, 3, {EMPTY: 0, FAILED: 0})
    assert membership.resolutions >= 3


async def test_srv_records_give_the_targets_ports_and_weights(dnsmasq: Dnsmasq) -> None:
    """dns+srv://: each record's target, port and weight; a restart with other records changes them."""
    name = "_http._tcp.web.test"
    dnsmasq.srv = [(name, "a.web.test", 8080, 0, 10), (name, "b.web.test", 8081, 0, 30)]
    await started(dnsmasq)
    specs: list[tuple[BackendSpec, ...]] = []
    discovery = Discovery(settings_with(dnsmasq, f"dns+srv+https://{name}/app"), specs.append)
    async with following(discovery):
        assert [(s.name, s.base, s.weight) for s in specs[-1]] == [
            ("a.web.test:8080", "https://a.web.test:8080/app", 10.0),
            ("b.web.test:8081", "https://b.web.test:8081/app", 30.0),
        ]
        dnsmasq.srv = [(name, "b.web.test", 8081, 0, 30), (name, "c.web.test", 9000, 0, 5)]
        dnsmasq.restart()
        await until(lambda: len(specs) == 2)
        assert [(s.name, s.weight) for s in specs[-1]] == [
            ("b.web.test:8081", 30.0),
            ("c.web.test:9000", 5.0),
        ]


def gaps(discovery: TimedDiscovery) -> list[float]:
    times = [at for at, _ in discovery.answered]
    return [later - earlier for earlier, later in pairwise(times)]


async def test_a_ttl_shorter_than_the_interval_asks_again_at_the_ttl(dnsmasq: Dnsmasq) -> None:
    """TTL 2 s, interval 60 s: asked every 2 s (Envoy's respect_dns_ttl), and a new record comes then."""
    dnsmasq.ttl = 2
    dnsmasq.hosts.write_text("10.0.0.1 web.test\n")
    await started(dnsmasq)
    record = Recorder()
    discovery = TimedDiscovery(settings_with(dnsmasq, "dns://web.test:80", interval=60.0), record)
    async with following(discovery):
        dnsmasq.write_hosts("10.0.0.1 web.test", "10.0.0.2 web.test")
        await until(lambda: len(record.deliveries) == 2, seconds=2 + WAIT)
        await until(lambda: len(discovery.answered) >= 3, seconds=2 + WAIT)
    assert all(2.0 <= gap < 2.0 + 1.0 for gap in gaps(discovery)), gaps(discovery)


async def test_a_ttl_of_zero_asks_again_no_sooner_than_the_floor(dnsmasq: Dnsmasq) -> None:
    """TTL 0 (Consul's default for services) is asked again after MIN_TTL, not in a loop."""
    dnsmasq.hosts.write_text("10.0.0.1 web.test\n")
    await started(dnsmasq)
    discovery = TimedDiscovery(settings_with(dnsmasq, "dns://web.test:80", interval=60.0), Recorder())
    async with following(discovery):
        await until(lambda: len(discovery.answered) >= 3, seconds=2 * MIN_TTL + WAIT)
    assert all(MIN_TTL <= gap < MIN_TTL + 1.0 for gap in gaps(discovery)), gaps(discovery)


async def test_a_long_ttl_is_asked_again_at_the_interval(dnsmasq: Dnsmasq) -> None:
    """TTL 600 s, interval 0.2 s: the interval is sooner, so it decides."""
    dnsmasq.ttl = 600
    dnsmasq.hosts.write_text("10.0.0.1 web.test\n")
    await started(dnsmasq)
    discovery = TimedDiscovery(settings_with(dnsmasq, "dns://web.test:80", interval=0.2), Recorder())
    async with following(discovery):
        await until(lambda: len(discovery.answered) >= 4)
    assert all(0.2 <= gap < 0.2 + 0.5 for gap in gaps(discovery)), gaps(discovery)


def discovery_lines(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "dispatcher.discovery" and r.levelno == level]


async def refusing_aaaa(*, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """A DNS server on loopback UDP that answers `web.test` A with 10.0.0.1 and refuses every AAAA
    query (REFUSED), as some resolvers do on IPv4-only networks. dnsmasq cannot be made to."""
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    with sock:
        await sock.bind(("127.0.0.1", 0))
        task_status.started(sock.getsockname()[1])
        while True:
            data, client = await sock.recvfrom(4096)
            query = dns.message.from_wire(data)
            reply = dns.message.make_response(query)
            question = query.question[0]
            if question.rdtype == dns.rdatatype.AAAA:
                reply.set_rcode(dns.rcode.REFUSED)
            else:
                reply.answer.append(dns.rrset.from_text(question.name, 30, "IN", "A", "10.0.0.1"))
            await sock.sendto(reply.to_wire(), client)


async def test_aaaa_refused_keeps_the_a_records(nursery: trio.Nursery) -> None:
    """A server that answers A and refuses AAAA: the A records are the members, not a failure."""
    port = await nursery.start(refusing_aaaa)
    dns_settings = {"resolver": f"127.0.0.1:{port}", "interval": 1.0, "timeout": 1.0}
    settings = apply(Settings(), {"backends": ["dns://web.test:80"], "dns": dns_settings})
    discovery = Discovery(settings, lambda specs: None)
    [membership] = discovery.memberships.values()
    answer = await discovery.resolve(membership.service)
    assert (answer.outcome, [member.name for member in answer.members]) == (OK, ["10.0.0.1:80"])


async def test_a_resolver_that_stops_answering_keeps_the_members_counted_and_logged_once(
    dnsmasq: Dnsmasq, caplog: pytest.LogCaptureFixture
) -> None:
    """dnsmasq stopped: members stay, many failed queries are one failure and one warning; back: one line."""
    caplog.set_level(logging.INFO, "dispatcher.discovery")
    dnsmasq.hosts.write_text("10.0.0.1 web.test\n10.0.0.2 web.test\n")
    await started(dnsmasq)
    record = Recorder()
    discovery = TimedDiscovery(settings_with(dnsmasq, "dns://web.test:80"), record)
    [membership] = discovery.memberships.values()
    async with following(discovery):
        dnsmasq.stop()
        await until(lambda: [outcome for _, outcome in discovery.answered[-3:]] == [FAILED] * 3)
        assert (membership.outcome, membership.failures[FAILED]) == (FAILED, 1)
        assert [m.name for m in membership.members] == ["10.0.0.1:80", "10.0.0.2:80"]
        assert discovery_lines(caplog, logging.WARNING) == [
            "dns://web.test:80: no answer within 0.3s; keeping the 2 members it had"
        ]
        await started(dnsmasq)
        await until(lambda: membership.outcome == OK)
    assert record.deliveries == [["10.0.0.1:80", "10.0.0.2:80"]]  # the pool never heard of it
    assert membership.failures[FAILED] == 1
    assert discovery_lines(caplog, logging.INFO)[-1] == "dns://web.test:80: answers again, 2 members"


async def test_an_empty_answer_keeps_the_members_too(
    dnsmasq: Dnsmasq, caplog: pytest.LogCaptureFixture
) -> None:
    """The name gone from DNS (NXDOMAIN), for A and for SRV: the last members stay, counted once."""
    caplog.set_level(logging.INFO, "dispatcher.discovery")
    name = "_http._tcp.web.test"
    dnsmasq.hosts.write_text("10.0.0.1 web.test\n")
    dnsmasq.srv = [(name, "a.web.test", 8080, 0, 1)]
    await started(dnsmasq)
    record = Recorder()
    discovery = TimedDiscovery(settings_with(dnsmasq, "dns://web.test:80", f"dns+srv://{name}"), record)
    async with following(discovery):
        dnsmasq.hosts.write_text("")
        dnsmasq.srv = []
        dnsmasq.restart()
        await until(lambda: all(m.outcome == EMPTY for m in discovery.memberships.values()))
        resolved = len(discovery.answered)
        await until(lambda: len(discovery.answered) >= resolved + 4)
    assert record.deliveries == [["10.0.0.1:80", "a.web.test:8080"]]
    assert [m.failures for m in discovery.memberships.values()] == [{EMPTY: 1, FAILED: 0}] * 2
    assert sorted(discovery_lines(caplog, logging.WARNING)) == [
        f"dns+srv://{name}: {name} does not exist (NXDOMAIN); keeping the 1 member it had",
        "dns://web.test:80: web.test does not exist (NXDOMAIN); keeping the 1 member it had",
    ]


async def test_a_reload_keeps_the_entries_that_stay_and_asks_the_new_ones(dnsmasq: Dnsmasq) -> None:
    """reconfigure: the list to reconcile to now keeps a kept entry's members and drops a removed one's;
    a new entry's members are delivered with its first answer."""
    dnsmasq.hosts.write_text("10.0.0.1 web.test\n10.0.0.5 api.test\n10.0.0.8 old.test\n")
    await started(dnsmasq)
    record = Recorder()
    discovery = Discovery(settings_with(dnsmasq, "dns://web.test:80", "dns://old.test:80"), record)
    async with following(discovery):
        kept = discovery.memberships["dns://web.test:80"]
        reloaded = settings_with(dnsmasq, "http://10.9.9.9:80", "dns://web.test:80", "dns://api.test:81")
        now = discovery.reconfigure(reloaded)
        assert [spec.name for spec in now] == ["10.9.9.9:80", "10.0.0.1:80"]
        assert discovery.memberships["dns://web.test:80"] is kept
        await until(lambda: "10.0.0.5:81" in record.last)
        assert record.last == ["10.9.9.9:80", "10.0.0.1:80", "10.0.0.5:81"]
        assert list(discovery.memberships) == ["dns://web.test:80", "dns://api.test:81"]


async def test_a_resolver_that_never_answered_leaves_no_members_and_run_still_starts(
    dnsmasq: Dnsmasq,
) -> None:
    """No server on the port at start: run reports started after the timeout, with no members, and
    the members come as soon as the server answers."""
    dnsmasq.hosts.write_text("10.0.0.1 web.test\n")
    record = Recorder()
    discovery = Discovery(settings_with(dnsmasq, "http://10.9.9.9:80", "dns://web.test:80"), record)
    with trio.fail_after(WAIT):
        async with following(discovery):
            assert record.deliveries == [["10.9.9.9:80"]]
            assert discovery.specs == discovery.backends
            await started(dnsmasq)
            await until(lambda: len(record.deliveries) == 2)
            assert record.last == ["10.9.9.9:80", "10.0.0.1:80"]


async def test_members_reach_the_pool_checked_first_and_leave_it_with_their_records(
    dnsmasq: Dnsmasq, nursery: trio.Nursery
) -> None:
    """Delivered to Pool.reconcile: a new member is starting until its check passes, then takes
    traffic; a member whose record goes takes none; a stopped DNS server changes nothing."""
    first, second = TestBackend("first"), TestBackend("second")
    port = await nursery.start(first.serve, "127.0.0.2")
    await nursery.start(second.serve, "127.0.0.3", port)
    dnsmasq.hosts.write_text("127.0.0.2 web.test\n")
    await started(dnsmasq)
    settings = replace(settings_with(dnsmasq, f"dns://web.test:{port}"), health=health(interval=0.1, rise=1))
    pool = Pool(settings.backends, settings.health, trio.current_time())
    checks = HealthChecks(pool)
    await nursery.start(checks.run)
    usable: list[dict[str, bool]] = []  # each backend's, as each delivery left it

    def deliver(specs: tuple[BackendSpec, ...]) -> None:
        apply_backends(pool, checks, specs)
        usable.append({backend.name: backend.usable for backend in pool.backends})

    discovery = Discovery(settings, deliver)
    await nursery.start(discovery.run)
    a, b = f"127.0.0.2:{port}", f"127.0.0.3:{port}"
    assert usable == [{a: False}]  # not checked yet
    with trio.fail_after(WAIT):
        await wait_for_state(pool, a, "up")
        dnsmasq.write_hosts("127.0.0.2 web.test", "127.0.0.3 web.test")
        await until(lambda: len(usable) == 2)
        assert usable[-1] == {a: True, b: False}  # b not before its first passing check
        await wait_for_state(pool, b, "up")
        kept = pool.by_name[a]
        dnsmasq.write_hosts("127.0.0.3 web.test")
        await until(lambda: a not in pool.by_name)
        assert not kept.usable  # a redirect chosen from the old list cannot reach it any more
        dnsmasq.stop()
        await until(lambda: discovery.memberships[f"dns://web.test:{port}"].outcome == FAILED)
    assert [(backend.name, backend.state) for backend in pool.backends] == [(b, "up")]
    assert len(usable) == 3


async def test_a_running_dispatcher_redirects_to_the_members_and_exports_their_figures(
    dnsmasq: Dnsmasq, nursery: trio.Nursery
) -> None:
    """Through the real wiring (app.run): the front door's 307 names the member DNS gives, a new
    record moves the traffic once its member is up, and /metrics has the entry's figures."""
    first, second = TestBackend("first", load=5), TestBackend("second", load=0)
    port = await nursery.start(first.serve, "127.0.0.2")
    await nursery.start(second.serve, "127.0.0.3", port)
    dnsmasq.hosts.write_text("127.0.0.2 web.test\n")
    await started(dnsmasq)
    entry = f"dns://web.test:{port}"
    settings = replace(settings_with(dnsmasq, entry), listen=config.parse_address("t", "127.0.0.1:0"))
    settings = replace(
        settings, admin_listen=config.parse_address("t", "127.0.0.1:0"), health=health(interval=0.1)
    )
    dispatcher = await start_dispatcher(nursery, settings)
    a, b = f"127.0.0.2:{port}", f"127.0.0.3:{port}"
    async with httpx.AsyncClient() as http:
        with trio.fail_after(WAIT):
            await wait_for_state(dispatcher.pool, a, "up")
            answer = await http.get(f"{dispatcher.url}/x")
            assert answer.headers["location"] == f"http://{a}/x"
            dnsmasq.write_hosts("127.0.0.2 web.test", "127.0.0.3 web.test")
            await until(lambda: b in dispatcher.pool.by_name)
            await wait_for_state(dispatcher.pool, b, "up")
            answer = await http.get(f"{dispatcher.url}/y")
            assert answer.headers["location"] == f"http://{b}/y"  # the less loaded, now that it is up
        text = (await http.get(f"{dispatcher.admin_url}/metrics")).text
    assert f'dispatcher_discovery_members{{service="{entry}"}} 2.0' in text
    assert f'dispatcher_discovery_state{{service="{entry}",state="ok"}} 1.0' in text
    assert f'dispatcher_discovery_failures_total{{outcome="failed",service="{entry}"}} 0.0' in text


async def until_answered(port: int, done: Callable[[set[str]], bool]) -> None:
    """Ask 8 times a round, on new connections (spread over the workers), until the Locations seen in
    one round satisfy `done`."""
    with trio.fail_after(WAIT):
        while True:
            seen = set()
            for _ in range(8):
                async with httpx.AsyncClient() as fresh:
                    seen.add((await fresh.get(f"http://127.0.0.1:{port}/y")).headers["location"])
            if done(seen):
                return
            await trio.sleep(POLL)


async def test_with_workers_a_new_member_reaches_every_worker(
    dnsmasq: Dnsmasq, nursery: trio.Nursery
) -> None:
    """--workers 2: the first workers know the members found at start, and a record that appears
    starts a generation of workers that redirect to it too (the master checks it first)."""
    first, second = TestBackend("first", load=5), TestBackend("second", load=0)
    port = await nursery.start(first.serve, "127.0.0.2")
    await nursery.start(second.serve, "127.0.0.3", port)
    dnsmasq.hosts.write_text("127.0.0.2 web.test\n")
    await started(dnsmasq)
    front, admin = unused_port(), unused_port()
    argv = [sys.executable, "-m", "dispatcher", "--workers", "2", "--listen", f"127.0.0.1:{front}"]
    argv += ["--admin-listen", f"127.0.0.1:{admin}", "--backend", f"dns://web.test:{port}"]
    argv += [
        "--dns-resolver",
        f"127.0.0.1:{dnsmasq.port}",
        "--dns-interval",
        "0.2",
        "--health-interval",
        "0.2",
    ]
    argv += ["--health-jitter", "0", "--log-level", "warning"]
    process = await trio.lowlevel.open_process(argv)
    a, b = f"127.0.0.2:{port}", f"127.0.0.3:{port}"
    try:
        await poll_admin(admin, "/readyz", lambda status, _: status == 200)
        async with httpx.AsyncClient() as http:
            answer = await http.get(f"http://127.0.0.1:{front}/x")
            assert answer.headers["location"] == f"http://{a}/x"
            dnsmasq.write_hosts("127.0.0.2 web.test", "127.0.0.3 web.test")
            await poll_admin(admin, f"/backends/{b}", lambda status, text: status == 200 and '"up"' in text)
            # The added member reaches the new generation: some answers name it (the less loaded).
            await until_answered(front, lambda seen: f"http://{b}/y" in seen)
            # The first member's record goes: the next generation's workers, every one, send none to it.
            dnsmasq.write_hosts("127.0.0.3 web.test")
            await poll_admin(admin, f"/backends/{a}", lambda status, _: status == 404)
            await until_answered(front, lambda seen: seen == {f"http://{b}/y"})
    finally:
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(20):
            assert await process.wait() == 0
