"""Routes and pools end to end, over real loopback sockets: the 307 of each route, a split's cookie
kept by a real client's cookie jar, a fixed page under HEAD and keep-alive, maintenance through the
admin API, the routing metrics, reloads of routes and pools, `--check-config`, forged forwarding
headers.

The settings come from a TOML file through the CLI's `load_settings`, as at a start (fallback pages
are read there); the backends are real `TestBackend`s; health intervals run in virtual time
(`autojump_clock`), so no test sleeps.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families

from dispatcher.core.health_state import Admin
from dispatcher.core.pool import Pool
from dispatcher.settings.config import ConfigError, Settings
from dispatcher.wiring.cli import _reload, build_parser, load_settings
from tests.helpers import (
    Dispatcher,
    TestBackend,
    receive_responses,
    request_head,
    start_dispatcher,
    wait_for,
)
from tests.net.test_geoip import place, write_database

TOKEN = "pools-t0ken"
PATIENCE = 20.0  # virtual seconds: ten health-check rounds; a broken dispatcher fails, never hangs
PAGE = b"<!doctype html><title>Beta is resting</title><p>Back in a minute.</p>\n"

# The default pool (main1) and two named ones: `forms` (its fallback a redirect elsewhere) and `beta`
# (its fallback a fixed page). POST /submit goes to forms under a new prefix; /shop is split 50/50
# between default and beta; /beta goes to beta. `{name}` is filled with that backend's URL.
TOP = """
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
admin_token = "{token}"
{top}
[health]
jitter = 0
rise = 1
[[backends]]
url = "{main1}"
name = "main1"
"""
FORMS = """
[pools.forms]
backends = [{{ url = "{forms1}", name = "forms1" }}]
fallback = {{ redirect = "https://status.example.com/" }}
[[routes]]
name = "forms"
path_prefix = "/submit"
methods = ["POST"]
pool = "forms"
replace_prefix = "/v2/submit"
"""
BETA_POOL = """
[pools.beta]
backends = [{{ url = "{beta1}", name = "beta1" }}]
fallback = {{ page = "{page}" }}
"""
BETA = (
    BETA_POOL
    + """
[[routes]]
name = "ab"
path_prefix = "/shop"
split = [{{ pool = "default", weight = 50 }}, {{ pool = "beta", weight = 50 }}]
[[routes]]
name = "beta"
path_prefix = "/beta"
pool = "beta"
"""
)
FRESH = """
[pools.fresh]
backends = [{{ url = "{fresh1}", name = "fresh1" }}]
[[routes]]
name = "fresh"
path_prefix = "/fresh"
pool = "fresh"
"""


@dataclass
class Site:
    """A running dispatcher over its backends, and the config file it was started from."""

    dispatcher: Dispatcher
    backends: dict[str, TestBackend]
    path: Path

    @property
    def pools(self) -> dict[str, Pool]:
        assert self.dispatcher.running.pools is not None
        return dict(self.dispatcher.running.pools.by_pool)

    def url(self, name: str) -> str:
        return self.backends[name].url

    def client(self) -> httpx.AsyncClient:
        """A client of the front door that does not follow redirects: each 307 is looked at."""
        return httpx.AsyncClient(base_url=self.dispatcher.url, follow_redirects=False, trust_env=False)

    def admin(self, token: str | None = TOKEN) -> httpx.AsyncClient:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        return httpx.AsyncClient(base_url=self.dispatcher.admin_url, headers=headers, trust_env=False)

    def write(self, *parts: str, top: str = "", more: str = "") -> Path:
        """The config file again (see `write_config`), for a reload."""
        urls = {name: backend.url for name, backend in self.backends.items()}
        return write_config(self.path, urls, *parts, top=top, more=more)


def write_config(path: Path, urls: dict[str, str], *parts: str, top: str = "", more: str = "") -> Path:
    """A config file: TOP (with `top` in it), then `parts` (FORMS and BETA unless given), then `more`,
    each backend's URL filled in (`urls`, by name), beta's page written beside it."""
    page = path.parent / "beta.html"
    page.write_bytes(PAGE)
    parts = (TOP, *(parts or (FORMS, BETA)))
    path.write_text("".join(part.format(token=TOKEN, top=top, page=page, **urls) for part in parts) + more)
    return path


def settings_of(path: Path) -> Settings:
    """What a start with `--config PATH` runs with: the file, checked, its pages read."""
    return load_settings(build_parser().parse_args([f"--config={path}"]))


def every_backend_usable(pool: Pool) -> bool:
    return pool.usable_count == len(pool.backends)


async def all_up(pools: dict[str, Pool]) -> None:
    with trio.fail_after(PATIENCE):
        for pool in pools.values():
            await wait_for(pool, partial(every_backend_usable, pool))


async def start_site(
    nursery: trio.Nursery,
    tmp_path: Path,
    names: tuple[str, ...] = ("main1", "forms1", "beta1"),
    parts: tuple[str, ...] = (),
    top: str = "",
) -> Site:
    """The backends `names`, then a dispatcher started from the file (`Site.write`), every pool up."""
    backends = {name: TestBackend(name) for name in names}
    for backend in backends.values():
        await nursery.start(backend.serve)
    path = write_config(
        tmp_path / "dispatcher.toml", {name: b.url for name, b in backends.items()}, *parts, top=top
    )
    site = Site(await start_dispatcher(nursery, settings_of(path)), backends, path)
    await all_up(site.pools)
    return site


class Scrape:
    """The samples of one /metrics answer, by name and labels."""

    def __init__(self, text: str) -> None:
        self.samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                assert (sample.name, frozenset(sample.labels.items())) not in self.samples, sample
                self.samples[(sample.name, frozenset(sample.labels.items()))] = sample.value

    def value(self, name: str, **labels: str) -> float:
        return self.samples[(name, frozenset(labels.items()))]

    def series(self, name: str) -> dict[frozenset[tuple[str, str]], float]:
        return {labels: value for (found, labels), value in self.samples.items() if found == name}


async def scrape(site: Site) -> Scrape:
    async with site.admin(None) as admin:
        response = await admin.get("/metrics")
    assert response.status_code == 200
    return Scrape(response.text)


async def pool_json(site: Site, name: str = "") -> Any:
    async with site.admin(None) as admin:
        response = await admin.get(f"/pools/{name}" if name else "/pools")
    assert (response.status_code, response.headers["content-type"]) == (200, "application/json")
    return response.json()


async def set_pool(site: Site, name: str, word: str, token: str | None = TOKEN) -> httpx.Response:
    async with site.admin(token) as admin:
        return await admin.post(f"/pools/{name}/state", content=word)


# --- the 307 of each route -------------------------------------------------------------------------


async def test_each_route_redirects_to_its_pool(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """POST /submit goes to forms under /v2/submit (query kept); a GET of it, or any other path, to
    the default pool as sent; /beta to beta; the same answers to httpx and to a raw socket."""
    site = await start_site(nursery, tmp_path)
    async with site.client() as client:
        posted = await client.post("/submit/form?step=2", content=b"name=Ada")
        got = await client.get("/submit/form?step=2")
        beta = await client.get("/beta/x")
        other = await client.get("/elsewhere")
    assert [response.status_code for response in (posted, got, beta, other)] == [307] * 4
    assert posted.headers["location"] == site.url("forms1") + "/v2/submit/form?step=2"
    assert got.headers["location"] == site.url("main1") + "/submit/form?step=2"
    assert beta.headers["location"] == site.url("beta1") + "/beta/x"
    assert other.headers["location"] == site.url("main1") + "/elsewhere"
    stream = await trio.open_tcp_stream("127.0.0.1", site.dispatcher.port)
    async with stream:
        await stream.send_all(request_head("/submit", "Host: t", "Content-Length: 3", method="POST") + b"a=1")
        await stream.send_all(request_head("/beta?x=1", "Host: t"))
        posted_raw, beta_raw = await receive_responses(stream, 2)
    assert posted_raw.header(b"location") == f"{site.url('forms1')}/v2/submit".encode()
    assert beta_raw.header(b"location") == f"{site.url('beta1')}/beta?x=1".encode()
    assert not posted_raw.closes and posted_raw.body == b""


async def test_a_split_sets_a_cookie_that_keeps_a_visitor_on_its_variant(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """A visitor's first 307 on /shop sets the variant's cookie; httpx's cookie jar sends it back and
    every later answer names the same variant with no new cookie. Its pool in maintenance, the visitor
    is drawn again (a new cookie, which the jar keeps); it stays there when the pool is back."""
    site = await start_site(nursery, tmp_path)
    bases = {site.url("main1"): "default", site.url("beta1"): "beta"}

    def variant(response: httpx.Response) -> str:
        assert response.status_code == 307
        return bases[response.headers["location"].removesuffix("/shop/cart")]

    async with site.client() as visitor:
        first = await visitor.get("/shop/cart")
        kept = variant(first)
        assert first.headers["set-cookie"] == f"dispatcher-ab={kept}; HttpOnly; Path=/; SameSite=Lax"
        assert visitor.cookies["dispatcher-ab"] == kept
        later = [await visitor.get("/shop/cart") for _ in range(20)]
        assert {(variant(response), "set-cookie" in response.headers) for response in later} == {
            (kept, False)
        }

        assert (await set_pool(site, kept, "maint")).status_code == 200
        moved = await visitor.get("/shop/cart")
        other = variant(moved)
        assert other != kept and moved.headers["set-cookie"].startswith(f"dispatcher-ab={other};")
        assert visitor.cookies["dispatcher-ab"] == other
        assert (await set_pool(site, kept, "ready")).status_code == 200
        after = [variant(await visitor.get("/shop/cart")) for _ in range(5)]
        assert after == [other] * 5
    assert site.pools[kept].fallbacks == 0  # the visitor was drawn away, never sent to the fallback


async def test_many_visitors_are_split_between_the_variants(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """400 visitors without a cookie, 50/50: both variants get visitors, each within five sigma of
    200 (+-50), and each visitor's cookie names the pool its Location is in."""
    site = await start_site(nursery, tmp_path)
    bases = {site.url("main1"): "default", site.url("beta1"): "beta"}
    counts = {"default": 0, "beta": 0}
    async with site.client() as client:
        for _ in range(400):
            response = await client.get("/shop")
            client.cookies.clear()  # a new visitor each time
            pool = bases[response.headers["location"].removesuffix("/shop")]
            assert response.headers["set-cookie"].startswith(f"dispatcher-ab={pool};")
            counts[pool] += 1
    assert 150 <= counts["beta"] <= 250, counts


# --- a fixed page: framing, HEAD, keep-alive ------------------------------------------------------


async def test_a_fixed_page_is_framed_as_every_answer_under_head_and_keep_alive(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """beta in maintenance: its page, 503, text/html, Content-Length of the file; HEAD gets the same
    headers and no body; the connection stays open and answers the next requests."""
    site = await start_site(nursery, tmp_path)
    assert (await set_pool(site, "beta", "maint")).status_code == 200
    stream = await trio.open_tcp_stream("127.0.0.1", site.dispatcher.port)
    async with stream:
        await stream.send_all(request_head("/beta/x", "Host: t", method="HEAD"))
        (head,) = await receive_responses(stream, 1, bodyless=True)
        await stream.send_all(request_head("/beta/x", "Host: t"))
        (page,) = await receive_responses(stream, 1)
        await stream.send_all(request_head("/elsewhere", "Host: t"))
        (redirect,) = await receive_responses(stream, 1)
    assert (page.status, page.reason, page.body) == (503, b"Service Unavailable", PAGE)
    assert page.header(b"content-type") == b"text/html; charset=utf-8"
    assert page.header(b"content-length") == str(len(PAGE)).encode()
    assert (head.status, head.body) == (503, b"")
    without_date = [(name, value) for name, value in page.headers if name != b"date"]
    assert [(name, value) for name, value in head.headers if name != b"date"] == without_date
    assert not head.closes and not page.closes
    assert redirect.header(b"location") == f"{site.url('main1')}/elsewhere".encode()
    assert site.pools["beta"].fallbacks == 2


async def test_a_fixed_page_of_a_pool_with_no_usable_backend_says_when_to_retry(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """beta's backend failing its checks: the page, 503, with Retry-After (the next check, at least 1 s);
    httpx reads it whole from a kept connection, twice."""
    site = await start_site(nursery, tmp_path)
    beta = site.pools["beta"]
    site.backends["beta1"].mode = "status"
    with trio.fail_after(PATIENCE):
        await wait_for(beta, lambda: beta.usable_count == 0)
    async with site.client() as client:
        answers = [await client.get("/beta/page") for _ in range(2)]
    for answer in answers:
        assert (answer.status_code, answer.content) == (503, PAGE)
        assert 1 <= int(answer.headers["retry-after"]) <= 2  # checks every 2 s
    assert answers[0].extensions["network_stream"] is answers[1].extensions["network_stream"]


# --- maintenance through the admin API -------------------------------------------------------------


async def test_pool_maintenance_on_and_off_through_the_admin_api(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """POST /pools/forms/state needs the token (401 without it or with a wrong one, nothing changed);
    with it, maint sends every request of its routes to the fallback (here a 307 elsewhere), GET
    /pools and /pools/forms say so, and ready brings its backend back."""
    site = await start_site(nursery, tmp_path)
    listed = await pool_json(site)
    assert [(pool["name"], pool["state"], pool["fallback"], pool["usable"]) for pool in listed] == [
        ("default", "ready", "unavailable", 1),
        ("forms", "ready", "redirect", 1),
        ("beta", "ready", "page", 1),
    ]
    for token in (None, "wrong"):
        refused = await set_pool(site, "forms", "maint", token)
        assert (refused.status_code, refused.headers["www-authenticate"]) == (401, "Bearer")
    assert site.pools["forms"].maintenance is False

    held = await set_pool(site, "forms", "maint")
    assert held.status_code == 200
    assert (held.json()["name"], held.json()["state"]) == ("forms", "maint")
    async with site.client() as client:
        answers = [await client.post("/submit", content=b"x") for _ in range(3)]
        assert {answer.headers["location"] for answer in answers} == {"https://status.example.com/"}
        assert (await client.get("/elsewhere")).headers["location"] == site.url("main1") + "/elsewhere"
        forms = await pool_json(site, "forms")
        assert (forms["state"], forms["fallback"], forms["fallback_answers"]) == ("maint", "redirect", 3)
        assert [(b["name"], b["pool"], b["state"], b["redirects"]) for b in forms["backends"]] == [
            ("forms1", "forms", "up", 0)
        ]
        metrics = await scrape(site)
        assert metrics.value("dispatcher_pool_state", pool="forms", state="maint") == 1.0
        assert metrics.value("dispatcher_pool_state", pool="forms", state="ready") == 0.0
        # Its backend is healthy but takes no redirect: up, and not usable (HAProxy's nbsrv).
        assert metrics.value("dispatcher_pool_usable_backends", pool="forms") == 0.0
        assert metrics.value("dispatcher_backend_up", backend="forms1", pool="forms") == 1.0
        assert forms["usable"] == 0

        assert (await set_pool(site, "forms", "ready")).json()["state"] == "ready"
        back = await client.post("/submit", content=b"x")
        assert back.headers["location"] == site.url("forms1") + "/v2/submit"
    metrics = await scrape(site)
    assert metrics.value("dispatcher_pool_state", pool="forms", state="maint") == 0.0
    assert metrics.value("dispatcher_pool_fallback_responses_total", pool="forms", fallback="redirect") == 3.0


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/pools/nope/state", "maint", 404),
        ("/pools/forms/state", "drain", 400),
        ("/pools/forms/x", "maint", 404),
    ],
)
async def test_a_pool_state_change_that_cannot_be_made_is_refused(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    tmp_path: Path,
    path: str,
    body: str,
    status: int,
) -> None:
    """An unknown pool (404), a word other than maint or ready (400), another route (404): refused, and
    no pool changes."""
    site = await start_site(nursery, tmp_path)
    async with site.admin() as admin:
        assert (await admin.post(path, content=body)).status_code == status
        assert (await admin.get("/pools/nope")).status_code == 404
    assert not any(pool.maintenance for pool in site.pools.values())


# --- metrics ---------------------------------------------------------------------------------------


async def test_the_routing_metrics_count_routes_variants_pools_and_fallbacks(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """dispatcher_route_requests_total per route (route="" for the default pool's), _variant_ per route
    and pool, dispatcher_pool_state and _fallback_responses_total per pool, and every backend series
    labelled with its backend's pool."""
    site = await start_site(nursery, tmp_path)
    before = await scrape(site)
    assert before.series("dispatcher_route_requests_total") == {
        frozenset({("route", route)}): 0.0 for route in ("", "forms", "ab", "beta")
    }
    async with site.client() as client:
        for _ in range(3):
            await client.post("/submit", content=b"x")
        for _ in range(2):
            await client.get("/beta")
        for _ in range(4):
            await client.get("/shop", headers={"cookie": "dispatcher-ab=beta"})
        await client.get("/shop", headers={"cookie": "dispatcher-ab=default"})
        await client.get("/elsewhere")
    assert (await set_pool(site, "beta", "maint")).status_code == 200
    async with site.client() as client:
        await client.get("/beta")
    metrics = await scrape(site)
    requests = {
        dict(labels)["route"]: value
        for labels, value in metrics.series("dispatcher_route_requests_total").items()
    }
    assert requests == {"": 1.0, "forms": 3.0, "ab": 5.0, "beta": 3.0}
    variants = metrics.series("dispatcher_route_variant_requests_total")
    assert {(dict(labels)["route"], dict(labels)["pool"]): value for labels, value in variants.items()} == {
        ("forms", "forms"): 3.0,
        ("ab", "default"): 1.0,
        ("ab", "beta"): 4.0,
        ("beta", "beta"): 3.0,
    }
    states = {
        (dict(k)["pool"], dict(k)["state"]): v for k, v in metrics.series("dispatcher_pool_state").items()
    }
    assert states == {
        (p, s): float((s == "maint") == (p == "beta"))
        for p in ("default", "forms", "beta")
        for s in ("ready", "maint")
    }
    fallbacks = metrics.series("dispatcher_pool_fallback_responses_total")
    assert {(dict(k)["pool"], dict(k)["fallback"]): v for k, v in fallbacks.items()} == {
        ("default", "unavailable"): 0.0,
        ("forms", "redirect"): 0.0,
        ("beta", "page"): 1.0,
    }
    pool_of = {"main1": "default", "forms1": "forms", "beta1": "beta"}
    labelled = [dict(labels) for (_, labels) in metrics.samples if any(k == "backend" for k, _ in labels)]
    assert {labels["backend"] for labels in labelled} == set(pool_of)
    assert all(labels["pool"] == pool_of[labels["backend"]] for labels in labelled)
    assert metrics.value("dispatcher_redirects_total", backend="forms1", pool="forms") == 3.0


# --- reloads ---------------------------------------------------------------------------------------


async def test_a_reload_adds_and_removes_pools_and_routes_and_keeps_a_kept_backends_state(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """A reload that drops forms (its route with it) and adds a pool `fresh` with its route: /fresh goes
    to its backend once checked, POST /submit to the default pool, forms1's checks stop; beta1, drained
    by the operator before, is the same backend after, still draining, its counts kept."""
    site = await start_site(nursery, tmp_path, names=("main1", "forms1", "beta1", "fresh1"))
    async with site.admin() as admin:
        assert (await admin.post("/backends/beta1/state", content="drain")).json()["state"] == "draining"
    async with site.client() as client:
        await client.get("/beta")  # beta's only backend is draining: its fallback page answers
    beta1 = site.pools["beta"].by_name["beta1"]
    checks_before = beta1.checks_passed

    site.write(BETA, FRESH)
    site.dispatcher.running.reload(settings_of(site.path))

    fresh = site.pools["fresh"]  # made and checked at once; the routes switch once it has answered
    with trio.fail_after(PATIENCE):
        await wait_for(fresh, lambda: fresh.usable_count == 1)
    await trio.testing.wait_all_tasks_blocked()
    assert list(site.pools) == ["default", "beta", "fresh"]
    assert site.pools["beta"].by_name["beta1"] is beta1 and beta1.state == "draining"
    async with site.client() as client:
        assert (await client.get("/fresh/a")).headers["location"] == site.url("fresh1") + "/fresh/a"
        assert (await client.post("/submit", content=b"x")).headers["location"] == site.url(
            "main1"
        ) + "/submit"
        assert (await client.get("/beta")).content == PAGE
    forms_checks = site.backends["forms1"].health_checks
    with trio.fail_after(PATIENCE):
        await wait_for(site.pools["beta"], lambda: beta1.checks_passed >= checks_before + 3)
    assert site.backends["forms1"].health_checks == forms_checks  # its checks have stopped
    assert [pool["name"] for pool in await pool_json(site)] == ["default", "beta", "fresh"]
    metrics = await scrape(site)
    routes = {dict(labels)["route"] for labels in metrics.series("dispatcher_route_requests_total")}
    assert routes == {"", "ab", "beta", "fresh"}
    assert not [labels for (_, labels) in metrics.samples if ("pool", "forms") in labels]


async def test_a_pool_a_reload_adds_takes_its_routes_only_once_its_backends_have_answered(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """While the new pool's first check is out (its backend is slow to answer it), /fresh goes where the
    running routes send it (the default pool), never to a 503 for want of a check; once the check has
    come back (here: timed out, the backend down), the reload applies and /fresh gets fresh's answer.
    The reload's log line counts the new pool's backend as added and the removed pool's as removed."""
    site = await start_site(nursery, tmp_path, names=("main1", "forms1", "beta1", "fresh1"))
    site.backends["fresh1"].mode = "hang"
    site.write(BETA, FRESH)
    caplog.set_level(logging.INFO, "dispatcher")
    site.dispatcher.running.reload(settings_of(site.path))
    fresh = site.pools["fresh"]
    async with site.client() as client:
        for _ in range(3):
            assert (await client.get("/fresh/a")).headers["location"] == site.url("main1") + "/fresh/a"
        assert "forms" in site.pools  # nothing of the reload has applied yet
        with trio.fail_after(PATIENCE):
            await wait_for(fresh, lambda: fresh.backends[0].last_check is not None)
        await trio.testing.wait_all_tasks_blocked()
        assert list(site.pools) == ["default", "beta", "fresh"]
        answer = await client.get("/fresh/a")
        assert (answer.status_code, fresh.backends[0].state) == (503, "down")
    logged = [record.getMessage() for record in caplog.records]
    assert "reloaded: 3 backends in 3 pools, 3 routes (1 added, 1 removed)" in logged, logged


async def test_a_reload_whose_routes_name_an_unknown_pool_is_refused_and_the_running_config_stays(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """SIGHUP's path (cli._reload): a file whose route names a pool that does not exist is refused by
    load_settings in one line naming the key; the dispatcher keeps its settings, router and pools."""
    site = await start_site(nursery, tmp_path)
    running = site.dispatcher.running
    settings, router = running.settings, running.front.replies.router  # type: ignore[union-attr]
    site.write(more='\n[[routes]]\nname = "lost"\npath_prefix = "/lost"\npool = "gone"')
    args = build_parser().parse_args([f"--config={site.path}"])
    with pytest.raises(ConfigError) as caught:
        load_settings(args)
    assert (caught.value.key, caught.value.value) == ("routes[3].pool", "gone")
    with caplog.at_level(logging.ERROR, "dispatcher"):
        _reload(args, running, None)
    assert [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR] == [
        f"reload refused, the running config stays: {caught.value}"
    ]
    assert running.settings is settings and running.front.replies.router is router  # type: ignore[union-attr]
    assert list(site.pools) == ["default", "forms", "beta"]
    async with site.client() as client:
        assert (await client.get("/lost")).headers["location"] == site.url("main1") + "/lost"


# --- dispatcher --check-config ---------------------------------------------------------------------


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    """`python -m dispatcher --check-config PATH`, as an operator runs it before a reload."""
    command = [sys.executable, "-m", "dispatcher", "--check-config", str(path)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def site_file(tmp_path: Path, more: str = "") -> Path:
    """The config of the tests above, its backends on ports nothing listens on (nothing is started)."""
    urls = {name: f"http://127.0.0.1:{port}" for name, port in (("main1", 1), ("forms1", 2), ("beta1", 3))}
    return write_config(tmp_path / "check.toml", urls, more=more)


def test_check_config_accepts_a_good_file(tmp_path: Path) -> None:
    """A good file: exit 0, one line on stdout with "ok" and what it holds, nothing on stderr."""
    path = site_file(tmp_path)
    done = check_config(path)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == f"{path}: ok: 3 pool(s), 3 route(s), 3 backend entries\n"


def test_check_config_prints_warnings_and_still_accepts(tmp_path: Path) -> None:
    """A file with a route an earlier one covers: exit 0, "ok", and the warning on stderr."""
    done = check_config(
        site_file(tmp_path, '\n[[routes]]\nname = "deeper"\npath_prefix = "/beta/x"\npool = "forms"')
    )
    assert done.returncode == 0 and ": ok: 3 pool(s), 4 route(s)" in done.stdout
    assert done.stderr == (
        "dispatcher: warning: routes[3] (deeper) is never reached: routes[2] (beta) before it matches "
        "every request it would\n"
    )


@pytest.mark.parametrize(
    ("more", "line"),
    [
        (
            '\n[[routes]]\nname = "lost"\npool = "gone"',
            "routes[3].pool = 'gone': no such pool (pools: beta, default, forms)",
        ),
        (
            '\n[[routes]]\nsplit = [{ pool = "forms" }, { pool = "gone" }]',
            "routes[3].split[1].pool = 'gone': no such pool (pools: beta, default, forms)",
        ),
        (
            '\n[pools.more]\nbackends = ["http://127.0.0.1:4"]\nfallback = { redirect = "/down.html" }',
            "pools.more.fallback.redirect = '/down.html': must be an absolute http:// or https:// URL "
            "without a fragment",
        ),
        (
            "\n[pools.default]\nbackends = []",
            "pools.default = 'default': the default pool is the file's top level: "
            "[[backends]], policy, [fallback]",
        ),
    ],
    ids=["unknown-pool", "unknown-variant", "relative-fallback", "default-pool-table"],
)
def test_check_config_refuses_a_bad_file_in_one_line_naming_the_key(
    tmp_path: Path, more: str, line: str
) -> None:
    """A bad file: exit 2, nothing on stdout, one line on stderr naming the key, no traceback."""
    done = check_config(site_file(tmp_path, more))
    assert (done.returncode, done.stdout, done.stderr) == (2, "", f"dispatcher: {line}\n")


def test_check_config_refuses_a_fallback_page_it_cannot_read(tmp_path: Path) -> None:
    """A page that is not there is refused as a start would refuse it: its key and the reason."""
    path = site_file(tmp_path)
    (tmp_path / "beta.html").unlink()
    done = check_config(path)
    assert (done.returncode, done.stdout) == (2, "")
    page = tmp_path / "beta.html"
    assert (
        done.stderr
        == f"dispatcher: pools.beta.fallback.page = '{page}': cannot read: No such file or directory\n"
    )


# --- the client's address and forged forwarding headers --------------------------------------------

INSIDE = """
[[routes]]
name = "inside"
clients = ["10.0.0.0/8"]
pool = "beta"
"""


@pytest.mark.parametrize("trusted", [False, True], ids=["no-trusted-proxy", "loopback-trusted"])
async def test_a_forwarded_address_counts_only_from_a_trusted_proxy(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, tmp_path: Path, trusted: bool
) -> None:
    """A loopback client sending X-Forwarded-For: 10.1.2.3 is not routed as 10.1.2.3 unless loopback
    is a trusted proxy; even then, what was written left of the address the proxy saw is not read."""
    top = 'trusted_proxies = ["127.0.0.1"]' if trusted else ""
    backends = ("main1", "beta1")
    site = await start_site(nursery, tmp_path, names=backends, parts=(BETA_POOL, INSIDE), top=top)
    inside, outside = site.url("beta1") + "/x", site.url("main1") + "/x"
    stream = await trio.open_tcp_stream("127.0.0.1", site.dispatcher.port)
    async with stream:
        await stream.send_all(request_head("/x", "Host: t", "X-Forwarded-For: 10.1.2.3"))
        await stream.send_all(request_head("/x", "Host: t", "Forwarded: for=10.1.2.3"))
        await stream.send_all(request_head("/x", "Host: t", "X-Forwarded-For: 10.1.2.3, 192.0.2.1"))
        await stream.send_all(request_head("/x", "Host: t"))
        answers = await receive_responses(stream, 4)
    locations = [answer.header(b"location") for answer in answers]
    expected = [inside if trusted else outside, outside, outside, outside]
    assert locations == [location.encode() for location in expected]
    async with site.client() as client:
        forged = await client.get("/x", headers={"x-forwarded-for": "10.1.2.3"})
    assert forged.headers["location"] == (inside if trusted else outside)


MOVED_TO_FORMS = FORMS.replace(
    '{{ url = "{forms1}", name = "forms1" }}', '{{ url = "{beta1}", name = "beta1" }}'
)
BETA_ON_MAIN = BETA.replace('{{ url = "{beta1}", name = "beta1" }}', '{{ url = "{main1}", name = "b2" }}')


async def test_a_backend_the_file_moves_to_another_pool_keeps_its_health_and_counters(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """A reload moves beta1 (the same name and URL) from pool beta to pool forms, in place of forms1.
    It is the same backend: up at once in its new pool (no 503 while a first check is out, since it
    had passed its checks), with its redirect count, and it takes forms' requests from the first."""
    site = await start_site(nursery, tmp_path)
    beta1 = site.pools["beta"].by_name["beta1"]
    async with site.client() as client:
        assert (await client.get("/beta")).headers["location"] == site.url("beta1") + "/beta"
    sent = beta1.redirects
    site.write(MOVED_TO_FORMS, BETA_ON_MAIN)
    site.dispatcher.running.reload(settings_of(site.path))
    forms = site.pools["forms"]
    with trio.fail_after(PATIENCE):  # beta's new backend, b2, is checked first (beta keeps beta1 till then)
        await wait_for(forms, lambda: "beta1" in forms.by_name)
    assert forms.by_name["beta1"] is beta1 and beta1.pool == "forms" and beta1.state == "up"
    assert "beta1" not in site.pools["beta"].by_name
    async with site.client() as client:
        answer = await client.post("/submit", content=b"x")
    assert answer.headers["location"] == site.url("beta1") + "/v2/submit"
    assert beta1.redirects == sent + 1


async def test_a_drained_backend_the_file_moves_to_another_pool_stays_drained(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """The operator drained beta1; a reload moves it (the same name and URL) from pool beta to pool
    forms. It is the same backend: its drain follows it, as it survives a reload that keeps it in
    place, and /submit gets the forms pool's fallback, not a redirect to the drained backend."""
    site = await start_site(nursery, tmp_path)
    beta = site.pools["beta"]
    beta.set_admin(beta.by_name["beta1"], Admin.DRAIN)
    site.write(MOVED_TO_FORMS, BETA_ON_MAIN)
    site.dispatcher.running.reload(settings_of(site.path))
    forms = site.pools["forms"]
    with trio.fail_after(PATIENCE):  # once beta's new backend has been checked (it renews beta)
        await wait_for(forms, lambda: "beta1" in forms.by_name)
    assert forms.by_name["beta1"].state == "draining"
    async with site.client() as client:
        answer = await client.post("/submit", content=b"x")
    assert answer.headers["location"] == "https://status.example.com/"


async def test_a_reload_that_renews_every_backend_of_a_pool_checks_the_new_ones_first(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """A reload replaces forms1, the forms pool's only backend, with forms2. Until forms2 has had its
    first check, forms1 answers (the pool would otherwise have no usable backend and answer with its
    fallback); then the reload applies, and forms2 alone takes the pool's requests."""
    site = await start_site(nursery, tmp_path, names=("main1", "forms1", "beta1", "forms2"))
    site.write(FORMS.replace("forms1", "forms2"), BETA)
    site.dispatcher.running.reload(settings_of(site.path))
    forms = site.pools["forms"]
    assert set(forms.by_name) == {"forms1", "forms2"} and forms.by_name["forms2"].last_check is None
    async with site.client() as client:
        answer = await client.post("/submit", content=b"x")
        assert answer.headers["location"] == site.url("forms1") + "/v2/submit"
        forms2 = forms.by_name["forms2"]
        with trio.fail_after(PATIENCE):
            await wait_for(forms, lambda: forms2.last_check is not None)
        await trio.testing.wait_all_tasks_blocked()
        assert set(forms.by_name) == {"forms2"}
        answer = await client.post("/submit", content=b"x")
    assert answer.headers["location"] == site.url("forms2") + "/v2/submit"


async def test_a_reload_that_changes_a_fallbacks_kind_starts_a_series_of_its_own(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """beta's fallback, a page, answers twice; a reload makes it a redirect, which answers once: the
    page's series stays at 2 and the redirect's counts from 0 (a counter labelled with the new kind
    must not start at the old kind's count), and back to the page, its series goes on from 2."""
    site = await start_site(nursery, tmp_path)
    running = site.dispatcher.running
    fallback = 'fallback = {{ page = "{page}" }}'
    redirecting = BETA.replace(fallback, 'fallback = {{ redirect = "https://rest.example/" }}')
    assert redirecting != BETA
    await set_pool(site, "beta", "maint")
    async with site.client() as client:
        for _ in range(2):
            assert (await client.get("/beta/x")).status_code == 503
        running.reload(settings_of(site.write(FORMS, redirecting)))
        await set_pool(site, "beta", "maint")
        assert (await client.get("/beta/x")).headers["location"] == "https://rest.example/"
        name = "dispatcher_pool_fallback_responses_total"
        assert (await scrape(site)).value(name, pool="beta", fallback="redirect") == 1
        assert (await scrape(site)).value(name, pool="beta", fallback="page") == 2
        running.reload(settings_of(site.write(FORMS, BETA)))
        await set_pool(site, "beta", "maint")
        assert (await client.get("/beta/x")).status_code == 503
        assert (await scrape(site)).value(name, pool="beta", fallback="page") == 3
        assert (await scrape(site)).value(name, pool="beta", fallback="redirect") == 1


async def test_a_reload_reads_the_geoip_database_again(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """geoipupdate rewrites the file, then a SIGHUP: the new data is in force, as nginx's geoip2 reads
    it at reload. Before, the file was opened once at start and a reload only checked it."""
    mmdb = tmp_path / "GeoLite2-Country.mmdb"
    write_database(mmdb, records={"127.0.0.0/8": {"country": place("FR", "France")}})
    eu = '[[routes]]\nname = "de"\ncountries = ["DE"]\npool = "beta"\n'
    top = f'geoip_db = "{mmdb}"'
    site = await start_site(nursery, tmp_path, names=("main1", "beta1"), parts=(BETA, eu), top=top)
    for code, name, pool in (("FR", "France", "main1"), ("DE", "Germany", "beta1")):
        write_database(mmdb, records={"127.0.0.0/8": {"country": place(code, name)}})
        site.dispatcher.running.reload(settings_of(site.path))
        async with site.client() as client:
            assert (await client.get("/a")).headers["location"] == site.url(pool) + "/a", code
