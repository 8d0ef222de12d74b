"""Routing settings: the [[routes]] list and each pool's fallback, checked as the rest of the file is.

Owns: `RouteSpec` (what a route matches, where it sends, how it rewrites the path), `SplitSpec` and
`StickyCookie` (a weighted split between pools and the cookie that keeps a visitor on its variant),
`Fallback` (what a pool answers when no backend is usable or the pool is in maintenance), the hash
key of the `hash` policy (`HashKey`), and the rules across routes: which are never reached.
Rules: no I/O (a fallback page's file is read by the CLI, which fills `Fallback.body`), nothing above
`settings` imported. Every error is a `ConfigError` naming the key, as `routes[2].pool`.

The shape follows what users of the three precedents write: HAProxy's `use_backend <pool> if <acl>`
(first match wins, `default_backend` otherwise), nginx's `location` prefixes and `split_clients`,
Envoy's route `match` (prefix, headers) with `weighted_clusters`. A route's conditions all hold (and);
each condition's list of values is any-of (or).
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http.cookies import Morsel, SimpleCookie
from typing import Any
from urllib.parse import urlsplit

from dispatcher.settings.values import (
    ConfigError,
    Network,
    boolean,
    file_path,
    network,
    positive_duration,
    split_url,
    unknown_setting,
    url_path,
    weight,
)

# RFC 9110 §5.6.2: a header or cookie name is a token; RFC 6265 §4.1.1 the same for a cookie's name.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# A cookie value (RFC 6265 §4.1.1 cookie-octet): no space, quote, comma, semicolon or backslash.
_COOKIE_VALUE = re.compile(r"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*")
# A name may hold `_` (the front door takes `Host: a_b.example`, as nginx and HAProxy do).
_HOST = re.compile(r"(\*\.)?[a-z0-9_]([a-z0-9_.-]*[a-z0-9_])?|\[[0-9a-f:.]+\]")
_COUNTRY = re.compile(r"[A-Z]{2}")
_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
SAME_SITE = ("Strict", "Lax", "None")
HASH_SOURCES = ("cookie", "header", "path", "client")
# HAProxy's `balance source` hashes the client address: the usual key when none is named.
DEFAULT_HASH_KEY = "client"
# A fallback page's status: each code the front door sends is a series of dispatcher_responses_total
# made at start (core.stats.RESPONSE_CODES, which holds these two), and with --workers a cell each.
PAGE_STATUSES = (503, 200)
# What a fallback page is served as when it names no type: the maintenance page is HTML.
DEFAULT_PAGE_TYPE = "text/html; charset=utf-8"


@dataclass(frozen=True, slots=True)
class HashKey:
    """What the `hash` policy hashes: a cookie's or a header's value, the path, or the client address
    (HAProxy's `balance hdr(name)`, `balance uri`, `balance source`; Envoy's hash_policy)."""

    source: str  # one of HASH_SOURCES
    name: bytes = b""  # the cookie's name, or the header's in lower case (h11 gives them so)

    def __str__(self) -> str:
        return f"{self.source}:{self.name.decode()}" if self.name else self.source


def parse_hash_key(key: str, value: object) -> HashKey:
    """`cookie:NAME`, `header:NAME`, `path` or `client`."""
    if not isinstance(value, str):
        raise ConfigError(key, value, "expected cookie:NAME, header:NAME, path or client")
    source, _, name = value.partition(":")
    if source in ("path", "client") and not name:
        return HashKey(source)
    if source in ("cookie", "header") and _TOKEN.fullmatch(name):
        return HashKey(source, name.lower().encode() if source == "header" else name.encode())
    raise ConfigError(key, value, "expected cookie:NAME, header:NAME, path or client")


@dataclass(frozen=True, slots=True)
class Fallback:
    """What a pool answers when no backend is usable, or while an operator holds it in maintenance.

    - nothing set: 503 with Retry-After, as without routes (RFC 9110 §15.6.4);
    - `redirect`: a 307 to this absolute URL, with the request's path and query after it when
      `keep_path` (a maintenance site, or the same site elsewhere);
    - `page`: a fixed answer, `status` (503 by default) with the file's bytes as its body.
    A 503 in maintenance carries `retry_after` when set: a planned window, as search engines ask
    of a maintenance page; no next check can tell when an operator will end it.
    """

    redirect: str | None = None
    keep_path: bool = False
    page: str | None = None
    status: int = 503
    content_type: str = DEFAULT_PAGE_TYPE
    body: bytes | None = None  # the page's bytes, read by the CLI at start and at each reload
    # The Retry-After of a 503 while the pool is in maintenance (seconds; None: none is sent, the
    # end being the operator's). Without maintenance a 503 says the seconds to the next check.
    retry_after: int | None = None

    @property
    def kind(self) -> str:
        """How the fallback answers, for metrics and the admin API: unavailable, redirect or page."""
        return "redirect" if self.redirect else "page" if self.page else "unavailable"


_FALLBACK_KEYS = ("redirect", "keep_path", "page", "status", "content_type", "retry_after")


def parse_fallback(key: str, table: object) -> Fallback:
    """A pool's `fallback` table; a redirect must be an absolute http(s) URL, so no request can steer it."""
    if not isinstance(table, Mapping):
        raise ConfigError(key, table, "must be a table: { redirect = URL } or { page = FILE, status = N }")
    _known(key, table, _FALLBACK_KEYS)
    if "redirect" in table and "page" in table:
        raise ConfigError(f"{key}.page", table["page"], "a fallback is a redirect or a page, not both")
    redirect = table.get("redirect")
    if redirect is not None:
        redirect = _absolute_url(f"{key}.redirect", redirect)
        if table.get("keep_path") is True and urlsplit(redirect).query:
            # The request's path would land after the URL's query: ...?from=shop/path?q.
            raise ConfigError(
                f"{key}.redirect", redirect, "keep_path appends the path: the URL can have no query"
            )
    elif "keep_path" in table:
        raise ConfigError(f"{key}.keep_path", table["keep_path"], "only a redirect keeps the path")
    page = file_path(f"{key}.page", table["page"]) if "page" in table else None
    status = table.get("status", 503)
    if page is None and "status" in table:
        raise ConfigError(f"{key}.status", status, "only a page has a status of its own")
    if status not in PAGE_STATUSES or isinstance(status, bool):
        raise ConfigError(f"{key}.status", status, "must be 503 (unavailable: the default) or 200")
    retry_after = None
    if "retry_after" in table:
        if redirect is not None or status != 503:
            raise ConfigError(
                f"{key}.retry_after", table["retry_after"], "only a 503 answer has a Retry-After"
            )
        retry_after = math.ceil(positive_duration(f"{key}.retry_after", table["retry_after"]))
    content_type = table.get("content_type", DEFAULT_PAGE_TYPE)
    if (
        not isinstance(content_type, str)
        or not content_type.isascii()
        or not content_type.isprintable()
        or "/" not in content_type
    ):
        raise ConfigError(f"{key}.content_type", content_type, "must be a media type, as text/html")
    keep = boolean(f"{key}.keep_path", table.get("keep_path", False))
    return Fallback(redirect, keep, page, status, content_type, retry_after=retry_after)


def _absolute_url(key: str, value: object) -> str:
    if not isinstance(value, str) or not value.isascii() or not value.isprintable() or " " in value:
        raise ConfigError(key, value, "must be an absolute http:// or https:// URL")
    parts = split_url(key, value)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.fragment:
        raise ConfigError(key, value, "must be an absolute http:// or https:// URL without a fragment")
    try:
        parts.port  # noqa: B018 (urlsplit checks the port only when asked)
    except ValueError:
        raise ConfigError(key, value, "has a port that is not a number from 0 to 65535") from None
    return value


@dataclass(frozen=True, slots=True)
class StickyCookie:
    """The cookie a split's 307 sets, naming the visitor's variant (its pool); its attributes are the
    operator's (RFC 6265 §5.2). No Max-Age: a session cookie, as nginx's sticky cookie by default."""

    name: str
    path: str = "/"
    max_age: float | None = None
    secure: bool = False
    http_only: bool = True
    same_site: str | None = "Lax"

    def header(self, variant: str) -> bytes:
        """The Set-Cookie header's value naming this variant, written by the standard library."""
        jar: SimpleCookie = SimpleCookie()
        jar[self.name] = variant
        morsel = jar[self.name]
        morsel["path"] = self.path
        if self.max_age is not None:
            morsel["max-age"] = str(int(self.max_age))
        morsel["secure"] = self.secure
        morsel["httponly"] = self.http_only
        if self.same_site is not None:
            morsel["samesite"] = self.same_site
        return morsel.OutputString().encode("ascii")


_COOKIE_KEYS = ("name", "path", "max_age", "secure", "http_only", "same_site")


def parse_cookie(key: str, table: object, default_name: str) -> StickyCookie:
    if not isinstance(table, Mapping):
        raise ConfigError(
            key, table, "must be a table: { name, path, max_age, secure, http_only, same_site }"
        )
    _known(key, table, _COOKIE_KEYS)
    name = table.get("name", default_name)
    if not isinstance(name, str) or not _TOKEN.fullmatch(name):
        raise ConfigError(f"{key}.name", name, "must be a cookie name (letters, digits, - _ .)")
    if Morsel().isReservedKey(name):
        raise ConfigError(f"{key}.name", name, "is the name of a cookie attribute (RFC 6265 5.2)")
    path = url_path(f"{key}.path", table.get("path", "/"))
    if ";" in path:
        raise ConfigError(f"{key}.path", path, "must not contain ';'")
    max_age = positive_duration(f"{key}.max_age", table["max_age"]) if "max_age" in table else None
    if max_age is not None and not 1 <= max_age < 2**31:
        # Max-Age is whole seconds (RFC 6265 5.2.2): 0 or less deletes the cookie at once.
        raise ConfigError(f"{key}.max_age", table["max_age"], "must be a duration from 1s to 68 years")
    same_site = table.get("same_site", "Lax")
    if same_site not in SAME_SITE:
        raise ConfigError(f"{key}.same_site", same_site, f"must be one of {', '.join(SAME_SITE)}")
    secure = boolean(f"{key}.secure", table.get("secure", False))
    if same_site == "None" and not secure:
        # Browsers refuse SameSite=None without Secure (RFC 6265bis §5.4.7): the cookie would be lost.
        raise ConfigError(f"{key}.same_site", same_site, "SameSite=None needs secure = true")
    http_only = boolean(f"{key}.http_only", table.get("http_only", True))
    return StickyCookie(name, path, max_age, secure, http_only, same_site)


@dataclass(frozen=True, slots=True)
class SplitSpec:
    """One variant of a weighted split: a pool and its share."""

    pool: str
    weight: float


@dataclass(frozen=True, slots=True)
class RouteSpec:
    """One route: the conditions (all must hold; None or empty: any), then where it sends."""

    name: str
    hosts: tuple[str, ...] = ()  # lower case, without port; `*.example.com` matches any subdomain
    path_prefix: str | None = None
    methods: frozenset[bytes] = frozenset()
    headers: tuple[tuple[bytes, tuple[bytes, ...]], ...] = ()  # (lower-case name, any of these values)
    cookies: tuple[tuple[bytes, tuple[bytes, ...]], ...] = ()
    clients: tuple[Network, ...] = ()
    countries: frozenset[str] = frozenset()
    pool: str | None = None  # where it sends, or
    split: tuple[SplitSpec, ...] = ()  # a weighted split between pools, kept by `cookie`
    cookie: StickyCookie | None = None
    strip_prefix: bool = False
    replace_prefix: str | None = None
    named: bool = True  # False: the name is its place's, `route3` (config.warnings says so for a split)

    @property
    def pools(self) -> tuple[str, ...]:
        """Every pool this route can send to."""
        return (self.pool,) if self.pool is not None else tuple(variant.pool for variant in self.split)

    @property
    def conditions(self) -> int:
        """How many kinds of condition it has: 0 is a catch-all."""
        kinds = (self.hosts, self.path_prefix, self.methods, self.headers, self.cookies)
        return sum(1 for kind in (*kinds, self.clients, self.countries) if kind)


_ROUTE_KEYS = (
    "name",
    "hosts",
    "path_prefix",
    "methods",
    "headers",
    "cookies",
    "clients",
    "countries",
    "pool",
    "split",
    "cookie",
    "strip_prefix",
    "replace_prefix",
)


def parse_routes(key: str, entries: object) -> tuple[RouteSpec, ...]:
    """The [[routes]] list, in order: the first route that matches a request takes it."""
    if not isinstance(entries, list):
        raise ConfigError(key, entries, "must be an array of tables ([[routes]])")
    routes = tuple(_route(f"{key}[{i}]", entry, i) for i, entry in enumerate(entries))
    seen: set[str] = set()
    for i, route in enumerate(routes):
        if route.name in seen:
            raise ConfigError(f"{key}[{i}].name", route.name, "duplicate route name")
        seen.add(route.name)
    return routes


def _route(key: str, entry: object, index: int) -> RouteSpec:
    if not isinstance(entry, Mapping):
        raise ConfigError(key, entry, "must be a table with pool or split")
    _known(key, entry, _ROUTE_KEYS)
    name = entry.get("name", f"route{index + 1}")
    if not isinstance(name, str) or not _TOKEN.fullmatch(name):
        raise ConfigError(
            f"{key}.name", name, "must be letters, digits, - _ . (it names metrics and a cookie)"
        )
    if ("pool" in entry) == ("split" in entry):
        given = "both pool and split" if "pool" in entry else "neither pool nor split"
        raise ConfigError(key, None, f"needs exactly one of pool = NAME or split = [...]; it has {given}")
    pool = _pool_name(f"{key}.pool", entry["pool"]) if "pool" in entry else None
    split = _split(f"{key}.split", entry["split"]) if "split" in entry else ()
    if "cookie" in entry and not split:
        raise ConfigError(f"{key}.cookie", entry["cookie"], "only a split sets a cookie")
    cookie = parse_cookie(f"{key}.cookie", entry.get("cookie", {}), f"dispatcher-{name}") if split else None
    prefix = _prefix(f"{key}.path_prefix", entry["path_prefix"]) if "path_prefix" in entry else None
    strip = boolean(f"{key}.strip_prefix", entry.get("strip_prefix", False))
    replace_with = (
        url_path(f"{key}.replace_prefix", entry["replace_prefix"]) if "replace_prefix" in entry else None
    )
    for condition in ("headers", "cookies"):
        if condition in entry and entry[condition] == {}:
            raise ConfigError(f"{key}.{condition}", {}, "must not be empty: leave the key out to match any")
    if (strip or replace_with is not None) and prefix is None:
        what = "strip_prefix" if strip else "replace_prefix"
        raise ConfigError(f"{key}.{what}", entry[what], "needs a path_prefix to strip or replace")
    if strip and replace_with is not None:
        raise ConfigError(f"{key}.replace_prefix", replace_with, "strip_prefix or replace_prefix, not both")
    methods = frozenset(m.encode() for m in _strings(f"{key}.methods", entry.get("methods", ()), _method))
    if b"GET" in methods:  # HEAD is GET without the body (RFC 9110 §9.3.2), as HAProxy's METH_GET
        methods |= {b"HEAD"}
    return RouteSpec(
        name=name,
        named="name" in entry,
        hosts=_strings(f"{key}.hosts", entry.get("hosts", ()), _host),
        path_prefix=prefix,
        methods=methods,
        headers=_pairs(f"{key}.headers", entry.get("headers", {}), lower=True),
        cookies=_pairs(f"{key}.cookies", entry.get("cookies", {}), lower=False),
        clients=_networks(f"{key}.clients", entry.get("clients", ())),
        countries=frozenset(_strings(f"{key}.countries", entry.get("countries", ()), _country)),
        pool=pool,
        split=split,
        cookie=cookie,
        strip_prefix=strip,
        replace_prefix=replace_with,
    )


def _known(key: str, table: Mapping[str, Any], names: Sequence[str]) -> None:
    for name in table:
        if name not in names:
            raise unknown_setting(f"{key}.{name}", table[name], name, names)


def _pool_name(key: str, value: object) -> str:
    if not isinstance(value, str) or not _TOKEN.fullmatch(value):
        raise ConfigError(key, value, "must be a pool's name (letters, digits, - _ .)")
    return value


def _split(key: str, entries: object) -> tuple[SplitSpec, ...]:
    if not isinstance(entries, list) or len(entries) < 2:
        raise ConfigError(key, entries, "must list two or more { pool = NAME, weight = N }")
    variants: list[SplitSpec] = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, Mapping) or "pool" not in entry:
            raise ConfigError(f"{key}[{i}]", entry, "must be a table { pool = NAME, weight = N }")
        _known(f"{key}[{i}]", entry, ("pool", "weight"))
        pool = _pool_name(f"{key}[{i}].pool", entry["pool"])
        if pool in (variant.pool for variant in variants):
            raise ConfigError(f"{key}[{i}].pool", pool, "named twice in one split")
        variants.append(SplitSpec(pool, weight(f"{key}[{i}].weight", entry.get("weight", 1))))
    return tuple(variants)


def _prefix(key: str, value: object) -> str:
    prefix = url_path(key, value)
    if "?" in prefix:
        raise ConfigError(key, value, "a path prefix has no query")
    return prefix


def _strings(key: str, value: object, check: Any) -> tuple[str, ...]:
    """A string or a list of strings, each checked by `check(key, text) -> text`."""
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list | tuple) or not all(isinstance(v, str) for v in values):
        raise ConfigError(key, value, "must be a string or a list of strings")
    if isinstance(value, list) and not value:  # written `[]` (a key left out gives the empty tuple)
        # Left out, a condition matches any request; written empty, it would read as "none".
        raise ConfigError(key, value, "must not be empty: leave the key out to match any")
    return tuple(check(f"{key}[{i}]" if len(values) > 1 else key, text) for i, text in enumerate(values))


def _host(key: str, text: str) -> str:
    host = text.lower()
    if not host.startswith("["):
        host = host.removesuffix(".")  # `example.com.` is `example.com`, in the file as in requests
    if not _HOST.fullmatch(host):
        raise ConfigError(key, text, "must be a host name, *.domain or [IPv6], without a port")
    return host


def _method(key: str, text: str) -> str:
    if text.upper() not in _METHODS or text != text.upper():
        raise ConfigError(key, text, f"must be one of {', '.join(_METHODS)}")
    return text


def _country(key: str, text: str) -> str:
    if not _COUNTRY.fullmatch(text):
        raise ConfigError(key, text, "must be an ISO 3166 country code in capitals, as DE")
    return text


def _pairs(key: str, table: object, lower: bool) -> tuple[tuple[bytes, tuple[bytes, ...]], ...]:
    """`{ name = value }` or `{ name = [values] }`: a header's or cookie's name and the values it may have."""
    if not isinstance(table, Mapping):
        raise ConfigError(key, table, "must be a table of name = value (or [values])")
    pairs = []
    for name, value in table.items():
        if not _TOKEN.fullmatch(name):
            raise ConfigError(f"{key}.{name}", value, "not a valid name")
        check = _cookie_value if not lower else _header_value
        values = _strings(f"{key}.{name}", value, check)
        pairs.append(((name.lower() if lower else name).encode(), tuple(v.encode() for v in values)))
    return tuple(pairs)


def _header_value(key: str, text: str) -> str:
    if not text.isascii() or not text.isprintable() or text != text.strip():
        raise ConfigError(key, text, "must be printable ASCII without surrounding spaces")
    return text


def _cookie_value(key: str, text: str) -> str:
    if not _COOKIE_VALUE.fullmatch(text):
        raise ConfigError(key, text, "not a valid cookie value (RFC 6265)")
    return text


def _networks(key: str, value: object) -> tuple[Network, ...]:
    def checked(each_key: str, text: str) -> str:
        network(each_key, text)
        return text

    return tuple(ipaddress.ip_network(text) for text in _strings(key, value, checked))


def unreachable(routes: Sequence[RouteSpec]) -> list[str]:
    """Warnings for routes that can never match, because an earlier one matches all they would."""
    found = []
    for j, later in enumerate(routes):
        for i, earlier in enumerate(routes[:j]):
            if covers(earlier, later):
                found.append(
                    f"routes[{j}] ({later.name}) is never reached: routes[{i}] ({earlier.name}) "
                    "before it matches every request it would"
                )
                break
    return found


def covers(a: RouteSpec, b: RouteSpec) -> bool:
    """Whether every request `b` matches is matched by `a` (each of a's conditions is as wide as b's)."""
    return (
        _hosts_cover(a.hosts, b.hosts)
        and _prefix_covers(a.path_prefix, b.path_prefix)
        and _set_covers(a.methods, b.methods)
        and _pairs_cover(a.headers, b.headers)
        and _pairs_cover(a.cookies, b.cookies)
        and _networks_cover(a.clients, b.clients)
        and _set_covers(a.countries, b.countries)
    )


def _set_covers(a: Any, b: Any) -> bool:
    return not a or (bool(b) and set(b) <= set(a))


def _hosts_cover(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """Every host of `b` is one of `a`'s, or under one of `a`'s `*.domain` (any depth, as matched)."""
    if not a:
        return True
    suffixes = tuple(host[1:] for host in a if host.startswith("*."))  # ".example.com"
    return bool(b) and all(host in a or host.removeprefix("*").endswith(suffixes) for host in b)


def _prefix_covers(a: str | None, b: str | None) -> bool:
    if a is None or a == "/":  # every request path starts with "/"
        return True
    if b is None:
        return False
    return b == a or b.startswith(a if a.endswith("/") else a + "/")


def _pairs_cover(a: Any, b: Any) -> bool:
    wanted = dict(b)
    return all(name in wanted and set(wanted[name]) <= set(values) for name, values in a)


# Every IPv4 and every IPv6 address: a client list holding both takes every client (the peer's
# address, or a trusted proxy's word, is always one), as a route without the condition does.
_EVERY_ADDRESS = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))


def _networks_cover(a: tuple[Network, ...], b: tuple[Network, ...]) -> bool:
    if not a or all(every in a for every in _EVERY_ADDRESS):
        return True
    return bool(b) and all(
        any(x.version == y.version and y.subnet_of(x) for x in a)  # type: ignore[arg-type]
        for y in b
    )
