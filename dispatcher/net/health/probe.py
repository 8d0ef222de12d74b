"""One backend's place in the health checks, shared by the parts that check it.

Owns: `Probe`, the plain record of one backend's checks: where it stands in the schedule, the
plain connection the sweep holds for it and the check in flight on it, its TLS check, its load stream.
Rules: plain data, no behaviour: the schedule's fields are written by `checks`, the connection's by
`sweep`, the stream by `checks` and `stream`; the comments below say whose each field is. It imports
the types of `client`, `tls` and `stream`, never `sweep` or `checks` (they import it).
"""

from __future__ import annotations

import math
import socket

import trio

from dispatcher.core.pool import Backend
from dispatcher.net.health.client import CheckClient
from dispatcher.net.health.stream import LoadStream
from dispatcher.net.health.tls import TlsCheck
from dispatcher.protocol.answer import AnswerReader


class Probe:
    """One backend's schedule, its kept-alive plain socket, its check in flight, its load stream."""

    __slots__ = (
        "active",
        "answer",
        "arrived",
        "backend",
        "client",
        "deadline",
        "due",
        "received",
        "reused",
        "scope",
        "sent_at",
        "sock",
        "started",
        "stream",
        "tls",
    )

    def __init__(self, backend: Backend, client: CheckClient) -> None:
        self.backend = backend
        self.client = client
        self.tls = TlsCheck(client) if client.https else None  # an https backend's checks
        # checks: the schedule, and the task a check runs in when it needs one.
        self.active = True  # False once removed (a reload): late results are dropped
        self.due = 0.0  # when the current or next check was due, on the grid (math.inf: removed)
        self.scope: trio.CancelScope | None = None  # a connect or a TLS check running as a task
        self.stream: LoadStream | None = None  # its load stream, while one is open
        # sweep: the plain connection and the check in flight on it.
        self.sock: socket.socket | None = None
        self.answer = AnswerReader()  # of the connection `sock`: reads the answer of the check in flight
        self.started: float | None = None  # when the check in flight on `sock` began
        self.deadline = math.inf  # when it times out (math.inf: none in flight)
        self.reused = False  # the check in flight went over a kept-alive connection
        self.received = False  # any byte of its answer arrived
        self.sent_at = 0.0  # the wall clock when the check began, and when the kernel received the
        self.arrived: float | None = None  # last byte read of its answer (None: not known)
