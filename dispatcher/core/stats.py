"""The front door's counters: written by the transport, read by metrics at scrape time and by the
shared table of `--workers`.

Owns: which status codes exist (one series each), the request-duration buckets, `ServerStats`.
Rules: a leaf: imports nothing from the package, so that metrics and processes need not import
the transport to read what it counts.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field

# Every status code the front door can send, created at start so that every series exists: no more
# (a series that can never move is noise on a dashboard) and no fewer. 200 `OPTIONS *`, 307 the
# redirect, 400/431/501 malformed heads (h11's error_status_hint gives only these), 405 CONNECT,
# 408 a slow head, 414 a long target, 503 no backend, 505 not HTTP/1.x, 508 a dispatcher's check.
# No 413: a body too large to discard closes the connection after its 307 instead. README's
# "What the front door answers" and its metrics table list the same (tests/test_readme.py).
RESPONSE_CODES = (200, 307, 400, 405, 408, 414, 431, 501, 503, 505, 508)
# Request duration (head read to answer written) buckets: a redirect takes tens of microseconds when the
# loop is free; milliseconds mean the event loop is saturated or the client reads slowly.
DURATION_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


TLS_FAILURES = ("error", "http", "timeout")


@dataclass(slots=True)
class ServerStats:
    """Counters of the front door, read by metrics at scrape time (plain ints: no lock per request)."""

    open_connections: int = 0
    connections_total: int = 0
    loops: int = 0  # health checks of a dispatcher that reached this front door (508)
    responses: dict[int, int] = field(default_factory=lambda: dict.fromkeys(RESPONSE_CODES, 0))
    # Per bucket of DURATION_BUCKETS (plus +Inf last), not cumulative; metrics accumulates at scrape.
    duration_counts: list[int] = field(default_factory=lambda: [0] * (len(DURATION_BUCKETS) + 1))
    duration_sum: float = 0.0
    # TLS handshakes that failed (a client that speaks no TLS, an old version, a certificate it refused),
    # those that were plain HTTP requests (answered with a plain 400) and those that did not finish
    # within the header timeout: kept per reason.
    tls_handshake_failures: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TLS_FAILURES, 0))

    def observe(self, count: int, duration: float) -> None:
        """`count` requests answered by one write, `duration` after their bytes arrived."""
        self.duration_counts[bisect_left(DURATION_BUCKETS, duration)] += count
        self.duration_sum += count * duration
