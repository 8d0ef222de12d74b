"""Runtime pool changes through the admin API (HAProxy's `add server` / `del server`): POST /backends
and DELETE /backends/<name>, their token rules, bad bodies, metrics series, and the reload rule."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from typing import Any

import httpx
import pytest
import trio

from dispatcher.settings.config import apply, check, parse_toml
from tests.helpers import (
    Dispatcher,
    TestBackend,
    health,
    settings_for,
    start_backends,
    start_dispatcher,
    wait_all_up,
    wait_for,
    wait_for_state,
)

TOKEN = "s3cret-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
PATIENCE = 30.0
INTERVAL = 2.0


async def one_backend(nursery: trio.Nursery, **overrides: Any) -> tuple[Dispatcher, TestBackend]:
    """A dispatcher in front of b1 (load 5), up, and a second backend `extra` (load 0) not yet in it."""
    (b1,) = await start_backends(nursery, 5)
    extra = TestBackend("extra", load=0)
    await nursery.start(extra.serve)
    settings = settings_for([b1], health=health(interval=INTERVAL), admin_token=TOKEN, **overrides)
    dispatcher = await start_dispatcher(nursery, settings)
    with trio.fail_after(PATIENCE):
        await wait_all_up(dispatcher)
    return dispatcher, extra


async def post(http: httpx.AsyncClient, dispatcher: Dispatcher, body: object, **kw: Any) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return await http.post(f"{dispatcher.admin_url}/backends", content=content, **kw)


async def series(http: httpx.AsyncClient, dispatcher: Dispatcher) -> set[str]:
    """The backends that have a dispatcher_backend_up series in a scrape."""
    text = (await http.get(f"{dispatcher.admin_url}/metrics")).text
    return {
        line.split('backend="')[1].split('"')[0]
        for line in text.splitlines()
        if line.startswith("dispatcher_backend_up{")
    }


async def test_a_posted_backend_is_checked_then_takes_traffic(
    nursery: trio.Nursery, autojump_clock: Any
) -> None:
    """201 with its Location; it is starting until its first check passes, then takes the redirects
    (its load is the lower); its metrics series appear with it."""
    dispatcher, extra = await one_backend(nursery)
    async with httpx.AsyncClient() as http:
        added = await post(http, dispatcher, {"url": extra.url, "name": "extra", "weight": 2}, headers=AUTH)
        assert added.status_code == 201, added.text
        assert added.headers["location"] == "/backends/extra"
        assert (added.json()["name"], added.json()["weight"]) == ("extra", 2.0)
        assert '"weight": 2,' in added.text  # as it was written: a whole weight shows no `.0`
        assert dispatcher.pool.by_name["extra"].state == "down"  # starting: no traffic before a check
        with trio.fail_after(PATIENCE):
            await wait_for_state(dispatcher.pool, "extra", "up")
        answer = await http.get(f"{dispatcher.url}/x", follow_redirects=False)
        assert answer.headers["location"] == f"{extra.url}/x"
        assert await series(http, dispatcher) == {"b1", "extra"}
        listed = (await http.get(f"{dispatcher.admin_url}/backends/extra")).text
        assert '"weight": 2,' in listed, listed


async def test_a_deleted_backend_takes_no_more_traffic_and_its_series_go(
    nursery: trio.Nursery, autojump_clock: Any
) -> None:
    """DELETE /backends/<name>: 200, gone from /backends and from the metrics, no redirect to it."""
    dispatcher, extra = await one_backend(nursery)
    async with httpx.AsyncClient() as http:
        await post(http, dispatcher, {"url": extra.url, "name": "extra"}, headers=AUTH)
        with trio.fail_after(PATIENCE):
            await wait_for_state(dispatcher.pool, "extra", "up")
        gone = await http.delete(f"{dispatcher.admin_url}/backends/extra", headers=AUTH)
        assert (gone.status_code, gone.json()) == (200, {"removed": "extra"})
        assert (await http.get(f"{dispatcher.admin_url}/backends/extra")).status_code == 404
        assert [b["name"] for b in (await http.get(f"{dispatcher.admin_url}/backends")).json()] == ["b1"]
        assert await series(http, dispatcher) == {"b1"}
        for _ in range(5):
            answer = await http.get(f"{dispatcher.url}/x", follow_redirects=False)
            assert not answer.headers["location"].startswith(extra.url)
        missing = await http.delete(f"{dispatcher.admin_url}/backends/extra", headers=AUTH)
        assert missing.status_code == 404


async def test_runtime_changes_need_the_token(nursery: trio.Nursery, autojump_clock: Any) -> None:
    """Without the bearer token POST and DELETE are refused with 401 and change nothing."""
    dispatcher, extra = await one_backend(nursery)
    async with httpx.AsyncClient() as http:
        refused = await post(http, dispatcher, {"url": extra.url, "name": "extra"})
        assert (refused.status_code, refused.headers["www-authenticate"]) == (401, "Bearer")
        assert (await http.delete(f"{dispatcher.admin_url}/backends/b1")).status_code == 401
    assert list(dispatcher.pool.by_name) == ["b1"]


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"not json", "expected a JSON object"),
        ({"name": "x"}, "expected a JSON object"),
        ({"url": "ftp://10.0.0.1"}, "backend = 'ftp://10.0.0.1'"),
        ({"url": "http://10.0.0.1", "weight": -1}, "backend.weight"),
        ({"url": "http://10.0.0.1", "colour": "red"}, "colour"),
        ({"url": "http://[::1"}, "not a URL: Invalid IPv6 URL"),  # no answer, and a traceback, before
        ({"url": "http://[zz]:80"}, "not a URL"),
    ],
)
async def test_a_bad_body_gets_400_naming_what_is_wrong(
    nursery: trio.Nursery, autojump_clock: Any, body: object, says: str
) -> None:
    """One line naming the key, as a bad config file gets; the pool is unchanged."""
    dispatcher, _ = await one_backend(nursery)
    async with httpx.AsyncClient() as http:
        answer = await post(http, dispatcher, body, headers=AUTH)
    assert answer.status_code == 400
    assert says in answer.text and answer.text.count("\n") == 1
    assert list(dispatcher.pool.by_name) == ["b1"]


async def test_a_name_taken_gets_409(nursery: trio.Nursery, autojump_clock: Any) -> None:
    """A backend's name is its identity (metrics labels, the state API): a second of it is refused."""
    dispatcher, extra = await one_backend(nursery)
    async with httpx.AsyncClient() as http:
        taken = await post(http, dispatcher, {"url": extra.url, "name": "b1"}, headers=AUTH)
    assert taken.status_code == 409
    assert dispatcher.pool.by_name["b1"].spec.url != extra.url


async def test_each_runtime_change_is_logged_once(
    nursery: trio.Nursery, autojump_clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Who, what and the result, INFO when done, WARNING when refused."""
    caplog.set_level(logging.INFO, logger="dispatcher.admin")
    dispatcher, extra = await one_backend(nursery)
    async with httpx.AsyncClient() as http:
        await post(http, dispatcher, {"url": extra.url, "name": "extra"}, headers=AUTH)
        await http.delete(f"{dispatcher.admin_url}/backends/extra")
    lines = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "dispatcher.admin"]
    assert len(lines) == 2
    assert (
        lines[0][0] == logging.INFO
        and "POST /backends" in lines[0][1]
        and "201, backend extra added" in lines[0][1]
    )
    assert lines[1][0] == logging.WARNING and "DELETE /backends/extra" in lines[1][1] and "401" in lines[1][1]


@pytest.mark.parametrize("keep", [False, True])
async def test_a_reload_keeps_runtime_changes_only_when_told(
    nursery: trio.Nursery, autojump_clock: Any, keep: bool
) -> None:
    """The file is the truth on SIGHUP (HAProxy's rule) unless keep_runtime_backends: then a backend
    added stays and one deleted stays out. Without it the file's b1 comes back in place of extra,
    the pool's only usable backend, once b1 has been checked (until then extra answers)."""
    dispatcher, extra = await one_backend(nursery, keep_runtime_backends=keep)
    settings = replace(dispatcher.running.settings, backends=(*dispatcher.running.settings.backends,))
    async with httpx.AsyncClient() as http:
        await post(http, dispatcher, {"url": extra.url, "name": "extra"}, headers=AUTH)
        assert (await http.delete(f"{dispatcher.admin_url}/backends/b1", headers=AUTH)).status_code == 200
    assert list(dispatcher.pool.by_name) == ["extra"]
    dispatcher.running.reload(settings)
    if not keep:
        assert set(dispatcher.pool.by_name) == {"b1", "extra"}  # b1 checked first
        with trio.fail_after(20):
            await wait_for(dispatcher.pool, lambda: list(dispatcher.pool.by_name) == ["b1"])
    assert list(dispatcher.pool.by_name) == (["extra"] if keep else ["b1"])


async def test_a_state_change_from_another_sites_page_is_refused(
    nursery: trio.Nursery, autojump_clock: Any
) -> None:
    """A browser's cross-site POST (its Origin names another site) gets 403 even with no token set;
    the same request naming this listener, or naming no origin (curl), is done."""
    dispatcher, extra = await one_backend(nursery)
    dispatcher.running.admin.set_token(None)
    body = {"url": extra.url, "name": "extra"}
    async with httpx.AsyncClient() as http:
        evil = await post(http, dispatcher, body, headers={"origin": "http://evil.example"})
        assert evil.status_code == 403
        assert "extra" not in dispatcher.pool.by_name
        drained = await http.post(
            f"{dispatcher.admin_url}/backends/b1/state",
            content=b"drain",
            headers={"origin": "https://evil.example"},
        )
        assert (drained.status_code, dispatcher.pool.by_name["b1"].state) == (403, "up")
        own = f"http://127.0.0.1:{dispatcher.running.admin_port}"
        assert (await post(http, dispatcher, body, headers={"origin": own})).status_code == 201


async def web_pool(nursery: trio.Nursery) -> tuple[Dispatcher, TestBackend, TestBackend]:
    """A dispatcher whose route /web goes to the named pool `web` (w1, load 5), up, and a backend
    `extra` (load 0) not yet in any pool."""
    (b1, w1) = await start_backends(nursery, 0, 5)
    extra = TestBackend("extra", load=0)
    await nursery.start(extra.serve)
    text = (
        f'[pools.web]\nbackends = [{{ url = "{w1.url}", name = "w1" }}]\n'
        '[[routes]]\npath_prefix = "/web"\npool = "web"\n'
    )
    routed = check(apply(settings_for([b1]), parse_toml(text)))
    settings = replace(routed, health=health(interval=INTERVAL), admin_token=TOKEN)
    dispatcher = await start_dispatcher(nursery, settings)
    with trio.fail_after(PATIENCE):
        await wait_all_up(dispatcher)
        await wait_for_state(dispatcher.running.pools.by_pool["web"], "w1", "up")
    return dispatcher, w1, extra


async def test_a_backend_posted_to_a_named_pool_joins_it_and_a_delete_there_removes_it(
    nursery: trio.Nursery, autojump_clock: Any
) -> None:
    """`"pool": "web"` adds the backend to that pool (checked first, then its route's redirects go to
    it, the lower load); DELETE removes a backend of a named pool as of the default one, and a
    backend the file gave as well as one added."""
    dispatcher, _, extra = await web_pool(nursery)
    web = dispatcher.running.pools.by_pool["web"]
    async with httpx.AsyncClient() as http:
        added = await post(http, dispatcher, {"url": extra.url, "name": "extra", "pool": "web"}, headers=AUTH)
        assert (added.status_code, added.json()["pool"]) == (201, "web"), added.text
        assert "extra" in web.by_name and "extra" not in dispatcher.pool.by_name
        with trio.fail_after(PATIENCE):
            await wait_for_state(web, "extra", "up")
        answer = await http.get(f"{dispatcher.url}/web/x", follow_redirects=False)
        assert answer.headers["location"] == f"{extra.url}/web/x"
        listed = (await http.get(f"{dispatcher.admin_url}/pools/web")).json()["backends"]
        assert sorted(b["name"] for b in listed) == ["extra", "w1"]
        for name in ("w1", "extra"):
            gone = await http.delete(f"{dispatcher.admin_url}/backends/{name}", headers=AUTH)
            assert gone.status_code == 200
            assert name not in web.by_name
        assert list(web.by_name) == []
        assert (await http.get(f"{dispatcher.url}/web/x", follow_redirects=False)).status_code == 503


async def test_a_backend_posted_to_an_unknown_pool_gets_400_naming_the_pool(
    nursery: trio.Nursery, autojump_clock: Any
) -> None:
    dispatcher, _, extra = await web_pool(nursery)
    async with httpx.AsyncClient() as http:
        for pool, why in (("nope", "no such pool; running: default, web"), (3, "expected a pool's name")):
            refused = await post(http, dispatcher, {"url": extra.url, "pool": pool}, headers=AUTH)
            assert (refused.status_code, refused.text) == (400, f"pool = {pool!r}: {why}\n")
    assert "extra" not in dispatcher.running.pools.by_name


@pytest.mark.parametrize("keep", [False, True])
async def test_a_reload_keeps_a_named_pools_runtime_changes_only_when_told(
    nursery: trio.Nursery, autojump_clock: Any, keep: bool
) -> None:
    """As for the default pool: the file is the truth on SIGHUP unless keep_runtime_backends."""
    dispatcher, _, extra = await web_pool(nursery)
    running = dispatcher.running
    settings = replace(running.settings, keep_runtime_backends=keep)  # the file, before any change
    running.reload(settings)
    async with httpx.AsyncClient() as http:
        await post(http, dispatcher, {"url": extra.url, "name": "extra", "pool": "web"}, headers=AUTH)
        assert (await http.delete(f"{dispatcher.admin_url}/backends/w1", headers=AUTH)).status_code == 200
    web = running.pools.by_pool["web"]
    assert list(web.by_name) == ["extra"]
    running.reload(settings)
    with trio.fail_after(PATIENCE):
        await wait_for(web, lambda: list(web.by_name) == (["extra"] if keep else ["w1"]))


async def test_a_kept_runtime_backend_whose_pool_leaves_the_file_is_said_to_be_set_aside(
    nursery: trio.Nursery, autojump_clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """With keep_runtime_backends, a backend posted to pool `web` is kept across reloads; when `web`
    leaves the file it can run nowhere, and it went without a word (the log said only `1 removed`)."""
    dispatcher, _, extra = await web_pool(nursery)
    running = dispatcher.running
    kept = replace(running.settings, keep_runtime_backends=True)
    running.reload(kept)
    async with httpx.AsyncClient() as http:
        await post(http, dispatcher, {"url": extra.url, "name": "extra", "pool": "web"}, headers=AUTH)
    caplog.set_level(logging.WARNING, "dispatcher")
    running.reload(replace(kept, pools=(), routes=()))
    assert (
        "reload: backend extra, added through the admin API to pool web, is set aside: the file has no "
        "pool web now (it comes back if the pool does)"
    ) in [record.getMessage() for record in caplog.records]


async def test_a_posted_name_that_a_path_cannot_hold_is_escaped_in_the_location(
    nursery: trio.Nursery, autojump_clock: Any
) -> None:
    """A name may hold `?`, `#`, `%` or a space: the 201's Location escapes them, so that following
    it reaches the backend (a bare `?` would end the path at `w`)."""
    dispatcher, extra = await one_backend(nursery)
    async with httpx.AsyncClient() as http:
        added = await post(http, dispatcher, {"url": extra.url, "name": "w?x#y%z 1"}, headers=AUTH)
        assert added.headers["location"] == "/backends/w%3Fx%23y%25z%201"
        found = await http.get(f"{dispatcher.admin_url}{added.headers['location']}")
        assert (found.status_code, found.json()["name"]) == (200, "w?x#y%z 1")


async def test_removing_the_last_backend_is_a_warning(
    nursery: trio.Nursery, autojump_clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A start refuses a file with no backend; the admin API can still remove the last one, and
    every request then gets the fallback: said at WARNING, not only in the INFO count."""
    dispatcher, _ = await one_backend(nursery)
    async with httpx.AsyncClient() as http:
        with caplog.at_level(logging.WARNING, "dispatcher"):
            assert (await http.delete(f"{dispatcher.admin_url}/backends/b1", headers=AUTH)).status_code == 200
    warned = [
        r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "dispatcher"
    ]
    assert warned == [
        "backends changed: no backend is left in any pool: every request gets its pool's fallback"
    ]
