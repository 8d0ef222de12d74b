# A fuzz campaign against the front door of a real dispatcher process: any bytes in must get well-formed
# answers and/or a clean close, and the process must come out of it serving normally with no connection
# left open.
#
# How: one `python -m http.server` backend and `python -m dispatcher` in front of it, both child processes on
# loopback. N inputs (default 20,000) are drawn from structured generators (request lines and headers with
# mutated methods, targets, versions, header lines and line endings; pipelines; truncations; heads far over
# 16 KiB; byte-level mutations of valid requests; random bytes) and sent over raw sockets, a few hundred
# connections at a time. After each input the client sends a probe request: its 307 marks the end of the
# input's answers when the connection stays open; otherwise the server closes. Every response is parsed
# strictly (status line, header lines, Content-Length framing) and tallied by status; closes, resets and
# errors are counted. At the end a normal request must get its 307 and /metrics must show
# dispatcher_open_connections 0; the dispatcher's log must hold no traceback; SIGTERM must stop it with 0.
#
# Owns: the input generators (soak.py sends them too), the strict response parser, the child processes
# (each stopped in a `finally`). Rules: it must not import `dispatcher` (the dispatcher is tested as users run
# it, as `python -m dispatcher`); only loopback; every wait is bounded.
#
#   python benchmarks/fuzz.py [--inputs 20000] [--connections 256] [--seed 1]
#
# Exit status 0 when nothing was violated, 1 otherwise (the violations are listed).

from __future__ import annotations

import argparse
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the dispatcher of this checkout

from dispatcher.core.stats import RESPONSE_CODES

HOST = "127.0.0.1"  # Loopback only.
# Every status the front door may send (README, "What the front door answers").
ALLOWED_STATUSES = frozenset(RESPONSE_CODES)
# Answers after which the server must close the connection.
CLOSING_STATUSES = frozenset({400, 405, 408, 414, 431, 501, 505, 508})
# Short timeouts so that an input the server keeps waiting on (a truncated head, a body never sent) ends
# within seconds; the defaults (10 s, 75 s) would only make the campaign longer.
HEADER_TIMEOUT = 2.0
KEEPALIVE_TIMEOUT = 3.0
# How long one input may take before the connection counts as stuck: the server must have answered or
# closed by its own timeouts by then.
STUCK_AFTER = HEADER_TIMEOUT + KEEPALIVE_TIMEOUT + 5.0
READY_WITHIN = 15.0  # seconds for the children to start listening and the backend to be up
STOP_WITHIN = 15.0  # seconds for the dispatcher to exit after SIGTERM (its grace period is 10 s)
MAX_EXAMPLES = 5  # violations quoted in the report


# --- inputs -----------------------------------------------------------------------------------------

# Each part of a request line is drawn valid most of the time, so that inputs reach the later checks too.
GOOD_METHODS = [b"GET", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS"]
BAD_METHODS = [b"CONNECT", b"TRACE", b"PRI", b"get", b"G\x00T", b"", b"M" * 300]
GOOD_TARGETS = [b"/", b"/a?b=c", b"*", b"//evil.example/x", b"http://evil.example/p?q", b"/@evil.example"]
GOOD_TARGETS += [b"http://127.0.0.1@evil.example/", b"/\\evil", b"/%0d%0aSet-Cookie:%20x"]
BAD_TARGETS = [
    b"ftp://evil.example/",
    b"evil.example:443",
    b"/\xff",
    b"/\x00",
    b"/a b",
    b"",
    b"/" + b"t" * 9000,
]
GOOD_VERSIONS = [b"HTTP/1.1", b"HTTP/1.0"]
BAD_VERSIONS = [b"HTTP/2.0", b"HTTP/0.9", b"http/1.1", b"HTTP/1.10", b""]
GOOD_HEADERS = [b"Content-Length: 3", b"Transfer-Encoding: chunked", b"User-Agent: fuzz", b"Accept: */*"]
GOOD_HEADERS += [b"Expect: 100-continue", b"Connection: close", b"Connection: Upgrade", b"Upgrade: h2c"]
GOOD_HEADERS += [b"X-Forwarded-Host: evil.example", b"Content-Length: 70000", b"Connection: keep-alive"]
BAD_HEADERS = [
    b"Host:",
    b"Content-Length: 3, 4",
    b"Content-Length: -1",
    b"Content-Length: 99999999999999999999",
]
BAD_HEADERS += [b"Transfer-Encoding: gzip", b"Transfer-Encoding: chunked, gzip", b"x-dispatcher-check: 1"]
BAD_HEADERS += [b" folded", b"\tfolded", b"No-Colon", b"Bad Name: x", b": empty-name", b"X: \x00"]
BAD_HEADERS += [b"X: \xff\xfe", b"X-Big: " + b"v" * 17000]
BODIES = [b"", b"", b"abc", b"3\r\nabc\r\n0\r\n\r\n", b"zz\r\n", b"0\r\n\r\n", b"ffff\r\nab"]
LINE_ENDS = [b"\n", b"\r", b"\n\r"]
VALID = [
    b"GET /ok?x=1 HTTP/1.1\r\nHost: f\r\n\r\n",
    b"POST /post HTTP/1.1\r\nHost: f\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /chunked HTTP/1.1\r\nHost: f\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"GET http://evil.example/abs HTTP/1.1\r\nHost: evil.example\r\nUser-Agent: fuzz\r\n\r\n",
]


def pick(rng: random.Random, good: Sequence[bytes], bad: Sequence[bytes], bad_odds: float = 0.2) -> bytes:
    return rng.choice(bad if rng.random() < bad_odds else good)


def mutated_request(rng: random.Random) -> bytes:
    """One request from valid and broken parts: request line, up to 6 header lines, any line ending."""
    parts = [(GOOD_METHODS, BAD_METHODS), (GOOD_TARGETS, BAD_TARGETS), (GOOD_VERSIONS, BAD_VERSIONS)]
    line = b" ".join(pick(rng, good, bad) for good, bad in parts)
    headers = [rng.choice([b"Host: f", b"Host: evil.example"])] if rng.random() < 0.9 else []
    headers += [pick(rng, GOOD_HEADERS, BAD_HEADERS) for _ in range(rng.randint(0, 4))]
    if rng.random() < 0.1:
        headers += [b"X-N: v"] * rng.randint(95, 130)  # around the 100-line limit
    end = b"\r\n" if rng.random() < 0.85 else rng.choice(LINE_ENDS)
    body = rng.choice(BODIES) if rng.random() < 0.3 else b""
    return end.join([line, *headers]) + end + end + body


def byte_mutation(rng: random.Random) -> bytes:
    """A valid request with a few bytes flipped, inserted or deleted."""
    data = bytearray(rng.choice(VALID))
    for _ in range(rng.randint(1, 4)):
        where = rng.randrange(len(data) + 1)
        action = rng.randrange(3)
        if action == 0 and where < len(data):
            data[where] = rng.randrange(256)
        elif action == 1:
            data[where:where] = bytes([rng.randrange(256)])
        elif where < len(data):
            del data[where]
    return bytes(data)


def huge_head(rng: random.Random) -> bytes:
    """A head far over 16 KiB: one huge header or very many; terminated or not."""
    if rng.random() < 0.5:
        headers = b"X-Big: " + b"a" * rng.randint(16_000, 70_000) + b"\r\n"
    else:
        headers = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 60) for i in range(rng.randint(250, 1200)))
    head = b"GET / HTTP/1.1\r\nHost: f\r\n" + headers
    return head + b"\r\n" if rng.random() < 0.5 else head


def hostile_input(rng: random.Random) -> bytes:
    """One input of any kind. HEAD is left out: its answers announce a body they do not carry."""
    kind = rng.random()
    if kind < 0.35:
        data = mutated_request(rng)
    elif kind < 0.5:
        data = b"".join(mutated_request(rng) for _ in range(rng.randint(2, 3)))  # pipelined
    elif kind < 0.7:
        data = byte_mutation(rng)
    elif kind < 0.8:
        valid = rng.choice(VALID)
        data = valid[: rng.randrange(len(valid))]  # truncated
    elif kind < 0.9:
        data = rng.randbytes(rng.randint(0, 2000))
    else:
        data = huge_head(rng)
    return data.replace(b"HEAD", b"HEAP")


# --- strict response parsing ------------------------------------------------------------------------

STATUS_LINE = re.compile(rb"HTTP/1\.1 ([1-5][0-9][0-9]) ([\x20-\x7e]*)\r\n")
HEADER_LINE = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*([\x20-\x7e]*?)[ \t]*")


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[bytes, bytes]

    @property
    def closes(self) -> bool:
        return self.headers.get(b"connection", b"").lower() == b"close"

    @property
    def location(self) -> bytes:
        return self.headers.get(b"location", b"")


class Malformed(Exception):
    """Bytes from the server that are not a well-formed HTTP/1.1 response."""


def parse_responses(raw: bytes) -> tuple[list[Response], bytes]:
    """Every complete response in `raw`, and the bytes after the last one; Malformed if one is broken."""
    responses = []
    while (end := raw.find(b"\r\n\r\n")) >= 0:
        status_line = STATUS_LINE.match(raw)
        if status_line is None:
            raise Malformed(f"not a status line: {raw[:80]!r}")
        headers: dict[bytes, bytes] = {}
        for line in raw[status_line.end() : end].split(b"\r\n") if end > status_line.end() else []:
            header = HEADER_LINE.fullmatch(line)
            if header is None:
                raise Malformed(f"not a header line: {line[:80]!r}")
            name = header[1].lower()
            if name in headers:
                raise Malformed(f"header sent twice: {name!r}")
            headers[name] = header[2]
        length = headers.get(b"content-length", b"")
        if not length.isdigit():
            raise Malformed(f"no Content-Length: {raw[:end]!r}")
        stop = end + 4 + int(length)
        if len(raw) < stop:
            break
        responses.append(Response(int(status_line[1]), headers))
        raw = raw[stop:]
    return responses, raw


def answers_violation(responses: Sequence[Response], closed: bool, bases: Sequence[bytes]) -> str | None:
    """What is wrong with the answers to one input, if anything. `bases`: the backends' URLs."""
    for i, response in enumerate(responses):
        if response.status not in ALLOWED_STATUSES:
            return f"status {response.status} is not one the front door sends"
        if response.status == 307 and not response.location.startswith(tuple(b + b"/" for b in bases)):
            return f"a Location off the backends: {response.location[:100]!r}"
        if response.status in CLOSING_STATUSES and not response.closes:
            return f"{response.status} without connection: close"
        if response.closes and i < len(responses) - 1:
            return f"an answer after one that said close ({response.status})"
    if responses and responses[-1].closes and not closed:
        return "connection: close said, but the connection stayed open"
    return None


# --- child processes --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
    return port


@dataclass(eq=False)
class Child:
    """A child process with its stderr in a log file; `kill` is `kill -9`, `stop` is SIGTERM then SIGKILL."""

    name: str
    command: list[str]
    log_path: Path
    port: int = 0  # the port it listens on, when it is a server
    process: trio.Process | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    async def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = await trio.lowlevel.open_process(
                self.command, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True
            )

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def kill(self) -> None:
        if self.alive:
            assert self.process is not None
            self.process.kill()
            await self.process.wait()

    async def stop(self, within: float = STOP_WITHIN) -> int | None:
        """SIGTERM and the exit status; SIGKILL (and None) if it has not exited within `within`."""
        if self.process is None:
            return None
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        with trio.move_on_after(within):
            return await self.process.wait()
        await self.kill()
        return None

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def backend_child(directory: Path, port: int, log_dir: Path) -> Child:
    """`python -m http.server` serving `directory`, whose `health` file says load 0."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "health").write_text("0\n")
    command = [sys.executable, "-m", "http.server", "--bind", HOST, str(port), "--directory", str(directory)]
    return Child(f"backend-{port}", command, log_dir / f"backend-{port}.log", port)


def dispatcher_child(
    port: int, admin_port: int, backends: Sequence[str], log_dir: Path, *flags: str
) -> Child:
    command = [
        sys.executable,
        "-m",
        "dispatcher",
        f"--listen={HOST}:{port}",
        f"--admin-listen={HOST}:{admin_port}",
    ]
    command += [f"--backend={url}" for url in backends] + ["--log-level=warning", *flags]
    return Child("dispatcher", command, log_dir / "dispatcher.log", port)


async def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes, Response]:
    """A GET with `Connection: close` on a fresh connection: status, body, the parsed head."""
    with trio.fail_after(timeout):
        async with await trio.open_tcp_stream(HOST, port) as stream:
            await stream.send_all(
                f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode()
            )
            raw = b""
            while chunk := await stream.receive_some(65536):
                raw += chunk
    responses, _ = parse_responses(raw)
    if not responses:
        raise Malformed(f"no answer to GET {path}: {raw[:200]!r}")
    head_end = raw.find(b"\r\n\r\n") + 4
    return responses[0].status, raw[head_end:], responses[0]


async def wait_ready(admin_port: int, dispatcher: Child, within: float = READY_WITHIN) -> None:
    """Poll /readyz until 200; the child offers no event to wait on, so this is bounded polling."""
    with trio.fail_after(within):
        while True:
            if not dispatcher.alive:
                raise RuntimeError(f"the dispatcher exited at start:\n{dispatcher.log_tail()}")
            try:
                if (await http_get(admin_port, "/readyz"))[0] == 200:
                    return
            except (OSError, Malformed, trio.TooSlowError):
                pass
            await trio.sleep(0.05)


def metric(text: str, name: str) -> float | None:
    """The value of the unlabelled sample `name` in a Prometheus text exposition."""
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == name:
            return float(value)
    return None


async def open_connections_settle(admin_port: int, within: float = 5.0) -> float | None:
    """dispatcher_open_connections once it is 0, else its last value after `within` s (bounded polling)."""
    value: float | None = None
    with trio.move_on_after(within):
        while True:
            _, body, _ = await http_get(admin_port, "/metrics")
            value = metric(body.decode(), "dispatcher_open_connections")
            if value == 0:
                return value
            await trio.sleep(0.05)
    return value


def log_problems(text: str) -> list[str]:
    """Lines of a dispatcher log that say something went wrong inside it."""
    return [line for line in text.splitlines() if "Traceback" in line or " ERROR " in line]


@asynccontextmanager
async def front_door(
    work_dir: Path, backends: int, *flags: str
) -> AsyncIterator[tuple[Child, list[Child], int, int]]:
    """Backends and a dispatcher in front of them, ready; stopped on the way out whatever happens."""
    children: list[Child] = []
    try:
        backend_children = []
        for i in range(backends):
            child = backend_child(work_dir / f"backend-{i}", free_port(), work_dir)
            children.append(child)
            await child.start()
            backend_children.append(child)
        urls = [child.url for child in backend_children]
        port, admin_port = free_port(), free_port()
        dispatcher = dispatcher_child(port, admin_port, urls, work_dir, *flags)
        children.append(dispatcher)
        await dispatcher.start()
        await wait_ready(admin_port, dispatcher)
        yield dispatcher, backend_children, port, admin_port
    finally:
        with trio.CancelScope(shield=True):
            for child in reversed(children):
                await child.stop(within=STOP_WITHIN)


# --- the campaign -------------------------------------------------------------------------------------


@dataclass
class Tally:
    inputs: int = 0
    connections: int = 0
    codes: Counter[int] = field(default_factory=Counter)
    closes: int = 0
    resets: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def error(self, kind: str, detail: str) -> None:
        self.errors[kind] += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(f"{kind}: {detail}")


async def send_in_pieces(stream: trio.SocketStream, data: bytes, rng: random.Random) -> None:
    """`data` in one to three writes, so that heads also arrive in pieces."""
    cuts = sorted(rng.randrange(len(data) + 1) for _ in range(rng.randint(0, 2)))
    start = 0
    for cut in [*cuts, len(data)]:
        if cut > start:
            await stream.send_all(data[start:cut])
        start = cut


async def one_input(
    stream: trio.SocketStream,
    number: int,
    data: bytes,
    rng: random.Random,
    tally: Tally,
    bases: Sequence[bytes],
) -> bool:
    """Send one input and a probe; tally the answers. True when the connection is still open."""
    probe = f"/probe/{number}".encode()
    received = b""
    closed = reset = False
    with trio.move_on_after(STUCK_AFTER) as stuck:
        try:
            await send_in_pieces(stream, data, rng)
            await stream.send_all(b"GET " + probe + b" HTTP/1.1\r\nHost: f\r\n\r\n")
            while True:
                responses, _ = parse_responses(received)
                if responses and responses[-1].location.endswith(probe) and not responses[-1].closes:
                    break
                chunk = await stream.receive_some(65536)
                if not chunk:
                    closed = True
                    break
                received += chunk
        except trio.BrokenResourceError:
            reset = True
        except Malformed as error:
            tally.error("malformed", f"{error} after input {data[:100]!r}")
            return False
    if stuck.cancelled_caught:
        tally.error("stuck", f"no answer or close within {STUCK_AFTER:g}s after input {data[:100]!r}")
        return False
    try:
        responses, rest = parse_responses(received)
    except Malformed as error:
        tally.error("malformed", f"{error} after input {data[:100]!r}")
        return False
    tally.codes.update(r.status for r in responses)
    if reset:
        tally.resets += 1
        tally.error("reset", f"connection reset after input {data[:100]!r}, {len(received)} bytes received")
        return False
    if rest:
        tally.error("truncated", f"an answer cut short: {rest[:100]!r} after input {data[:100]!r}")
    problem = answers_violation(responses, closed, bases)
    if problem is not None:
        tally.error("answer", f"{problem}; input {data[:100]!r}")
    if closed:
        tally.closes += 1
    return not closed


async def fuzz_worker(
    port: int, inputs: Iterator[tuple[int, bytes]], seed: int, tally: Tally, bases: Sequence[bytes]
) -> None:
    """Take inputs until none are left; a connection is reused for as long as the server keeps it."""
    rng = random.Random(seed)
    stream: trio.SocketStream | None = None
    try:
        for number, data in inputs:
            tally.inputs += 1
            if stream is None:
                try:
                    stream = await trio.open_tcp_stream(HOST, port)
                except OSError as error:
                    tally.error("connect", str(error))
                    continue
                tally.connections += 1
            if not await one_input(stream, number, data, rng, tally, bases):
                await stream.aclose()
                stream = None
    finally:
        if stream is not None:
            await stream.aclose()


async def end_checks(dispatcher: Child, port: int, admin_port: int, backends: Sequence[Child]) -> list[str]:
    """After the campaign: a normal request gets its 307 and nothing is left open."""
    violations = []
    if not dispatcher.alive:
        return [f"the dispatcher died:\n{dispatcher.log_tail()}"]
    try:
        status, _, head = await http_get(port, "/after/fuzz?x=1")
        bases = tuple(f"{b.url}/after/fuzz?x=1".encode() for b in backends)
        if status != 307 or head.location not in bases:
            violations.append(f"a normal request got {status} {head.location!r} after the campaign")
    except (OSError, Malformed, trio.TooSlowError) as error:
        violations.append(f"a normal request failed after the campaign: {error!r}")
    open_now = await open_connections_settle(admin_port)
    if open_now != 0:
        violations.append(f"dispatcher_open_connections is {open_now} after every client closed")
    return violations


async def campaign(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    inputs = ((n, hostile_input(rng)) for n in range(args.inputs))
    tally = Tally()
    with tempfile.TemporaryDirectory(prefix="dispatcher-fuzz-") as temp:
        work_dir = Path(temp)
        flags = [f"--header-timeout={HEADER_TIMEOUT:g}", f"--keepalive-timeout={KEEPALIVE_TIMEOUT:g}"]
        async with front_door(work_dir, 1, *flags) as (dispatcher, backends, port, admin_port):
            started = trio.current_time()
            bases = [backend.url.encode() for backend in backends]
            async with trio.open_nursery() as workers:
                for worker in range(args.connections):
                    workers.start_soon(fuzz_worker, port, inputs, args.seed * 1000 + worker, tally, bases)
            elapsed = trio.current_time() - started
            violations = await end_checks(dispatcher, port, admin_port, backends)
            status = await dispatcher.stop()
            if status != 0:
                violations.append(f"the dispatcher exited with {status} after SIGTERM")
            violations += [
                f"dispatcher log: {line}" for line in log_problems(dispatcher.log_path.read_text())
            ]
    print(report(tally, args, elapsed, violations))
    return 1 if violations or tally.errors else 0


def report(tally: Tally, args: argparse.Namespace, elapsed: float, violations: Sequence[str]) -> str:
    codes = ", ".join(f"{code}: {count}" for code, count in sorted(tally.codes.items()))
    errors = ", ".join(f"{kind}: {count}" for kind, count in sorted(tally.errors.items())) or "none"
    lines = [
        f"fuzz: {tally.inputs} inputs tried over {tally.connections} connections "
        f"({args.connections} at a time) in {elapsed:.1f} s, seed {args.seed}",
        f"responses by code: {codes}",
        f"closes: {tally.closes}, resets: {tally.resets}, errors: {sum(tally.errors.values())} ({errors})",
        f"violations: {len(violations) + sum(tally.errors.values()) or 'none'}",
        *(f"  - {violation}" for violation in [*violations, *tally.examples]),
    ]
    if sum(tally.errors.values()) > len(tally.examples):
        lines.append(f"  (the first {len(tally.examples)} of the errors are shown)")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Fuzz the front door of a dispatcher process; exit 1 on any violation."
    )
    parser.add_argument("--inputs", type=int, default=20_000, help="inputs to send (default 20000)")
    parser.add_argument("--connections", type=int, default=256, help="connections at a time (default 256)")
    parser.add_argument("--seed", type=int, default=1, help="random seed: a run can be repeated exactly")
    args = parser.parse_args(argv)
    return trio.run(campaign, args)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
