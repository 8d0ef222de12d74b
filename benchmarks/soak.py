# A soak: minutes of mixed traffic against a real dispatcher process whose real backend processes are
# killed with SIGKILL and started again every few seconds.
#
# How: three `python -m http.server` backends and `python -m dispatcher` in front of them (checks every
# 0.5 s, timeout 0.25 s, fall 2, rise 2, header timeout 2 s), all child processes on loopback. For
# `--seconds` (default 120) these run at once:
#   - normal clients, half on keep-alive connections and half on a new connection per request, never
#     following the redirect: each answer must be a 307 to a configured backend or a 503;
#   - hostile clients: fuzzed bytes (fuzz.py's generators), slowloris connections trickling a head (each
#     must get 408 and a close by the header timeout), heads far over 16 KiB (431 and a close);
#   - chaos: every 2-4 s one live backend gets SIGKILL (never the last one) and is started again 2-4 s later.
# A redirect sent to a backend after it was killed and before it was started again counts as a redirect to a
# dead backend when the request was sent more than the detection window after the kill (fall x interval +
# timeout, plus a margin for scheduling on a shared machine). At the end: every client closes, and
# dispatcher_open_connections must come back to 0; SIGTERM must stop the dispatcher with 0 and its log must
# hold no traceback.
#
# Owns: the traffic mix, the kill schedule and the verdict. Rules: it must not import `dispatcher` (fuzz.py
# holds the child processes and the strict parser); only loopback; every wait is bounded.
#
#   python benchmarks/soak.py [--seconds 120] [--seed 1]
#
# Exit status 0 when every count that must be 0 is 0, 1 otherwise.

from __future__ import annotations

import argparse
import math
import random
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import trio
from fuzz import (
    HOST,
    Child,
    Malformed,
    Response,
    answers_violation,
    front_door,
    hostile_input,
    log_problems,
    open_connections_settle,
    parse_responses,
)

INTERVAL, TIMEOUT, FALL, RISE = 0.5, 0.25, 2, 2
HEADER_TIMEOUT = 2.0
KEEPALIVE_TIMEOUT = 5.0
GRACE_PERIOD = 5.0
# A killed backend refuses connections at once, so its checks fail at once: it is down after `FALL` checks.
# The margin is for scheduling: the dispatcher, three backends and this process share the machine's cores.
DETECTION_WINDOW = FALL * INTERVAL + TIMEOUT + 0.5
KILL_EVERY = (2.0, 4.0)  # seconds between kills, drawn uniformly
DEAD_FOR = (2.0, 4.0)  # seconds a killed backend stays dead
NORMAL_CLIENTS = 8  # half keep-alive, half a new connection per request
GARBAGE_CLIENTS = 2
SLOWLORIS_CONNECTIONS = 50
ANSWER_WITHIN = 5.0  # an answer to a normal request later than this is an error
MAX_EXAMPLES = 8


@dataclass
class Redirect:
    sent: float
    received: float
    port: int


@dataclass
class Soak:
    """Everything counted during a run."""

    bases: dict[int, bytes]  # backend port -> its URL
    sent: Counter[str] = field(default_factory=Counter)
    codes: Counter[int] = field(default_factory=Counter)
    redirects: list[Redirect] = field(default_factory=list)
    dead: dict[int, list[tuple[float, float]]] = field(default_factory=dict)  # port -> (killed, restarted)
    errors: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def error(self, kind: str, detail: str) -> None:
        self.errors[kind] += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(f"{kind}: {detail}")

    def normal_answer(self, response: Response, sent: float) -> None:
        """Check and record the answer to a normal request."""
        self.codes[response.status] += 1
        if response.status == 503:
            return
        port = _port_of(response.location, self.bases)
        if response.status != 307 or port is None:
            self.error("normal", f"{response.status} {response.location[:100]!r} to a normal request")
            return
        self.redirects.append(Redirect(sent, trio.current_time(), port))

    def to_dead_backends(self) -> list[tuple[Redirect, float]]:
        """Redirects sent to a backend more than the detection window after its kill, before its restart;
        each with the time of that kill."""
        return [
            (redirect, killed)
            for redirect in self.redirects
            for killed, restarted in self.dead.get(redirect.port, [])
            if killed + DETECTION_WINDOW <= redirect.sent and redirect.received <= restarted
        ]

    def detection_times(self) -> list[float]:
        """Per kill: how long after it the last redirect to that backend was sent (0 if none)."""
        times = []
        for port, periods in self.dead.items():
            for killed, restarted in periods:
                late = [
                    r.sent - killed for r in self.redirects if r.port == port and killed <= r.sent < restarted
                ]
                times.append(max(late, default=0.0))
        return times


def _port_of(location: bytes, bases: dict[int, bytes]) -> int | None:
    for port, base in bases.items():
        if location.startswith(base + b"/"):
            return port
    return None


async def read_answers(stream: trio.SocketStream, until_close: bool) -> tuple[list[Response], bytes, bool]:
    """One answer (or all, until the close): responses, leftover bytes, whether the server closed."""
    received = b""
    while True:
        responses, rest = parse_responses(received)
        if responses and not until_close and not responses[-1].closes:
            return responses, rest, False
        chunk = await stream.receive_some(65536)
        if not chunk:
            return responses, rest, True
        received += chunk


# --- normal clients ------------------------------------------------------------------------------------


async def normal_client(port: int, keep_alive: bool, seed: int, soak: Soak) -> None:
    """Requests with short random pauses, on one kept-alive connection or a new one each time."""
    rng = random.Random(seed)
    kind = "normal keep-alive" if keep_alive else "normal new-connection"
    stream: trio.SocketStream | None = None
    try:
        while True:
            await trio.sleep(rng.uniform(0, 0.01))
            reused = stream is not None
            if stream is None:
                try:
                    stream = await trio.open_tcp_stream(HOST, port)
                except OSError as error:
                    soak.error("normal", f"cannot connect: {error}")
                    continue
            close = b"" if keep_alive else b"Connection: close\r\n"
            sent = trio.current_time()
            soak.sent[kind] += 1
            try:
                with trio.fail_after(ANSWER_WITHIN):
                    await stream.send_all(
                        b"GET /soak/%d HTTP/1.1\r\nHost: f\r\n%s\r\n" % (rng.randrange(10**6), close)
                    )
                    responses, rest, closed = await read_answers(stream, until_close=not keep_alive)
            except (OSError, trio.BrokenResourceError, trio.TooSlowError, Malformed) as error:
                soak.error("normal", f"{kind}{' (reused)' if reused else ''}: {error!r}")
                await stream.aclose()
                stream = None
                continue
            if len(responses) != 1 or rest:
                soak.error("normal", f"{kind}: {len(responses)} answers, {rest[:80]!r} left")
            for response in responses:
                soak.normal_answer(response, sent)
            if closed or not keep_alive or any(r.closes for r in responses):
                await stream.aclose()
                stream = None
    finally:
        if stream is not None:
            await stream.aclose()


# --- hostile clients -----------------------------------------------------------------------------------


async def garbage_client(port: int, seed: int, soak: Soak) -> None:
    """Fuzzed bytes then EOF, on a new connection each time: well-formed answers and a clean close."""
    rng = random.Random(seed)
    while True:
        await trio.sleep(rng.uniform(0, 0.005))  # a mix, not a flood that starves the normal clients
        data = hostile_input(rng)
        soak.sent["garbage"] += 1
        try:
            with trio.fail_after(HEADER_TIMEOUT + KEEPALIVE_TIMEOUT + ANSWER_WITHIN):
                async with await trio.open_tcp_stream(HOST, port) as stream:
                    await stream.send_all(data)
                    await stream.send_eof()
                    responses, rest, _ = await read_answers(stream, until_close=True)
        except (OSError, trio.BrokenResourceError, trio.TooSlowError, Malformed) as error:
            soak.error("garbage", f"{error!r} after {data[:80]!r}")
            continue
        soak.codes.update(r.status for r in responses)
        problem = answers_violation(responses, True, list(soak.bases.values()))
        if problem is not None or rest:
            soak.error("garbage", f"{problem or 'answer cut short'} after {data[:80]!r}")


async def slowloris_connection(port: int, soak: Soak) -> None:
    """A partial head, one more byte every 0.5 s: 408 and a close must come by the header timeout."""
    soak.sent["slowloris"] += 1
    try:
        with trio.fail_after(HEADER_TIMEOUT + ANSWER_WITHIN):
            async with await trio.open_tcp_stream(HOST, port) as stream:
                opened = trio.current_time()
                await stream.send_all(b"GET /slow HTTP/1.1\r\nHost: f\r\nX-Trickle: ")
                while True:
                    with trio.move_on_after(0.5) as quiet:
                        received = await stream.receive_some(65536)
                    if not quiet.cancelled_caught:
                        break
                    await stream.send_all(b"a")
                held = trio.current_time() - opened
                while chunk := await stream.receive_some(65536):
                    received += chunk
        responses, rest = parse_responses(received)
    except (OSError, trio.BrokenResourceError, trio.TooSlowError, Malformed) as error:
        soak.error("slowloris", repr(error))
        return
    soak.codes.update(r.status for r in responses)
    if [(r.status, r.closes) for r in responses] != [(408, True)] or rest:
        soak.error("slowloris", f"{[r.status for r in responses]} instead of one 408 and a close")
    elif held > HEADER_TIMEOUT + 1.0:
        soak.error("slowloris", f"held {held:.2f}s, past the {HEADER_TIMEOUT:g}s header timeout")


async def slowloris_pool(port: int, soak: Soak) -> None:
    """Keep SLOWLORIS_CONNECTIONS slow connections open, opening a new one as each is closed."""
    async with trio.open_nursery() as nursery:
        for i in range(SLOWLORIS_CONNECTIONS):
            nursery.start_soon(_slowloris_forever, port, soak, i)


async def _slowloris_forever(port: int, soak: Soak, index: int) -> None:
    await trio.sleep(index * HEADER_TIMEOUT / SLOWLORIS_CONNECTIONS)  # spread their starts
    while True:
        await slowloris_connection(port, soak)


async def oversized_client(port: int, seed: int, soak: Soak) -> None:
    """Heads of 20 to 70 KiB: 431 and a close."""
    rng = random.Random(seed)
    while True:
        await trio.sleep(rng.uniform(0, 0.05))
        head = b"GET / HTTP/1.1\r\nHost: f\r\nX-Big: " + b"a" * rng.randint(20_000, 70_000) + b"\r\n\r\n"
        soak.sent["oversized"] += 1
        try:
            with trio.fail_after(ANSWER_WITHIN):
                async with await trio.open_tcp_stream(HOST, port) as stream:
                    await stream.send_all(head)
                    await stream.send_eof()
                    responses, rest, _ = await read_answers(stream, until_close=True)
        except (OSError, trio.BrokenResourceError, trio.TooSlowError, Malformed) as error:
            soak.error("oversized", repr(error))
            continue
        soak.codes.update(r.status for r in responses)
        if [(r.status, r.closes) for r in responses] != [(431, True)] or rest:
            soak.error("oversized", f"{[r.status for r in responses]} instead of one 431 and a close")


# --- chaos ---------------------------------------------------------------------------------------------


async def chaos(backends: Sequence[Child], seed: int, soak: Soak) -> None:
    """Every few seconds SIGKILL one live backend (never the last) and start it again a few seconds later."""
    rng = random.Random(seed)
    async with trio.open_nursery() as restarts:
        while True:
            await trio.sleep(rng.uniform(*KILL_EVERY))
            live = [b for b in backends if b.alive]
            if len(live) < 2:
                continue
            victim = rng.choice(live)
            await victim.kill()
            periods = soak.dead.setdefault(victim.port, [])
            periods.append((trio.current_time(), math.inf))
            restarts.start_soon(_restart, victim, rng.uniform(*DEAD_FOR), periods)


async def _restart(backend: Child, after: float, periods: list[tuple[float, float]]) -> None:
    await trio.sleep(after)
    killed, _ = periods[-1]
    periods[-1] = (killed, trio.current_time())
    await backend.start()


# --- the run -------------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> int:
    flags = [
        f"--health-interval={INTERVAL:g}",
        f"--health-timeout={TIMEOUT:g}",
        f"--fall={FALL}",
        f"--rise={RISE}",
        "--health-jitter=0",
        f"--header-timeout={HEADER_TIMEOUT:g}",
        f"--keepalive-timeout={KEEPALIVE_TIMEOUT:g}",
        f"--grace-period={GRACE_PERIOD:g}",
    ]
    violations: list[str] = []
    with tempfile.TemporaryDirectory(prefix="dispatcher-soak-") as temp:
        async with front_door(Path(temp), 3, *flags) as (dispatcher, backends, port, admin_port):
            soak = Soak({b.port: b.url.encode() for b in backends})
            started = trio.current_time()
            with trio.move_on_after(args.seconds):
                async with trio.open_nursery() as traffic:
                    for i in range(NORMAL_CLIENTS):
                        traffic.start_soon(normal_client, port, i % 2 == 0, args.seed * 100 + i, soak)
                    for i in range(GARBAGE_CLIENTS):
                        traffic.start_soon(garbage_client, port, args.seed * 200 + i, soak)
                    traffic.start_soon(slowloris_pool, port, soak)
                    traffic.start_soon(oversized_client, port, args.seed * 300, soak)
                    traffic.start_soon(chaos, backends, args.seed, soak)
            elapsed = trio.current_time() - started
            leaked = await open_connections_settle(admin_port)
            if not dispatcher.alive:
                violations.append(f"the dispatcher died:\n{dispatcher.log_tail()}")
            status = await dispatcher.stop()
            log = dispatcher.log_path.read_text(errors="replace")
    if status != 0:
        violations.append(f"the dispatcher exited with {status} after SIGTERM")
    violations += [f"dispatcher log: {line}" for line in log_problems(log)]
    dead = soak.to_dead_backends()
    print(report(soak, elapsed, dead, leaked, status, violations))
    return 1 if dead or leaked != 0 or soak.errors or violations else 0


def report(
    soak: Soak,
    elapsed: float,
    dead: list[tuple[Redirect, float]],
    leaked: float | None,
    status: int | None,
    violations: list[str],
) -> str:
    kills = sum(len(periods) for periods in soak.dead.values())
    restarts = sum(1 for periods in soak.dead.values() for _, restarted in periods if restarted < math.inf)
    sent = ", ".join(f"{kind} {count}" for kind, count in sorted(soak.sent.items()))
    codes = ", ".join(f"{code}: {count}" for code, count in sorted(soak.codes.items()))
    detection = soak.detection_times()
    errors = ", ".join(f"{kind}: {count}" for kind, count in sorted(soak.errors.items())) or "none"
    failed = dead or leaked != 0 or soak.errors or violations
    lines = [
        f"soak: {elapsed:.1f} s, {len(soak.bases)} backends, {kills} kills (SIGKILL), {restarts} restarts",
        f"requests sent: {sum(soak.sent.values())} ({sent})",
        f"responses by code: {codes}",
        f"kill to last redirect sent to the killed backend: max {max(detection, default=0.0):.3f} s "
        f"over {len(detection)} kills",
        f"redirects to dead backends after the detection window ({DETECTION_WINDOW:g} s): {len(dead)}",
        f"connections leaked (dispatcher_open_connections at the end): {_count(leaked)}",
        f"errors: {sum(soak.errors.values())} ({errors})",
        f"dispatcher: exit status {status} after SIGTERM",
        *(f"  - {line}" for line in [*violations, *soak.examples]),
        *(
            f"  - dead backend {r.port} got a redirect sent {r.sent - killed:.3f} s after its kill"
            for r, killed in dead[:MAX_EXAMPLES]
        ),
        f"result: {'FAIL' if failed else 'PASS'}",
    ]
    return "\n".join(lines)


def _count(value: float | None) -> str:
    return "unknown (no scrape)" if value is None else str(int(value))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Mixed traffic, hostile clients and backend kills against a dispatcher process; "
        "exit 1 on a violation."
    )
    parser.add_argument(
        "--seconds", type=float, default=120.0, help="how long the traffic runs (default 120)"
    )
    parser.add_argument("--seed", type=int, default=1, help="random seed for the traffic and the kills")
    args = parser.parse_args(argv)
    return trio.run(run, args)


if __name__ == "__main__":
    sys.exit(main())
