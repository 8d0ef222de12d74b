"""The admin listener over real loopback sockets: /backends, per-backend states, token, /metrics.

Backends are real `TestBackend`s; health intervals run in virtual time (`autojump_clock`), so the
tests assert exactly how many checks ran and the exact moment a backend changed state.
"""

from __future__ import annotations

import gzip
import json
import logging
import re
import time
from dataclasses import replace
from datetime import datetime
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import trio
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from dispatcher import __version__
from dispatcher.core.health_state import VISIBLE_STATES
from dispatcher.core.lifecycle import Lifecycle
from dispatcher.core.pool import FAILURE_REASONS, CheckResult, Pool
from dispatcher.core.stats import ServerStats
from dispatcher.expose.render import Metrics
from dispatcher.net.admin import STEP_BACKENDS, AdminApi, loopback_host
from dispatcher.protocol.wholemessage import WholeRequest
from dispatcher.settings import config
from dispatcher.settings.config import ConfigError
from dispatcher.wiring.cli import build_parser, load_settings
from tests.helpers import (
    Dispatcher,
    TestBackend,
    exchange,
    health,
    settings_for,
    start_backends,
    start_dispatcher,
    unused_port,
    wait_all_up,
    wait_for,
    wait_for_state,
)

INTERVAL = 2.0  # HAProxy's `inter 2s`, the default: checks at t0, t0+2, t0+4, ...
# Every wait below is bounded (virtual or real seconds): a broken dispatcher fails a test, never hangs it.
PATIENCE = 5 * INTERVAL
TOKEN = "s3cret-token"
Labels = frozenset[tuple[str, str]]


class Scrape:
    """The samples of one /metrics answer (Prometheus text format), by name and labels."""

    def __init__(self, text: str) -> None:
        self.samples: dict[tuple[str, Labels], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                key = (sample.name, frozenset(sample.labels.items()))
                assert key not in self.samples, f"series {key} exposed twice"
                self.samples[key] = sample.value

    def value(self, name: str, **labels: str) -> float:
        if "backend" in labels:  # every backend's series names its pool: here the default one
            labels.setdefault("pool", "default")
        return self.samples[(name, frozenset(labels.items()))]

    def series(self, name: str) -> dict[Labels, float]:
        return {labels: value for (found, labels), value in self.samples.items() if found == name}

    def states(self, backend: str) -> list[str]:
        """The states of the state-set that are 1 for `backend` (exactly one when it is right)."""
        values = {s: self.value("dispatcher_backend_state", backend=backend, state=s) for s in VISIBLE_STATES}
        assert set(values.values()) <= {0.0, 1.0}, values
        return [s for s, value in values.items() if value == 1.0]


async def scrape(client: httpx.AsyncClient, dispatcher: Dispatcher) -> Scrape:
    response = await client.get(f"{dispatcher.admin_url}/metrics")
    assert response.status_code == 200
    return Scrape(response.text)


async def backends_json(client: httpx.AsyncClient, dispatcher: Dispatcher) -> dict[str, dict[str, Any]]:
    """GET /backends, keyed by backend name (and checked to be a list with one entry per backend)."""
    response = await client.get(f"{dispatcher.admin_url}/backends")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    listed: list[dict[str, Any]] = response.json()
    assert isinstance(listed, list)
    return {entry["name"]: entry for entry in listed}


async def set_state(
    client: httpx.AsyncClient, dispatcher: Dispatcher, name: str, word: str, token: str | None = None
) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return await client.post(f"{dispatcher.admin_url}/backends/{name}/state", content=word, headers=headers)


async def redirect_targets(client: httpx.AsyncClient, dispatcher: Dispatcher, count: int) -> list[str]:
    """Send `count` requests to the front door; the base URL (scheme://host:port) each was sent to."""
    targets = []
    for i in range(count):
        response = await client.get(f"{dispatcher.url}/work?i={i}")
        assert response.status_code == 307, response.text
        location = httpx.URL(response.headers["location"])
        assert location.raw_path == f"/work?i={i}".encode()
        targets.append(f"{location.scheme}://{location.host}:{location.port}")
    return targets


async def state_change(pool: Pool, name: str, state: str) -> float:
    """The trio time at which backend `name` shows `state`; fails after PATIENCE seconds."""
    with trio.fail_after(PATIENCE):
        return await wait_for_state(pool, name, state)


def client() -> httpx.AsyncClient:
    return httpx.AsyncClient(follow_redirects=False)


async def two_backends(nursery: trio.Nursery, **overrides: Any) -> tuple[Dispatcher, list[TestBackend]]:
    """b1 (load 0, so it gets every redirect while usable) and b2 (load 10), both up."""
    backends = await start_backends(nursery, 0, 10)
    dispatcher = await start_dispatcher(nursery, settings_for([*backends], **overrides))
    with trio.fail_after(PATIENCE):
        await wait_all_up(dispatcher)
    return dispatcher, backends


# --- GET /backends ------------------------------------------------------------------------------


async def test_backends_lists_load_checks_and_redirects(nursery: trio.Nursery, autojump_clock: Any) -> None:
    """GET /backends shows each backend's load, effective load, load age, last check and redirects."""
    good = TestBackend("good", load=3)
    failing = TestBackend("failing", mode="status", status=503)
    for backend in (good, failing):
        await nursery.start(backend.serve)
    specs = (
        config.parse_backend("test", good.url, name="good", weight=2),
        config.parse_backend("test", failing.url, name="failing"),
    )
    settings = replace(settings_for([]), backends=specs, health=health(interval=INTERVAL))
    dispatcher = await start_dispatcher(nursery, settings)
    pool = dispatcher.pool
    with trio.fail_after(PATIENCE):
        await wait_for(pool, lambda: all(b.last_check is not None for b in pool.backends))
    checked_at = pool.by_name["good"].last_check_at
    assert checked_at is not None
    async with client() as http:
        assert await redirect_targets(http, dispatcher, 4) == [good.url] * 4
        await trio.sleep_until(checked_at + 1.5)
        listed = await backends_json(http, dispatcher)
        assert list(listed) == ["good", "failing"]  # every backend, in configuration order
        entry = listed["good"]
        assert {k: entry[k] for k in ("url", "state", "weight", "load", "redirects")} == {
            "url": good.url,
            "state": "up",
            "weight": 2.0,
            "load": 3.0,
            "redirects": 4,
        }
        # (reported load + redirects since, less what it drained since the report) / weight: below
        # the undrained (3 + 4) / 2, by at least the drain at the rate it has now (the rate follows
        # the redirect rate, so it was higher just after the redirects: Pool.tick)
        drained = entry["drain_rate"] * entry["load_age_seconds"]
        assert 0 < entry["effective_load"] <= max(0.0, 3 + 4 - drained) / 2 + 1e-6
        assert entry["load_age_seconds"] == 1.5
        assert entry["last_check"]["result"] == "pass"
        # Until the kernel received the answer, in real time: a loopback answer comes within
        # milliseconds, not at a virtual-time jump (a second); a busy machine may take one grid step.
        assert 0 <= entry["last_check"]["duration_seconds"] < 0.5
        wall = datetime.fromisoformat(entry["last_check"]["time"]).timestamp()
        assert abs(wall - (time.time() - 1.5)) < 60  # a UTC wall time, not the trio clock

        bad = listed["failing"]
        assert (bad["state"], bad["load"], bad["effective_load"], bad["redirects"]) == ("down", 0.0, 0.0, 0)
        # It never reported a load: its age runs from the start, as the metric's does.
        assert bad["load_age_seconds"] == round(checked_at + 1.5 - pool.started_at, 3)
        assert (bad["last_check"]["result"], bad["last_check"]["reason"]) == ("fail", "status")

        await trio.sleep_until(checked_at + INTERVAL + 0.25)  # one more check: a fresh report
        entry = (await backends_json(http, dispatcher))["good"]
    assert (entry["redirects"], entry["load_age_seconds"]) == (4, 0.25)
    assert 0 < entry["effective_load"] <= max(0.0, 3 - entry["drain_rate"] * 0.25) / 2 + 1e-6


async def test_load_age_before_a_first_report_is_the_metrics(
    nursery: trio.Nursery, autojump_clock: Any
) -> None:
    """A backend that never reported a load: /backends and the metric both give the time since start."""
    silent = TestBackend("silent", mode="status", status=503)
    await nursery.start(silent.serve)
    dispatcher = await start_dispatcher(nursery, settings_for([silent], health=health(interval=INTERVAL)))
    pool = dispatcher.pool
    await trio.sleep_until(pool.started_at + 7.25)
    async with client() as http:
        listed = await backends_json(http, dispatcher)
        one = (await http.get(f"{dispatcher.admin_url}/backends/silent")).json()
        metric = (await scrape(http, dispatcher)).value(
            "dispatcher_backend_load_age_seconds", backend="silent"
        )
    assert listed["silent"]["load_age_seconds"] == one["load_age_seconds"] == metric == 7.25


async def test_one_backend_by_name(nursery: trio.Nursery, autojump_clock: Any) -> None:
    """GET /backends/<name> gives that backend's entry of the list; an unknown name is 404."""
    dispatcher, backends = await two_backends(nursery, health=health(interval=3600))
    async with client() as http:
        listed = await backends_json(http, dispatcher)
        response = await http.get(f"{dispatcher.admin_url}/backends/b2")
        missing = await http.get(f"{dispatcher.admin_url}/backends/nope")
    assert response.status_code == 200
    one = response.json()
    for entry in (one, listed["b2"]):
        del entry["last_check"]["time"]  # wall time, read at each request
    assert one == listed["b2"]
    assert one["url"] == backends[1].url
    assert missing.status_code == 404


async def test_backend_name_is_found_percent_encoded(nursery: trio.Nursery) -> None:
    """A name with reserved characters (IPv6 `[::1]:port`) is found percent-encoded (RFC 3986 §2.1)."""
    spec = config.parse_backend("test", f"http://[::1]:{unused_port()}")
    settings = replace(settings_for([]), backends=(spec,), health=health(interval=3600))
    dispatcher = await start_dispatcher(nursery, settings)
    path = f"{dispatcher.admin_url}/backends/{quote(spec.name, safe='')}"
    async with client() as http:
        found = await http.get(path)
        drained = await http.post(f"{path}/state", content="drain")
    assert found.status_code == 200, found.text
    assert found.json()["name"] == spec.name
    assert drained.status_code == 200, drained.text


# --- POST /backends/<name>/state ------------------------------------------------------------------


async def test_drain_sends_no_redirects_but_keeps_checking(
    nursery: trio.Nursery, autojump_clock: Any
) -> None:
    """`drain`: the backend gets no new redirects and is still checked every interval."""
    dispatcher, (b1, b2) = await two_backends(nursery)
    checked_at = trio.current_time()
    async with client() as http:
        response = await set_state(http, dispatcher, "b1", "drain")
        assert response.status_code == 200
        assert response.json()["state"] == "draining"
        checks = b1.health_checks
        assert await redirect_targets(http, dispatcher, 5) == [b2.url] * 5
        await trio.sleep_until(checked_at + 5 * INTERVAL + 0.5)
        assert b1.health_checks == checks + 5  # checks at +2, +4, +6, +8, +10
        assert (await backends_json(http, dispatcher))["b1"]["state"] == "draining"
        assert await redirect_targets(http, dispatcher, 3) == [b2.url] * 3
    assert dispatcher.pool.by_name["b1"].redirects == 0


async def test_maint_stops_redirects_and_checks(nursery: trio.Nursery, autojump_clock: Any) -> None:
    """`maint`: the backend gets no redirects and is no longer checked, while the others are."""
    dispatcher, (b1, b2) = await two_backends(nursery)
    checked_at = trio.current_time()
    async with client() as http:
        response = await set_state(http, dispatcher, "b1", "maint")
        assert response.status_code == 200
        assert response.json()["state"] == "maint"
        b1_checks, b2_checks = b1.health_checks, b2.health_checks
        await trio.sleep_until(checked_at + 5 * INTERVAL + 0.5)
        assert b1.health_checks == b1_checks
        assert b2.health_checks == b2_checks + 5
        assert await redirect_targets(http, dispatcher, 5) == [b2.url] * 5


async def test_ready_after_maint_waits_for_a_passing_check(
    nursery: trio.Nursery, autojump_clock: Any
) -> None:
    """`ready` after `maint` takes redirects only from the next passing check, at the interval's next tick."""
    dispatcher, (b1, b2) = await two_backends(nursery)
    checked_at = trio.current_time()
    async with client() as http:
        assert (await set_state(http, dispatcher, "b1", "maint")).status_code == 200
        await trio.sleep_until(checked_at + 2 * INTERVAL + 0.5)
        checks = b1.health_checks
        response = await set_state(http, dispatcher, "b1", "ready")
        assert response.status_code == 200
        assert response.json()["state"] == "down"  # not checked since maint: unknown until checked
        assert await redirect_targets(http, dispatcher, 2) == [b2.url] * 2
        up_at = await state_change(dispatcher.pool, "b1", "up")
        assert up_at == checked_at + 3 * INTERVAL
        assert b1.health_checks == checks + 1
        assert await redirect_targets(http, dispatcher, 2) == [b1.url] * 2


async def test_ready_after_drain_takes_redirects_at_once(nursery: trio.Nursery, autojump_clock: Any) -> None:
    """`ready` after `drain`: the backend is up and chosen again at once, without waiting for a check."""
    dispatcher, (b1, _) = await two_backends(nursery)
    async with client() as http:
        assert (await set_state(http, dispatcher, "b1", "drain")).status_code == 200
        before = trio.current_time()
        response = await set_state(http, dispatcher, "b1", "ready")
        assert response.status_code == 200
        assert response.json()["state"] == "up"
        assert await redirect_targets(http, dispatcher, 2) == [b1.url] * 2
    assert trio.current_time() == before


async def test_state_route_refuses_unknown_backend_bad_word_and_get(nursery: trio.Nursery) -> None:
    """State route: unknown backend 404, bad word 400 naming drain|maint|ready, GET 405 with Allow: POST."""
    dispatcher, _ = await two_backends(nursery, health=health(interval=3600))
    async with client() as http:
        unknown = await set_state(http, dispatcher, "nope", "drain")
        bad = await set_state(http, dispatcher, "b1", "sleep")
        get = await http.get(f"{dispatcher.admin_url}/backends/b1/state")
        state = (await backends_json(http, dispatcher))["b1"]["state"]
    assert unknown.status_code == 404
    assert bad.status_code == 400
    assert all(word in bad.text for word in ("drain", "maint", "ready"))
    assert state == "up"
    assert get.status_code == 405
    assert get.headers["allow"] == "POST"


# --- A backend drains itself ----------------------------------------------------------------------


def _say_drain(backend: TestBackend, form: str) -> None:
    if form == "header":
        backend.extra_headers.append(("X-Load-State", "drain"))
    else:
        backend.body = b'{"load": 0, "state": "drain"}'


def _stop_saying_drain(backend: TestBackend, form: str) -> None:
    if form == "header":
        backend.extra_headers.clear()
    else:
        backend.body = b'{"load": 0}'


@pytest.mark.parametrize("form", ["header", "json"])
async def test_backend_drains_itself_until_it_stops_asking(
    nursery: trio.Nursery, autojump_clock: Any, form: str
) -> None:
    """A backend asking to drain (header or JSON) is draining, without redirects, until it stops asking."""
    dispatcher, (b1, b2) = await two_backends(nursery)
    checked_at = trio.current_time()
    _say_drain(b1, form)
    async with client() as http:
        assert await state_change(dispatcher.pool, "b1", "draining") == checked_at + INTERVAL
        assert (await backends_json(http, dispatcher))["b1"]["state"] == "draining"
        assert await redirect_targets(http, dispatcher, 4) == [b2.url] * 4
        await trio.sleep_until(checked_at + 3 * INTERVAL + 0.5)  # still asking: still draining
        assert dispatcher.pool.by_name["b1"].state == "draining"
        _stop_saying_drain(b1, form)
        assert await state_change(dispatcher.pool, "b1", "up") == checked_at + 4 * INTERVAL
        assert await redirect_targets(http, dispatcher, 2) == [b1.url] * 2


# --- The bearer token -----------------------------------------------------------------------------


async def test_state_change_needs_the_bearer_token(nursery: trio.Nursery) -> None:
    """With a token: POST without it or wrong is 401 + WWW-Authenticate: Bearer; the right one is 200."""
    dispatcher, _ = await two_backends(nursery, health=health(interval=3600), admin_token=TOKEN)
    async with client() as http:
        missing = await set_state(http, dispatcher, "b1", "drain")
        wrong = await set_state(http, dispatcher, "b1", "drain", token="wrong-token")
        assert dispatcher.pool.by_name["b1"].state == "up"
        right = await set_state(http, dispatcher, "b1", "drain", token=TOKEN)
    for refused in (missing, wrong):
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"] == "Bearer"
    assert right.status_code == 200
    assert dispatcher.pool.by_name["b1"].state == "draining"


async def test_auth_scheme_is_case_insensitive(nursery: trio.Nursery) -> None:
    """The scheme in `Authorization: bearer <token>` matches case-insensitively (RFC 9110 §11.1)."""
    dispatcher, _ = await two_backends(nursery, health=health(interval=3600), admin_token=TOKEN)
    async with client() as http:
        response = await http.post(
            f"{dispatcher.admin_url}/backends/b1/state",
            content="drain",
            headers={"authorization": f"bearer {TOKEN}"},
        )
    assert response.status_code == 200, response.text


async def test_read_routes_stay_open_with_a_token(nursery: trio.Nursery) -> None:
    """With admin_token set, /metrics, /healthz, /readyz and GET /backends need no token."""
    dispatcher, _ = await two_backends(nursery, health=health(interval=3600), admin_token=TOKEN)
    async with client() as http:
        for path in ("/metrics", "/healthz", "/readyz", "/backends", "/backends/b1"):
            response = await http.get(f"{dispatcher.admin_url}{path}")
            assert response.status_code == 200, path


def test_admin_token_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """DISPATCHER_ADMIN_TOKEN sets settings.admin_token when no --admin-token is given."""
    monkeypatch.setenv("DISPATCHER_ADMIN_TOKEN", "env-token-123")
    settings = load_settings(build_parser().parse_args(["--backend", "http://127.0.0.1:9"]))
    assert settings.admin_token == "env-token-123"


def test_admin_token_flag_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """--admin-token overrides DISPATCHER_ADMIN_TOKEN."""
    monkeypatch.setenv("DISPATCHER_ADMIN_TOKEN", "env-token-123")
    args = build_parser().parse_args(["--admin-token", "flag-token-456", "--backend", "http://127.0.0.1:9"])
    assert load_settings(args).admin_token == "flag-token-456"


def test_no_admin_token_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the flag and the environment variable there is no token."""
    monkeypatch.delenv("DISPATCHER_ADMIN_TOKEN", raising=False)
    settings = load_settings(build_parser().parse_args(["--backend", "http://127.0.0.1:9"]))
    assert settings.admin_token is None


@pytest.mark.parametrize("source", ["flag", "env"])
def test_rejected_token_is_not_echoed(monkeypatch: pytest.MonkeyPatch, source: str) -> None:
    """A token refused by validation is not printed in the error (config hides it as <hidden>)."""
    secret = "my secret"  # a space: refused
    argv = ["--backend", "http://127.0.0.1:9"]
    if source == "flag":
        argv += ["--admin-token", secret]
    else:
        monkeypatch.setenv("DISPATCHER_ADMIN_TOKEN", secret)
    with pytest.raises(ConfigError) as refused:
        load_settings(build_parser().parse_args(argv))
    assert secret not in str(refused.value)
    assert secret not in repr(refused.value.value)


# --- /metrics ------------------------------------------------------------------------------------

PER_BACKEND = (
    "dispatcher_backend_up",
    "dispatcher_backend_effective_load",
    "dispatcher_backend_load",
    "dispatcher_backend_load_age_seconds",
    "dispatcher_backend_weight",
    "dispatcher_backend_state_changes_total",
    "dispatcher_redirects_total",
    "dispatcher_health_check_duration_seconds_count",
)


async def test_every_series_exists_from_start(nursery: trio.Nursery, autojump_clock: Any) -> None:
    """Before any check or request, /metrics has every labelled series, histograms, build and process info."""
    names = ["a", "b", "c"]
    specs = tuple(config.parse_backend("test", f"http://127.0.0.1:{unused_port()}", name=n) for n in names)
    # First checks are spread over interval * jitter (~ 500 s): none happens while the test runs.
    settings = replace(settings_for([]), backends=specs, health=health(interval=1000, jitter=0.5))
    dispatcher = await start_dispatcher(nursery, settings)
    async with client() as http:
        metrics = await scrape(http, dispatcher)
    for name in names:
        for metric in PER_BACKEND:
            assert metrics.value(metric, backend=name) >= 0, (metric, name)
        assert metrics.states(name) == ["down"]  # never checked: no traffic (Envoy's rule)
        for reason in FAILURE_REASONS:
            assert metrics.value("dispatcher_health_check_failures_total", backend=name, reason=reason) == 0
        for result in ("pass", "fail"):
            assert metrics.value("dispatcher_health_checks_total", backend=name, result=result) == 0
        assert metrics.value("dispatcher_backend_weight", backend=name) == 1.0
    assert set(FAILURE_REASONS) >= {"timeout", "refused", "status", "bad_load", "protocol"}
    assert metrics.value("dispatcher_request_duration_seconds_count") == 0
    assert metrics.value("dispatcher_request_duration_seconds_bucket", le="+Inf") == 0
    assert len(metrics.series("dispatcher_request_duration_seconds_bucket")) > 1
    assert metrics.value("dispatcher_connections_total") == 0
    assert metrics.value("dispatcher_build_info", version=__version__) == 1
    assert metrics.value("process_resident_memory_bytes") > 0


async def test_state_set_follows_admin_states(nursery: trio.Nursery, autojump_clock: Any) -> None:
    """dispatcher_backend_state has one 1 per backend, moving with drain and maint; changes are counted."""
    dispatcher, _ = await two_backends(nursery)
    async with client() as http:
        metrics = await scrape(http, dispatcher)
        assert (metrics.states("b1"), metrics.states("b2")) == (["up"], ["up"])
        changes = metrics.value("dispatcher_backend_state_changes_total", backend="b1")
        for word, state in (("drain", "draining"), ("maint", "maint")):
            assert (await set_state(http, dispatcher, "b1", word)).status_code == 200
            metrics = await scrape(http, dispatcher)
            assert (metrics.states("b1"), metrics.states("b2")) == ([state], ["up"])
            assert metrics.value("dispatcher_backend_up", backend="b1") == 0
            changes += 1
            assert metrics.value("dispatcher_backend_state_changes_total", backend="b1") == changes
        assert (await set_state(http, dispatcher, "b1", "ready")).status_code == 200
        await state_change(dispatcher.pool, "b1", "up")
        metrics = await scrape(http, dispatcher)
    assert metrics.states("b1") == ["up"]
    assert metrics.value("dispatcher_backend_up", backend="b1") == 1
    assert metrics.value("dispatcher_backend_state_changes_total", backend="b1") == changes + 2  # down, up


async def test_check_failures_are_counted_by_reason(nursery: trio.Nursery, autojump_clock: Any) -> None:
    """Each way a check fails counts once under its reason: timeout, refused, status, bad_load, protocol."""
    failing = {
        "timeout": TestBackend("timeout", mode="hang"),
        "status": TestBackend("status", mode="status", status=503),
        "bad_load": TestBackend("bad_load", body=b'{"load": -1}'),
        "protocol": TestBackend("protocol", mode="garbage"),
    }
    for backend in failing.values():
        await nursery.start(backend.serve)
    refused = config.parse_backend("test", f"http://127.0.0.1:{unused_port()}", name="refused")
    settings = settings_for(list(failing.values()), health=health(interval=INTERVAL, timeout=1.0))
    dispatcher = await start_dispatcher(nursery, replace(settings, backends=(*settings.backends, refused)))
    pool = dispatcher.pool
    with trio.fail_after(PATIENCE):
        await wait_for(pool, lambda: all(b.checks_failed == 1 for b in pool.backends))
    async with client() as http:
        metrics = await scrape(http, dispatcher)
    for name in ("timeout", "refused", "status", "bad_load", "protocol"):
        counted = {
            reason: metrics.value("dispatcher_health_check_failures_total", backend=name, reason=reason)
            for reason in FAILURE_REASONS
        }
        assert counted == {reason: (1.0 if reason == name else 0.0) for reason in FAILURE_REASONS}
        assert metrics.states(name) == ["down"]


async def test_request_duration_count_equals_requests_made(nursery: trio.Nursery) -> None:
    """The request-duration histogram counts every front-door request; connections_total every connection."""
    dispatcher, _ = await two_backends(nursery, health=health(interval=3600))
    request = b"GET /x HTTP/1.1\r\nhost: a\r\n\r\n"
    last = b"GET /x HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n"
    for _ in range(3):  # 3 connections of 4 pipelined requests each
        raw = await exchange(dispatcher.port, request * 3 + last)
        assert raw.count(b"HTTP/1.1 307 ") == 4
    async with client() as http:
        metrics = await scrape(http, dispatcher)
    assert metrics.value("dispatcher_request_duration_seconds_count") == 12
    assert metrics.value("dispatcher_request_duration_seconds_bucket", le="+Inf") == 12
    assert metrics.value("dispatcher_connections_total") == 3
    assert metrics.value("dispatcher_responses_total", code="307") == 12
    assert sum(metrics.series("dispatcher_redirects_total").values()) == 12


async def test_metrics_speaks_openmetrics_when_asked(nursery: trio.Nursery) -> None:
    """`Accept: application/openmetrics-text` gets OpenMetrics ending in `# EOF`, read by a strict parser."""
    dispatcher, _ = await two_backends(nursery, health=health(interval=3600))
    async with client() as http:
        response = await http.get(
            f"{dispatcher.admin_url}/metrics",
            headers={"accept": "application/openmetrics-text; version=1.0.0"},
        )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
    assert response.text.endswith("# EOF\n")
    families = {family.name: family for family in parse_openmetrics(response.text)}  # type: ignore[no-untyped-call]
    assert {s.labels["backend"] for s in families["dispatcher_backend_up"].samples} == {"b1", "b2"}
    assert families["dispatcher_redirects"].type == "counter"


async def test_metrics_gzipped_when_asked(nursery: trio.Nursery) -> None:
    """`Accept-Encoding: gzip` gets a gzip body that decompresses to the text format; otherwise plain."""
    dispatcher, _ = await two_backends(nursery, health=health(interval=3600))
    url = f"{dispatcher.admin_url}/metrics"
    async with client() as http:
        async with http.stream("GET", url, headers={"accept-encoding": "gzip"}) as response:
            raw = b"".join([chunk async for chunk in response.aiter_raw()])
            encoding = response.headers.get("content-encoding")
        plain = await http.get(url, headers={"accept-encoding": "identity"})
    assert encoding == "gzip"
    assert raw[:2] == b"\x1f\x8b"
    text = gzip.decompress(raw).decode()
    assert text.startswith("# HELP ")
    assert Scrape(text).value("dispatcher_backend_up", backend="b1") == 1
    assert "content-encoding" not in plain.headers
    assert plain.text.startswith("# HELP ")
    assert plain.headers["content-type"].startswith("text/plain")


async def test_scrape_of_1000_backends_has_every_series(nursery: trio.Nursery) -> None:
    """A scrape with 1,000 backends returns every backend's series (the duration is printed only)."""
    port = unused_port()
    specs = tuple(
        config.parse_backend("test", f"http://127.0.0.1:{port}", name=f"n{i:04}") for i in range(1000)
    )
    # First checks spread over ~ 500,000 s: none is checked while the test runs.
    settings = replace(settings_for([]), backends=specs, health=health(interval=1e6, jitter=0.5))
    dispatcher = await start_dispatcher(nursery, settings)
    url = f"{dispatcher.admin_url}/metrics"
    durations = []
    async with client() as http:
        for encoding in ("identity", "gzip", "identity"):
            started = time.perf_counter()
            response = await http.get(url, headers={"accept-encoding": encoding})
            size = int(response.headers["content-length"])  # on the wire, compressed or not
            durations.append(
                f"{encoding} {(time.perf_counter() - started) * 1000:.1f} ms ({size // 1024} KiB)"
            )
    print("\nscrape of 1,000 backends: " + ", ".join(durations))
    metrics = Scrape(response.text)
    assert len(metrics.series("dispatcher_backend_up")) == 1000
    assert len(metrics.series("dispatcher_backend_state")) == 4000
    assert len(metrics.series("dispatcher_health_check_failures_total")) == 1000 * len(FAILURE_REASONS)


# --- readiness reads the wiring's lifecycle (route, without sockets) -------------------------------


def _admin_of(lifecycle: Lifecycle) -> AdminApi:
    """An admin API over a pool of one backend that is up, reading `lifecycle`."""
    pool = Pool([config.parse_backend("t", "http://10.0.0.1:8080", "b")], health())
    pool.record_check(pool.backends[0], CheckResult(True, 0.0, load=0.0), now=0.0)
    return AdminApi(pool, Metrics(pool, ServerStats()), lifecycle)


def test_readyz_follows_the_lifecycle() -> None:
    """/readyz: 503 until the lifecycle says serving, 200 while serving, 503 once shutting down."""
    lifecycle = Lifecycle()
    admin = _admin_of(lifecycle)
    seen = []
    for serving, shutting_down in [(False, False), (True, False), (True, True)]:
        lifecycle.serving, lifecycle.shutting_down = serving, shutting_down
        reply = admin.route(WholeRequest("GET", "/readyz", {}), 0.0)
        seen.append((reply.status, reply.body.decode().split(":")[0].strip()))
    assert seen == [(503, "starting"), (200, "ready"), (503, "shutting down")]


def test_readyz_is_503_while_the_only_pool_is_in_maintenance() -> None:
    """A pool in maintenance takes no redirect though its backend is up: /readyz says 503 and why
    (as HAProxy's nbsrv counts no server in MAINT), and 200 again once the pool is ready."""
    admin = _admin_of(Lifecycle(serving=True))
    [pool] = admin.pool
    seen = []
    for maintenance in (True, False):
        pool.set_maintenance(maintenance)
        reply = admin.route(WholeRequest("GET", "/readyz", {}), 0.0)
        seen.append((reply.status, reply.body.decode().strip()))
    assert seen == [(503, "no backend takes redirects: in maintenance"), (200, "ready: 1 of 1 backends up")]


def test_metrics_with_another_method_gets_405_from_route() -> None:
    """POST /metrics is answered 405 with Allow by `route`; GET and HEAD scrapes are `handle`'s."""
    reply = _admin_of(Lifecycle(serving=True)).route(WholeRequest("POST", "/metrics", {}), 0.0)
    assert (reply.status, dict(reply.headers)[b"allow"]) == (405, b"GET, HEAD")


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("localhost:8081", True),
        ("LOCALHOST:8081", True),
        ("127.0.0.1:8081", True),
        ("127.1.2.3", True),
        ("[::1]:8081", True),
        ("[::1]", True),
        ("evil.example:8081", False),
        ("127.0.0.1.evil.example", False),
        ("10.0.0.1:8081", False),
        ("", False),
    ],
)
def test_a_host_names_loopback_or_not(host: str, loopback: bool) -> None:
    """Only localhost, 127/8 and [::1] (any port) name this machine's loopback."""
    assert loopback_host(host) is loopback


def test_a_loopback_listener_refuses_a_state_change_naming_another_host(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """DNS rebinding: a page of evil.example whose name now resolves to 127.0.0.1 is same-origin with
    the listener, Origin and Host agree, and no token is set; its drain is refused, and logged as every
    refused state change is, as is its read of /status, while a scrape by any name still works."""
    admin = _admin_of(Lifecycle(serving=True))
    admin.loopback = True
    name = admin.pool.backends[0].name
    headers = {"host": "evil.example:8081", "origin": "http://evil.example:8081"}
    with caplog.at_level(logging.INFO, logger="dispatcher.admin"):
        refused = admin.route(
            WholeRequest("POST", f"/backends/{name}/state", headers, b"drain"), 0.0, "10.9.9.9"
        )
    assert refused.status == 403
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (
            logging.WARNING,
            f"admin request from 10.9.9.9: POST /backends/{name}/state 'drain': 403, "
            "refused: Host names another site",
        )
    ]
    assert admin.pool.backends[0].state != "draining"
    assert admin.route(WholeRequest("GET", "/status", headers), 0.0).status == 403
    assert admin.route(WholeRequest("GET", "/readyz", headers), 0.0).status in (200, 503)
    own = {"host": "127.0.0.1:8081", "origin": "http://127.0.0.1:8081"}
    assert admin.route(WholeRequest("POST", f"/backends/{name}/state", own, b"drain"), 0.0).status == 200


# --- reads of every backend, in steps ----------------------------------------------------------------


def _admin_of_many(count: int) -> AdminApi:
    """An admin API over `count` backends, up, reporting a load of 1.5."""
    pool = Pool(
        [config.parse_backend("t", f"http://10.0.0.{i}:8080", f"b{i:03}") for i in range(count)], health()
    )
    for backend in pool.backends:
        pool.record_check(backend, CheckResult(True, 0.001, load=1.5), now=0.0)
    return AdminApi(pool, Metrics(pool, ServerStats()), Lifecycle(serving=True))


@pytest.mark.parametrize("path", ["/backends", "/status"])
def test_reads_of_every_backend_are_built_in_steps(path: str) -> None:
    """/backends and /status of 120 backends pause between steps of STEP_BACKENDS (so that the front
    door's tasks run), and their bodies are what `route` answers in one piece: /backends exactly as
    json.dumps(indent=1) writes it, /status compact."""
    admin = _admin_of_many(120)
    request = WholeRequest("GET", path, {"host": "127.0.0.1:9090"})
    steps = admin.stepped(request, 5.0)
    assert steps is not None
    pauses = 0
    while True:
        try:
            next(steps)
            pauses += 1
        except StopIteration as done:
            stepped = done.value
            break
    assert pauses == (120 - 1) // STEP_BACKENDS
    whole = admin.route(request, 5.0)
    wall = re.compile(rb'"time": ?"[^"]*"')  # a check's wall-clock time, read at each answer
    assert (stepped.status, wall.sub(b"", stepped.body)) == (whole.status, wall.sub(b"", whole.body))
    parsed = json.loads(stepped.body)
    if path == "/backends":
        assert stepped.body == (json.dumps(parsed, indent=1) + "\n").encode()
        assert [b["name"] for b in parsed] == [f"b{i:03}" for i in range(120)]
    else:
        assert stepped.body == json.dumps(parsed, separators=(",", ":")).encode()
        assert [b["load"] for b in parsed["pools"][0]["backends"]] == [1.5] * 120
        assert set(parsed) == {"version", "clock", "ready", "admin", "pools"}


def test_no_steps_for_other_reads_nor_a_rebound_host() -> None:
    """Only GET/HEAD /backends and /status are stepped; a request refused for its Host is `route`'s."""
    admin = _admin_of_many(3)
    admin.loopback = True
    assert admin.stepped(WholeRequest("GET", "/pools", {"host": "127.0.0.1"}), 0.0) is None
    assert admin.stepped(WholeRequest("POST", "/backends", {"host": "127.0.0.1"}), 0.0) is None
    assert admin.stepped(WholeRequest("GET", "/status", {"host": "evil.example"}), 0.0) is None
    assert admin.stepped(WholeRequest("HEAD", "/status", {"host": "localhost"}), 0.0) is not None
