"""Listening sockets: binding (with SO_REUSEPORT on request) and the connection cap.

Owns: how the front door's sockets are opened and how many connections it holds at once.
Rules: no HTTP here. Without `reuse_port` the sockets come from trio's own `open_tcp_listeners`.

The cap works as HAProxy's `maxconn`: past it the dispatcher stops accepting, so new connections wait
in the kernel's listen backlog until one closes, and the connections already open keep being served.
A quick 503 would cost an accept, a file descriptor and a write per refused client at the very moment
the process is short of them.

Accepting works as HAProxy's `tune.maxaccept` (64): once woken, a listener takes up to MAX_ACCEPT
queued connections before the other tasks run again. trio's serving loop accepts one connection per
pass of its scheduler, and under load a pass first serves every busy connection: 50 clients
connecting at once to a saturated front door waited up to 85 ms for their first answer.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections import deque
from collections.abc import Iterator

import trio

from dispatcher.settings.config import Address

log = logging.getLogger("dispatcher.listen")

# Linux's default somaxconn since 5.4; the kernel caps it to net.core.somaxconn anyway.
BACKLOG = 4096
# Connections accepted in one go (HAProxy's `tune.maxaccept` default).
MAX_ACCEPT = 64


# Linux >= 5.14 moves the connections queued on a closing SO_REUSEPORT socket (SYN and accept queues)
# to the other sockets of its group when this is 1. Without it, closing the old instance's socket
# resets the handshakes still in flight to it, and a rolling restart refuses a few connections.
MIGRATE_SYSCTL = "/proc/sys/net/ipv4/tcp_migrate_req"


def migrate_enabled() -> bool | None:
    """Whether the kernel migrates queued connections on close; None where it cannot tell."""
    try:
        with open(MIGRATE_SYSCTL, encoding="ascii") as file:
            return file.read().strip() == "1"
    except OSError:
        return None


class BindError(OSError):
    """A listener that cannot be bound. `str()` is the one line the CLI prints: which listener, which
    address, and the system's reason (`front door 0.0.0.0:8080: address already in use`)."""

    def __init__(self, listener: str, address: Address, error: OSError) -> None:
        reason = error.strerror or str(error)
        super().__init__(error.errno, f"{listener} {address}: {reason[:1].lower()}{reason[1:]}")

    def __str__(self) -> str:
        return str(self.strerror)


@contextlib.contextmanager
def naming(listener: str, address: Address) -> Iterator[None]:
    """Turn an OSError of binding `address` into a BindError that names `listener` and the address.

    Errors without an errno (a worker that did not start) are not about the address: left as they are.
    """
    try:
        yield
    except BindError:
        raise
    except OSError as error:
        if error.errno is None:
            raise
        raise BindError(listener, address, error) from error


async def open_listeners(address: Address, reuse_port: bool) -> list[trio.SocketListener]:
    """Bound, listening sockets for the front door on `address`; with `reuse_port`, shareable with
    other processes. A failure to bind is a BindError naming the front door and the address."""
    if reuse_port and not hasattr(socket, "SO_REUSEPORT"):
        raise OSError("--reuse-port: SO_REUSEPORT is not available on this system")
    with naming("front door", address):
        if not reuse_port:
            return await trio.open_tcp_listeners(address.port, host=address.host, backlog=BACKLOG)
        return await _open_shared(address)


def warn_unless_migrating(reuse_port: bool, workers: int) -> None:
    """Once at start (app.run), the warning that SO_REUSEPORT sockets will close under clients and the
    kernel will not move their handshakes. Not in `open_listeners`: with --workers every worker of
    every generation opens its own socket, and the warning came once per worker per reload."""
    if not (reuse_port or workers > 1) or migrate_enabled() is not False:
        return
    flags = "/".join(
        flag for flag, used in (("--reuse-port", reuse_port), ("--workers", workers > 1)) if used
    )
    closing = [
        *(["a rolling restart (the stopping instance)"] if reuse_port else []),
        *(["a reload (the old workers)"] if workers > 1 else []),
    ]
    log.warning(
        "%s: net.ipv4.tcp_migrate_req is 0: %s may reset the few handshakes in flight to the sockets "
        "that close; set it to 1 (sysctl -w net.ipv4.tcp_migrate_req=1)",
        flags,
        " and ".join(closing),
    )


async def _open_shared(address: Address) -> list[trio.SocketListener]:
    infos = await trio.socket.getaddrinfo(
        address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    family, kind, proto, _, sockaddr = infos[0]
    sock = trio.socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        await sock.bind(sockaddr)
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return [trio.SocketListener(sock)]


class CappedListener(trio.abc.Listener[trio.SocketStream]):
    """Accepts only while a slot is free; the connection's handler gives the slot back when it closes.

    A wait for a connection takes the others already queued too (up to MAX_ACCEPT, each with its
    slot), and the next calls hand them out without a checkpoint: trio's serving loop starts all
    their handlers at once, and the batch is always handed out before anything else runs.
    """

    def __init__(self, inner: trio.SocketListener, slots: trio.Semaphore) -> None:
        self.inner = inner
        self.socket = inner.socket
        self._slots = slots
        self._warned = False
        self._batch: deque[trio.SocketStream] = deque()
        # The same listening socket as a plain one, for accepts that must not yield to the scheduler.
        self._raw = socket.socket(fileno=os.dup(inner.socket.fileno()))
        self._raw.setblocking(False)

    async def accept(self) -> trio.SocketStream:
        if self._batch:
            return self._batch.popleft()
        if self._slots.value == 0 and not self._warned:
            log.warning("connection cap reached: new connections wait in the listen backlog")
            self._warned = True
        await self._slots.acquire()
        try:
            stream = await self.inner.accept()
        except BaseException:
            self._slots.release()
            raise
        self._warned = False
        self._take_queued()
        return stream

    def _take_queued(self) -> None:
        """Accept what else is queued now, while slots are free. Anything unusual (EMFILE, an aborted
        handshake) is left to the next awaited accept, which trio's loop handles."""
        for _ in range(MAX_ACCEPT - 1):
            try:
                self._slots.acquire_nowait()
            except trio.WouldBlock:
                return
            try:
                accepted, _ = self._raw.accept()
            except OSError:
                self._slots.release()
                return
            accepted.setblocking(False)
            self._batch.append(trio.SocketStream(trio.socket.from_stdlib_socket(accepted)))

    async def aclose(self) -> None:
        self._raw.close()
        await self.inner.aclose()


def drain_backlog(listener: CappedListener) -> list[trio.SocketStream]:
    """Accept, without waiting, every connection already queued on a listener about to close.

    Closing a listening socket resets the connections in its accept queue; with SO_REUSEPORT those
    clients had been handed to this process by the kernel, and a rolling restart would refuse them.
    They are served (with `Connection: close`, as shutdown begins) instead. The connection cap does not
    apply here: these clients were already admitted by the kernel.

    A listener already closed has nothing queued: trio's serving loop closes its listeners when it is
    cancelled, and a cancellation (a second SIGTERM) can come in the same instant as the stop.
    """
    if listener.socket.fileno() < 0:
        return []
    raw = socket.socket(fileno=os.dup(listener.socket.fileno()))
    raw.setblocking(False)
    streams = []
    try:
        while True:
            try:
                accepted, _ = raw.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError as error:  # EMFILE and the like: what stays queued is reset at close
                log.warning("draining the listen backlog: %s", error)
                break
            accepted.setblocking(False)
            streams.append(trio.SocketStream(trio.socket.from_stdlib_socket(accepted)))
    finally:
        raw.close()
    return streams
