"""The router without sockets: every match kind, first match wins, the index changes no answer, path
rewrites, weighted splits and their sticky cookie, counters, fallbacks, maintenance, hash keys.

Pools are real `Pool`s built from the settings a file gives; a backend is up or down by the checks
the test records (rise 1, fall 1: one check moves it). Answers are read as the front door sends them:
a redirect's bytes (status line, Location, a Set-Cookie), or a `Reply`.
"""

from __future__ import annotations

import ipaddress
import math
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatcher.core.clientaddr import TrustedProxies
from dispatcher.core.pool import CheckResult, Pool
from dispatcher.core.reply import Reply, path_and_query
from dispatcher.core.routes import (
    MAX_CACHED_HOST,
    MAX_HOST_FIELDS,
    Client,
    Request,
    Route,
    Router,
    _cookie_pattern,
    needs_router,
    router_for,
)
from dispatcher.settings.config import HealthSettings, PoolSpec, Settings, apply, check, parse_toml
from dispatcher.settings.routing import RouteSpec, covers

PASS = CheckResult(True, 0.001, load=0.0)
FAIL = CheckResult(False, 0.001, reason="refused")
HEALTH = HealthSettings(rise=1, fall=1, jitter=0.0)  # one check moves a backend up or down

# Three pools, one backend each: where a Location starts says which pool answered.
POOLS = """
[[backends]]
url = "http://10.0.0.1:8000"
name = "main1"
[pools.web]
backends = [{ url = "http://10.0.1.1", name = "web1" }]
[pools.beta]
backends = [{ url = "http://10.0.2.1", name = "beta1" }]
"""
MAIN, WEB, BETA = "http://10.0.0.1:8000", "http://10.0.1.1:80", "http://10.0.2.1:80"
BASES = {MAIN: "default", WEB: "web", BETA: "beta"}
PEER = "192.0.2.10"  # a client on the internet (RFC 5737)


@dataclass
class Answer:
    """One answer as the front door would send it: status, headers by (lower-case) name, body."""

    status: int
    headers: dict[bytes, bytes]
    body: bytes = b""

    @property
    def location(self) -> str:
        return self.headers[b"location"].decode()

    @property
    def pool(self) -> str:
        """The pool whose backend the Location names."""
        (name,) = [name for base, name in BASES.items() if self.location.startswith(base + "/")]
        return name

    @property
    def cookie(self) -> str | None:
        value = self.headers.get(b"set-cookie")
        return None if value is None else value.decode()


def answer_of(reply: Reply | bytes) -> Answer:
    if isinstance(reply, Reply):
        assert len({name for name, _ in reply.headers}) == len(reply.headers), reply.headers
        return Answer(reply.status, dict(reply.headers), reply.body)
    status, *lines = reply.split(b"\r\n")
    assert status == b"HTTP/1.1 307 Temporary Redirect"
    pairs = [line.split(b": ", 1) for line in lines]
    assert len({name for name, _ in pairs}) == len(pairs), lines
    return Answer(307, {name: value for name, value in pairs})


@dataclass
class Routed:
    """A router over real pools, and a way to ask it."""

    router: Router
    pools: dict[str, Pool]
    now: float = 1.0

    def ask(
        self, target: str, *headers: str, method: str = "GET", peer: str = PEER, now: float | None = None
    ) -> Answer:
        pairs = [tuple(each.encode().split(b": ", 1)) for each in headers]
        if not any(name.lower() == b"host" for name, _ in pairs):
            pairs.insert(0, (b"host", b"front.example"))
        lowered = [(name.lower(), value) for name, value in pairs]
        reply = self.router.reply(
            method.encode(), target.encode(), lowered, peer, self.now if now is None else now
        )
        return answer_of(reply)

    def route(self, name: str) -> Route:
        (route,) = [route for route in self.router.routes if route.spec.name == name]
        return route

    def down(self, pool: str) -> None:
        for backend in self.pools[pool].backends:
            self.pools[pool].record_check(backend, FAIL, self.now)

    def up(self, pool: str) -> None:
        for backend in self.pools[pool].backends:
            self.pools[pool].record_check(backend, PASS, self.now)


def settings_of(text: str, top: str = "", base: str = POOLS) -> Settings:
    return check(apply(Settings(), parse_toml(top + base + text)))


def pool_of(spec: PoolSpec, pages: dict[str, bytes]) -> Pool:
    """A pool as the wiring makes one (pools.named_pool), its page read as the CLI does, every backend up."""
    if spec.name in pages:
        spec = replace(spec, fallback=replace(spec.fallback, body=pages[spec.name]))
    pool = Pool(spec.backends, HEALTH, 0.0, 0.0, spec.policy, spec=spec)
    for backend in pool.backends:
        pool.record_check(backend, PASS, 0.0)
    assert pool.takes_redirects
    return pool


def routed(
    text: str,
    *,
    top: str = "",
    base: str = POOLS,
    trusted: Sequence[str] = (),
    country_of: Callable[[str], str | None] | None = None,
    country_header: bytes | None = None,
    pages: dict[str, bytes] | None = None,
    seed: int = 13,
) -> Routed:
    """The router of `text`'s [[routes]] over POOLS' pools (and any `text` adds)."""
    settings = settings_of(text, top, base)
    pools = {spec.name: pool_of(spec, pages or {}) for spec in settings.all_pools}
    trust = TrustedProxies(ipaddress.ip_network(network) for network in trusted)
    client = Client(trust, country_of, country_header)
    router = Router(settings.routes, pools, pools["default"], client, random.Random(seed))
    return Routed(router, pools)


# --- every match kind ------------------------------------------------------------------------------

HOSTS = '[[routes]]\nhosts = ["shop.example.com", "*.example.org", "[2001:db8::1]"]\npool = "web"'


@pytest.mark.parametrize(
    ("target", "host", "pool"),
    [
        ("/", "shop.example.com", "web"),
        ("/", "SHOP.Example.Com", "web"),  # host names are case-insensitive (RFC 9110 §4.2.3)
        ("/", "shop.example.com:8080", "web"),  # the port is not the host's
        ("/", "a.example.org", "web"),
        ("/", "a.b.example.org", "web"),  # *.domain takes every depth below it
        ("/", "example.org", "default"),  # ... but not the domain itself
        ("/", "badexample.org", "default"),  # ... nor a name that only ends alike
        ("/", "[2001:db8::1]:443", "web"),
        ("/", "[2001:db8::2]", "default"),
        ("/", "other.example.com", "default"),
        ("/", "shop.example.com.evil", "default"),
        ("http://shop.example.com/x", "other.example", "web"),  # absolute form: its authority is the
        ("http://other.example/x", "shop.example.com", "default"),  # host (RFC 9112 §3.2.2), not Host
        ("https://A.EXAMPLE.ORG:8443?q=1", "other.example", "web"),
    ],
)
def test_hosts_match_by_name_wildcard_and_absolute_form(target: str, host: str, pool: str) -> None:
    """`hosts` matches the Host (or an absolute-form target's authority) without its port, in any case;
    `*.example.org` matches every name under example.org, not example.org itself."""
    assert routed(HOSTS).ask(target, f"Host: {host}").pool == pool


PREFIXES = '[[routes]]\npath_prefix = "/api"\npool = "web"\n[[routes]]\npath_prefix = "/docs/"\npool = "beta"'


@pytest.mark.parametrize(
    ("target", "pool"),
    [
        ("/api", "web"),
        ("/api/", "web"),
        ("/api/v1/users", "web"),
        ("/api?page=2", "web"),
        ("http://front.example/api/v1", "web"),
        ("/apix", "default"),  # a prefix matches whole segments
        ("/api-v2/x", "default"),
        ("/ap", "default"),
        ("/API", "default"),  # paths are case-sensitive
        ("/x/api", "default"),
        ("/%61pi", "default"),  # matched as sent, not decoded: the backend gets the same bytes
        ("/docs/", "beta"),
        ("/docs/guide", "beta"),
        ("/docs", "default"),  # `/docs/` asks for the slash
        ("/docsx/", "default"),
        ("/", "default"),
    ],
)
def test_a_path_prefix_matches_whole_segments(target: str, pool: str) -> None:
    """`/api` takes `/api`, `/api/...` and `/api?...`, never `/apix`; `/docs/` takes what is under it."""
    assert routed(PREFIXES).ask(target).pool == pool


@pytest.mark.parametrize(
    ("method", "pool"), [("POST", "web"), ("PUT", "web"), ("GET", "default"), ("HEAD", "default")]
)
def test_methods_are_any_of(method: str, pool: str) -> None:
    """`methods = ["POST", "PUT"]` takes those two methods only."""
    router = routed('[[routes]]\npath_prefix = "/submit"\nmethods = ["POST", "PUT"]\npool = "web"')
    assert router.ask("/submit", method=method).pool == pool


@pytest.mark.parametrize(("method", "pool"), [("GET", "web"), ("HEAD", "web"), ("POST", "default")])
def test_get_takes_head_too(method: str, pool: str) -> None:
    """`methods = ["GET"]` takes HEAD as well, GET without its body (RFC 9110 §9.3.2), as HAProxy's
    METH_GET does: a link checker's HEAD meets the pool its GET would."""
    router = routed('[[routes]]\npath_prefix = "/v2"\nmethods = ["GET"]\npool = "web"')
    assert router.ask("/v2/a", method=method).pool == pool


@pytest.mark.parametrize(
    ("headers", "pool"),
    [
        (["X-Variant: a", "X-Beta: 1"], "web"),
        (["X-Variant: b", "X-Beta: 1"], "web"),
        (["x-variant: a", "x-beta: 1"], "web"),  # header names are case-insensitive
        (["X-Variant: a"], "default"),  # every header named must hold
        (["X-Variant: c", "X-Beta: 1"], "default"),
        (["X-Variant: A", "X-Beta: 1"], "default"),  # values are compared exactly
        (["X-Variant: a, b", "X-Beta: 1"], "default"),
        ([], "default"),
    ],
)
def test_headers_all_hold_each_any_of_its_values(headers: list[str], pool: str) -> None:
    """Each header a route names must be present with one of its values; all of them must hold."""
    router = routed('[[routes]]\nheaders = { X-Variant = ["a", "b"], X-Beta = "1" }\npool = "web"')
    assert router.ask("/", *headers).pool == pool


@pytest.mark.parametrize(
    ("cookies", "pool"),
    [
        (["Cookie: tier=gold"], "web"),
        (["Cookie: theme=dark; tier=silver"], "web"),
        (['Cookie: tier="gold"'], "web"),  # a quoted value (RFC 6265 §4.1.1)
        (["Cookie: junk; tier=gold"], "web"),  # a stranger's malformed pair hides nothing after it
        (["Cookie: theme=dark", "Cookie: tier=gold"], "web"),  # two Cookie lines
        (["Cookie: tier=bronze"], "default"),
        (["Cookie: Tier=gold"], "default"),  # cookie names are case-sensitive
        (["Cookie: tier=bronze; tier=gold"], "default"),  # the first of a name is the browser's choice
        (["X-Tier: gold"], "default"),
    ],
)
def test_cookies_match_by_name_and_value(cookies: list[str], pool: str) -> None:
    """A cookie condition reads the Cookie header's pairs: the name exact, the value one of those given."""
    router = routed('[[routes]]\ncookies = { tier = ["gold", "silver"] }\npool = "web"')
    assert router.ask("/", *cookies).pool == pool


CLIENTS = '[[routes]]\nclients = ["10.0.0.0/8", "2001:db8::/32"]\npool = "web"'


@pytest.mark.parametrize(
    ("peer", "headers", "trusted", "pool"),
    [
        ("10.1.2.3", [], [], "web"),
        ("2001:db8::5", [], [], "web"),
        ("::ffff:10.1.2.3", [], [], "web"),  # a dual-stack socket's IPv4 peer
        ("192.0.2.10", [], [], "default"),
        ("2001:db9::5", [], [], "default"),
        # A forged header from a peer nobody trusts is not read.
        ("192.0.2.10", ["X-Forwarded-For: 10.1.2.3"], [], "default"),
        ("192.0.2.10", ["Forwarded: for=10.1.2.3"], [], "default"),
        # From a trusted proxy the client is the first untrusted hop from the right ...
        ("192.0.2.10", ["X-Forwarded-For: 10.1.2.3"], ["192.0.2.0/24"], "web"),
        ("192.0.2.10", ["X-Forwarded-For: 10.1.2.3, 192.0.2.77"], ["192.0.2.0/24"], "web"),
        # ... so what the client wrote to the left of the address its proxy saw is never read.
        ("192.0.2.10", ["X-Forwarded-For: 10.1.2.3, 198.51.100.7"], ["192.0.2.0/24"], "default"),
        # A trusted proxy in the routed network itself, with no header: the peer is the client.
        ("10.9.9.9", [], ["10.9.9.9"], "web"),
    ],
)
def test_clients_match_the_client_address_which_only_trusted_proxies_can_tell(
    peer: str, headers: list[str], trusted: list[str], pool: str
) -> None:
    """`clients` matches the client's address: the peer's, or the one a trusted proxy forwarded; a
    client cannot put itself in a network by writing X-Forwarded-For or Forwarded."""
    assert routed(CLIENTS, trusted=trusted).ask("/", *headers, peer=peer).pool == pool


def test_a_route_network_written_as_mapped_ipv4_takes_ipv4_clients_and_verdicts_are_per_address() -> None:
    """A client's address is unmapped (`::ffff:10.1.2.3` is 10.1.2.3), so a network written mapped is
    unmapped too, as trusted proxies' are; each address's verdict is remembered, and each address
    gets its own."""
    router = routed('[[routes]]\nclients = ["::ffff:a00:0/104"]\npool = "web"')
    asked = [router.ask("/", peer=peer).pool for peer in ("10.1.2.3", "::ffff:10.1.2.3", "11.0.0.1")]
    assert asked == ["web", "web", "default"]
    assert [router.ask("/", peer=peer).pool for peer in ("11.0.0.1", "10.1.2.3")] == ["default", "web"]


COUNTRIES = '[[routes]]\ncountries = ["DE", "AT"]\npool = "web"'
EDGE = "10.0.0.5"  # a trusted edge proxy that knows the client's country


def test_countries_from_a_database_of_the_client_address() -> None:
    """`countries` asks the country source about the client's address (behind a trusted proxy, the
    forwarded one): DE and AT are taken, FR and an unknown address are not."""
    places = {"192.0.2.1": "DE", "192.0.2.2": "AT", "198.51.100.1": "FR"}
    asked: list[str] = []

    def country_of(address: str) -> str | None:
        asked.append(address)
        return places.get(address)

    router = routed(COUNTRIES, trusted=[EDGE], country_of=country_of)
    assert [router.ask("/", peer=peer).pool for peer in places] == ["web", "web", "default"]
    assert router.ask("/", peer="203.0.113.9").pool == "default"
    assert router.ask("/", "X-Forwarded-For: 192.0.2.2", peer=EDGE).pool == "web"
    assert router.ask("/", "X-Forwarded-For: 192.0.2.2", peer="198.51.100.1").pool == "default"  # forged
    assert asked == [*places, "203.0.113.9", "192.0.2.2", "198.51.100.1"]


@pytest.mark.parametrize(
    ("peer", "header", "database", "pool"),
    [
        (EDGE, "DE", None, "web"),
        (EDGE, "at", None, "web"),  # upper-cased
        (EDGE, "FR", None, "default"),
        (EDGE, "FR", "DE", "default"),  # the edge saw the real client: its header comes first
        (EDGE, "T1", "DE", "web"),  # not a country (Cloudflare's Tor): the database answers
        (EDGE, "XX", "DE", "web"),  # the edge does not know (Cloudflare's XX): the database answers
        (EDGE, "xx", None, "default"),
        (EDGE, None, "DE", "web"),
        ("198.51.100.1", "DE", None, "default"),  # a client's own header is not believed
        ("198.51.100.1", "DE", "FR", "default"),
    ],
)
def test_countries_from_a_trusted_country_header(
    peer: str, header: str | None, database: str | None, pool: str
) -> None:
    """A country header (CF-IPCountry) is believed from a trusted peer only, before the database."""
    router = routed(COUNTRIES, trusted=[EDGE], country_of=lambda _: database, country_header=b"cf-ipcountry")
    headers = [] if header is None else [f"CF-IPCountry: {header}"]
    assert router.ask("/", *headers, peer=peer).pool == pool


def test_every_condition_of_a_route_must_hold() -> None:
    """Conditions of different kinds are and-ed: a POST to /api from the right host, not less."""
    router = routed('[[routes]]\nhosts = "api.example"\npath_prefix = "/api"\nmethods = "POST"\npool = "web"')
    assert router.ask("/api/x", "Host: api.example", method="POST").pool == "web"
    assert router.ask("/api/x", "Host: api.example").pool == "default"
    assert router.ask("/api/x", "Host: www.example", method="POST").pool == "default"
    assert router.ask("/x", "Host: api.example", method="POST").pool == "default"


# --- first match wins, and the index ---------------------------------------------------------------


def test_the_first_route_that_matches_wins() -> None:
    """Routes are tried in the file's order: swap two that both match and the answer swaps."""
    post = '[[routes]]\nmethods = "POST"\npool = "web"\n'
    api = '[[routes]]\npath_prefix = "/api"\npool = "beta"\n'
    assert routed(post + api).ask("/api/x", method="POST").pool == "web"
    assert routed(api + post).ask("/api/x", method="POST").pool == "beta"
    assert routed(post + api).ask("/api/x").pool == "beta"
    assert routed(api + post).ask("/other", method="POST").pool == "web"


def test_a_route_without_a_prefix_keeps_its_place_among_prefixed_ones() -> None:
    """A header route between two /api routes is tried between them, whatever the index files it as."""
    router = routed(
        '[[routes]]\nname = "one"\npath_prefix = "/api"\nmethods = "POST"\npool = "web"\n'
        '[[routes]]\nname = "two"\nheaders = { X-A = "1" }\npool = "beta"\n'
        '[[routes]]\nname = "three"\npath_prefix = "/api"\npool = "web"\n'
    )
    assert router.ask("/api", "X-A: 1", method="POST").pool == "web"
    assert router.ask("/api", "X-A: 1").pool == "beta"
    assert router.ask("/api").pool == "web"
    assert router.ask("/else", "X-A: 1").pool == "beta"
    assert [router.route(name).requests for name in ("one", "two", "three")] == [1, 2, 1]


def test_a_request_no_route_takes_goes_to_the_default_pool() -> None:
    """Nothing matches: the default pool's backend, the path as sent, counted as defaulted."""
    router = routed(PREFIXES)
    assert router.ask("/elsewhere?x=1").location == MAIN + "/elsewhere?x=1"
    assert router.router.defaulted == 1


# Route conditions and requests drawn from small sets that collide often: prefixes that share first
# segments or differ by one character or a slash, hosts under one domain, two methods.
PREFIX_CHOICES = [None, "/", "/api", "/api/", "/api/v1", "/apix", "/ap", "/docs", "//x", "/a.b"]
PREFIX_CHOICES += ["/api/v1/", "/api/v2", "/api/v1/x", "/docs/a"]  # the index's second segment
PATH_CHOICES = ["/", "/api", "/api/", "/api/v1", "/api/v1/x", "/api/v2", "/api?x=1", "/apix", "/ap", "/apiv1"]
PATH_CHOICES += ["/docs", "/docs/", "/docs?q", "//x", "//x/y", "/a.b/c", "/API", "/x/api", "/?api"]
PATH_CHOICES += ["/api/v1?x", "/api/v1/", "/api//v1", "/api/v10", "/api/v1/x/y", "/api/v2?q", "/docs/a/b"]


EVERY_ADDRESS = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))


@st.composite
def route_specs(draw: st.DrawFn, index: int) -> RouteSpec:
    return RouteSpec(
        name=f"r{index}",
        hosts=tuple(draw(st.lists(st.sampled_from(["a.example", "*.example", "b.example"]), max_size=2))),
        path_prefix=draw(st.sampled_from(PREFIX_CHOICES)),
        methods=frozenset(draw(st.lists(st.sampled_from([b"GET", b"POST"]), max_size=1))),
        headers=((b"x-a", (b"1",)),) if draw(st.booleans()) else (),
        cookies=((b"c", (b"1", b"2")),) if draw(st.integers(0, 3)) == 0 else (),
        clients=draw(
            st.sampled_from(
                [(), (), (ipaddress.ip_network("10.0.0.0/8"),), EVERY_ADDRESS]  # every client: as none
            )
        ),
        pool=draw(st.sampled_from(["default", "web"])),
    )


@st.composite
def route_lists(draw: st.DrawFn) -> list[RouteSpec]:
    return [draw(route_specs(i)) for i in range(draw(st.integers(0, 8)))]


@st.composite
def requests(draw: st.DrawFn) -> Request:
    path = draw(st.sampled_from(PATH_CHOICES) | st.from_regex(r"/[a-z/?.]{0,10}", fullmatch=True))
    absolute = draw(st.booleans())
    host = draw(st.sampled_from(["a.example", "x.a.example", "b.example:81", "c.other"]))
    target = f"http://{host}{path}" if absolute and not path.startswith("//") else path
    headers = [(b"host", host.encode())]
    if draw(st.booleans()):
        headers.append((b"x-a", draw(st.sampled_from([b"1", b"2"]))))
    if draw(st.booleans()):
        headers.append((b"cookie", b"c=" + draw(st.sampled_from([b"1", b"3"]))))
    peer = draw(st.sampled_from(["10.1.1.1", "192.0.2.1", "::1"]))
    method = draw(st.sampled_from([b"GET", b"POST"]))
    found = path_and_query(target.encode())
    assert found is not None
    return Request(method, target.encode(), headers, peer, found)


def bare_router(specs: Sequence[RouteSpec]) -> Router:
    pools = {name: Pool([], HEALTH, spec=PoolSpec(name)) for name in ("default", "web")}
    return Router(specs, pools, pools["default"], Client(TrustedProxies()))


@given(route_lists(), requests())
def test_the_index_never_changes_the_answer(specs: list[RouteSpec], request: Request) -> None:
    """For any routes and any request, `match` (through the index of first segments) finds the route a
    scan of every route in order finds: the index only skips routes that cannot match."""
    router = bare_router(specs)
    scanned = next((route for route in router.routes if router._holds(route, request)), None)
    assert router.match(request) is scanned


COOKIE_PAIRS = st.lists(
    st.sampled_from(
        [b"c=1", b"c=2", b" c = 3", b"c", b"xc=4", b'c="5"', b"c=", b"d=1", b"\tc=6 ", b"c=7=8", b";", b""]
    ),
    max_size=5,
)


@given(st.lists(COOKIE_PAIRS.map(b";".join), max_size=3), st.sampled_from([b"c", b"d", b"xc"]))
def test_a_cookie_found_by_its_pattern_is_the_one_the_pairs_give(fields: list[bytes], name: bytes) -> None:
    """`Request.cookie` (one regex search a field, what cookie conditions and splits read) finds the
    value `Request.cookies` (every pair parsed) gives the name, across any Cookie fields: first wins."""
    headers = [(b"host", b"a.example"), *((b"cookie", field) for field in fields)]
    searched = Request(b"GET", b"/", headers, PEER, b"/").cookie(name, _cookie_pattern(name))
    assert searched == Request(b"GET", b"/", headers, PEER, b"/").cookies().get(name)


@given(route_lists(), requests())
def test_a_route_said_to_cover_another_matches_all_it_would(specs: list[RouteSpec], request: Request) -> None:
    """`covers(a, b)`, behind the unreachable-route warning, never claims too much: whenever b matches a
    request and a covers b, a matches it too (a warning is never wrong, though one may be missing)."""
    router = bare_router(specs)
    for later in router.routes:
        if router._holds(later, request):
            for earlier in router.routes[: later.index]:
                if covers(earlier.spec, later.spec):
                    assert router._holds(earlier, request), (earlier.spec, later.spec)


# --- rewrites --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("route", "target", "path"),
    [
        ('path_prefix = "/app"\nstrip_prefix = true', "/app/x?q=1", "/x?q=1"),
        ('path_prefix = "/app"\nstrip_prefix = true', "/app", "/"),
        ('path_prefix = "/app"\nstrip_prefix = true', "/app?q=1", "/?q=1"),
        ('path_prefix = "/app"\nstrip_prefix = true', "/app/", "/"),
        ('path_prefix = "/app/"\nstrip_prefix = true', "/app/x/y", "/x/y"),
        ('path_prefix = "/app"\nstrip_prefix = true', "http://front.example/app/x?q", "/x?q"),
        ('path_prefix = "/submit"\nreplace_prefix = "/v2/submit"', "/submit", "/v2/submit"),
        ('path_prefix = "/submit"\nreplace_prefix = "/v2/submit"', "/submit?a=1&b=2", "/v2/submit?a=1&b=2"),
        ('path_prefix = "/submit"\nreplace_prefix = "/v2/submit"', "/submit/x/y?z", "/v2/submit/x/y?z"),
        ('path_prefix = "/v1/"\nreplace_prefix = "/v2/"', "/v1/x", "/v2/x"),
        ('path_prefix = "/old"\nreplace_prefix = "/"', "/old/page", "/page"),
        ('path_prefix = "/old"\nreplace_prefix = "/"', "/old", "/"),
        ('path_prefix = "/old"\nreplace_prefix = "/"', "/old?x=1", "/?x=1"),
        ('path_prefix = "/"\nreplace_prefix = "/v2"', "/x?y", "/v2/x?y"),
        ('path_prefix = "/app"', "/app/x?q=1", "/app/x?q=1"),  # no rewrite: the path as sent
    ],
)
def test_a_prefix_is_stripped_or_replaced_and_the_rest_kept(route: str, target: str, path: str) -> None:
    """strip_prefix and replace_prefix rewrite the prefix only; the rest of the path and the query go
    to the backend unchanged, and the path always starts with '/'."""
    assert routed(f'[[routes]]\n{route}\npool = "web"').ask(target).location == WEB + path


# --- weighted splits and stickiness ----------------------------------------------------------------

SPLIT = """
[[routes]]
name = "ab"
path_prefix = "/shop"
split = [{ pool = "web", weight = 90 }, { pool = "beta", weight = 10 }]
"""


def cookie_of(variant: str, name: str = "dispatcher-ab") -> str:
    return f"{name}={variant}; HttpOnly; Path=/; SameSite=Lax"


def five_sigma(draws: int, share: float) -> tuple[float, float]:
    """The range a binomial count stays in but with probability 6e-7 (five standard deviations; at
    these counts the normal approximation is within a hair of the binomial): a test that cannot flake
    over any seed it will meet, and still catches a wrong share (a 1-point bias is 10 sigma at 20,000)."""
    mean, sigma = draws * share, math.sqrt(draws * share * (1 - share))
    return mean - 5 * sigma, mean + 5 * sigma


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_split_draws_variants_by_weight(seed: int) -> None:
    """90/10 over 20,000 visitors without a cookie: the beta share is 10% within five sigma (2000 +-
    212), each answer sets the cookie naming the pool it sent the visitor to."""
    router = routed(SPLIT, seed=seed)
    drawn: Counter[str] = Counter()
    for _ in range(20_000):
        answer = router.ask("/shop/item?id=7")
        assert answer.cookie == cookie_of(answer.pool)
        assert answer.location.endswith("/shop/item?id=7")
        drawn[answer.pool] += 1
    low, high = five_sigma(20_000, 0.1)
    assert set(drawn) == {"web", "beta"} and low <= drawn["beta"] <= high, drawn
    assert router.route("ab").variant_requests == [drawn["web"], drawn["beta"]]


def test_a_three_way_split_gives_each_variant_its_share() -> None:
    """50/30/20 between three pools over 20,000 visitors: each variant's count within five sigma."""
    router = routed(
        '[[routes]]\nname = "abc"\nsplit = [{ pool = "default", weight = 5 }, '
        '{ pool = "web", weight = 3 }, { pool = "beta", weight = 2 }]'
    )
    drawn = Counter(router.ask("/").pool for _ in range(20_000))
    for pool, share in (("default", 0.5), ("web", 0.3), ("beta", 0.2)):
        low, high = five_sigma(20_000, share)
        assert low <= drawn[pool] <= high, (pool, drawn)


def test_a_cookie_keeps_its_variant_with_no_new_cookie() -> None:
    """A visitor whose cookie names a variant gets that variant every time (whatever the weights), and
    no Set-Cookie: the cookie it has is right."""
    router = routed(SPLIT)
    for variant in ("beta", "web"):
        answers = [router.ask("/shop", f"Cookie: other=1; dispatcher-ab={variant}") for _ in range(200)]
        assert {(answer.pool, answer.cookie) for answer in answers} == {(variant, None)}


@pytest.mark.parametrize(
    "cookie",
    ["dispatcher-ab=gamma", "dispatcher-other=beta", "dispatcher-ab=", "Dispatcher-ab=beta"],
    ids=["unknown-variant", "another-routes-cookie", "empty", "name-in-other-case"],
)
def test_a_cookie_naming_no_variant_of_this_split_is_drawn_again(cookie: str) -> None:
    """A cookie that names no variant of this route is ignored: a draw, and a new cookie."""
    answer = routed(SPLIT).ask("/shop", f"Cookie: {cookie}")
    assert answer.cookie == cookie_of(answer.pool)


@pytest.mark.parametrize("why", ["down", "maintenance"])
def test_a_variant_whose_pool_takes_no_redirects_is_drawn_again(why: str) -> None:
    """While the cookie's pool has no usable backend, or is in maintenance, its visitors are drawn
    among the other variants and told so with a new cookie; once it is back, a visitor who kept the
    old cookie is on it again."""
    router = routed(SPLIT)
    if why == "down":
        router.down("beta")
    else:
        router.pools["beta"].maintenance = True
    answers = [router.ask("/shop", "Cookie: dispatcher-ab=beta") for _ in range(50)]
    assert {(answer.pool, answer.cookie) for answer in answers} == {("web", cookie_of("web"))}
    assert router.pools["beta"].backends[0].redirects == 0 and router.pools["beta"].fallbacks == 0
    if why == "down":
        router.up("beta")
    else:
        router.pools["beta"].maintenance = False
    assert (router.ask("/shop", "Cookie: dispatcher-ab=beta").pool, None) == ("beta", None)
    assert router.ask("/shop", "Cookie: dispatcher-ab=beta").cookie is None


def test_a_split_with_no_variant_taking_redirects_answers_with_a_fallback() -> None:
    """Every variant down: a drawn pool's fallback answers (here 503), with no cookie to keep."""
    router = routed(SPLIT)
    router.down("web")
    router.down("beta")
    answer = router.ask("/shop", "Cookie: dispatcher-ab=beta")
    assert (answer.status, answer.cookie) == (503, None)
    assert router.pools["web"].fallbacks + router.pools["beta"].fallbacks == 1


def test_a_split_answered_by_a_fallback_redirect_sets_no_cookie() -> None:
    """Every variant in maintenance, the drawn pool's fallback a redirect: a 307 elsewhere, and no
    Set-Cookie (it named a variant that served nothing, and kept the visitor on it later)."""
    fallbacks = (
        '[pools.web.fallback]\nredirect = "https://status.example/"\n'
        '[pools.beta.fallback]\nredirect = "https://status.example/"\n'
    )
    router = routed(SPLIT, base=POOLS + fallbacks)
    router.pools["web"].maintenance = router.pools["beta"].maintenance = True
    answer = router.ask("/shop")
    assert (answer.status, answer.headers[b"location"], answer.cookie) == (
        307,
        b"https://status.example/",
        None,
    )


def test_the_cookie_attributes_are_the_routes() -> None:
    """The Set-Cookie of a split carries the attributes its [routes.cookie] table sets."""
    router = routed(
        SPLIT
        + '\ncookie = { name = "v", path = "/shop", max_age = "30m", secure = true, same_site = "Strict" }'
    )
    answer = router.ask("/shop")
    assert answer.cookie == f"v={answer.pool}; HttpOnly; Max-Age=1800; Path=/shop; SameSite=Strict; Secure"
    assert router.ask("/shop", f"Cookie: v={answer.pool}").cookie is None


# --- counters --------------------------------------------------------------------------------------


def test_requests_are_counted_per_route_per_variant_and_defaulted() -> None:
    """Each redirect counts once for its route and once for its variant (a plain route's pool is its
    one variant); a request no route takes counts as defaulted; what is not redirected, not at all."""
    router = routed(
        '[[routes]]\nname = "api"\npath_prefix = "/api"\npool = "web"\n'
        '[[routes]]\nname = "ab"\npath_prefix = "/shop"\nsplit = [{ pool = "web" }, { pool = "beta" }]'
    )
    for _ in range(3):
        router.ask("/api/x")
    for _ in range(4):
        router.ask("/shop", "Cookie: dispatcher-ab=beta")
    router.ask("/shop", "Cookie: dispatcher-ab=web")
    for _ in range(2):
        router.ask("/")
    assert router.ask("/api", method="CONNECT").status == 405  # a tunnel: not a route's
    assert routed_counts(router) == {"api": (3, [3]), "ab": (5, [1, 4])}
    assert router.router.defaulted == 2


def routed_counts(router: Routed) -> dict[str, tuple[int, list[int]]]:
    return {route.spec.name: (route.requests, route.variant_requests) for route in router.router.routes}


def test_a_fallback_answer_counts_for_its_route_and_its_pool() -> None:
    """A request a route takes to a pool in maintenance counts for the route and the variant, and as
    one of the pool's fallback answers."""
    router = routed('[[routes]]\nname = "api"\npath_prefix = "/api"\npool = "web"')
    router.pools["web"].maintenance = True
    router.ask("/api")
    assert (routed_counts(router), router.pools["web"].fallbacks) == ({"api": (1, [1])}, 1)


# --- fallbacks and maintenance ---------------------------------------------------------------------

ROUTE_TO_WEB = '[[routes]]\npath_prefix = "/w"\npool = "web"\n'
PAGE = b"<!doctype html><title>Back soon</title><p>We are moving the shop.</p>\n"


def test_no_usable_backend_and_no_fallback_is_503_with_retry_after() -> None:
    """The pool's backends all down and no fallback: 503, Retry-After the seconds to its next check
    (rounded up, at least 1), a short text body, the connection kept."""
    router = routed(ROUTE_TO_WEB)
    router.down("web")
    pool = router.pools["web"]
    pool.set_next_check(pool.backends[0], 7.5)
    answer = router.ask("/w/x", now=1.0)
    assert (answer.status, answer.headers[b"retry-after"], answer.body) == (
        503,
        b"7",
        b"no healthy backend\n",
    )
    assert answer.headers[b"content-length"] == str(len(answer.body)).encode()
    assert router.ask("/w/x", now=7.4).headers[b"retry-after"] == b"1"
    assert pool.fallbacks == 2


@pytest.mark.parametrize(
    ("table", "target", "location"),
    [
        (
            'redirect = "https://sorry.example.com/maint.html"',
            "/w/x?y=1",
            "https://sorry.example.com/maint.html",
        ),
        (
            'redirect = "https://sorry.example.com/"\nkeep_path = true',
            "/w/x?y=1",
            "https://sorry.example.com/w/x?y=1",
        ),
        ('redirect = "https://b.example.com/shop"\nkeep_path = true', "/w", "https://b.example.com/shop/w"),
        (
            'redirect = "http://b.example.com"\nkeep_path = true',
            "http://front.example/w?z",
            "http://b.example.com/w?z",
        ),
    ],
    ids=["no-path", "keep-path", "keep-path-under-a-path", "keep-path-absolute-form"],
)
def test_a_fallback_redirect_goes_to_its_url(table: str, target: str, location: str) -> None:
    """A redirect fallback: a 307 to its URL, with the request's path and query after it if keep_path;
    the request never chooses the scheme or host."""
    router = routed(ROUTE_TO_WEB + f"[pools.web.fallback]\n{table}")
    router.down("web")
    answer = router.ask(target)
    assert (answer.status, answer.location) == (307, location)


def test_a_fallback_page_is_served_with_its_status_type_and_length() -> None:
    """A page fallback: its status (503 by default, with Retry-After), its content type, a
    Content-Length that is the body's, and the body."""
    router = routed(ROUTE_TO_WEB + '[pools.web.fallback]\npage = "/srv/maint.html"', pages={"web": PAGE})
    router.down("web")
    answer = router.ask("/w")
    assert (answer.status, answer.body) == (503, PAGE)
    assert answer.headers == {
        b"content-type": b"text/html; charset=utf-8",
        b"content-length": str(len(PAGE)).encode(),
        b"retry-after": b"1",
    }


def test_a_fallback_page_of_another_status_has_no_retry_after() -> None:
    """`status = 200`, `content_type = "text/plain"`: a plain 200 answer, nothing to retry."""
    table = '[pools.web.fallback]\npage = "/srv/moved.txt"\nstatus = 200\ncontent_type = "text/plain"'
    router = routed(ROUTE_TO_WEB + table, pages={"web": b"moved to /v2\n"})
    router.down("web")
    answer = router.ask("/w")
    assert (answer.status, answer.body) == (200, b"moved to /v2\n")
    assert answer.headers == {b"content-type": b"text/plain", b"content-length": b"13"}


@pytest.mark.parametrize(
    ("table", "status", "location", "body"),
    [
        ("", 503, None, b"in maintenance\n"),
        ('redirect = "https://status.example.com/"', 307, "https://status.example.com/", b""),
        ('page = "/srv/maint.html"', 503, None, PAGE),
    ],
    ids=["unavailable", "redirect", "page"],
)
def test_maintenance_sends_every_request_to_the_fallback_until_it_ends(
    table: str, status: int, location: str | None, body: bytes
) -> None:
    """A pool in maintenance answers every request with its fallback though its backends are up (no
    Retry-After: the next check says nothing of when the operator ends it); ready again, it redirects."""
    pages = {"web": PAGE} if "page" in table else None
    router = routed(ROUTE_TO_WEB + f"[pools.web.fallback]\n{table}", pages=pages)
    pool = router.pools["web"]
    pool.maintenance = True
    answers = [router.ask(f"/w/{i}") for i in range(5)]
    assert {(answer.status, answer.headers.get(b"location"), answer.body) for answer in answers} == {
        (status, location.encode() if location else None, body)
    }
    assert all(b"retry-after" not in answer.headers for answer in answers)
    assert (pool.fallbacks, pool.backends[0].redirects, pool.usable_count) == (5, 0, 0)
    assert pool.backends[0].usable  # up all along: only the pool is held
    pool.maintenance = False
    assert router.ask("/w/5").location == WEB + "/w/5"
    assert router.ask("/").location == MAIN + "/"  # the other pools never noticed


def test_the_default_pool_in_maintenance_answers_with_the_top_level_fallback() -> None:
    """Requests no route takes go to the default pool, and so to its [fallback] while it is held."""
    router = routed(ROUTE_TO_WEB + '[fallback]\nredirect = "https://status.example.com/"')
    router.pools["default"].maintenance = True
    assert router.ask("/anything").location == "https://status.example.com/"
    assert router.ask("/w").location == WEB + "/w"


# --- hash pools ------------------------------------------------------------------------------------

STICKY = """
[pools.sticky]
policy = "hash"
hash_key = "{key}"
backends = ["http://10.0.3.1", "http://10.0.3.2", "http://10.0.3.3", "http://10.0.3.4"]
[[routes]]
path_prefix = "/app"
pool = "sticky"
"""


DRAINED = 100.0  # seconds between two requests to a hash pool: the last one has drained by then


def home_of(router: Routed, key: bytes) -> str:
    """The backend the pool's hash policy files this key under (its home on the ring)."""
    home = router.pools["sticky"].policy.home(key)  # type: ignore[attr-defined]
    return f"http://{home.spec.host}:{home.spec.port}"


def sticky_visits(router: Routed, visits: Sequence[tuple[str, list[str], str]]) -> dict[str, set[str]]:
    """Each visit (key, headers, peer) five times, each request once the last has drained (no backend
    near the bound: a redirect adds 1 / rate = 4 s to a backend's estimate before the pool's first
    tick): the backends each key's requests went to."""
    seen: dict[str, set[str]] = {}
    clock = iter(range(1, 10_000))
    for _ in range(5):
        for key, headers, peer in visits:
            answer = router.ask("/app/page?x=1", *headers, peer=peer, now=DRAINED * next(clock))
            seen.setdefault(key, set()).add(answer.location.removesuffix("/app/page?x=1"))
    return seen


@pytest.mark.parametrize(
    ("key", "visit"),
    [
        ("cookie:session", lambda i: ([f"Cookie: theme=x; session=s{i}"], PEER)),
        ("header:X-User", lambda i: ([f"X-User: user-{i}"], PEER)),
        ("client", lambda i: ([], f"198.51.100.{i}")),
    ],
    ids=["cookie", "header", "client"],
)
def test_a_hash_pool_is_given_the_requests_key(
    key: str, visit: Callable[[int], tuple[list[str], str]]
) -> None:
    """Through the router, a hash pool receives the key its hash_key names: the same cookie (header,
    client) always lands on the same backend, its home on the ring, and 40 keys spread over the pool."""
    router = routed(STICKY.format(key=key))
    visits = [(f"k{i}", *visit(i)) for i in range(40)]
    seen = sticky_visits(router, visits)
    assert all(len(backends) == 1 for backends in seen.values()), seen
    names = {"cookie:session": "s{}", "header:X-User": "user-{}", "client": "198.51.100.{}"}[key]
    assert all(seen[f"k{i}"] == {home_of(router, names.format(i).encode())} for i in range(40))
    assert len(set().union(*seen.values())) >= 3


def test_a_hash_pool_keyed_by_path_ignores_the_query() -> None:
    """hash_key = "path": the path without its query is the key, so every query of a path goes to
    that path's home."""
    router = routed(STICKY.format(key="path"))
    clock = iter(range(1, 1000))
    for i in range(20):
        answers = [router.ask(f"/app/p{i}?q={j}", now=DRAINED * next(clock)) for j in range(4)]
        assert {answer.location.split("/app/")[0] for answer in answers} == {
            home_of(router, f"/app/p{i}".encode())
        }


def test_a_hash_pool_hashes_the_forwarded_client_only_from_a_trusted_proxy() -> None:
    """hash_key = "client" behind a trusted proxy: the forwarded address is the key; from anyone
    else a forged X-Forwarded-For is not, the peer is."""
    router = routed(STICKY.format(key="client"), trusted=["10.0.0.5"])
    forwarded = router.ask("/app", "X-Forwarded-For: 203.0.113.9", peer="10.0.0.5", now=1.0)
    assert forwarded.location.startswith(home_of(router, b"203.0.113.9") + "/")
    forged = router.ask("/app", "X-Forwarded-For: 203.0.113.9", peer="198.51.100.3", now=DRAINED)
    assert forged.location.startswith(home_of(router, b"198.51.100.3") + "/")


def test_a_request_without_the_key_still_gets_a_backend() -> None:
    """No such cookie: the hash pool chooses without a key (its least-loaded backend), never fails."""
    router = routed(STICKY.format(key="cookie:session"))
    assert router.ask("/app", "Cookie: other=1").location.startswith("http://10.0.3.")


# --- when there is a router at all -----------------------------------------------------------------


def test_a_router_is_made_only_for_routes_or_a_hash_pool() -> None:
    """Without routes or a hash pool the front door reads nothing of the head (no router); with either,
    requests go through one."""
    plain = settings_of("", base='[[backends]]\nurl = "http://10.0.0.1"')
    hashed = settings_of("", top='policy = "hash"\n', base='[[backends]]\nurl = "http://10.0.0.1"')
    assert (needs_router(plain), needs_router(hashed)) == (False, True)
    pools = {"default": Pool(plain.backends, HEALTH, spec=plain.default_pool)}
    assert router_for(plain, pools) is None
    router = router_for(hashed, {"default": Pool(hashed.backends, HEALTH, spec=hashed.default_pool)})
    assert router is not None and router.routes == []


def test_a_fallback_keeps_the_path_the_client_asked_for_not_the_rewritten_one() -> None:
    """keep_path: the maintenance site gets the request's own path, not the route's rewriting of it
    (which is the backends' business)."""
    route = '[[routes]]\npath_prefix = "/w"\nreplace_prefix = "/v2"\npool = "web"\n'
    router = routed(route + '[pools.web.fallback]\nredirect = "https://sorry.example.com"\nkeep_path = true')
    assert router.ask("/w/x?y=1").location == "http://10.0.1.1:80/v2/x?y=1"
    router.down("web")
    assert router.ask("/w/x?y=1").location == "https://sorry.example.com/w/x?y=1"


def test_a_reloaded_router_carries_the_counters_on_route_by_route() -> None:
    """A reload's router starts from the old one's counts for the routes (and variants) both have, so
    that dispatcher_route_*_total never go back; a new route starts at 0."""
    old = routed(ROUTE_TO_WEB)
    for target in ("/w", "/w/1", "/elsewhere"):
        old.ask(target)
    new = routed(
        '[[routes]]\nname = "new"\npath_prefix = "/n"\npool = "beta"\n'
        + ROUTE_TO_WEB.replace("[[routes]]\n", '[[routes]]\nname = "route1"\n')
    )
    new.router.carry_on(old.router)
    assert new.router.defaulted == 1
    assert (new.route("route1").requests, new.route("route1").variant_requests) == (2, [2])
    assert new.route("new").requests == 0


@pytest.mark.parametrize(
    ("target", "host", "pool"),
    [
        ("/any", "staging.example.com", "web"),
        ("/any", "STAGING.example.com:8443", "web"),
        ("/any", "a.preview.example.com", "beta"),
        ("/any", "preview.example.com", "default"),
        ("/any", "www.example.com", "default"),
        ("http://staging.example.com/any", "www.example.com", "web"),
        ("/api/x", "www.example.com", "default"),
        ("/api/x", "staging.example.com", "web"),  # the host route comes first: it wins
    ],
)
def test_routes_by_host_alone_are_taken_or_passed_over_by_the_host(target: str, host: str, pool: str) -> None:
    """Routes on hosts alone (exact and *.suffix) take their hosts' requests, whatever the path; a
    request for another host goes to the default pool (without its head read further: the same
    answer as the full match gives, and the same counters)."""
    routes = (
        '[[routes]]\nhosts = "staging.example.com"\npool = "web"\n'
        '[[routes]]\nhosts = "*.preview.example.com"\npool = "beta"\n'
        '[[routes]]\npath_prefix = "/api"\nhosts = "staging.example.com"\npool = "beta"\n'
    )
    router = routed(routes)
    before = router.router.defaulted
    assert router.ask(target, f"Host: {host}").pool == pool
    assert router.router.defaulted == before + (pool == "default")
    assert router.ask(target, f"Host: {host}").pool == pool  # the Host field's verdict, kept
    assert router.router.defaulted == before + 2 * (pool == "default")


def test_the_verdicts_kept_per_host_field_are_bounded_and_stay_right() -> None:
    """A client sending a new Host each time fills the router's verdicts up to MAX_HOST_FIELDS, and
    no further; after they are forgotten, each host is still judged as before."""
    router = routed('[[routes]]\nhosts = "*.preview.example.com"\npool = "beta"\n')
    for i in range(MAX_HOST_FIELDS + 10):
        assert router.ask("/any", f"Host: h{i}.example.com").pool == "default"
        assert len(router.router._elsewhere_by_field) <= MAX_HOST_FIELDS
    assert router.ask("/any", "Host: A.preview.example.com:80").pool == "beta"
    assert router.ask("/any", "Host: A.preview.example.com:80").pool == "beta"
    assert router.ask("/any", "Host: h0.example.com").pool == "default"


def test_a_host_field_longer_than_a_name_and_port_is_judged_but_not_kept() -> None:
    """A Host past MAX_CACHED_HOST bytes (no DNS name is) is parsed each time: its verdict is right,
    and neither the router's verdicts nor the parsed hosts keep it (their memory stays small)."""
    routes = '[[routes]]\npath_prefix = "/x"\nhosts = "*.preview.example.com"\npool = "web"\n'
    router = routed(routes + '[[routes]]\nhosts = "*.preview.example.com"\npool = "beta"\n')
    long_host = "a" * MAX_CACHED_HOST + ".preview.example.com"
    assert router.ask("/any", f"Host: {long_host}").pool == "beta"
    assert router.ask("/x/y", f"Host: {long_host}").pool == "web"
    assert all(len(field or b"") <= MAX_CACHED_HOST for field in router.router._elsewhere_by_field)
    assert router.ask("/x/y", "Host: b.preview.example.com").pool == "web"


@pytest.mark.parametrize(
    "table",
    ['retry_after = "1h"', 'page = "/srv/maint.html"\nretry_after = 3600'],
    ids=["unavailable", "page"],
)
def test_a_maintenance_window_is_said_in_retry_after_when_the_operator_sets_one(table: str) -> None:
    """fallback.retry_after: a 503 in maintenance says it (a planned window, as search engines ask
    of a maintenance page); out of maintenance a 503 says the seconds to the next check, as before."""
    pages = {"web": PAGE} if "page" in table else None
    router = routed(ROUTE_TO_WEB + f"[pools.web.fallback]\n{table}", pages=pages)
    router.pools["web"].maintenance = True
    assert router.ask("/w").headers[b"retry-after"] == b"3600"
    router.pools["web"].maintenance = False
    router.down("web")
    assert router.ask("/w", now=7.4).headers[b"retry-after"] != b"3600"


@pytest.mark.parametrize("host", ["staging.example.com.", "STAGING.example.com.:8443"])
def test_a_fully_qualified_host_with_its_final_dot_is_the_same_host(host: str) -> None:
    """`example.com.` names `example.com` (the root label written): a route on it takes both, as nginx."""
    router = routed('[[routes]]\nhosts = ["staging.example.com"]\npool = "web"\n')
    assert router.ask("/x", f"Host: {host}").location == WEB + "/x"
