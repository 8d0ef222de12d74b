# Scenario 11, routes (issue 13: "with 20 routes the req/s stays >= 0.9x of the single-pool front door; a
# request that matches the default pool pays nothing measurable"): the front door over one pool and no
# routes, against the same front door with 20 routes and 10 pools, both up at once, five loads in turns:
#   a. one pool, no routes: the baseline (the front door asks its pool at once, reads nothing of the head);
#   b. 20 routes, a request none of them takes (the default pool's: the router's own cost, nothing else);
#   c. 20 routes, a request the last one takes, after nine others were tested (eight share its first
#      path segment, `api`, so the router's index keeps them all; one has no prefix and is in every list);
#   d. 20 routes, a request a weighted split takes, with its sticky cookie already set (no Set-Cookie);
#   e. 20 routes, a request a route with a path prefix of its own takes (`/static`: the index leaves it
#      and the host-only route as the candidates), the way most routes of a site are written;
#   a+cookie. one pool, no routes, d's Cookie header: what h11 alone pays for parsing that header, so that
#      d can also be read against a request of the same size (the routing alone).
#
# Owns: the routed dispatcher's config (ROUTES, POOLS: backends.py prefixes, one process of its own), the
# requests and their check by hand (each Location from the pool its route names), the check from the
# metrics that every request of the runs went where it was meant to, and the goal (>= 0.90 for b-e).
# Rules: the dispatcher runs as users run it, `python -m dispatcher`; every wait is bounded (harness).

import http.client
import re
import statistics
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace

from harness import (
    HOST,
    TARGET,
    WRK_GRACE_SECONDS,
    BenchError,
    WrkFigures,
    WrkLoad,
    check_wrk_report,
    cpu_snapshot,
    fetch,
    others_cpu_percent,
    prepare_child,
    stop,
    wrk_argv,
)

from scenarios.context import Bench
from scenarios.results import (
    Figure,
    Report,
    Run,
    at_least,
    each_round_ratio,
    round_ratios,
    run_warnings,
    speed_figures,
    with_goal,
)
from scenarios.servers import Dispatcher, dispatcher_running, pool_dispatcher

ONE_POOL = "one pool, no routes"
NO_MATCH = "20 routes, none match"
LAST = "20 routes, the last matches"
STICKY = "20 routes, a split's sticky cookie"
OWN = "20 routes, a prefix of its own"
ONE_POOL_COOKIE = "one pool, no routes, d's cookie"
# Each comparison: the side, the side it is read against and that one's label in the table, the row's tag,
# whether its latency rows are shown, and whether the goal (>= 0.90) applies.
COMPARISONS = (
    (NO_MATCH, ONE_POOL, "one pool", "b none", True, True),
    (LAST, ONE_POOL, "one pool", "c last", True, True),
    (STICKY, ONE_POOL, "one pool", "d sticky", True, True),
    (STICKY, ONE_POOL_COOKIE, "a+cookie", "d / a+cookie", False, True),
    (OWN, ONE_POOL, "one pool", "e own prefix", True, True),
    (ONE_POOL_COOKIE, ONE_POOL, "one pool", "a+cookie", False, False),
)

DEFAULT_BACKENDS = 3  # as scenario 2's reference pool: /b0001 .. /b0003 of a backends.py
# The named pools and their backends' count; every backend is a prefix of one backends.py of its own.
POOLS = {
    "forms": 1,
    "beta": 2,
    "sticky": 3,
    "static": 2,
    "api": 2,
    "api-v2": 2,
    "partner": 1,
    "admin": 1,
    "mobile": 1,
}
POOL_EXTRAS = {
    "sticky": 'policy = "hash"\nhash_key = "cookie:session"\n',
    "admin": 'fallback = { redirect = "https://status.example.com/" }\n',
}

# What a site fronted by one dispatcher may route: form moves, an A/B split, a sticky app, static files,
# an office-only admin, a staging host, docs on their own host, and an API whose versions, clients and
# partners go to pools of their own, its plain requests last (first match wins: the catch-all of a
# segment comes after the routes that narrow it). Nine routes share `/api`; `staging` has no prefix.
ROUTES = """
[[routes]]
name = "forms"
path_prefix = "/submit"
methods = ["POST"]
pool = "forms"
replace_prefix = "/v2/submit"

[[routes]]
name = "shop-ab"
path_prefix = "/shop"
split = [{ pool = "default", weight = 90 }, { pool = "beta", weight = 10 }]
cookie = { name = "shop_variant", max_age = "720h" }

[[routes]]
name = "app"
path_prefix = "/app"
pool = "sticky"
strip_prefix = true

[[routes]]
name = "static"
path_prefix = "/static"
pool = "static"

[[routes]]
name = "assets"
path_prefix = "/assets"
pool = "static"

[[routes]]
name = "images"
path_prefix = "/images"
pool = "static"

[[routes]]
name = "favicon"
path_prefix = "/favicon.ico"
pool = "static"

[[routes]]
name = "admin"
path_prefix = "/admin"
clients = ["10.0.0.0/8", "192.168.0.0/16"]
pool = "admin"

[[routes]]
name = "staging"
hosts = ["*.staging.example.com"]
pool = "beta"

[[routes]]
name = "docs"
hosts = ["docs.example.com"]
path_prefix = "/docs"
pool = "static"

[[routes]]
name = "account-ab"
path_prefix = "/account"
split = [{ pool = "default", weight = 50 }, { pool = "beta", weight = 50 }]

[[routes]]
name = "api-admin"
path_prefix = "/api/admin"
clients = ["10.0.0.0/8"]
pool = "admin"

[[routes]]
name = "api-upload"
path_prefix = "/api/upload"
methods = ["POST", "PUT"]
pool = "forms"

[[routes]]
name = "api-v2-header"
path_prefix = "/api"
headers = { x-api-version = ["2", "2.0"] }
pool = "api-v2"

[[routes]]
name = "api-canary"
path_prefix = "/api"
cookies = { canary = "1" }
pool = "api-v2"

[[routes]]
name = "api-partner"
hosts = ["partner.example.com", "*.partners.example.com"]
path_prefix = "/api"
pool = "partner"

[[routes]]
name = "api-mobile"
path_prefix = "/api"
headers = { x-client = ["ios", "android"] }
pool = "mobile"

[[routes]]
name = "api-write"
path_prefix = "/api"
methods = ["POST", "PUT", "PATCH", "DELETE"]
pool = "api"

[[routes]]
name = "api-legacy"
path_prefix = "/api/legacy"
replace_prefix = "/api/v1"
pool = "api"

[[routes]]
name = "api"
path_prefix = "/api"
pool = "api"
"""
ROUTE_COUNT = ROUTES.count("[[routes]]")
LAST_ROUTE, LAST_POOL, LAST_TARGET = "api", "api", "/api/orders?x=1"
SPLIT_ROUTE, SPLIT_POOL, SPLIT_TARGET = "shop-ab", "beta", "/shop/cart?x=1"
OWN_ROUTE, OWN_POOL, OWN_TARGET = "static", "static", "/static/app.js?x=1"
# A browser's Cookie header on a site with a session and a consent cookie: the variant is one pair of it.
SPLIT_COOKIE = "Cookie: session=3f9a1c7e; shop_variant=beta; consent=1"


@dataclass(frozen=True)
class Side:
    """One of the four loads: its name, the server it loads, the request wrk repeats."""

    name: str
    server: Dispatcher
    target: str
    headers: tuple[str, ...] = ()


@dataclass(frozen=True)
class RoutesResult(Report):
    """Scenario 11: req/s with 20 routes (none match, the last matches, a sticky split) against one pool
    and no routes, medians of rounds; and what the routed dispatcher counted per route."""

    runs: list[Run]
    rounds: int
    counted: dict[str, int]  # dispatcher_route_requests_total by route ("" none matched), at the end
    variants: dict[str, dict[str, int]]  # dispatcher_route_variant_requests_total by route, then pool

    def title(self) -> str:
        return (
            f"11. routes, {self.runs[0].load.partition(' GET')[0]}: {ROUTE_COUNT} routes, 10 pools "
            f"(b: none match, c: the last matches, d: a split's sticky cookie, e: a prefix of its own) vs "
            f"one pool, no routes "
            f"(a; a+cookie: with d's Cookie header), {self.rounds} rounds"
        )

    def figures(self) -> list[Figure]:
        figures = []
        for name, reference, label, tag, latencies, goal in COMPARISONS:
            req, p50, p99 = speed_figures("11", self.runs, name, reference, label)
            req = with_goal(req, at_least(req.comparison, 0.90)) if goal else req
            rows = (req, p50, p99) if latencies else (req,)
            figures += [replace(row, label=f"{row.label} ({tag})") for row in rows]
        return figures

    def answered(self, name: str) -> int:
        """The requests wrk counted as answered in the runs of side `name`."""
        return sum(run.figures.requests for run in self.runs if run.name == name)

    def warnings(self) -> list[str]:
        """A side whose requests the routed dispatcher did not count where they were meant to go."""
        expected = [
            (NO_MATCH, "no route (the default pool)", self.counted.get("", 0)),
            (LAST, f"route {LAST_ROUTE}", self.counted.get(LAST_ROUTE, 0)),
            (
                STICKY,
                f"route {SPLIT_ROUTE}, pool {SPLIT_POOL}",
                self.variants.get(SPLIT_ROUTE, {}).get(SPLIT_POOL, 0),
            ),
            (OWN, f"route {OWN_ROUTE}", self.counted.get(OWN_ROUTE, 0)),
        ]
        wrong = [
            f"11: WARNING: {name}: {self.answered(name):,} answers, {where} counted {count:,}"
            for name, where, count in expected
            if count < self.answered(name)
        ]
        meant = ("", LAST_ROUTE, SPLIT_ROUTE, OWN_ROUTE)
        others = sum(count for route, count in self.counted.items() if route not in meant)
        drawn = self.variants.get(SPLIT_ROUTE, {}).get("default", 0)
        if others or drawn:
            wrong.append(f"11: WARNING: {others} requests went to other routes, {drawn} to the other variant")
        return [*run_warnings(self.runs, "11"), *wrong]

    def notes(self) -> list[str]:
        notes = [
            note
            for name, reference, _, tag, _, _ in COMPARISONS
            for note in round_ratios(f"11 ({tag})", self.runs, name, reference)
        ]
        notes += [
            _spread(tag, each_round_ratio(self.runs, name, reference))
            for name, reference, _, tag, _, _ in COMPARISONS
        ]
        counts = ", ".join(f"{name or '(none)'} {count:,}" for name, count in self.counted.items() if count)
        return [*notes, f"11: the routed dispatcher counted per route: {counts}"]


def _spread(tag: str, ratios: Sequence[float]) -> str:
    """The median of the rounds' ratios, the middle half of them, and a 95 % interval for the median
    from the order statistics (distribution-free: ranks n/2 -/+ 1.96 sqrt(n)/2): when 1.00 is inside
    it, the cost is not measurable at this machine's noise."""
    ordered = sorted(ratios)
    n = len(ordered)
    if n < 4:
        return f"11 ({tag}): {n} rounds, too few for a spread"
    low, high = _rank(n / 2 - 0.98 * n**0.5, n), _rank(n / 2 + 0.98 * n**0.5 + 1, n)
    quartiles = statistics.quantiles(ordered, n=4)
    return (
        f"11 ({tag}): median {statistics.median(ordered):.3f}, middle half {quartiles[0]:.3f}-"
        f"{quartiles[2]:.3f}, 95 % interval of the median {ordered[low]:.3f}-{ordered[high]:.3f}, "
        f"standard deviation {statistics.stdev(ordered):.3f} ({n} rounds)"
    )


def _rank(rank: float, n: int) -> int:
    """A 1-based rank rounded down, as a 0-based index within the list."""
    return min(max(int(rank), 1), n) - 1


def routes(bench: Bench) -> RoutesResult:
    """11. One pool against 20 routes: no match, the last route, a sticky split, a prefix of its own,
    the loads in turns."""
    load = bench.settings.load()
    with ExitStack() as stack:
        plain = stack.enter_context(pool_dispatcher(bench, DEFAULT_BACKENDS, ONE_POOL))
        routed = stack.enter_context(routed_dispatcher(bench))
        sides = [
            Side(ONE_POOL, plain, TARGET),
            Side(NO_MATCH, routed, TARGET),
            Side(LAST, routed, LAST_TARGET),
            Side(STICKY, routed, SPLIT_TARGET, (SPLIT_COOKIE,)),
            Side(ONE_POOL_COOKIE, plain, TARGET, (SPLIT_COOKIE,)),  # beside d in every round
            Side(OWN, routed, OWN_TARGET),
        ]
        runs = take_turns(bench, load, sides)
        counted, variants = route_counts(routed.admin_port)
        runs = stopped(runs, sides)
    return RoutesResult(runs, bench.settings.rounds, counted, variants)


def take_turns(bench: Bench, load: WrkLoad, sides: Sequence[Side]) -> list[Run]:
    """As Bench.take_turns, over sides that may share a server: a b c d, then d c b a, ..."""
    servers = list({id(side.server): side.server for side in sides}.values())
    pids = [server.process.pid for server in servers]
    runs = []
    for round_ in range(bench.settings.rounds):
        for side in sides if round_ % 2 == 0 else list(reversed(sides)):
            bench._park_all_but(side.server, servers)
            before = cpu_snapshot(pids, bench.helper_pids())
            figures = run_wrk_at(load, side.server.port, side.target, side.headers)
            others = others_cpu_percent(before, cpu_snapshot(pids, bench.helper_pids()))
            runs.append(Run(side.name, _describe(load, side), figures, others, ""))
    return runs


def stopped(runs: list[Run], sides: Sequence[Side]) -> list[Run]:
    """Stop each server; the last run of its sides says how it ended."""
    runs = list(runs)
    for server in {id(side.server): side.server for side in sides}.values():
        names = {side.name for side in sides if side.server is server}
        last = max(i for i, run in enumerate(runs) if run.name in names)
        runs[last] = replace(runs[last], shutdown=stop(server.process))
    return runs


def _describe(load: WrkLoad, side: Side) -> str:
    headers = "".join(f' -H "{header}"' for header in side.headers)
    return f"{load.describe()} GET {side.target}{headers}"


def run_wrk_at(load: WrkLoad, port: int, target: str, headers: Sequence[str] = ()) -> WrkFigures:
    """wrk against `target` on port, with `headers` (`-H`) on every request."""
    *options, _ = wrk_argv(load, port)  # no script here: the URL comes last
    completed = subprocess.run(
        [*options, *(arg for header in headers for arg in ("-H", header)), f"http://{HOST}:{port}{target}"],
        capture_output=True,
        text=True,
        timeout=load.duration_seconds + WRK_GRACE_SECONDS,
        preexec_fn=prepare_child(load.cpus),
        check=False,
    )
    return check_wrk_report(completed.returncode, completed.stdout, completed.stderr)


# -------------------------------------------------------------------------------------------------
# The routed dispatcher
# -------------------------------------------------------------------------------------------------


def routed_config(bench: Bench) -> tuple[str, dict[str, list[str]]]:
    """The config file's text (the default pool, POOLS and ROUTES over one backends.py of their own) and
    each pool's backend URLs."""
    count = DEFAULT_BACKENDS + sum(POOLS.values())
    base = f"http://{HOST}:{bench.pool_port(count)}"
    urls = iter(f"{base}/b{index:04d}" for index in range(1, count + 1))
    pools = {"default": [next(urls) for _ in range(DEFAULT_BACKENDS)]}
    pools |= {name: [next(urls) for _ in range(size)] for name, size in POOLS.items()}
    text = "".join(f'[[backends]]\nurl = "{url}"\nname = "{_name(url)}"\n' for url in pools["default"])
    for name, urls_of_pool in pools.items():
        if name != "default":
            entries = ", ".join(f'{{ url = "{url}", name = "{_name(url)}" }}' for url in urls_of_pool)
            text += f"\n[pools.{name}]\n{POOL_EXTRAS.get(name, '')}backends = [{entries}]\n"
    return text + ROUTES, pools


def _name(url: str) -> str:
    return url.rpartition("/")[2]


@contextmanager
def routed_dispatcher(bench: Bench) -> Iterator[Dispatcher]:
    """The dispatcher with ROUTES over POOLS, once all its backends are up and each of the three routed
    requests was answered by hand from the pool its route names."""
    text, pools = routed_config(bench)
    path = bench.settings.log_dir / "routes-20.toml"
    path.write_text(text)
    every = [url for urls in pools.values() for url in urls]  # /readyz counts every pool's backends
    with dispatcher_running(bench, NO_MATCH, ["--config", str(path)], every, bench.settings.server_cpus) as d:
        _check_answer(d.port, TARGET, (), pools["default"], NO_MATCH)
        _check_answer(d.port, LAST_TARGET, (), pools[LAST_POOL], LAST)
        _check_answer(d.port, SPLIT_TARGET, (SPLIT_COOKIE,), pools[SPLIT_POOL], STICKY)
        _check_answer(d.port, OWN_TARGET, (), pools[OWN_POOL], OWN)
        yield d


def _check_answer(
    port: int, target: str, headers: Sequence[str], base_urls: Sequence[str], what: str
) -> None:
    """Fail unless GET target (with headers) is a 307 to one of base_urls + target, setting no cookie."""
    connection = http.client.HTTPConnection(HOST, port, timeout=5)
    try:
        connection.request("GET", target, headers=dict(header.split(": ", 1) for header in headers))
        response = connection.getresponse()
        response.read()
        location, cookie = response.getheader("Location"), response.getheader("Set-Cookie")
    finally:
        connection.close()
    if response.status != 307 or location not in {url + target for url in base_urls} or cookie:
        raise BenchError(
            f"{what}: GET {target} gave {response.status} Location {location!r} Set-Cookie {cookie!r}; "
            f"expected 307 to one of {sorted(base_urls)} + {target}, no cookie"
        )


# One sample of a counter family, labels in any order (the exposition format does not fix it).
SAMPLE = re.compile(r"^(dispatcher_route(?:_variant)?_requests_total)\{([^}]*)\} (\S+)$", re.MULTILINE)
LABEL = re.compile(r'(\w+)="([^"]*)"')


def route_counts(admin_port: int) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    """The requests each route took (route "" for none) and each variant, from the dispatcher's metrics."""
    counted: dict[str, int] = {}
    variants: dict[str, dict[str, int]] = {}
    for family, labels, value in SAMPLE.findall(fetch(admin_port, "/metrics").body):
        label = dict(LABEL.findall(labels))
        if family == "dispatcher_route_requests_total":
            counted[label["route"]] = int(float(value))
        else:
            variants.setdefault(label["route"], {})[label["pool"]] = int(float(value))
    if not counted:
        raise BenchError("routes: /metrics has no dispatcher_route_requests_total")
    return counted, variants
