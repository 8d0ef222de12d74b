"""The admin listener: metrics, liveness, readiness, the backends API and the status page, apart from
the front door.

Owns: the admin routes and their small HTTP/1.1 server (h11, whole bodies, keep-alive), the
bearer-token check for state-changing requests, and the one log line of each (who, what, result).
Rules: reads the pool and the metrics; changes a backend only through `Pool.set_admin`; never chooses a
backend. It binds to loopback by default. `route` is a plain function of the request and the time,
testable without sockets. `/metrics`, `/healthz` and `/readyz` never need the token: scrapers and
orchestrators must reach them; nor do `/` (the status page, `dispatcher.net.status_page`) and
`/status` (the JSON it reads), which change nothing.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import Callable, Generator
from typing import Any, Protocol, TypeVar
from urllib.parse import quote, unquote

import h11
import trio

from dispatcher import __version__
from dispatcher.core.health_state import Admin
from dispatcher.core.lifecycle import Lifecycle
from dispatcher.core.pool import Backend, BackendView, Pool
from dispatcher.core.pools import Pools
from dispatcher.core.reply import DateHeader, Reply, text_reply
from dispatcher.expose.render import Metrics
from dispatcher.net.frontdoor import lingering_close
from dispatcher.net.status_page import status_page
from dispatcher.protocol.refusals import MAX_HEAD
from dispatcher.protocol.wholemessage import Refused, WholeRequest, read_request, response_bytes
from dispatcher.settings.config import DEFAULT_POOL, BackendSpec, ConfigError, parse_backend

log = logging.getLogger("dispatcher.admin")

MAX_ADMIN_BODY = 64 * 1024
# An admin connection idle this long is closed. Prometheus keeps its connection between scrapes
# (15 s by default), so this must be longer than a scrape interval.
ADMIN_IDLE_TIMEOUT = 120.0
STATE_WORDS = {"ready": Admin.READY, "drain": Admin.DRAIN, "maint": Admin.MAINT}
# A refused request's body is logged only this far: a client must not fill the log.
MAX_LOGGED_WORD = 40
_JSON = (b"content-type", b"application/json")
_DATE = DateHeader()
# The status page reads /status every second: a cached answer would show it figures gone by.
_NO_STORE = (b"cache-control", b"no-store")
# What POST /backends reads from its JSON object: parse_backend's arguments, and the pool it joins.
BACKEND_FIELDS = ("url", "name", "weight", "pool")
# Routes that only read, answered to GET and HEAD (`/backends` takes a POST too, which adds one).
READ_ROUTES = ("/", "/status", "/metrics", "/healthz", "/readyz", "/backends", "/pools")
# What POST /pools/<name>/state takes: a whole pool held in maintenance (every answer its fallback),
# or ready again (HAProxy's `disable backend`/`enable backend` of its runtime API, by another name).
POOL_WORDS = ("maint", "ready")


# A read of every backend (/status, /backends) is built this many backends at a time, the front door's
# tasks run between: in one piece, /status of 1,000 backends held the event loop for 25-30 ms, and the
# status page reads it every second.
STEP_BACKENDS = 50
T = TypeVar("T")
Steps = Generator[None, None, T]  # yields between steps, returns what they built


# What scrapers and orchestrators read, by whatever name they know the host by (Debian's /etc/hosts
# maps the host's own name to 127.0.1.1): never refused for their Host.
SCRAPED = ("/metrics", "/healthz", "/readyz")


def loopback_host(host: str) -> bool:
    """Whether a Host header names this machine's loopback: localhost, 127.x.x.x or [::1], any port.

    A browser sends the name it resolved in Host. After DNS rebinding (an attacker's name that now
    resolves to 127.0.0.1) that is the attacker's name, and its page is "same origin" with us: the
    Origin check of state changes cannot see it, and without a token a drain would go through."""
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    if host.startswith("[") and "]" in host:
        name = host[1 : host.index("]")]
    if name.lower() in ("localhost", "::1"):
        return True
    parts = name.split(".")
    return len(parts) == 4 and parts[0] == "127" and all(p.isdigit() and int(p) < 256 for p in parts)


class BackendList(Protocol):
    """What the wiring does for POST and DELETE /backends: the change made as a reload makes one."""

    def add_backend(self, spec: BackendSpec, pool: str = ...) -> None: ...

    def remove_backend(self, name: str) -> None: ...


class AdminApi:
    """Routes of the admin listener."""

    def __init__(
        self,
        pool: Pool | Pools,
        metrics: Metrics,
        lifecycle: Lifecycle,
        token: str | None = None,
        refresh: Callable[[], None] | None = None,
    ) -> None:
        self.pool = pool if isinstance(pool, Pools) else Pools(pool)
        self.metrics = metrics
        self.lifecycle = lifecycle  # read for readiness: serving, shutting down
        self.set_token(token)
        # With --workers, brings the counters in from the worker processes before each request.
        self.refresh = refresh
        self.roster: BackendList | None = None  # set by the wiring once it runs
        # The listener is on loopback (the default): a request naming another host in Host is a page
        # of another site that had its name resolve to 127.0.0.1 (DNS rebinding), set by the wiring.
        self.loopback = False

    def set_token(self, token: str | None) -> None:
        self._token = token.encode() if token else None

    def route(self, request: WholeRequest, now: float, peer: str = "-") -> Reply:
        """The answer to one request at time `now`; `peer` (the client's address) is for the log.

        All but a scrape: `handle` answers GET and HEAD /metrics itself, in steps (`_metrics_in_steps`).
        """
        path, method = request.path, request.method
        if self._rebound(request):
            reply = text_reply(
                403,
                "refused: this listener is on loopback, and Host names another site (DNS rebinding?)",
                close=False,
            )
            if method in ("GET", "HEAD"):
                return reply
            # A state change refused is logged as every other one is (`_audited`).
            return self._audited(request, peer, lambda: (reply, "refused: Host names another site"))
        if path == "/backends" and method == "POST":
            return self._audited(request, peer, lambda: self._add_backend(request, now))
        if path in READ_ROUTES:
            if method not in ("GET", "HEAD"):
                return _not_allowed("GET, HEAD, POST" if path == "/backends" else "GET, HEAD")
            if path != "/metrics":  # `handle` answers a scrape itself
                return self._read(path, now)
        parts = [unquote(part) for part in path.split("/")]
        if len(parts) == 4 and parts[1] == "backends" and parts[3] == "state":
            if method != "POST":
                return _not_allowed("POST")
            return self._set_state(request, parts[2], now, peer)
        if len(parts) == 3 and parts[1] == "backends":
            return self._backend_route(request, parts[2], now, peer)
        if len(parts) in (3, 4) and parts[1] == "pools":
            return self._pool_route(request, parts, now, peer)
        return text_reply(
            404, "not found: try /, /metrics, /healthz, /readyz, /backends, /pools", close=False
        )

    def _pool_route(self, request: WholeRequest, parts: list[str], now: float, peer: str) -> Reply:
        """GET /pools/<name>: the pool and its backends; POST /pools/<name>/state: maint or ready."""
        pool = self.pool.by_pool.get(parts[2])
        if len(parts) == 4:
            if parts[3] != "state":
                return text_reply(404, "not found: /pools/<name> or /pools/<name>/state", close=False)
            if request.method != "POST":
                return _not_allowed("POST")
            return self._audited(request, peer, lambda: self._change_pool(request, parts[2], now))
        if request.method not in ("GET", "HEAD"):
            return _not_allowed("GET, HEAD")
        if pool is None:
            return text_reply(404, f"no pool named {parts[2]!r}", close=False)
        return _json(200, self._pool_json(pool, now, with_backends=True))

    def _change_pool(self, request: WholeRequest, name: str, now: float) -> tuple[Reply, str]:
        if not self._authorized(request):
            return self._refused()
        pool = self.pool.by_pool.get(name)
        if pool is None:
            return text_reply(404, f"no pool named {name!r}", close=False), "no such pool"
        word = request.body.decode("utf-8", "replace").strip().lower()
        if word not in POOL_WORDS:
            reply = text_reply(400, "body must be one of: maint, ready", close=False)
            return reply, "refused: the body is not maint or ready"
        before = "maint" if pool.maintenance else "ready"
        pool.set_maintenance(word == "maint")
        if before != word:  # a pool sent to its fallback is a warning; its return, news
            if pool.maintenance:
                log.warning("pool %s in maintenance: every answer is its fallback", name)
            else:
                log.info("pool %s ready again", name)
        return _json(200, self._pool_json(pool, now)), f"pool {name} is {word} (was {before})"

    def _pool_json(self, pool: Pool, now: float, with_backends: bool = False) -> dict[str, Any]:
        body: dict[str, Any] = {
            "name": pool.name,
            "state": "maint" if pool.maintenance else "ready",
            "policy": pool.policy_name,
            "backends": len(pool.backends),
            "usable": pool.usable_count,
            "fallback": pool.fallback.kind,
            "fallback_answers": pool.fallbacks,
        }
        if with_backends:
            body["backends"] = [self._backend_json(view, now) for view in pool.view(now)]
        return body

    def _rebound(self, request: WholeRequest) -> bool:
        """A request through DNS rebinding: the listener is on loopback and Host names another site."""
        return (
            self.loopback
            and request.path not in SCRAPED
            and not loopback_host(request.headers.get("host", ""))
        )

    def stepped(self, request: WholeRequest, now: float) -> Steps[Reply] | None:
        """The read of every backend this request asks for, in steps (`handle` runs the front door's
        tasks between them); None for any other request, which `route` answers."""
        if request.method not in ("GET", "HEAD") or self._rebound(request):
            return None
        if request.path == "/status":
            return self._status_steps(now)
        if request.path == "/backends":
            return self._backends_steps(now)
        return None

    def _read(self, path: str, now: float) -> Reply:
        """GET of one of READ_ROUTES but /metrics."""
        if path == "/":
            return status_page()
        if path == "/status":
            return _finished(self._status_steps(now))
        if path == "/healthz":
            return text_reply(200, "ok", close=False)
        if path == "/readyz":
            return self._ready()
        if path == "/pools":
            return _json(200, [self._pool_json(pool, now) for pool in self.pool])
        return _finished(self._backends_steps(now))

    def _backends_steps(self, now: float) -> Steps[Reply]:
        """/backends: as `json.dumps(every view, indent=1)` writes it, a backend at a time (each
        line of a backend's own dump one level deeper; JSON strings hold no raw newline)."""
        pieces: list[str] = []
        for pool in list(self.pool):
            for backend in list(pool.backends):
                if pieces and len(pieces) % STEP_BACKENDS == 0:
                    yield
                item = json.dumps(self._backend_json(pool.view_of(backend, now), now), indent=1)
                pieces.append(" " + item.replace("\n", "\n "))
        text = "[\n" + ",\n".join(pieces) + "\n]" if pieces else "[]"
        body = text.encode() + b"\n"
        return Reply(200, [_JSON, (b"content-length", str(len(body)).encode())], body)

    def _status_steps(self, now: float) -> Steps[Reply]:
        """What the status page shows: every pool's backends as /backends has them, each with its
        operator's word and its last check's age, and `clock` (seconds on the dispatcher's monotonic
        clock) to work out redirects per second between two readings. Compact: no indent lets `json`
        use its C encoder. Built in steps, so a backend's figures are those of its own step."""
        ready = self._ready()
        pools: list[str] = []
        done = 0
        for pool in list(self.pool):
            items: list[str] = []
            for backend in list(pool.backends):
                if done and done % STEP_BACKENDS == 0:
                    yield
                done += 1
                items.append(_compact(self._status_json(pool, backend, now)))
            head = {"name": pool.name, "policy": pool.policy_name, "state": _pool_state(pool)}
            pools.append(_compact(head)[:-1] + ',"backends":[' + ",".join(items) + "]}")
        top = {
            "version": __version__,
            "clock": round(now, 6),
            "ready": {"ready": ready.status == 200, "why": ready.body.decode().strip()},
            "admin": {"token_required": self._token is not None},
        }
        body = (_compact(top)[:-1] + ',"pools":[' + ",".join(pools) + "]}").encode()
        return Reply(200, [_JSON, (b"content-length", str(len(body)).encode()), _NO_STORE], body)

    def _status_json(self, pool: Pool, backend: Backend, now: float) -> dict[str, Any]:
        view = pool.view_of(backend, now)
        check_at = view.last_check_at
        return {
            **self._backend_json(view, now),
            "operator_state": backend.admin.value,
            "last_check_age_seconds": None if check_at is None else round(max(0.0, now - check_at), 3),
        }

    def _backend_route(self, request: WholeRequest, name: str, now: float, peer: str) -> Reply:
        if request.method in ("GET", "HEAD"):
            return self._one_backend(name, now)
        if request.method == "DELETE":
            return self._audited(request, peer, lambda: self._remove_backend(request, name))
        return _not_allowed("GET, HEAD, DELETE")

    async def _metrics_in_steps(self, request: WholeRequest, now: float) -> Reply:
        """The scrape with the front door's tasks run between its steps (`Metrics.scrape`): a scrape of
        1,000 backends takes 50 ms or more of CPU, and no client's redirect waits for all of it."""
        steps = self.metrics.scrape(
            now, request.headers.get("accept"), request.headers.get("accept-encoding")
        )
        return _metrics_reply(*await _in_steps(steps))

    def _ready(self) -> Reply:
        """Ready: at least one backend takes redirects, and we are not shutting down."""
        if self.lifecycle.shutting_down:
            return text_reply(503, "shutting down", close=False)
        if not self.lifecycle.serving:
            return text_reply(503, "starting: the front door is not listening yet", close=False)
        usable = self.pool.usable_count
        if usable == 0 and any(pool.maintenance for pool in self.pool):
            return text_reply(503, "no backend takes redirects: in maintenance", close=False)
        if usable == 0:
            return text_reply(503, "no backend is up", close=False)
        if any(pool.maintenance for pool in self.pool):  # up, but not all of them take redirects
            total = len(self.pool.backends)
            return text_reply(200, f"ready: {usable} of {total} backends take redirects", close=False)
        return text_reply(200, f"ready: {usable} of {len(self.pool.backends)} backends up", close=False)

    def _one_backend(self, name: str, now: float) -> Reply:
        backend = self.pool.by_name.get(name)
        if backend is None:
            return text_reply(404, f"no backend named {name!r}", close=False)
        return _json(200, self._backend_json(self.pool.view_of(backend, now), now))

    def _set_state(self, request: WholeRequest, name: str, now: float, peer: str) -> Reply:
        word = request.body.decode("utf-8", "replace").strip().lower()
        return self._audited(request, peer, lambda: self._change_state(request, name, word, now))

    def _audited(self, request: WholeRequest, peer: str, change: Callable[[], tuple[Reply, str]]) -> Reply:
        """A state-changing request, logged in one line whatever came of it: who (the peer's address),
        what (the route and the start of the body) and the result; INFO when done, WARNING when not."""
        reply, result = self._cross_site(request) or change()
        word = request.body.decode("utf-8", "replace").strip()
        log.log(
            logging.INFO if reply.status in (200, 201) else logging.WARNING,
            "admin request from %s: %s %s %r: %d, %s",
            peer,
            request.method,
            request.path,
            (word.lower() if request.path.endswith("/state") else word)[:MAX_LOGGED_WORD],
            reply.status,
            result,
        )
        return reply

    def _cross_site(self, request: WholeRequest) -> tuple[Reply, str] | None:
        """A state change sent by a browser from another site's page is refused (403), token or not.

        A page the operator happens to visit can POST to 127.0.0.1:8081 without the browser asking
        anyone, and without a token configured nothing else would stop it. Browsers name the page's
        origin in `Origin` on every cross-site POST and DELETE; curl and scripts send none, and the
        status page's own requests name this listener (as `Host` does)."""
        origin = request.headers.get("origin")
        if origin is None or origin.partition("://")[2] == request.headers.get("host", ""):
            return None
        reply = text_reply(403, "refused: a state change from another site's page (Origin)", close=False)
        return reply, f"refused: cross-site request from {origin[:MAX_LOGGED_WORD]!r}"

    def _refused(self) -> tuple[Reply, str]:
        reply = text_reply(401, "a valid 'Authorization: Bearer <token>' is needed", close=False)
        refused = Reply(401, [*reply.headers, (b"www-authenticate", b"Bearer")], reply.body)
        return refused, "refused: no valid bearer token"

    def _add_backend(self, request: WholeRequest, now: float) -> tuple[Reply, str]:
        """POST /backends {"url": ..., "name": ..., "weight": ..., "pool": ...}: validated as a config
        entry is; `pool` (the default pool when not given) must be running."""
        if not self._authorized(request):
            return self._refused()
        try:
            spec, pool = _backend_spec(request.body)
            if pool not in self.pool.by_pool:
                known = ", ".join(sorted(self.pool.by_pool))
                raise ConfigError("pool", pool, f"no such pool; running: {known}")
        except ConfigError as error:
            return text_reply(400, str(error), close=False), f"refused: {error}"
        if spec.name in self.pool.by_name:
            reply = text_reply(409, f"a backend named {spec.name!r} exists already", close=False)
            return reply, "refused: the name is taken"
        assert self.roster is not None
        self.roster.add_backend(spec, pool)
        added = self.pool.by_name.get(spec.name)  # with --workers, once the new workers listen
        body = self._backend_json(self.pool.view_of(added, now), now) if added else _spec_json(spec, pool)
        reply = _json(201, body)
        location = f"/backends/{quote(spec.name, safe='')}".encode()  # a name may hold `?`, `#`, `%`
        return Reply(201, [*reply.headers, (b"location", location)], reply.body, reply.close), (
            f"backend {spec.name} added to pool {pool} ({spec.url}, weight {spec.weight:g})"
        )

    def _remove_backend(self, request: WholeRequest, name: str) -> tuple[Reply, str]:
        if not self._authorized(request):
            return self._refused()
        if name not in self.pool.by_name:
            return text_reply(404, f"no backend named {name!r}", close=False), "no such backend"
        assert self.roster is not None
        self.roster.remove_backend(name)
        return _json(200, {"removed": name}), f"backend {name} removed"

    def _change_state(self, request: WholeRequest, name: str, word: str, now: float) -> tuple[Reply, str]:
        if not self._authorized(request):
            return self._refused()
        backend = self.pool.by_name.get(name)
        if backend is None:
            return text_reply(404, f"no backend named {name!r}", close=False), "no such backend"
        if word not in STATE_WORDS:
            reply = text_reply(400, "body must be one of: drain, maint, ready", close=False)
            return reply, "refused: the body is not drain, maint or ready"
        before = backend.state
        self.pool.set_admin(backend, STATE_WORDS[word])
        reply = _json(200, self._backend_json(self.pool.view_of(backend, now), now))
        return reply, f"backend {name} is {backend.state} (was {before})"

    def _backend_json(self, view: BackendView, now: float) -> dict[str, Any]:
        return _backend_json(view, now, self.pool.started_at)

    def _authorized(self, request: WholeRequest) -> bool:
        if self._token is None:
            return True
        scheme, _, given = request.headers.get("authorization", "").strip().partition(" ")
        if scheme.lower() != "bearer":  # RFC 9110 §11.1: the scheme is case-insensitive
            return False
        # Constant time: no timing oracle on the token.
        return hmac.compare_digest(given.strip().encode("latin-1"), self._token)

    async def _answer(self, request: WholeRequest, peer: str) -> Reply:
        """The reply to one request. A bug of ours met on the way is a 500 and a logged traceback,
        not a connection closed without a word (nginx's and HAProxy's answer to their own faults)."""
        now = trio.current_time()
        try:
            steps = self.stepped(request, now)
            if steps is not None:
                return await _in_steps(steps)
            if request.path == "/metrics" and request.method in ("GET", "HEAD"):
                return await self._metrics_in_steps(request, now)
            return self.route(request, now, peer)
        except Exception:
            log.exception("admin request %s %s failed", request.method, request.path)
            return text_reply(500, "internal server error")

    async def handle(self, stream: trio.SocketStream) -> None:
        """One admin connection; never raises. A request it refuses gets the front door's answer
        (`dispatcher.protocol.refusals`), and a head begun but not ended by the idle timeout a 408."""
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        peer = _peer(stream)
        try:
            while True:
                request = None
                with trio.move_on_after(ADMIN_IDLE_TIMEOUT):
                    request = await read_request(stream, conn, MAX_ADMIN_BODY)
                if request is None:
                    if conn.their_state is not h11.IDLE or conn.trailing_data[0]:
                        raise Refused(text_reply(408, "request timeout"), False)
                    return
                if self.refresh is not None:
                    self.refresh()
                reply = await self._answer(request, peer)
                await stream.send_all(_serialise(conn, reply, request.method == "HEAD"))
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except Refused as refused:
            await _refuse(stream, refused)
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            pass
        except Exception:
            log.exception("admin connection failed")
        finally:
            await trio.aclose_forcefully(stream)


async def _refuse(stream: trio.SocketStream, refused: Refused) -> None:
    """Send a refusal, then close lingering: the rest of the request is unread, and closing at once
    could reset the connection before the client reads why."""
    try:
        await stream.send_all(refused.answer())
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return
    await lingering_close(stream)


def _peer(stream: trio.SocketStream) -> str:
    """The client's address as host:port ([v6]:port), for the log of state changes."""
    try:
        host, port, *_ = stream.socket.getpeername()
    except OSError:  # it has gone already
        return "-"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _metrics_reply(body: bytes, content_type: str, gzipped: bool) -> Reply:
    headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
    if gzipped:
        headers.append((b"content-encoding", b"gzip"))
    return Reply(200, headers, body)


def _backend_json(view: BackendView, now: float, started_at: float) -> dict[str, Any]:
    check = view.last_check
    last_check = None
    if check is not None and view.last_check_at is not None:
        last_check = {
            "time": _wall_iso(now, view.last_check_at),
            "result": "pass" if check.passed else "fail",
            "reason": check.reason,
            "detail": check.detail,
            "duration_seconds": round(check.duration, 6),
        }
    return {
        "name": view.name,
        "pool": view.pool,
        "url": view.url,
        "state": view.state,
        "weight": _number(view.weight),
        "load": view.load,
        "effective_load": view.effective_load,
        "load_age_seconds": round(_load_age(view, now, started_at), 3),
        "redirects_since_report": view.since,
        "drain_rate": round(view.drain_rate, 6),
        "load_source": view.load_source,
        "redirects": view.redirects,
        "last_check": last_check,
    }


def _load_age(view: BackendView, now: float, started_at: float) -> float:
    """The metric's rule (dispatcher_backend_load_age_seconds): the age of the last load report, or
    the time since start when there is none yet, so that a backend that never reported looks as
    stale as it is, not fresh."""
    return view.load_age if view.load_age is not None else max(0.0, now - started_at)


def _wall_iso(now: float, at: float) -> str:
    """A trio-clock time as UTC wall time, for humans reading the API."""
    wall = time.time() - (now - at)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(wall)) + f".{int(wall % 1 * 1000):03d}Z"


def _backend_spec(body: bytes) -> tuple[BackendSpec, str]:
    """POST /backends's body, a JSON object of BACKEND_FIELDS, as a backend entry and the name of the
    pool it joins; ConfigError names what is wrong in one line, as for a config file."""
    try:
        fields = json.loads(body or b"null")
    except ValueError:
        fields = None
    if not isinstance(fields, dict) or "url" not in fields:
        raise ConfigError("body", body.decode("utf-8", "replace")[:MAX_LOGGED_WORD], _EXPECTED_BODY)
    unknown = sorted(set(fields) - set(BACKEND_FIELDS))
    if unknown:
        raise ConfigError(unknown[0], fields[unknown[0]], f"unknown key; known: {', '.join(BACKEND_FIELDS)}")
    pool = fields.get("pool", DEFAULT_POOL)
    if not isinstance(pool, str):
        raise ConfigError("pool", pool, "expected a pool's name")
    return parse_backend("backend", fields["url"], fields.get("name"), fields.get("weight", 1)), pool


_EXPECTED_BODY = 'expected a JSON object {"url": ..., "name": ..., "weight": ..., "pool": ...}'


def _spec_json(spec: BackendSpec, pool: str) -> dict[str, Any]:
    return {
        "name": spec.name,
        "pool": pool,
        "url": spec.url,
        "weight": _number(spec.weight),
        "state": "starting",
    }


def _number(value: float) -> float | int:
    """A weight as the operator wrote it: `3`, not `3.0` (weights are floats inside, mostly whole)."""
    return int(value) if value.is_integer() else value


def _json(status: int, value: object) -> Reply:
    body = json.dumps(value, indent=1).encode() + b"\n"
    return Reply(status, [_JSON, (b"content-length", str(len(body)).encode())], body)


def _compact(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


def _pool_state(pool: Pool) -> str:
    return "maint" if pool.maintenance else "ready"


async def _in_steps(steps: Steps[T]) -> T:
    """Run `steps` to their end, the other tasks run between each two."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            result: T = done.value
            return result
        await trio.lowlevel.checkpoint()


def _finished(steps: Steps[T]) -> T:
    """Run `steps` to their end at once (`route`, the function of a request without sockets)."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            result: T = done.value
            return result


def _not_allowed(allow: str) -> Reply:
    reply = text_reply(405, f"method not allowed here; allowed: {allow}", close=False)
    return Reply(405, [*reply.headers, (b"allow", allow.encode())], reply.body)


def _serialise(conn: h11.Connection, reply: Reply, head: bool) -> bytes:
    """A reply through h11, with Date (RFC 9110 §6.6.1: an origin with a clock sends it; h11 adds none)."""
    headers = [*reply.headers, (b"date", _DATE.at(time.time()))]
    if reply.close:
        headers.append((b"connection", b"close"))
    return response_bytes(conn, reply.status, reply.reason, headers, reply.body, head)
