"""Routes: which pool answers a request, and with what path. The first route that matches wins.

Owns: the compiled routes (their conditions as plain data), the index that keeps a request from
looking at routes that cannot match it, the weighted split and its sticky cookie, the hash key a
`hash` pool is given, and the counts per route and per variant that metrics read.
Rules: pure: no I/O, no trio, no clock of its own (`now` is passed). Reads the request head as h11
gives it (lower-case header names, bytes). It asks a pool for a backend through `core.reply`; the
client's address through `core.clientaddr` (X-Forwarded-For is believed only from trusted proxies);
a country through the callable it is given (a MaxMind DB, opened by the wiring).

Why an index: a request pays for the routes it could match, not for all of them. Every route with a
path prefix can match only requests whose first path segment is its prefix's (prefixes match whole
segments: `/api` takes `/api` and `/api/x`, not `/apix`, as Envoy's `path_separated_prefix`), so the
candidates for each first segment are laid out once, in route order, with the routes that have no
prefix among them. With twenty prefix routes a request for the default pool tests none of them.

Paths are matched as sent, not percent-decoded: the backend receives the same bytes, so a route and
the backend always see one path (decoding here and not there is how routing and access rules drift).
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from dispatcher.core import clientaddr
from dispatcher.core.pool import Pool
from dispatcher.core.reply import Reply, not_redirected, path_and_query, redirect_in
from dispatcher.settings.config import DEFAULT_POOL, Settings
from dispatcher.settings.routing import HashKey, RouteSpec

Headers = Sequence[tuple[bytes, bytes]]
CountryOf = Callable[[str], str | None]


@dataclass(slots=True)
class Request:
    """One request head, and what routing has read of it so far (each read at most once)."""

    method: bytes
    target: bytes
    headers: Headers
    peer: str
    path: bytes  # path and query, as the Location will carry them
    _cookies: dict[bytes, bytes] | None = None
    _client: str | None = None

    def header(self, name: bytes) -> bytes | None:
        for each, value in self.headers:
            if each == name:
                return value
        return None

    def host(self) -> bytes:
        """The target's authority (absolute form, RFC 9112 §3.2.2) or Host, lower case, port cut."""
        if not self.target.startswith(b"/"):
            authority = self.target.partition(b"://")[2].split(b"/", 1)[0].split(b"?", 1)[0]
        else:
            authority = self.header(b"host") or b""
        authority = authority.lower()
        if authority.startswith(b"["):
            return authority.split(b"]", 1)[0] + b"]"
        return authority.split(b":", 1)[0]

    def cookies(self) -> dict[bytes, bytes]:
        """The Cookie header's pairs (RFC 6265 §5.4: `a=1; b=2`, one header in HTTP/1.1). The first
        of a name wins, as browsers send the most specific first. http.cookies' parser is not used:
        it drops every pair after one it finds malformed, and a stranger's bad cookie must not cost
        a visitor its variant."""
        if self._cookies is None:
            found: dict[bytes, bytes] = {}
            for name, value in self.headers:
                if name == b"cookie":
                    for pair in value.split(b";"):
                        key, sep, text = pair.strip().partition(b"=")
                        if sep and key not in found:
                            found[key] = text.strip().strip(b'"')
            self._cookies = found
        return self._cookies


@dataclass(slots=True)
class Route:
    """A route compiled: its spec, the pools it sends to, and its counters."""

    spec: RouteSpec
    index: int
    pools: tuple[Pool, ...]
    weights: tuple[float, ...]  # of a split; (1.0,) for one pool
    cookie_headers: tuple[bytes, ...]  # a split's Set-Cookie per variant
    requests: int = 0
    variant_requests: list[int] = field(default_factory=list)


class Client:
    """How the client's address and country are found: trusted proxies, a country source."""

    def __init__(
        self,
        trusted: clientaddr.TrustedProxies,
        country_of: CountryOf | None = None,
        country_header: bytes | None = None,
    ) -> None:
        self.trusted, self.country_of, self.country_header = trusted, country_of, country_header

    def address(self, request: Request) -> str:
        if request._client is None:
            request._client = clientaddr.client_address(request.peer, request.headers, self.trusted)
        return request._client

    def country(self, request: Request) -> str | None:
        """A trusted edge's country header first (it saw the real client), else the database's answer."""
        if self.country_header is not None:
            given = clientaddr.trusted_country(
                request.peer, request.headers, self.trusted, self.country_header
            )
            if given is not None:
                return given
        return self.country_of(self.address(request)) if self.country_of is not None else None


def _host_matches(host: bytes, hosts: tuple[bytes, ...]) -> bool:
    return any(host == wanted or (wanted[:2] == b"*." and host.endswith(wanted[1:])) for wanted in hosts)


def _prefix_matches(path: bytes, prefix: bytes) -> bool:
    if not path.startswith(prefix):
        return False
    if prefix.endswith(b"/") or len(path) == len(prefix):
        return True
    return path[len(prefix) : len(prefix) + 1] in (b"/", b"?")


def first_segment(path: bytes) -> bytes:
    """`api` of `/api/v1?x`: the key of the route index."""
    end = len(path)
    for stop in (path.find(b"/", 1), path.find(b"?", 1)):
        if 0 < stop < end:
            end = stop
    return path[1:end]


class Router:
    """The routes in order, over the pools; `reply` answers one request."""

    def __init__(
        self,
        specs: Sequence[RouteSpec],
        pools: Mapping[str, Pool],
        default: Pool,
        client: Client,
        rng: random.Random | None = None,
    ) -> None:
        self.routes = [_compile(spec, i, pools) for i, spec in enumerate(specs)]
        self.default = default
        self.client = client
        self._random = (rng or random.Random()).random
        # Hosts, prefixes and segments as bytes once, not per request.
        self._hosts = [tuple(h.encode() for h in r.spec.hosts) for r in self.routes]
        self._prefixes = [r.spec.path_prefix.encode() if r.spec.path_prefix else None for r in self.routes]
        segments = {r.index: first_segment(p) for r, p in zip(self.routes, self._prefixes, strict=True) if p}
        anywhere = [r for r in self.routes if segments.get(r.index, b"") == b""]  # no prefix, or "/"
        self._any_segment = anywhere
        self._by_segment = {
            segment: [r for r in self.routes if segments.get(r.index, b"") in (b"", segment)]
            for segment in set(segments.values()) - {b""}
        }
        self.defaulted = 0  # requests no route took: the default pool's

    def counts(self) -> list[int]:
        """Every counter, flat (`count_labels` names them): what --workers' shared table carries."""
        flat = [self.defaulted]
        for route in self.routes:
            flat.append(route.requests)
            flat.extend(route.variant_requests)
        return flat

    def carry_on(self, old: Router) -> None:
        """A reload's router takes up the counters of the one it replaces, route by route (by name and
        pool), so that a counter never goes back; those of a route that is new start at 0."""
        before = dict(zip(count_labels([r.spec for r in old.routes]), old.counts(), strict=True))
        labels = count_labels([r.spec for r in self.routes])
        self.restore([before.get(label, 0) for label in labels])

    def restore(self, counts: Sequence[int]) -> None:
        """Counters carried on from a predecessor (a restarted worker), in `counts` order."""
        if len(counts) != len(self.counts()):
            return
        values = iter(counts)
        self.defaulted = next(values)
        for route in self.routes:
            route.requests = next(values)
            route.variant_requests = [next(values) for _ in route.variant_requests]

    def candidates(self, path: bytes) -> list[Route]:
        """The routes that could match this path, in order."""
        return self._by_segment.get(first_segment(path), self._any_segment)

    def match(self, request: Request) -> Route | None:
        """The first route whose every condition holds."""
        for route in self.candidates(request.path):
            if self._holds(route, request):
                return route
        return None

    def _holds(self, route: Route, request: Request) -> bool:
        spec, i = route.spec, route.index
        prefix = self._prefixes[i]
        if prefix is not None and not _prefix_matches(request.path, prefix):
            return False
        if spec.methods and request.method not in spec.methods:
            return False
        if spec.hosts and not _host_matches(request.host(), self._hosts[i]):
            return False
        for name, values in spec.headers:
            if request.header(name) not in values:
                return False
        if spec.cookies:
            cookies = request.cookies()
            for name, values in spec.cookies:
                if cookies.get(name) not in values:
                    return False
        if spec.clients:
            address = _ip(self.client.address(request))
            if address is None or not any(address in network for network in spec.clients):
                return False
        return not spec.countries or self.client.country(request) in spec.countries

    def reply(self, method: bytes, target: bytes, headers: Headers, peer: str, now: float) -> Reply | bytes:
        """The answer to one request head: as `core.reply.reply_for`, through the routes."""
        path = path_and_query(target)
        if path is None or method == b"CONNECT":
            return not_redirected(method, target)
        request = Request(method, target, headers, peer, path)
        route = self.match(request)
        if route is None:
            self.defaulted += 1
            return redirect_in(self.default, path, self._hash_key(self.default, request), now)
        route.requests += 1
        pool, cookie = self._variant(route, request)
        answer = redirect_in(pool, _rewrite(route.spec, path), self._hash_key(pool, request), now, path)
        if cookie and type(answer) is bytes:
            return answer + b"\r\nset-cookie: " + cookie
        return answer

    def _variant(self, route: Route, request: Request) -> tuple[Pool, bytes]:
        """The route's pool; for a split, the visitor's variant (its cookie, while that pool has a
        usable backend) or one drawn by weight among those that have, with the cookie to keep it."""
        if len(route.pools) == 1:
            route.variant_requests[0] += 1
            return route.pools[0], b""
        cookie = route.spec.cookie
        assert cookie is not None
        named = request.cookies().get(cookie.name.encode())
        for i, pool in enumerate(route.pools):
            if named == pool.name.encode() and pool.takes_redirects:
                route.variant_requests[i] += 1
                return pool, b""
        i = self._draw(route)
        route.variant_requests[i] += 1
        return route.pools[i], route.cookie_headers[i]

    def _draw(self, route: Route) -> int:
        live = [i for i, pool in enumerate(route.pools) if pool.takes_redirects] or list(
            range(len(route.pools))
        )
        total = sum(route.weights[i] for i in live)
        point = self._random() * total
        for i in live:
            point -= route.weights[i]
            if point < 0:
                return i
        return live[-1]

    def _hash_key(self, pool: Pool, request: Request) -> bytes | None:
        """What a `hash` pool hashes for this request; None for the other policies, or when missing."""
        key: HashKey | None = pool.hash_key
        if key is None:
            return None
        if key.source == "client":
            return self.client.address(request).encode()
        if key.source == "path":
            return request.path.split(b"?", 1)[0]
        if key.source == "cookie":
            return request.cookies().get(key.name)
        return request.header(key.name)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


# One counter of the router: (route, pool) — route "" with pool None is the requests no route took; a
# route with pool None its requests; with a pool, those it sent to that pool (a variant).
CountLabel = tuple[str, str | None]


def count_labels(routes: Sequence[RouteSpec]) -> list[CountLabel]:
    """The labels of `Router.counts`, in its order, from the routes alone (the --workers master has
    no router of its own)."""
    labels: list[CountLabel] = [("", None)]
    for route in routes:
        labels.append((route.name, None))
        labels.extend((route.name, pool) for pool in route.pools)
    return labels


def needs_router(settings: Settings) -> bool:
    """Whether requests go through a router: routes, or a pool that hashes something of the request.
    Otherwise the front door asks the default pool directly and reads nothing of the head."""
    return bool(settings.routes) or any(pool.policy == "hash" for pool in settings.all_pools)


def router_for(
    settings: Settings, pools: Mapping[str, Pool], country_of: CountryOf | None = None
) -> Router | None:
    """The router of these settings over these pools (by name, the default pool's `default`), or None."""
    if not needs_router(settings):
        return None
    networks = (ipaddress.ip_network(text) for text in settings.trusted_proxies)
    trusted = clientaddr.TrustedProxies(networks, settings.forwarding_header.encode())
    header = settings.country_header.encode() if settings.country_header else None
    return Router(settings.routes, pools, pools[DEFAULT_POOL], Client(trusted, country_of, header))


def _compile(spec: RouteSpec, index: int, pools: Mapping[str, Pool]) -> Route:
    if spec.pool is not None:
        return Route(spec, index, (pools[spec.pool],), (1.0,), (b"",), variant_requests=[0])
    assert spec.cookie is not None
    variants = tuple(pools[variant.pool] for variant in spec.split)
    cookies = tuple(spec.cookie.header(variant.pool) for variant in spec.split)
    weights = tuple(variant.weight for variant in spec.split)
    return Route(spec, index, variants, weights, cookies, variant_requests=[0] * len(variants))


def _rewrite(spec: RouteSpec, path: bytes) -> bytes:
    """The path the backend receives: the prefix stripped or replaced, the rest (and query) kept."""
    if spec.path_prefix is None or not (spec.strip_prefix or spec.replace_prefix is not None):
        return path
    prefix = spec.path_prefix.rstrip("/").encode()
    rest = path[len(prefix) :]
    if spec.strip_prefix:
        return rest if rest.startswith(b"/") else b"/" + rest
    assert spec.replace_prefix is not None
    base = spec.replace_prefix.rstrip("/").encode()
    if not rest.startswith(b"/"):
        return (base or b"/") + rest if rest else (spec.replace_prefix.encode() or b"/")
    return base + rest
