"""Routing settings: [[routes]], [pools.NAME], fallbacks, the sticky cookie and hash_key, as the file
gives them; every bad value a ConfigError naming its exact place; unreachable routes and unused pools
warned about, and nothing else."""

from __future__ import annotations

import ipaddress
import math
from http.cookies import SimpleCookie

import pytest

from dispatcher.settings.config import (
    ConfigError,
    Fallback,
    HashKey,
    PoolSpec,
    RouteSpec,
    Settings,
    apply,
    check,
    parse_toml,
)
from dispatcher.settings.config import (
    warnings as all_warnings,
)
from dispatcher.settings.routing import SplitSpec, StickyCookie

# The default pool (the top level) and two named pools every snippet below can route to.
BASE = """
[[backends]]
url = "http://10.0.0.1:8000"
name = "main1"
[pools.web]
backends = [{ url = "http://10.0.1.1", name = "web1" }]
[pools.beta]
backends = [{ url = "http://10.0.2.1", name = "beta1" }]
"""


def load(text: str, top: str = "", base: str = BASE) -> Settings:
    """The settings of a file (`top`'s keys at its top level, `text` after `base`'s tables): parsed,
    then the rules across settings (`check`), as a start does."""
    return check(apply(Settings(), parse_toml(top + base + text)))


def warnings(settings: Settings) -> list[str]:
    """The warnings but the default pool's being left out by a catch-all route, which most routes of
    these tests are (`test_a_route_that_takes_every_request_is_warned_about_when_backends_wait` has it)."""
    return [warning for warning in all_warnings(settings) if "takes every request" not in warning]


def error_of(text: str, top: str = "", base: str = BASE) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load(text, top, base)
    assert "\n" not in str(caught.value)  # one line, as the CLI prints it
    return caught.value


def only_route(text: str) -> RouteSpec:
    (route,) = load(text).routes
    return route


def test_every_match_kind_is_parsed() -> None:
    """hosts, path_prefix, methods, headers, cookies, clients and countries land in the spec as the
    router reads them: hosts and header names in lower case, values as bytes, networks parsed."""
    route = only_route(
        """
[[routes]]
name = "all"
hosts = ["Shop.Example.COM", "*.example.org", "[2001:db8::1]"]
path_prefix = "/api"
methods = ["GET", "POST"]
headers = { "X-Variant" = ["a", "b"], Accept = "text/html" }
cookies = { Session = "gold" }
clients = ["10.0.0.0/8", "2001:db8::/32"]
countries = ["DE", "AT"]
pool = "web"
"""
    )
    assert route == RouteSpec(
        name="all",
        hosts=("shop.example.com", "*.example.org", "[2001:db8::1]"),
        path_prefix="/api",
        methods=frozenset({b"GET", b"HEAD", b"POST"}),  # GET takes HEAD
        headers=((b"x-variant", (b"a", b"b")), (b"accept", (b"text/html",))),
        cookies=((b"Session", (b"gold",)),),
        clients=(ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8::/32")),
        countries=frozenset({"DE", "AT"}),
        pool="web",
    )
    assert route.conditions == 7 and route.pools == ("web",)


def test_a_single_string_stands_for_a_list_of_one() -> None:
    """`hosts = "a.example"`, `methods = "POST"`, `clients = "10.0.0.1"`: each a list of one value."""
    route = only_route(
        '[[routes]]\nhosts = "a.example"\nmethods = "POST"\nclients = "10.0.0.1"\npool = "web"'
    )
    assert (route.hosts, route.methods) == (("a.example",), frozenset({b"POST"}))
    assert route.clients == (ipaddress.ip_network("10.0.0.1/32"),)


def test_a_route_without_a_name_is_named_by_its_place() -> None:
    """Unnamed routes are route1, route2, ... in the file's order (their metrics' label)."""
    settings = load(
        '[[routes]]\npath_prefix = "/a"\npool = "web"\n[[routes]]\npath_prefix = "/b"\npool = "beta"'
    )
    assert [route.name for route in settings.routes] == ["route1", "route2"]


def test_a_route_with_no_condition_is_a_catch_all() -> None:
    """A route with only a pool has no condition: it takes every request that reaches it."""
    route = only_route('[[routes]]\npool = "beta"')
    assert (route.conditions, route.path_prefix, route.hosts) == (0, None, ())


def test_prefix_rewrites_are_parsed() -> None:
    """strip_prefix and replace_prefix are kept with the prefix they rewrite."""
    strip, replace = load(
        '[[routes]]\npath_prefix = "/app"\nstrip_prefix = true\npool = "web"\n'
        '[[routes]]\npath_prefix = "/submit"\nreplace_prefix = "/v2/submit"\npool = "beta"'
    ).routes
    assert (strip.strip_prefix, strip.replace_prefix) == (True, None)
    assert (replace.strip_prefix, replace.replace_prefix) == (False, "/v2/submit")


def test_a_split_has_weights_and_a_default_cookie() -> None:
    """A split lists its variants in order, weight 1 unless given; its cookie is dispatcher-<route>,
    Path=/, HttpOnly, SameSite=Lax, not Secure, a session cookie."""
    route = only_route(
        '[[routes]]\nname = "ab"\nsplit = [{ pool = "default", weight = 90 }, { pool = "beta" }]'
    )
    assert route.split == (SplitSpec("default", 90.0), SplitSpec("beta", 1.0))
    assert route.pools == ("default", "beta") and route.pool is None
    assert route.cookie == StickyCookie("dispatcher-ab")
    assert route.cookie.header("beta") == b"dispatcher-ab=beta; HttpOnly; Path=/; SameSite=Lax"


def test_every_cookie_attribute_is_settable() -> None:
    """name, path, max_age (a duration), secure, http_only and same_site reach the Set-Cookie header,
    which the standard library's parser reads back attribute by attribute."""
    route = only_route(
        """
[[routes]]
name = "ab"
split = [{ pool = "web" }, { pool = "beta" }]
[routes.cookie]
name = "variant"
path = "/shop"
max_age = "1h"
secure = true
http_only = false
same_site = "None"
"""
    )
    assert route.cookie == StickyCookie("variant", "/shop", 3600.0, True, False, "None")
    header = route.cookie.header("beta").decode()
    assert header == "variant=beta; Max-Age=3600; Path=/shop; SameSite=None; Secure"
    morsel = SimpleCookie(header)["variant"]
    assert (morsel.value, morsel["path"], morsel["max-age"], morsel["samesite"]) == (
        "beta",
        "/shop",
        "3600",
        "None",
    )
    assert morsel["secure"] and not morsel["httponly"]


def test_a_named_pool_has_its_own_policy_hash_key_health_and_fallback() -> None:
    """[pools.NAME] keeps its backends, policy, hash_key, balance factor, health table (over the global
    [health]) and fallback; the default pool is the top level, first in `all_pools`."""
    settings = load(
        """
[health]
interval = "5s"
fall = 4
[pools.sticky]
policy = "hash"
hash_key = "cookie:session"
hash_balance_factor = 1.5
health = { interval = "1s" }
fallback = { redirect = "https://sorry.example.com/", keep_path = true }
backends = [
  { url = "http://10.0.3.1", name = "s1" },
  { url = "http://10.0.3.2:81/app", name = "s2", weight = 2 },
]
[[routes]]
pool = "sticky"
[[routes]]
split = [{ pool = "web" }, { pool = "beta" }]
"""
    )
    assert [pool.name for pool in settings.all_pools] == ["default", "web", "beta", "sticky"]
    sticky = settings.pools[2]
    assert (sticky.policy, sticky.hash_key, sticky.balance_factor) == (
        "hash",
        HashKey("cookie", b"session"),
        1.5,
    )
    assert sticky.fallback == Fallback(redirect="https://sorry.example.com/", keep_path=True)
    assert [(spec.name, spec.base, spec.weight) for spec in sticky.backends] == [
        ("s1", "http://10.0.3.1:80", 1.0),
        ("s2", "http://10.0.3.2:81/app", 2.0),
    ]
    # The pool's own interval over the global one; the global fall reaches it.
    assert {(spec.health.interval, spec.health.fall) for spec in sticky.backends} == {(1.0, 4)}
    assert settings.pools[0].backends[0].health.interval == 5.0
    assert settings.default_pool == PoolSpec("default", settings.backends, policy="least-loaded")


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("cookie:session", HashKey("cookie", b"session")),
        ("cookie:Session", HashKey("cookie", b"Session")),  # cookie names are case-sensitive
        ("header:X-User", HashKey("header", b"x-user")),  # header names are not: h11 lowers them
        ("path", HashKey("path")),
        ("client", HashKey("client")),
    ],
)
def test_hash_key_forms(text: str, key: HashKey) -> None:
    """hash_key is cookie:NAME, header:NAME, path or client, at the top level and in a pool."""
    settings = load(
        NEW + f'policy = "hash"\nhash_key = "{text}"', top=f'policy = "hash"\nhash_key = "{text}"\n'
    )
    assert settings.default_pool.hash_key == settings.pools[-1].hash_key == key
    assert str(key) == (text.lower() if text.startswith("header:") else text)


def test_the_default_hash_key_is_the_client_address() -> None:
    """With policy = hash and no hash_key, the client's address is hashed (HAProxy's balance source)."""
    settings = load(NEW + 'policy = "hash"', top='policy = "hash"\n')
    assert settings.default_pool.hash_key == settings.pools[-1].hash_key == HashKey("client")


@pytest.mark.parametrize(
    ("top", "key"),
    [
        ("routes = 1\n", "routes"),
        ('routes = ["web"]\n', "routes[0]"),
        ('routes = [{ pool = "web" }, { path_prefix = "/a" }]\n', "routes[1]"),
        ('hash_key = "cookie:"\n', "hash_key"),
        ("hash_balance_factor = 0.9\n", "hash_balance_factor"),
        ('fallback = "https://a.example/"\n', "fallback"),
    ],
)
def test_bad_top_level_values_name_their_key(top: str, key: str) -> None:
    """The top level's routing keys name themselves, too."""
    assert error_of("", top).key == key


@pytest.mark.parametrize(
    ("route", "given"),
    [('path_prefix = "/a"', "neither pool nor split"), ('pool = "web"\nsplit = [{ pool = "beta" }]', "both")],
)
def test_a_route_without_one_destination_says_which_it_lacks(route: str, given: str) -> None:
    """One line that says what is wrong, not the whole route as a Python dict."""
    error = error_of(f"[[routes]]\n{route}\n")
    assert (error.key, error.value) == ("routes[0]", None)
    assert error.reason.startswith("needs exactly one of pool = NAME or split = [...]; it has " + given)


def test_pools_must_be_tables() -> None:
    """`pools = 1` is not a table of pools."""
    assert error_of("", "pools = 1\n", base="").key == "pools"


@pytest.mark.parametrize(
    ("table", "fallback", "kind"),
    [
        ("", Fallback(), "unavailable"),
        (
            'redirect = "https://maint.example.com/"',
            Fallback(redirect="https://maint.example.com/"),
            "redirect",
        ),
        (
            'redirect = "http://other.example.com:8080/shop"\nkeep_path = true',
            Fallback(redirect="http://other.example.com:8080/shop", keep_path=True),
            "redirect",
        ),
        (
            'redirect = "https://maint.example.com/?from=shop"',  # a query, the path not kept: fine
            Fallback(redirect="https://maint.example.com/?from=shop"),
            "redirect",
        ),
        ('page = "/srv/maint.html"', Fallback(page="/srv/maint.html"), "page"),
        (
            'page = "/srv/moved.txt"\nstatus = 200\ncontent_type = "text/plain"',
            Fallback(page="/srv/moved.txt", status=200, content_type="text/plain"),
            "page",
        ),
    ],
    ids=["none", "redirect", "redirect-keep-path", "redirect-query", "page", "page-status-type"],
)
def test_fallback_forms(table: str, fallback: Fallback, kind: str) -> None:
    """A fallback is nothing (503), a redirect (path kept or not) or a page (503, text/html unless
    given); the same table at the top level ([fallback], the default pool's) and in a pool."""
    settings = load(f"[fallback]\n{table}\n[pools.web.fallback]\n{table}")
    assert settings.default_pool.fallback == settings.pools[0].fallback == fallback
    assert fallback.kind == kind


ROUTE = '[[routes]]\npool = "web"\n'  # a route to the web pool, to add a condition to
SPLIT = '[[routes]]\nsplit = [{ pool = "web" }, { pool = "beta" }]\n'  # a split, to add a cookie to
SECOND = '[[routes]]\npool = "web"\n[[routes]]\n'  # a second route, to fill in
NEW = '[pools.new]\nbackends = ["http://10.0.9.1"]\n'  # a pool, to add a setting to
FALLBACK = "[pools.web.fallback]\n"
PAGE = FALLBACK + 'page = "/srv/p.html"\n'
REDIRECT = FALLBACK + 'redirect = "https://a.example/"\n'


@pytest.mark.parametrize(
    ("text", "key"),
    [
        # A route's own values.
        ('[[routes]]\nname = "a b"\npool = "web"', "routes[0].name"),
        ('[[routes]]\npath_prefix = "/a"', "routes[0]"),  # neither pool nor split
        (ROUTE + 'split = [{ pool = "web" }, { pool = "beta" }]', "routes[0]"),  # both
        (ROUTE + 'colour = "red"', "routes[0].colour"),
        ('[[routes]]\npool = "we b"', "routes[0].pool"),
        (ROUTE + 'hosts = ["a.example", "a b"]', "routes[0].hosts[1]"),
        (ROUTE + 'hosts = "a.example:8080"', "routes[0].hosts"),
        (ROUTE + 'path_prefix = "api"', "routes[0].path_prefix"),
        (ROUTE + 'path_prefix = "/api?x=1"', "routes[0].path_prefix"),
        (ROUTE + 'methods = ["GET", "get"]', "routes[0].methods[1]"),
        (ROUTE + 'methods = "BREW"', "routes[0].methods"),
        (ROUTE + 'headers = { "X Y" = "1" }', "routes[0].headers.X Y"),
        (ROUTE + 'headers = { X-A = " padded" }', "routes[0].headers.X-A"),
        (ROUTE + 'headers = ["X-A"]', "routes[0].headers"),
        (ROUTE + 'cookies = { s = "a;b" }', "routes[0].cookies.s"),
        (ROUTE + 'cookies = { s = ["ok", "not ok"] }', "routes[0].cookies.s[1]"),
        (ROUTE + 'clients = ["10.0.0.0/8", "10.0.0.0/33"]', "routes[0].clients[1]"),
        (ROUTE + "clients = [10]", "routes[0].clients"),
        (ROUTE + 'countries = ["DE", "de"]', "routes[0].countries[1]"),
        (ROUTE + 'countries = "DEU"', "routes[0].countries"),
        (ROUTE + "strip_prefix = true", "routes[0].strip_prefix"),
        (ROUTE + 'replace_prefix = "/v2"', "routes[0].replace_prefix"),
        (ROUTE + 'path_prefix = "/a"\nreplace_prefix = "v2"', "routes[0].replace_prefix"),
        # Non-ASCII where the value goes into a header or a request line as it is: check said ok, and
        # the first request (or a SIGHUP onto the file) killed the process with a UnicodeEncodeError.
        (ROUTE + 'path_prefix = "/a"\nreplace_prefix = "/\u00fc"', "routes[0].replace_prefix"),
        (
            '[[routes]]\nname = "s"\nsplit = [{ pool = "web" }, { pool = "beta" }]\n'
            'cookie = { path = "/\u00e9" }',
            "routes[0].cookie.path",
        ),
        (
            '[pools.web.fallback]\npage = "/srv/p.html"\ncontent_type = "text/html; charset=\u00e9"',
            "pools.web.fallback.content_type",
        ),
        ('[[backends]]\nurl = "http://10.0.0.9/\u00e9"', "backends[1]"),
        ('[health]\npath = "/h\u00e9"', "health.path"),
        (
            ROUTE + 'path_prefix = "/a"\nstrip_prefix = true\nreplace_prefix = "/b"',
            "routes[0].replace_prefix",
        ),
        (ROUTE + 'path_prefix = "/a"\nstrip_prefix = "yes"', "routes[0].strip_prefix"),
        (ROUTE + 'cookie = { name = "c" }', "routes[0].cookie"),  # no split to keep
        ('[[routes]]\nname = "a"\npool = "web"\n[[routes]]\nname = "a"\npool = "beta"', "routes[1].name"),
        # A split, counted from 0 as the routes are.
        (SECOND + 'split = [{ pool = "web" }]', "routes[1].split"),
        (SECOND + 'split = "web"', "routes[1].split"),
        (SECOND + 'split = [{ pool = "w b" }, { pool = "beta" }]', "routes[1].split[0].pool"),
        (SECOND + 'split = [{ pool = "web" }, { weight = 1 }]', "routes[1].split[1]"),
        (SECOND + 'split = [{ pool = "web" }, { pool = "web" }]', "routes[1].split[1].pool"),
        (SECOND + 'split = [{ pool = "web", weight = 0 }, { pool = "beta" }]', "routes[1].split[0].weight"),
        (SECOND + 'split = [{ pool = "web" }, { pool = "beta", weight = -1 }]', "routes[1].split[1].weight"),
        (SECOND + 'split = [{ pool = "web", weight = inf }, { pool = "beta" }]', "routes[1].split[0].weight"),
        (SECOND + 'split = [{ pool = "web", share = 1 }, { pool = "beta" }]', "routes[1].split[0].share"),
        # The sticky cookie.
        (SPLIT + 'cookie = "c"', "routes[0].cookie"),
        (SPLIT + 'cookie = { name = "a b" }', "routes[0].cookie.name"),
        (SPLIT + 'cookie = { path = "shop" }', "routes[0].cookie.path"),
        (SPLIT + 'cookie = { path = "/a;b" }', "routes[0].cookie.path"),
        (SPLIT + 'cookie = { max_age = "1 fortnight" }', "routes[0].cookie.max_age"),
        (SPLIT + 'cookie = { same_site = "lax" }', "routes[0].cookie.same_site"),
        (SPLIT + 'cookie = { same_site = "None" }', "routes[0].cookie.same_site"),  # without secure
        (SPLIT + "cookie = { secure = 1 }", "routes[0].cookie.secure"),
        (SPLIT + 'cookie = { http_only = "no" }', "routes[0].cookie.http_only"),
        (SPLIT + 'cookie = { domain = "example.com" }', "routes[0].cookie.domain"),
        # A pool's table.
        ("[pools.new]\nbackends = []", "pools.new.backends"),
        ('[pools.new]\npolicy = "hash"', "pools.new.backends"),
        ('[pools."a b"]\nbackends = ["http://10.0.9.1"]', "pools.a b"),
        ('[pools.new]\nbackends = ["ftp://10.0.9.1"]', "pools.new.backends[0]"),
        ('[pools.new]\nbackends = ["http://10.0.9.1", "http://10.0.9.1"]', "pools.new.backends[1].name"),
        (NEW + 'policy = "fastest"', "pools.new.policy"),
        (NEW + 'hash_key = "cookie"', "pools.new.hash_key"),
        (NEW + 'hash_key = "header:a b"', "pools.new.hash_key"),
        (NEW + 'hash_key = "query"', "pools.new.hash_key"),
        (NEW + "hash_balance_factor = 1", "pools.new.hash_balance_factor"),
        (NEW + "health = { rise = 0 }", "pools.new.health.rise"),
        (NEW + "health = { jitter = 0.5 }", "pools.new.health.jitter"),  # [health]'s alone
        (NEW + "weight = 2", "pools.new.weight"),
        (NEW + 'fallback = "https://a.example/"', "pools.new.fallback"),
        ('[pools.new]\nbackends = ["dns://web.example:80"]', "pools.new.backends"),
        # A pool's fallback, and the top level's.
        (REDIRECT + 'page = "/srv/p.html"', "pools.web.fallback.page"),
        (FALLBACK + "keep_path = true", "pools.web.fallback.keep_path"),
        (REDIRECT + 'keep_path = "yes"', "pools.web.fallback.keep_path"),
        (FALLBACK + 'redirect = "https://a.example:99999/"', "pools.web.fallback.redirect"),
        (FALLBACK + 'redirect = "https://a.example:port/"', "pools.web.fallback.redirect"),
        # keep_path appends the path: after a query it would land inside it (?from=shop/path?q).
        (
            FALLBACK + 'redirect = "https://a.example/?from=shop"\nkeep_path = true',
            "pools.web.fallback.redirect",
        ),
        (REDIRECT + "status = 302", "pools.web.fallback.status"),
        (PAGE + "status = 99", "pools.web.fallback.status"),
        (PAGE + "status = 600", "pools.web.fallback.status"),
        (PAGE + "status = true", "pools.web.fallback.status"),
        (PAGE + 'content_type = "html"', "pools.web.fallback.content_type"),
        (FALLBACK + 'page = ""', "pools.web.fallback.page"),
        (FALLBACK + 'retry_after = "soon"', "pools.web.fallback.retry_after"),
        (REDIRECT + "retry_after = 60", "pools.web.fallback.retry_after"),  # a 307 has none
        (PAGE + "status = 200\nretry_after = 60", "pools.web.fallback.retry_after"),
        # Written empty, a condition would read as "none" but matched any request: refused.
        ('[[routes]]\nmethods = []\npool = "web"', "routes[0].methods"),
        ('[[routes]]\nhosts = []\npool = "web"', "routes[0].hosts"),
        ('[[routes]]\nclients = []\npool = "web"', "routes[0].clients"),
        ('[[routes]]\ncountries = []\npool = "web"', "routes[0].countries"),
        ('[[routes]]\nheaders = {}\npool = "web"', "routes[0].headers"),
        ('[[routes]]\nheaders = { x-canary = [] }\npool = "web"', "routes[0].headers.x-canary"),
        ('[[routes]]\ncookies = { canary = [] }\npool = "web"', "routes[0].cookies.canary"),
        # Weights are relative: past a million the sums lose the small ones (1e308 + 1e308 = inf).
        (
            '[[routes]]\nsplit = [{ pool = "web", weight = 1e308 }, { pool = "beta", weight = 1e308 }]',
            "routes[0].split[0].weight",
        ),
        (
            '[[routes]]\nsplit = [{ pool = "web", weight = inf }, { pool = "beta" }]',
            "routes[0].split[0].weight",
        ),
        (
            '[pools.x]\nbackends = [{ url = "http://10.0.9.1", name = "x1", weight = 2e6 }]',
            "pools.x.backends[0].weight",
        ),
        # Read only by the hash policy: set without it, it would do nothing, silently.
        (
            '[pools.x]\nhash_key = "cookie:s"\nbackends = [{ url = "http://10.0.9.1", name = "x1" }]',
            "pools.x.hash_key",
        ),
        (
            '[pools.x]\nhash_balance_factor = 2\nbackends = [{ url = "http://10.0.9.1", name = "x1" }]',
            "pools.x.hash_balance_factor",
        ),
        ('[fallback]\nredirect = "/maint"', "fallback.redirect"),
        ('[fallback]\npage = "/srv/p.html"\nstatus = 0', "fallback.status"),
    ],
)
def test_bad_values_name_their_exact_place(text: str, key: str) -> None:
    """Each bad value of routes, pools, cookies and fallbacks is one ConfigError naming its key."""
    assert error_of(text).key == key


@pytest.mark.parametrize(
    ("text", "key", "wanted"),
    [
        ('[[routes]]\npath_prefix = "/a"\npool = "web"\n[[routes]]\npool = "gone"', "routes[1].pool", "gone"),
        (
            '[[routes]]\npool = "web"\n[[routes]]\nsplit = [{ pool = "gone" }, { pool = "beta" }]',
            "routes[1].split[0].pool",
            "gone",
        ),
        ('[[routes]]\nsplit = [{ pool = "web" }, { pool = "Web" }]', "routes[0].split[1].pool", "Web"),
    ],
)
def test_a_route_naming_an_unknown_pool_is_an_error(text: str, key: str, wanted: str) -> None:
    """A route (or a split's variant) naming a pool that does not exist is refused, the pools listed."""
    error = error_of(text)
    assert (error.key, error.value) == (key, wanted)
    assert error.reason == "no such pool (pools: beta, default, web)"


def test_a_route_may_name_the_default_pool() -> None:
    """`default` is the top level's pool: routes and splits may send to it."""
    route = only_route('[[routes]]\nsplit = [{ pool = "default", weight = 9 }, { pool = "web" }]')
    assert route.pools == ("default", "web")


@pytest.mark.parametrize(
    ("text", "key", "other"),
    [
        (
            '[pools.more]\nbackends = [{ url = "http://10.0.9.1", name = "web1" }]',
            "pools.more.backends[0].name",
            "web",
        ),
        (
            '[pools.more]\nbackends = [{ url = "http://10.0.9.1", name = "main1" }]',
            "pools.more.backends[0].name",
            "default",
        ),
        # Two backends named by their address alike: the same host:port in two pools.
        (
            '[pools.more]\nbackends = ["http://10.0.1.1:80"]\n[pools.most]\nbackends = ["http://10.0.1.1"]',
            "pools.most.backends[0].name",
            "more",
        ),
    ],
)
def test_backend_names_are_unique_across_pools(text: str, key: str, other: str) -> None:
    """The admin API and the metrics name a backend alone: the same name in two pools is refused,
    naming the pool that has it already."""
    error = error_of(text)
    assert error.key == key
    assert error.reason == f"backend name already used in pool {other}: names are unique"


def test_the_default_pool_cannot_be_declared_as_a_table() -> None:
    """[pools.default] is refused: the default pool is the file's top level."""
    error = error_of('[pools.default]\nbackends = ["http://10.0.9.1"]')
    assert error.key == "pools.default"
    assert "top level" in error.reason


@pytest.mark.parametrize(
    "url",
    [
        "/maint.html",
        "maint.example.com/",
        "//maint.example.com/",
        "ftp://maint.example.com/",
        "javascript:alert(1)",
        "https://",
        "http:///path",
        "https://maint.example.com/#top",
        "https://maint.example.com/a b",
        "https://maint.exämple.com/",
        "",
    ],
)
def test_a_fallback_redirect_must_be_an_absolute_http_url(url: str) -> None:
    """A fallback redirect is an absolute http:// or https:// URL, no fragment: refused otherwise, so
    that no request can steer where it goes."""
    error = error_of(f'[pools.web.fallback]\nredirect = "{url}"')
    assert (error.key, error.value) == ("pools.web.fallback.redirect", url)


def test_a_fallback_redirect_that_is_not_a_string_is_refused() -> None:
    """`redirect = 1` names the same key."""
    assert error_of("[pools.web.fallback]\nredirect = 1").key == "pools.web.fallback.redirect"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (
            '[[routes]]\nsplit = [{ pool = "web" }, { pool = "beta" }]\ncookie = { max_age = inf }',
            "routes[0].cookie.max_age",
        ),
        (
            '[[routes]]\nsplit = [{ pool = "web" }, { pool = "beta" }]\ncookie = { max_age = nan }',
            "routes[0].cookie.max_age",
        ),
        (
            '[[routes]]\nsplit = [{ pool = "web" }, { pool = "beta" }]\ncookie = { max_age = -60 }',
            "routes[0].cookie.max_age",
        ),
        (
            '[[routes]]\nsplit = [{ pool = "web" }, { pool = "beta" }]\ncookie = { name = "expires" }',
            "routes[0].cookie.name",
        ),
        (
            '[[routes]]\nsplit = [{ pool = "web" }, { pool = "beta" }]\ncookie = { name = "Path" }',
            "routes[0].cookie.name",
        ),
    ],
    ids=["max-age-inf", "max-age-nan", "max-age-negative", "name-expires", "name-path"],
)
def test_a_cookie_the_router_cannot_write_is_refused(text: str, key: str) -> None:
    """A sticky cookie that could not be written (Max-Age not a finite positive number, a name that
    is an attribute's) is refused at load, naming its key, not found when the first 307 is built."""
    assert error_of(text).key == key


@pytest.mark.parametrize("status", [204, 205, 304])
def test_a_page_status_that_cannot_carry_a_body_is_refused(status: int) -> None:
    """A fallback page is a body: 204, 205 and 304 cannot carry one, so they are refused."""
    assert error_of(f'[pools.web.fallback]\npage = "/srv/p.html"\nstatus = {status}').key == (
        "pools.web.fallback.status"
    )


def two_routes(earlier: str, later: str) -> Settings:
    """Routes `first` and `second`, where a country can be known (else routes on countries are warned
    about for that)."""
    text = f'[[routes]]\nname = "first"\n{earlier}\n[[routes]]\nname = "second"\n{later}'
    return load(text, top='country_header = "CF-IPCountry"\ntrusted_proxies = ["10.0.0.0/8"]\n')


UNREACHABLE = [
    ('pool = "web"', 'path_prefix = "/a"\npool = "beta"'),  # a catch-all first
    ('path_prefix = "/"\npool = "web"', 'pool = "beta"'),  # every path starts with "/"
    ('path_prefix = "/"\npool = "web"', 'methods = "POST"\npool = "beta"'),
    ('path_prefix = "/api"\npool = "web"', 'path_prefix = "/api/v1"\npool = "beta"'),
    ('path_prefix = "/api"\npool = "web"', 'path_prefix = "/api"\nmethods = "POST"\npool = "beta"'),
    ('path_prefix = "/api/"\npool = "web"', 'path_prefix = "/api/x"\npool = "beta"'),
    ('methods = ["GET", "POST"]\npool = "web"', 'methods = "POST"\npath_prefix = "/f"\npool = "beta"'),
    ('hosts = ["a.example", "b.example"]\npool = "web"', 'hosts = "b.example"\npool = "beta"'),
    ('headers = { X-A = ["1", "2"] }\npool = "web"', 'headers = { X-A = "1", X-B = "3" }\npool = "beta"'),
    ('cookies = { s = ["1", "2"] }\npool = "web"', 'cookies = { s = "2" }\npool = "beta"'),
    ('clients = "10.0.0.0/8"\npool = "web"', 'clients = ["10.1.0.0/16", "10.2.0.0/16"]\npool = "beta"'),
    # Every IPv4 and every IPv6 address: every client, as no condition at all.
    ('clients = ["0.0.0.0/0", "::/0"]\npool = "web"', 'path_prefix = "/a"\npool = "beta"'),
    ('countries = ["DE", "AT"]\npool = "web"', 'countries = "AT"\npool = "beta"'),
    # `*.example.com` takes any depth under it, as the router matches it.
    ('hosts = "*.example.com"\npool = "web"', 'hosts = "a.example.com"\npool = "beta"'),
    (
        'hosts = "*.example.com"\npool = "web"',
        'hosts = ["x.y.example.com", "*.b.example.com"]\npool = "beta"',
    ),
]


@pytest.mark.parametrize(("earlier", "later"), UNREACHABLE)
def test_a_route_an_earlier_one_covers_is_warned_about(earlier: str, later: str) -> None:
    """A route every request of which an earlier route takes is never reached: one warning names both."""
    settings = two_routes(earlier, later)
    assert warnings(settings) == [
        "routes[1] (second) is never reached: routes[0] (first) before it matches every request it would"
    ]


REACHABLE = [
    ('path_prefix = "/api"\npool = "web"', 'path_prefix = "/apix"\npool = "beta"'),  # not a segment
    ('path_prefix = "/api/"\npool = "web"', 'path_prefix = "/api"\npool = "beta"'),  # /api itself
    ('path_prefix = "/api/v1"\npool = "web"', 'path_prefix = "/api"\npool = "beta"'),  # narrower first
    ('methods = "POST"\npool = "web"', 'path_prefix = "/f"\npool = "beta"'),
    ('methods = "POST"\npool = "web"', 'methods = ["POST", "PUT"]\npool = "beta"'),
    ('hosts = "a.example"\npool = "web"', 'hosts = ["a.example", "b.example"]\npool = "beta"'),
    ('headers = { X-A = "1" }\npool = "web"', 'headers = { X-A = ["1", "2"] }\npool = "beta"'),
    ('headers = { X-A = "1" }\npool = "web"', 'cookies = { X-A = "1" }\npool = "beta"'),
    ('clients = "10.1.0.0/16"\npool = "web"', 'clients = "10.0.0.0/8"\npool = "beta"'),
    ('clients = "0.0.0.0/0"\npool = "web"', 'path_prefix = "/a"\npool = "beta"'),  # IPv6 clients pass it
    ('countries = "DE"\npool = "web"', 'countries = ["DE", "AT"]\npool = "beta"'),
    ('hosts = "*.example.com"\npool = "web"', 'hosts = "example.com"\npool = "beta"'),  # not a subdomain
    ('hosts = "*.example.com"\npool = "web"', 'hosts = "a.example.org"\npool = "beta"'),
]


@pytest.mark.parametrize(("earlier", "later"), REACHABLE)
def test_a_route_some_request_reaches_is_not_warned_about(earlier: str, later: str) -> None:
    """When some request the later route takes is not the earlier one's, nothing is said."""
    assert warnings(two_routes(earlier, later)) == []


def test_each_unreachable_route_is_warned_about_once_naming_the_first_that_covers_it() -> None:
    """Two routes behind a catch-all: one warning each, naming the first route that covers them."""
    settings = load(
        '[[routes]]\nname = "all"\npool = "web"\n[[routes]]\nname = "wide"\npool = "beta"\n'
        '[[routes]]\nname = "narrow"\npath_prefix = "/x"\npool = "beta"'
    )
    assert warnings(settings) == [
        "routes[1] (wide) is never reached: routes[0] (all) before it matches every request it would",
        "routes[2] (narrow) is never reached: routes[0] (all) before it matches every request it would",
    ]


def test_a_route_on_countries_with_no_source_of_countries_is_warned_about() -> None:
    """countries with neither geoip_db nor country_header set can never match: said once per route."""
    route = '[[routes]]\nname = "eu"\ncountries = ["DE", "AT"]\npool = "web"\n[[routes]]\npool = "beta"'
    assert warnings(load(route)) == [
        "routes[0] (eu): countries, but neither geoip_db nor country_header is set: it never matches"
    ]
    trusted = 'country_header = "CF-IPCountry"\ntrusted_proxies = ["10.0.0.0/8"]\n'
    assert warnings(load(route, top=trusted)) == []


def test_a_country_header_with_no_trusted_proxy_is_warned_about() -> None:
    """The header is believed only from a trusted peer: with none, it is read from no one, and its
    routes never match, which the operator of a CDN setup who forgot the edge's addresses must hear."""
    route = '[[routes]]\nname = "eu"\ncountries = ["DE"]\npool = "web"\n[[routes]]\npool = "beta"'
    assert warnings(load(route, top='country_header = "CF-IPCountry"\n')) == [
        "country_header = 'cf-ipcountry': no trusted_proxies, so it is read from no one (only a trusted "
        "edge's header is believed): set trusted_proxies to the edge's addresses"
    ]


def test_a_pool_no_route_sends_to_is_warned_about() -> None:
    """A named pool no route or split names is checked but never answers: one warning per pool."""
    settings = load('[[routes]]\npath_prefix = "/a"\npool = "web"')
    assert warnings(settings) == ["pools.beta: no route sends to it"]


def test_a_pool_used_only_by_a_split_is_not_warned_about() -> None:
    """A split's variants count as used, as a plain route's pool does."""
    settings = load(
        '[[routes]]\nname = "ab"\npath_prefix = "/a"\nsplit = [{ pool = "web" }, { pool = "beta" }]'
    )
    assert warnings(settings) == []


def test_a_file_without_routes_or_pools_has_no_routing_warning() -> None:
    """The single-pool file of before issue 13: no routes, no pools, nothing to warn about."""
    settings = load("", base='[[backends]]\nurl = "http://10.0.0.1"')
    assert (settings.routes, settings.pools, warnings(settings)) == ((), (), [])


@pytest.mark.parametrize(
    ("top", "key"),
    [('hash_key = "cookie:s"\n', "hash_key"), ("hash_balance_factor = 2\n", "hash_balance_factor")],
)
def test_the_top_levels_hash_settings_need_the_hash_policy(top: str, key: str) -> None:
    """As a named pool's: the default pool's hash_key or balance factor without policy = "hash" is a
    one-line error naming it, and with the policy it loads."""
    assert error_of("", top=top).key == key
    assert load("", top=top + 'policy = "hash"\n').policy == "hash"


def test_a_balance_factor_of_0_is_no_bound_as_haproxys() -> None:
    """hash_balance_factor = 0 turns the bound off (HAProxy's `hash-balance-factor 0`): plain
    consistent hashing; between 0 and 1 it is refused in one line naming it."""
    pool = '[pools.x]\npolicy = "hash"\nhash_balance_factor = {}\n'
    pool += 'backends = [{{ url = "http://10.0.9.1", name = "x1" }}]'
    assert load(pool.format(0)).pools[-1].balance_factor == math.inf
    assert error_of(pool.format(0.5)).key == "pools.x.hash_balance_factor"


@pytest.mark.parametrize(
    ("route", "warned"),
    [
        ('split = [{ pool = "web" }, { pool = "beta" }]', True),
        ('name = "shop"\nsplit = [{ pool = "web" }, { pool = "beta" }]', False),
        ('split = [{ pool = "web" }, { pool = "beta" }]\ncookie = { name = "variant" }', False),
        ('pool = "web"', False),
    ],
    ids=["unnamed-split", "named-split", "own-cookie-name", "unnamed-pool-route"],
)
def test_a_split_whose_cookie_is_named_by_its_place_is_warned_about(route: str, warned: bool) -> None:
    """An unnamed split's cookie is dispatcher-route2 by its place: a route added before it would
    rename it and draw every visitor again. Warned about, unless it has a name or names its cookie."""
    settings = load(f'[[routes]]\nname = "first"\npath_prefix = "/x"\npool = "web"\n[[routes]]\n{route}\n')
    expected = (
        "routes[1] (route2): a split without a name: its cookie (dispatcher-route2) and its metrics are "
        "named by its place in the list, so a route added before it renames them and every visitor is "
        "drawn again; give it a name"
    )
    assert (expected in warnings(settings)) == warned


@pytest.mark.parametrize("factor", ["-1", "0.5", "1", '"x"'])
def test_a_balance_factor_out_of_range_says_the_whole_rule(factor: str) -> None:
    """hash_balance_factor takes 0 (no bound) or more than 1: a negative one was told "greater than
    0", which 0.5 is and still is refused. Every wrong value now gets the one rule."""
    error = error_of("", top=f'policy = "hash"\nhash_key = "client"\nhash_balance_factor = {factor}\n')
    assert error.key == "hash_balance_factor"
    assert error.reason.startswith(
        "must be 0 (no bound) or more than 1: at 1 every backend is full at the mean load"
    )
    if factor.startswith('"'):  # a string: `"inf"` was told it was out of range
        assert error.reason.endswith("(a number, not a string: TOML writes inf bare)")


@pytest.mark.parametrize(
    ("route", "warned"),
    [
        ('pool = "web"', True),
        ('path_prefix = "/"\npool = "web"', True),
        ('path_prefix = "/api"\npool = "web"', False),
        ('split = [{ pool = "default" }, { pool = "web" }]\nname = "ab"', False),
        ('clients = ["0.0.0.0/0", "::/0"]\npool = "web"', True),
        ('clients = ["0.0.0.0/0"]\npool = "web"', False),
    ],
    ids=["no-condition", "prefix-slash", "a-prefix", "split-with-default", "every-client", "ipv4-only"],
)
def test_a_route_that_takes_every_request_is_warned_about_when_backends_wait(
    route: str, warned: bool
) -> None:
    """A route that takes every request while the default pool has backends: they are never sent
    one (a config moved to named pools that kept its [[backends]]). Not when the route is narrower,
    nor when it sends to the default pool itself."""
    found = all_warnings(load(f"[[routes]]\n{route}\n"))
    assert any("takes every request: the default pool's backends" in warning for warning in found) == warned


@pytest.mark.parametrize(("tls", "warned"), [(False, True), (True, False)])
def test_a_secure_cookie_on_a_plain_front_door_is_warned_about(tls: bool, warned: bool) -> None:
    """Browsers keep a Secure cookie only from https: on a plain-HTTP front door (no TLS of its own)
    a split's secure cookie is warned about, since its visitors are drawn again at each request."""
    top = 'tls = { cert = "c.pem", key = "k.pem" }\n' if tls else ""
    route = '[[routes]]\nname = "ab"\npath_prefix = "/a"\nsplit = [{ pool = "web" }, { pool = "beta" }]\n'
    found = all_warnings(load(route + "cookie = { secure = true }\n", top=top))
    assert any("cookie.secure = true on a plain-HTTP front door" in warning for warning in found) == warned


def test_a_boolean_in_an_error_is_written_as_the_file_writes_it() -> None:
    """`strip_prefix = true` without a prefix: the line shows `true`, TOML's word, not Python's `True`."""
    error = error_of('[[routes]]\nstrip_prefix = true\npool = "web"\n')
    assert str(error) == "routes[0].strip_prefix = true: needs a path_prefix to strip or replace"


@pytest.mark.parametrize(
    ("pool", "key"),
    [
        (
            'health = { interval = "1s", timeout = "2s" }\n'
            'backends = [{ url = "http://10.0.3.1", name = "x1" }]',
            "pools.x",
        ),
        (
            'backends = [{ url = "http://10.0.3.1", name = "x1", health = { timeout = "3s" } }]',
            "pools.x.backends[0] (x1)",
        ),
    ],
    ids=["the-pool's-own", "a-backend's-own"],
)
def test_a_named_pools_timeout_not_shorter_than_its_interval_is_warned_about(pool: str, key: str) -> None:
    """As a top-level backend's own health table is: a named pool's, and one of its backends', with a
    timeout not shorter than the interval in force there (the global [health] interval is 2 s)."""
    found = all_warnings(load(f'[pools.x]\n{pool}\n[[routes]]\npath_prefix = "/x"\npool = "x"\n'))
    assert any(warning.startswith(f"{key}: health.timeout") for warning in found), found


def test_a_balance_factor_of_infinity_is_no_bound() -> None:
    """`inf` (TOML's infinity) is more than 1: taken as no bound, as 0 is (HAProxy's 0), not refused
    with a rule it meets."""
    settings = load("", top='policy = "hash"\nhash_key = "client"\nhash_balance_factor = inf\n')
    assert settings.default_pool.balance_factor == math.inf


@pytest.mark.parametrize(
    ("written", "host"),
    [("Example.COM.", "example.com"), ("*.example.com.", "*.example.com"), ("a_b.example", "a_b.example")],
)
def test_a_route_host_loses_its_final_dot_and_may_hold_an_underscore(written: str, host: str) -> None:
    """As the front door reads a Host field: a final dot ignored (the README said so, and the file
    refused it), `_` in a name (a request could carry it, and no route could be written for it)."""
    assert only_route(f'[[routes]]\npool = "web"\nhosts = ["{written}"]').hosts == (host,)


@pytest.mark.parametrize(
    ("written", "network"),
    [
        ("2001:DB8::/32", "2001:db8::/32"),
        ("2001:0db8::/32", "2001:db8::/32"),
        ("2001:db8:0:0::/64", "2001:db8::/64"),
        ("::FFFF:10.0.0.0/104", "::ffff:a00:0/104"),
        ("10.0.0.0/255.0.0.0", "10.0.0.0/8"),
    ],
)
def test_a_network_may_be_written_in_any_spelling_ipaddress_reads(written: str, network: str) -> None:
    """Upper case, leading zeros, uncompressed: the same network, as nginx's set_real_ip_from takes
    it. They were refused as having host bits set, which none of them has."""
    settings = load(
        f'[[routes]]\nclients = ["{written}"]\npool = "beta"\n', f'trusted_proxies = ["{written}"]\n'
    )
    assert settings.routes[0].clients == (ipaddress.ip_network(network),)
    assert settings.trusted_proxies == (written,)


@pytest.mark.parametrize("key", ["trusted_proxies", "clients"])
def test_host_bits_are_still_refused_with_the_network_to_write(key: str) -> None:
    if key == "clients":
        error = error_of('[[routes]]\nclients = ["10.0.0.1/8"]\npool = "beta"\n')
    else:
        error = error_of("", 'trusted_proxies = ["10.0.0.1/8"]\n')
    assert error.reason == "has host bits set: write 10.0.0.0/8 for the network"


BELOW = (
    "unknown setting; a key written below a [table] belongs to that table in TOML: "
    "move it above the first one"
)


@pytest.mark.parametrize(
    ("top", "text", "key", "reason"),
    [
        (
            'trusted_proxy = ["10.0.0.0/8"]\n',
            "",
            "trusted_proxy",
            "unknown setting; did you mean trusted_proxies?",
        ),
        (
            'country-header = "CF-IPCountry"\n',
            "",
            "country-header",
            "unknown setting; did you mean country_header?",
        ),
        (
            "",
            '[pools.web2]\npolcy = "p2c"\nbackends = ["http://10.0.5.1"]\n',
            "pools.web2.polcy",
            "unknown setting; did you mean policy?",
        ),
        (
            "",
            '[[routes]]\npath_prefx = "/a"\npool = "web"\n',
            "routes[0].path_prefx",
            "unknown setting; did you mean path_prefix?",
        ),
        (
            "",
            '[[backends]]\nurl = "http://10.0.0.9"\nheader_timeout = "5s"\n',
            "backends[1].header_timeout",
            BELOW,
        ),
        (
            "",
            '[pools.web2]\nbackends = ["http://10.0.5.1"]\nlisten = "0.0.0.0:80"\n',
            "pools.web2.listen",
            BELOW,
        ),
        ("wibble = 1\n", "", "wibble", "unknown setting"),
    ],
)
def test_an_unknown_setting_says_what_was_meant(top: str, text: str, key: str, reason: str) -> None:
    """A near miss names the setting it is closest to (a flag's spelling too); a top-level key found
    inside a table says why it is there, the TOML slip of writing it below a table's header."""
    error = error_of(text, top)
    assert (error.key, error.reason) == (key, reason)


def test_a_code_that_is_no_country_is_warned_about() -> None:
    """UK for GB is the usual slip; EU is a continent; XX and ZZ say "unknown": none matches anyone."""
    route = '[[routes]]\nname = "eu"\ncountries = ["UK", "DE", "EU"]\npool = "web"\n[[routes]]\npool = "beta"'
    assert warnings(load(route, top='geoip_db = "x.mmdb"\n')) == [
        "routes[0] (eu): countries has EU, which no client's country is: EU is a continent in GeoIP "
        "databases, not a country",
        "routes[0] (eu): countries has UK, which no client's country is: the United Kingdom is GB",
    ]
