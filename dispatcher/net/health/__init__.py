"""Active health checks: the only code that talks to backends.

The rooms, each with one owner (bottom to top; a module imports only those before it):
- `schedule`: when checks are due: the 20 ms grid, jitter, the timetable of due times. Pure.
- `client`: what a check says and how it reaches a backend: the request, the one connect, retry-once
  and timeout path both engines take, the verdict on an answer.
- `logs`: the transition line and the rate-limited debug lines (`dispatcher.health`).
- `stream`: load streams: each stream's state, the epoll reader of plain ones, the reading of TLS ones.
- `tls`: the check of an https backend, over trio's SSLStream.
- `probe`: one backend's place in the checks, the plain record the others share.
- `sweep`: every check over plain HTTP, from one epoll set, on the grid.
- `checks`: `HealthChecks`, which drives them all and alone gives results to the pool.

Load streams (issue 6): every check asks `Accept: text/event-stream, */*;q=0.5`. A backend that
answers `200` with `text/event-stream` keeps the answer open and sends its load as events; the sweep
then hands the connection to the `stream.StreamReader` (plain HTTP) or the check's task keeps reading
it (TLS), and each event is a fresh load report for the pool. The check that opened the stream passes
with the first event; while the stream lives, each later check of the schedule is a pass without a
request (rise, fall and the check counters keep their meaning), and a stream that falls silent past
interval + timeout, ends or breaks is a failed check; the next one connects again. Maint closes the
stream (no checks in maint). Any other answer is an ordinary check.
"""

from dispatcher.net.health.checks import HealthChecks
from dispatcher.net.health.client import tls_context
from dispatcher.net.health.logs import log_transition
from dispatcher.net.health.schedule import CHECK_GRID

__all__ = ["CHECK_GRID", "HealthChecks", "log_transition", "tls_context"]
