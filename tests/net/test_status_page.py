"""The status page (`GET /`) and the JSON it reads (`GET /status`): first the routes without sockets, then
a real browser, headless Chromium driven by selenium through Debian's chromedriver, against a real
dispatcher on loopback.

The browser tests need chromium, chromedriver and selenium. Without one of them they are skipped,
except in CI (CI=true), where .ci/run installs them and a missing one is a failure. Selenium blocks:
every browser step runs in a thread (`trio.to_thread.run_sync`) while the dispatcher serves in the
test's trio loop, on the real clock (a browser does not run on trio's mock clock).
`STATUS_PAGE_SCREENSHOT=docs/status-page.png pytest tests/net/test_status_page.py` writes the
README's screenshot.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import trio

from dispatcher import __version__
from dispatcher.core.health_state import Admin
from dispatcher.core.lifecycle import Lifecycle
from dispatcher.core.pool import CheckResult, Pool
from dispatcher.core.stats import ServerStats
from dispatcher.expose.render import Metrics
from dispatcher.net.admin import AdminApi
from dispatcher.net.status_page import SCRIPT
from dispatcher.protocol.wholemessage import WholeRequest
from dispatcher.settings import config
from tests.helpers import Dispatcher, TestBackend, health, settings_for, start_dispatcher

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

TOKEN = "page-token-7f3a"
# Checks every 0.2 s (real time): the backends are up within a second, a failure shows within one.
CHECKS = health(interval=0.2, timeout=0.1)
# Seconds any one thing may take to show in the browser: generous, for a loaded machine.
WAIT = 20.0
SCREENSHOT_ENV = "STATUS_PAGE_SCREENSHOT"
# The browser's window: wide enough for every column; the README's screenshot is as tall as the page.
WINDOW = (1280, 800)


# --- the routes, without sockets -------------------------------------------------------------------


def admin_over(names: list[str], token: str | None = None) -> AdminApi:
    """An admin API over a pool of `names` (10.0.0.x), the first one up after a check at t=1."""
    specs = [config.parse_backend("t", f"http://10.0.0.{i + 1}:8080", name) for i, name in enumerate(names)]
    pool = Pool(specs, health())
    pool.record_check(pool.backends[0], CheckResult(True, 0.004, load=2.0), now=1.0)
    return AdminApi(pool, Metrics(pool, ServerStats()), Lifecycle(serving=True), token)


def get(admin: AdminApi, path: str, now: float = 3.0, **headers: str) -> Any:
    return admin.route(WholeRequest("GET", path, headers), now)


def inline(tag: str, page: str) -> str:
    [text] = re.findall(rf"<{tag}>(.*?)</{tag}>", page, re.DOTALL)
    return text


def hash_source(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def test_the_page_is_one_document_that_loads_nothing_else() -> None:
    """GET /: HTML whose script and style are inline, no URL off this listener, no-store, nosniff."""
    reply = get(admin_over(["b1"]), "/")
    headers = dict(reply.headers)
    page = reply.body.decode()
    assert (reply.status, headers[b"content-type"]) == (200, b"text/html; charset=utf-8")
    assert int(headers[b"content-length"]) == len(reply.body)
    assert (headers[b"cache-control"], headers[b"x-content-type-options"]) == (b"no-store", b"nosniff")
    assert re.findall(r"\b(?:src|href)=\"([^\"]*)\"", page) == ["data:,", "status", "metrics"]
    assert re.findall(r"fetch\(\"([^\"]*)\"", page) == ["status", "backends/"]
    assert not re.search(r"\b(?:https?|wss?):|//[a-z]|@import|url\(", page)


def test_the_policy_lets_run_only_the_page_s_own_script_and_style() -> None:
    """The CSP names the SHA-256 of the exact inline script and style, and nothing else may load."""
    reply = get(admin_over(["b1"]), "/")
    page = reply.body.decode()
    policy = dict(
        directive.split(" ", 1)
        for directive in dict(reply.headers)[b"content-security-policy"].decode().split("; ")
    )
    assert policy["default-src"] == "'none'"
    assert policy["script-src"] == hash_source(inline("script", page))
    assert policy["style-src"] == hash_source(inline("style", page))
    assert (policy["connect-src"], policy["frame-ancestors"], policy["form-action"]) == (
        "'self'",
        "'none'",
        "'none'",
    )
    assert "unsafe" not in " ".join(policy.values())


def test_the_script_writes_text_never_markup() -> None:
    """Every string from the server reaches the DOM as textContent: no API of the page parses HTML."""
    assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(", SCRIPT)


def test_status_is_every_backend_as_backends_has_it_and_what_the_page_adds() -> None:
    """GET /status: the pool with each backend's /backends fields, its operator's word, its last
    check's age, the dispatcher's clock, readiness and whether a token is needed; never cached."""
    admin = admin_over(["b1", "b2"])
    admin.pool.set_admin(admin.pool.by_name["b2"], Admin.DRAIN)
    reply = get(admin, "/status", now=3.5)
    status = json.loads(reply.body)
    listed = json.loads(get(admin, "/backends", now=3.5).body)
    [pool] = status.pop("pools")
    assert status == {
        "version": __version__,
        "clock": 3.5,
        "ready": {"ready": True, "why": "ready: 1 of 2 backends up"},
        "admin": {"token_required": False},
    }
    assert (pool["name"], pool["policy"]) == ("default", "least-loaded")
    added = [(b.pop("operator_state"), b.pop("last_check_age_seconds")) for b in pool["backends"]]
    assert added == [("ready", 2.5), ("drain", None)]
    for backend in [*pool["backends"], *listed]:  # wall times, read a moment apart
        if backend["last_check"]:
            backend["last_check"].pop("time")
    assert pool["backends"] == listed
    assert dict(reply.headers)[b"cache-control"] == b"no-store"


def test_the_page_and_status_need_no_token_and_never_show_it() -> None:
    """Both only read: 200 without Authorization when a token is set, and the token is in neither."""
    admin = admin_over(["b1"], token=TOKEN)
    for path in ("/", "/status"):
        reply = get(admin, path)
        assert reply.status == 200 and TOKEN.encode() not in reply.body
    assert json.loads(get(admin, "/status").body)["admin"] == {"token_required": True}


@pytest.mark.parametrize("path", ["/", "/status"])
def test_the_page_and_status_take_get_and_head_only(path: str) -> None:
    """POST / and POST /status: 405 with Allow, as every read-only admin route."""
    reply = admin_over(["b1"]).route(WholeRequest("POST", path, {}, b"drain"), 0.0)
    assert (reply.status, dict(reply.headers)[b"allow"]) == (405, b"GET, HEAD")


# --- a real browser --------------------------------------------------------------------------------

# What the page shows, read in the browser: every backend's row (its cells' text and the buttons an
# operator can see) and the page's own parts; also where the token is and is not kept.
SNAPSHOT = """
const shown = (element) => element !== null && element.offsetParent !== null;
const rows = {};
for (const tr of document.querySelectorAll("tr[data-backend]")) {
  const text = (name) => tr.querySelector("td." + name).textContent;
  rows[tr.dataset.backend] = {
    name: tr.querySelector(".name").textContent,
    state: text("state"), rate: text("rate"), redirects: text("redirects"), check: text("check"),
    buttons: [...tr.querySelectorAll("button")].filter(shown)
      .map((button) => button.dataset.word + (button.disabled ? " (disabled)" : "")),
  };
}
return {
  rows, message: document.getElementById("message").textContent,
  summary: [...document.querySelectorAll(".summary")].map((p) => p.textContent),
  tokenForm: shown(document.getElementById("token-form")),
  tokenGiven: shown(document.getElementById("token-given")),
  readOnly: shown(document.getElementById("read-only")),
  stored: sessionStorage.getItem("dispatcher-admin-token"), localStorage: localStorage.length,
  cookie: document.cookie, url: location.href, title: document.title, images: document.images.length,
};
"""
Snapshot = dict[str, Any]


def require_browser() -> tuple[str, str]:
    """chromium's and chromedriver's paths, with selenium importable; skip without one of them, but
    fail in CI, where .ci/run must have installed them."""
    found = {name: shutil.which(name) for name in ("chromium", "chromedriver")}
    missing = [name for name, path in found.items() if path is None]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip install -e '.[test]')")
    if missing:
        why = f"needs {', '.join(missing)} (.ci/run installs Debian's chromium and chromium-driver)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{why}, and CI=true requires them")
        pytest.skip(why)
    return found["chromium"] or "", found["chromedriver"] or ""


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    """Headless Chromium through Debian's chromedriver; no proxy, so that loopback is reached direct."""
    chromium, chromedriver = require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium  # given, with the driver's path: selenium-manager downloads nothing
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--no-proxy-server"):
        options.add_argument(argument)
    options.add_argument("--window-size={},{}".format(*WINDOW))
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(chromedriver))
    try:
        yield driver
    finally:
        driver.quit()


@dataclass
class Page:
    """The status page in the browser. Every method blocks: run it with `in_browser`."""

    driver: WebDriver

    def open(self, url: str) -> None:
        self.driver.get(url)

    def snapshot(self) -> Snapshot:
        seen: Snapshot = self.driver.execute_script(SNAPSHOT)
        return seen

    def wait_for(self, what: str, condition: Callable[[Snapshot], bool]) -> Snapshot:
        """The page's snapshot once `condition` holds; fails with the last one after WAIT seconds."""
        deadline = time.monotonic() + WAIT
        while True:
            seen = self.snapshot()
            if condition(seen):
                return seen
            if time.monotonic() > deadline:
                raise AssertionError(f"the page never showed {what}; it showed {seen}")
            time.sleep(0.05)

    def give_token(self, token: str) -> None:
        """Typed into the token field and submitted, as an operator does."""
        from selenium.webdriver.common.by import By

        self.driver.find_element(By.ID, "token").send_keys(token)
        self.driver.find_element(By.CSS_SELECTOR, "#token-form button[type=submit]").click()

    def click(self, backend: str, word: str) -> None:
        from selenium.webdriver.common.by import By

        for row in self.driver.find_elements(By.CSS_SELECTOR, "tr[data-backend]"):
            if row.get_attribute("data-backend") == backend:
                row.find_element(By.CSS_SELECTOR, f"button[data-word={word}]").click()
                return
        raise AssertionError(f"no row for {backend!r}")

    def errors(self) -> list[dict[str, Any]]:
        """The console's errors: a script or style that the Content-Security-Policy refused is one."""
        return [entry for entry in self.driver.get_log("browser") if entry["level"] == "SEVERE"]

    def screenshot(self, path: str) -> None:
        """The whole page and no more: the viewport made as tall as its content first."""
        height = self.driver.execute_script(
            "return Math.ceil(document.body.getBoundingClientRect().bottom) + 16"
        )
        metrics = {"width": WINDOW[0], "height": height, "deviceScaleFactor": 1, "mobile": False}
        self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
        self.driver.save_screenshot(path)


async def in_browser(step: Callable[..., Any], *args: Any) -> Any:
    """A blocking selenium step in a thread, while the dispatcher serves in this trio loop."""
    return await trio.to_thread.run_sync(step, *args)


async def serve(nursery: trio.Nursery, backends: list[TestBackend], **settings: Any) -> Dispatcher:
    for backend in backends:
        await nursery.start(backend.serve)
    return await start_dispatcher(nursery, settings_for(backends, health=CHECKS, **settings))


async def open_page(browser: WebDriver, dispatcher: Dispatcher) -> Page:
    page = Page(browser)
    await in_browser(page.open, dispatcher.admin_url + "/")
    return page


def states(seen: Snapshot) -> dict[str, str]:
    return {name: row["state"] for name, row in seen["rows"].items()}


def all_up(seen: Snapshot) -> bool:
    return bool(seen["rows"]) and set(states(seen).values()) == {"up"}


async def test_the_page_shows_the_backends_and_a_drain_through_it_reaches_the_pool(
    nursery: trio.Nursery, browser: WebDriver
) -> None:
    """Chromium loads the page, sees both backends up and no button; with the token typed in, a
    click on drain makes the backend draining in the pool, and the page shows it."""
    dispatcher = await serve(nursery, [TestBackend("b1"), TestBackend("b2", load=2)], admin_token=TOKEN)
    page = await open_page(browser, dispatcher)
    seen = await in_browser(
        page.wait_for, "both backends up", lambda s: states(s) == {"b1": "up", "b2": "up"}
    )
    assert (seen["tokenForm"], seen["tokenGiven"], seen["readOnly"]) == (True, False, False)
    assert [row["buttons"] for row in seen["rows"].values()] == [[], []]
    await in_browser(page.give_token, TOKEN)
    buttons = ["drain", "maint", "ready (disabled)"]
    await in_browser(page.wait_for, "the buttons", lambda s: s["rows"]["b1"]["buttons"] == buttons)
    await in_browser(page.click, "b1", "drain")
    seen = await in_browser(page.wait_for, "b1 draining", lambda s: s["rows"]["b1"]["state"] == "draining")
    b1 = dispatcher.pool.by_name["b1"]
    assert (b1.admin, b1.state, dispatcher.pool.by_name["b2"].state) == (Admin.DRAIN, "draining", "up")
    assert seen["rows"]["b1"]["buttons"] == ["drain (disabled)", "maint", "ready"]
    assert "b1: drain done" in seen["message"]
    # The token is in this tab's sessionStorage only: not in the URL, a cookie or localStorage.
    assert (seen["stored"], seen["url"], seen["cookie"], seen["localStorage"]) == (
        TOKEN,
        dispatcher.admin_url + "/",
        "",
        0,
    )
    assert await in_browser(page.errors) == []


async def test_without_a_configured_token_the_page_is_read_only(
    nursery: trio.Nursery, browser: WebDriver
) -> None:
    """No admin token set: the page says it is read-only, offers no token field and no button."""
    dispatcher = await serve(nursery, [TestBackend("b1"), TestBackend("b2")])
    page = await open_page(browser, dispatcher)
    seen = await in_browser(page.wait_for, "both backends up", all_up)
    assert (seen["readOnly"], seen["tokenForm"], seen["tokenGiven"]) == (True, False, False)
    assert [row["buttons"] for row in seen["rows"].values()] == [[], []]


async def test_a_refused_token_changes_nothing_and_is_forgotten(
    nursery: trio.Nursery, browser: WebDriver
) -> None:
    """A wrong token: the click's 401 leaves the backend up, the page forgets the token and asks again."""
    dispatcher = await serve(nursery, [TestBackend("b1")], admin_token=TOKEN)
    page = await open_page(browser, dispatcher)
    await in_browser(page.wait_for, "b1 up", all_up)
    await in_browser(page.give_token, "not-the-token")
    await in_browser(page.click, "b1", "drain")
    seen = await in_browser(page.wait_for, "the refusal", lambda s: "refused the token" in s["message"])
    assert (seen["tokenForm"], seen["tokenGiven"], seen["stored"], seen["rows"]["b1"]["buttons"]) == (
        True,
        False,
        None,
        [],
    )
    assert (dispatcher.pool.by_name["b1"].admin, seen["rows"]["b1"]["state"]) == (Admin.READY, "up")


HOSTILE = "<img src=x onerror=\"document.title='ran'\">"


async def test_a_name_and_a_reason_are_shown_as_text_never_run(
    nursery: trio.Nursery, browser: WebDriver
) -> None:
    """A backend named like markup, whose checks fail: its name and its reason show as text, and no
    element is made of them."""
    dispatcher = await serve(nursery, [TestBackend(HOSTILE, mode="status"), TestBackend("b2")])
    page = await open_page(browser, dispatcher)
    seen = await in_browser(
        page.wait_for, "the failing check", lambda s: s["rows"].get(HOSTILE, {}).get("state") == "down"
    )
    row = seen["rows"][HOSTILE]
    assert row["name"] == HOSTILE and row["check"].startswith("fail: status")
    assert (seen["images"], seen["title"]) == (0, "dispatcher status")


def rates(seen: Snapshot) -> list[float]:
    return [float(row["rate"].replace(",", "")) for row in seen["rows"].values() if row["rate"] != "\u2013"]


# Requests a second at most: each waits for its answer, then 1 / TRAFFIC seconds.
TRAFFIC = 40


async def redirect_traffic(url: str, per_second: float) -> None:
    """Requests to the front door, each answered with a redirect, until cancelled."""
    async with httpx.AsyncClient(trust_env=False) as client:
        while True:
            await client.get(f"{url}/orders?page=2")
            await trio.sleep(1 / per_second)


async def test_a_mixed_pool_under_traffic(nursery: trio.Nursery, browser: WebDriver) -> None:
    """Up, draining and down backends, a check's failure reason, and redirects per second from the
    counters while traffic flows; with STATUS_PAGE_SCREENSHOT set, the README's screenshot."""
    backends = [
        TestBackend("web-1", load=1),
        TestBackend("web-2", load=4),
        TestBackend("web-3", load=2),
        TestBackend("web-4", mode="status"),
    ]
    dispatcher = await serve(nursery, backends, admin_token=TOKEN)
    async with httpx.AsyncClient(trust_env=False) as client:
        answer = await client.post(
            f"{dispatcher.admin_url}/backends/web-3/state",
            content=b"drain",
            headers={"authorization": f"Bearer {TOKEN}"},
        )
        assert answer.status_code == 200
    nursery.start_soon(redirect_traffic, dispatcher.url, TRAFFIC)
    page = await open_page(browser, dispatcher)
    await in_browser(page.give_token, TOKEN)
    want = {"web-1": "up", "web-2": "up", "web-3": "draining", "web-4": "down"}
    seen = await in_browser(
        page.wait_for, "the pool's states and a rate", lambda s: states(s) == want and sum(rates(s)) > 0
    )
    assert seen["summary"] == ["policy least-loaded \u00b7 4 backends: 2 up, 1 draining, 1 down"]
    assert seen["rows"]["web-4"]["check"].startswith("fail: status")
    assert sum(rates(seen)) <= TRAFFIC * 1.1  # counted on the dispatcher's clock: no more than were sent
    assert seen["rows"]["web-3"]["rate"] in ("0", "\u2013")  # draining: no new redirects
    path = os.environ.get(SCREENSHOT_ENV)
    if path:
        await in_browser(page.wait_for, "a rate for every backend", lambda s: len(rates(s)) == len(backends))
        await in_browser(page.screenshot, path)


async def test_a_pool_in_maintenance_says_so(nursery: trio.Nursery, browser: WebDriver) -> None:
    """A pool held in maintenance through the admin API: its summary says every answer is its fallback,
    and says it no more once it is ready again."""
    dispatcher = await serve(nursery, [TestBackend("web-1", load=1)], admin_token=TOKEN)
    auth = {"authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(trust_env=False) as client:
        answer = await client.post(
            f"{dispatcher.admin_url}/pools/default/state", content=b"maint", headers=auth
        )
        assert answer.status_code == 200
    page = await open_page(browser, dispatcher)
    seen = await in_browser(page.wait_for, "the pool in maintenance", lambda s: s["summary"] != [])
    assert seen["summary"][0].startswith(
        "in maintenance: every answer is its fallback \u00b7 policy least-loaded"
    )
    async with httpx.AsyncClient(trust_env=False) as client:
        await client.post(f"{dispatcher.admin_url}/pools/default/state", content=b"ready", headers=auth)
    await in_browser(page.wait_for, "the pool ready", lambda s: s["summary"][0].startswith("policy "))
