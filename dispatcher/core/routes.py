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

import functools
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from dispatcher.core import clientaddr
from dispatcher.core.pool import Pool
from dispatcher.core.reply import Reply, field_items, not_redirected, path_and_query, redirect_in
from dispatcher.settings.config import DEFAULT_POOL, Settings
from dispatcher.settings.routing import HashKey, RouteSpec

Headers = Sequence[tuple[bytes, bytes]]
CountryOf = Callable[[str], str | None]
Check = Callable[["Request"], bool]
# Host fields whose verdict the router keeps (`Router._none_can_match`); past it they are forgotten at
# once, so that a client sending a new Host each time costs memory no more than this.
MAX_HOST_FIELDS = 1024
MAX_CACHED_HOST = 260  # bytes: a DNS name (253), a colon and a port; a longer field is parsed each time
_Test = tuple["Route", tuple[bytes, ...] | None, bytes | None, tuple[Check, ...]]


@dataclass(slots=True)
class Request:
    """One request head, and what routing has read of it so far (each read at most once): what the
    route checks (`_checks`, against which the generated matcher is tested) and the hash keys read."""

    method: bytes
    target: bytes
    headers: Headers
    peer: str
    path: bytes  # path and query, as the Location will carry them
    _fields: dict[bytes, bytes] | None = None
    _cookie_values: list[bytes] | None = None
    _host: bytes | None = None
    _cookies: dict[bytes, bytes] | None = None
    _client: str | None = None

    def _read_fields(self) -> dict[bytes, bytes]:
        """The first value of each field name (`_first_fields`, as the generated matcher reads them)."""
        self._fields = _first_fields(self.headers)
        return self._fields

    def header(self, name: bytes) -> bytes | None:
        fields = self._fields
        return (fields if fields is not None else self._read_fields()).get(name)

    def host(self) -> bytes:
        """The target's authority (absolute form, RFC 9112 §3.2.2) or Host, lower case, port cut."""
        if self._host is None:
            self._host = self._read_host()
        return self._host

    def _read_host(self) -> bytes:
        return _host_of_head(self.target, self.headers)

    def cookie(self, name: bytes, pattern: re.Pattern[bytes]) -> bytes | None:
        """Cookie `name`'s value as `cookies()` gives it, found by `_cookie_pattern(name)`: one
        C-level search of each Cookie field instead of every pair parsed into a dict."""
        if self._cookies is not None:
            return self._cookies.get(name)
        return _cookie_value(self._cookie_list(), pattern)

    def _cookie_list(self) -> list[bytes]:
        if self._cookie_values is None:
            self._cookie_values = _cookie_fields(self.headers)
        return self._cookie_values

    def cookies(self) -> dict[bytes, bytes]:
        """The Cookie header's pairs (RFC 6265 §5.4: `a=1; b=2`, one header in HTTP/1.1). The first
        of a name wins, as browsers send the most specific first. http.cookies' parser is not used:
        it drops every pair after one it finds malformed, and a stranger's bad cookie must not cost
        a visitor its variant."""
        if self._cookies is None:
            found: dict[bytes, bytes] = {}
            for value in self._cookie_list():
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
    cookie_pattern: re.Pattern[bytes] | None = None  # how a split's cookie is found in the Cookie field
    variant_of: dict[bytes, int] = field(default_factory=dict)  # a variant's pool name to its index
    checks: tuple[Check, ...] = ()  # every condition but the prefix, cheapest first
    # Read on every request the route takes, so as not to call what would do nothing: a split (else
    # one pool), and a prefix stripped or replaced (else the path is sent as it came).
    split: bool = False
    rewrites: bool = False
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


def _host_of(target: bytes, host_field: bytes | None) -> bytes:
    """The request's host: an absolute target's authority (RFC 9112 §3.2.2), else the Host field's;
    lower case, the port cut, and a fully qualified name's final dot (`example.com.` is
    `example.com`, as nginx takes it)."""
    if not target.startswith(b"/"):
        authority = target.partition(b"://")[2].split(b"/", 1)[0].split(b"?", 1)[0]
    else:
        authority = host_field or b""
    authority = authority.lower()
    if authority.startswith(b"["):
        return authority.split(b"]", 1)[0] + b"]"
    host = authority.split(b":", 1)[0]
    return host[:-1] if host.endswith(b".") else host


def _host_of_field(host_field: bytes | None) -> bytes:
    """`_host_of` an origin-form request's Host field, by the field: a site's requests carry a handful
    of them, and one C-level cache look-up is a third of the parse (lower case, port and dot cut).
    Only fields a host name and port can fill are kept, so that the cache's memory stays small
    whatever the clients send."""
    if host_field is not None and len(host_field) > MAX_CACHED_HOST:
        return _host_of(b"/", host_field)
    return _cached_host_of_field(host_field)


@functools.lru_cache(maxsize=MAX_HOST_FIELDS)
def _cached_host_of_field(host_field: bytes | None) -> bytes:
    return _host_of(b"/", host_field)


def _host_of_head(target: bytes, headers: Headers) -> bytes:
    """`Request.host` of a head not made into a Request (`_matcher`'s)."""
    if not target.startswith(b"/"):
        return _host_of(target, None)
    return _host_of_field(_host_field(headers))


def _first_fields(headers: Headers) -> dict[bytes, bytes]:
    """The first value of each field name, as `Request.header` reads them."""
    fields: dict[bytes, bytes] = {}
    for _, name, value in field_items(headers):
        if name not in fields:
            fields[name] = value
    return fields


def _cookie_value(values: Sequence[bytes], pattern: re.Pattern[bytes]) -> bytes | None:
    """The value of the first pair `pattern` (`_cookie_pattern`) finds in these Cookie fields."""
    for value in values:
        found = pattern.search(value)
        if found is not None:
            return found[1].strip().strip(b'"')
    return None


def _cookie_fields(headers: Headers) -> list[bytes]:
    """Every Cookie field's value, in order: what a cookie test reads, without the other fields."""
    return [value for _, name, value in field_items(headers) if name == b"cookie"]


def _host_field(headers: Headers) -> bytes | None:
    for _, name, value in field_items(headers):
        if name == b"host":
            return value
    return None


def _cookie_pattern(name: bytes) -> re.Pattern[bytes]:
    """The pair `name=value` of a Cookie field, as `Request.cookies` splits it: at the start or after
    a `;`, white space before the name (bytes.strip's, which is `\\s`), the value up to the next `;`."""
    return re.compile(rb"(?:^|;)\s*" + re.escape(name) + rb"=([^;]*)")


def _host_check(hosts: tuple[str, ...]) -> Check:
    """`docs.example.com` exactly, `*.example.com` any subdomain: a set and one endswith (C calls)."""
    exact = frozenset(h.encode() for h in hosts if not h.startswith("*."))
    suffixes = tuple(h[1:].encode() for h in hosts if h.startswith("*."))
    if not suffixes:
        return lambda request: request.host() in exact
    return lambda request: (host := request.host()) in exact or host.endswith(suffixes)


def _header_check(name: bytes, values: tuple[bytes, ...]) -> Check:
    return lambda request: request.header(name) in values


def _cookie_check(name: bytes, values: tuple[bytes, ...]) -> Check:
    pattern = _cookie_pattern(name)
    return lambda request: request.cookie(name, pattern) in values


def _checks(spec: RouteSpec, client: Client) -> tuple[Check, ...]:
    """A route's conditions but its prefix, as checks, in order of cost: the method (a set), the
    fields (one read of the head, then dict look-ups), the host, the cookies, the client's address."""
    checks: list[Check] = []
    if spec.methods:
        methods = spec.methods
        checks.append(lambda request: request.method in methods)
    checks += [_header_check(name, values) for name, values in spec.headers]
    if spec.hosts:
        checks.append(_host_check(spec.hosts))
    checks += [_cookie_check(name, values) for name, values in spec.cookies]
    if spec.clients:
        networks = clientaddr.Networks(spec.clients)

        def from_clients(request: Request) -> bool:
            return client.address(request) in networks

        checks.append(from_clients)
    if spec.countries:
        countries = spec.countries
        checks.append(lambda request: client.country(request) in countries)
    return tuple(checks)


def _conditions(spec: RouteSpec, checks: tuple[Check, ...], i: int, names: dict[str, object]) -> list[str]:
    """Route `i`'s conditions but its prefix as Python expressions over the head (`_matcher`'s
    arguments), in `_checks`' order (cheapest first); the values they compare with go into `names`.
    The host and the fields are read once, into the matcher's locals, when a condition first needs
    them. Client networks and countries stay calls of their checks (`_checks` made them) on a
    `Request`, made when the first of them is tested: an address is parsed anyway."""
    exprs = []
    if spec.methods:
        names[f"m{i}"] = spec.methods
        exprs.append(f"method in m{i}")
    for j, (name, values) in enumerate(spec.headers):
        names[f"h{i}_{j}"], names[f"hv{i}_{j}"] = name, values
        exprs.append(
            f"(fields if fields is not None else (fields := _first_fields(headers)))"
            f".get(h{i}_{j}) in hv{i}_{j}"
        )
    if spec.hosts:
        names[f"e{i}"] = frozenset(h.encode() for h in spec.hosts if not h.startswith("*."))
        names[f"s{i}"] = tuple(h[1:].encode() for h in spec.hosts if h.startswith("*."))
        exprs.append(
            f"((host if host is not None else (host := _host_of_head(target, headers))) in e{i}"
            f" or host.endswith(s{i}))"
        )
    for j, (name, values) in enumerate(spec.cookies):
        names[f"cp{i}_{j}"], names[f"cv{i}_{j}"] = _cookie_pattern(name), values
        exprs.append(f"_cookie_value(_cookie_fields(headers), cp{i}_{j}) in cv{i}_{j}")
    for j, check in enumerate(checks[len(exprs) :]):  # clients, countries: their checks, called
        names[f"k{i}_{j}"] = check
        exprs.append(
            f"k{i}_{j}(request if request is not None else "
            "(request := Request(method, target, headers, peer, path)))"
        )
    return exprs


Matcher = Callable[[bytes, bytes, Headers, str, bytes], "Route | None"]


def _matcher(tests: Sequence[_Test]) -> Matcher:
    """One candidate list's first match as one generated function of the head (method, target,
    fields, peer, path), each route's tests inlined in order.

    Why: walking the list costs, per route tested, a tuple unpacked, a loop over its checks and a
    lambda call for each; with ten routes tested before the one that matches that was 3 of the
    router's 5 us (benchmarks, scenario 11c). Reading the head into locals instead of through a
    `Request`'s methods took 11c's match from 3.8 to 2.7 us more. The source holds only names; every
    value it compares with is passed in `names`, so no config text is ever compiled as code."""
    names: dict[str, object] = {
        "Request": Request,
        "_first_fields": _first_fields,
        "_host_of_head": _host_of_head,
        "_cookie_fields": _cookie_fields,
        "_cookie_value": _cookie_value,
    }
    lines = ["def match(method, target, headers, peer, path):", "    host = fields = request = None"]
    for i, (route, wanted, prefix, checks) in enumerate(tests):
        names[f"r{i}"] = route
        exprs = _conditions(route.spec, checks, i, names)
        if wanted is not None:
            names[f"w{i}"], names[f"p{i}"] = wanted, prefix
            exprs.insert(0, f"(path.startswith(w{i}) or path == p{i})")
        lines.append(f"    if {' and '.join(exprs) or 'True'}:")
        lines.append(f"        return r{i}")
    lines.append("    return None")
    exec(compile("\n".join(lines), "<routes>", "exec"), names)  # names only: see the docstring
    return names["match"]  # type: ignore[return-value]


def _prefix_matches(path: bytes, prefix: bytes) -> bool:
    if not path.startswith(prefix):
        return False
    if prefix.endswith(b"/") or len(path) == len(prefix):
        return True
    return path[len(prefix) : len(prefix) + 1] in (b"/", b"?")


def _prefix_starts(prefix: bytes) -> tuple[bytes, ...]:
    """What a path that `_prefix_matches` the prefix starts with, for one C-level `startswith`:
    the prefix itself when it ends in `/`, else the prefix and a `/` or a `?` (or the prefix alone,
    matched whole by `==`)."""
    return (prefix,) if prefix.endswith(b"/") else (prefix + b"/", prefix + b"?")


def first_segment(path: bytes) -> bytes:
    """`api` of `/api/v1?x`: the key of the route index (two C-level partitions)."""
    return path[1:].partition(b"/")[0].partition(b"?")[0]


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
        for route in self.routes:
            route.checks = _checks(route.spec, client)
        self.default = default
        self.client = client
        self._random = (rng or random.Random()).random
        # Prefixes and segments as bytes once, not per request.
        self._prefixes = [r.spec.path_prefix.encode() if r.spec.path_prefix else None for r in self.routes]
        self._starts = [_prefix_starts(p) if p is not None else None for p in self._prefixes]
        segments = {r.index: first_segment(p) for r, p in zip(self.routes, self._prefixes, strict=True) if p}
        anywhere = [r for r in self.routes if segments.get(r.index, b"") == b""]  # no prefix, or "/"
        self._any_segment = anywhere
        # When every route that a path with no route of its own could meet is on hosts (a route by
        # host alone: `staging.example.com`), their hosts: a request for another host meets none of
        # them, and is answered by the default pool without its head being read further.
        gated = all(r.spec.hosts for r in anywhere)
        hosts = [h for r in anywhere for h in r.spec.hosts] if gated else []
        self._any_exact = frozenset(h.encode() for h in hosts if not h.startswith("*."))
        self._any_suffixes = tuple(h[1:].encode() for h in hosts if h.startswith("*."))
        self._any_gated = gated and bool(anywhere)
        # The verdict for each Host field seen (a site's requests carry a handful): one dict look-up
        # instead of the host's parse (lower case, port cut) and the match, about 0.35 us a request.
        self._elsewhere_by_field: dict[bytes | None, bool] = {}
        self._by_segment = {
            segment: [r for r in self.routes if segments.get(r.index, b"") in (b"", segment)]
            for segment in set(segments.values()) - {b""}
        }
        # Each candidate list's first match, by the list (`match`): of each route, its prefix's starts
        # (None: no prefix), the prefix whole and its checks, compiled into one function (`_matcher`).
        # A prefix that is its list's segment whole (`/api` in the list of `api`) holds for every path
        # the index gives that list, and `/` for every path (`path_and_query` starts each with one):
        # their tests are left out (None), as those of routes with no prefix.
        self._matchers = {
            id(routes): _matcher(
                [
                    (r, None, None, r.checks)
                    if self._prefixes[r.index] in (None, b"/", b"/" + segment)
                    else (r, self._starts[r.index], self._prefixes[r.index], r.checks)
                    for r in routes
                ]
            )
            for segment, routes in (*self._by_segment.items(), (b"", anywhere))
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

    def match(self, request: Request, candidates: list[Route] | None = None) -> Route | None:
        """The first route whose every condition holds, of `candidates`: this path's, as `candidates()`
        gave them (one of the router's own lists: their tests are filed by the list)."""
        path = request.path
        if candidates is None:
            candidates = self.candidates(path)
        return self._matchers[id(candidates)](
            request.method, request.target, request.headers, request.peer, path
        )

    def _holds(self, route: Route, request: Request) -> bool:
        """Whether every condition of one route holds, by its checks: what `match`'s generated code
        tests, one route at a time (the property test holds them to each other)."""
        i, path = route.index, request.path
        wanted = self._starts[i]
        if wanted is not None and not path.startswith(wanted) and path != self._prefixes[i]:
            return False
        return all(check(request) for check in route.checks)

    def reply(self, method: bytes, target: bytes, headers: Headers, peer: str, now: float) -> Reply | bytes:
        """The answer to one request head: as `core.reply.reply_for`, through the routes."""
        path = path_and_query(target)
        if path is None or method == b"CONNECT":
            return not_redirected(method, target)
        candidates = self.candidates(path)
        if self.default.hash_key is None and self._none_can_match(candidates, target, headers):
            # No route can match and the default pool hashes nothing: no more of the head is read.
            self.defaulted += 1
            return redirect_in(self.default, path, None, now)
        route = self._matchers[id(candidates)](method, target, headers, peer, path)
        if route is None:
            self.defaulted += 1
            if self.default.hash_key is None:
                return redirect_in(self.default, path, None, now)
            hashed = Request(method, target, headers, peer, path)
            return redirect_in(self.default, path, self._hash_key(self.default, hashed), now)
        route.requests += 1
        # What a hash pool reads of the head further, it reads through a Request of its own.
        if route.split:
            pool, cookie = self._variant(route, headers)
        else:
            route.variant_requests[0] += 1
            pool, cookie = route.pools[0], b""
        rewritten = _rewrite(route.spec, path) if route.rewrites else path
        key = None
        if pool.policy_name == "hash":
            key = self._hash_key(pool, Request(method, target, headers, peer, path))
        answer = redirect_in(pool, rewritten, key, now, path)
        if cookie and type(answer) is bytes and pool.takes_redirects:
            # Not on a fallback's redirect: a visitor no variant could serve is drawn again later.
            return answer + b"\r\nset-cookie: " + cookie
        return answer

    def _none_can_match(self, candidates: list[Route], target: bytes, headers: Headers) -> bool:
        """No route is a candidate for this path, or those that are are all on other hosts."""
        if not candidates:
            return True
        if candidates is not self._any_segment or not self._any_gated:
            return False
        if not target.startswith(b"/"):  # the absolute form: its authority is the host
            return self._elsewhere(_host_of(target, None))
        field = _host_field(headers)
        known = self._elsewhere_by_field.get(field)
        if known is None:
            known = self._elsewhere(_host_of_field(field))
            if len(self._elsewhere_by_field) >= MAX_HOST_FIELDS:
                self._elsewhere_by_field.clear()
            if field is None or len(field) <= MAX_CACHED_HOST:
                self._elsewhere_by_field[field] = known
        return known

    def _elsewhere(self, host: bytes) -> bool:
        """No route by host alone takes `host`."""
        return host not in self._any_exact and not host.endswith(self._any_suffixes)

    def _variant(self, route: Route, headers: Headers) -> tuple[Pool, bytes]:
        """A split's variant for this visitor: its cookie's (while that pool has a usable backend), or
        one drawn by weight among those that have, with the cookie to keep it."""
        assert route.cookie_pattern is not None
        named = _cookie_value(_cookie_fields(headers), route.cookie_pattern)
        i = route.variant_of.get(named, -1) if named is not None else -1
        if i >= 0 and route.pools[i].takes_redirects:
            route.variant_requests[i] += 1
            return route.pools[i], b""
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
    trusted = clientaddr.trusted_of(settings)
    header = settings.country_header.encode() if settings.country_header else None
    return Router(settings.routes, pools, pools[DEFAULT_POOL], Client(trusted, country_of, header))


def _compile(spec: RouteSpec, index: int, pools: Mapping[str, Pool]) -> Route:
    rewrites = spec.path_prefix is not None and (spec.strip_prefix or spec.replace_prefix is not None)
    if spec.pool is not None:
        return Route(
            spec, index, (pools[spec.pool],), (1.0,), (b"",), variant_requests=[0], rewrites=rewrites
        )
    assert spec.cookie is not None
    variants = tuple(pools[variant.pool] for variant in spec.split)
    cookies = tuple(spec.cookie.header(variant.pool) for variant in spec.split)
    weights = tuple(variant.weight for variant in spec.split)
    return Route(
        spec,
        index,
        variants,
        weights,
        cookies,
        cookie_pattern=_cookie_pattern(spec.cookie.name.encode()),
        variant_of={variant.pool.encode(): i for i, variant in enumerate(spec.split)},
        variant_requests=[0] * len(variants),
        split=True,
        rewrites=rewrites,
    )


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
