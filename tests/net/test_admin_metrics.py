"""The admin listener of the running app: /metrics (text and OpenMetrics), /healthz, /readyz.

Scrapes are parsed with prometheus-client's own parsers, so a malformed exposition fails the tests;
`promtool check metrics` lints the text format as Prometheus itself would.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import replace

import httpx
import pytest
import trio
import trio.testing
from prometheus_client.core import Metric
from prometheus_client.openmetrics import parser as openmetrics_parser
from prometheus_client.parser import text_string_to_metric_families

from dispatcher.core.health_state import VISIBLE_STATES
from dispatcher.core.pool import FAILURE_REASONS
from dispatcher.settings import config
from tests.helpers import (
    Dispatcher,
    TestBackend,
    admin_get,
    health,
    settings_for,
    start_backends,
    start_dispatcher,
    wait_all_up,
    wait_for,
    wait_for_state,
)

OPENMETRICS = "application/openmetrics-text; version=1.0.0"
SampleKey = tuple[str, tuple[tuple[str, str], ...]]


def loopback_client() -> httpx.AsyncClient:
    """A plain-HTTP client for loopback: no TLS context to build, no proxy taken from the environment."""
    return httpx.AsyncClient(verify=False, trust_env=False)


def parse_openmetrics(text: str) -> list[Metric]:
    return list(openmetrics_parser.text_string_to_metric_families(text))  # type: ignore[no-untyped-call]


def parse_samples(text: str) -> dict[SampleKey, float]:
    """Every sample of a text-format scrape by (name, sorted labels); a repeated series fails."""
    samples: dict[SampleKey, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in samples, f"series {key} exposed twice"
            samples[key] = sample.value
    return samples


async def scrape(dispatcher: Dispatcher) -> dict[SampleKey, float]:
    response = await admin_get(dispatcher, "/metrics")
    assert response.status_code == 200
    return parse_samples(response.text)


def value(samples: dict[SampleKey, float], name: str, **labels: str) -> float:
    if "backend" in labels:  # every backend's series names its pool: here the default one
        labels.setdefault("pool", "default")
    return samples[(name, tuple(sorted(labels.items())))]


def series_of(samples: dict[SampleKey, float], name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: v for (sample_name, labels), v in samples.items() if sample_name == name}


async def test_every_series_exists_from_start_at_zero(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """Before any check completes, every labelled series is there with 0; the label is the backend name."""
    named = TestBackend("named", mode="hang")
    unnamed = TestBackend("unnamed", mode="hang")
    for backend in (named, unnamed):
        await nursery.start(backend.serve)
    specs = (
        config.parse_backend("test", named.url, name="named"),
        config.parse_backend("test", unnamed.url),  # named by default: host:port
    )
    settings = replace(settings_for([]), backends=specs, health=health(interval=60.0, timeout=30.0))
    dispatcher = await start_dispatcher(nursery, settings)
    samples = await scrape(dispatcher)
    names = {"named", f"127.0.0.1:{unnamed.port}"}
    for name in names:
        assert value(samples, "dispatcher_redirects_total", backend=name) == 0
        assert value(samples, "dispatcher_backend_up", backend=name) == 0
        assert value(samples, "dispatcher_backend_load", backend=name) == 0
        for result in ("pass", "fail"):
            assert value(samples, "dispatcher_health_checks_total", backend=name, result=result) == 0
        for reason in FAILURE_REASONS:
            assert value(samples, "dispatcher_health_check_failures_total", backend=name, reason=reason) == 0
        for state in VISIBLE_STATES:
            shown = value(samples, "dispatcher_backend_state", backend=name, state=state)
            assert shown == (1 if state == "down" else 0)
        assert value(samples, "dispatcher_health_check_duration_seconds_count", backend=name) == 0
        assert value(samples, "dispatcher_health_check_duration_seconds_sum", backend=name) == 0
        buckets = series_of(samples, "dispatcher_health_check_duration_seconds_bucket")
        mine = [v for labels, v in buckets.items() if ("backend", name) in labels]
        assert len(mine) > 1 and set(mine) == {0}
    labelled = {dict(labels)["backend"] for (_, labels) in samples if "backend" in dict(labels)}
    assert labelled == names
    assert value(samples, "dispatcher_responses_total", code="307") == 0
    assert value(samples, "dispatcher_responses_total", code="503") == 0
    assert value(samples, "dispatcher_open_connections") == 0
    assert all(
        pool_backend.checks_passed + pool_backend.checks_failed == 0
        for pool_backend in dispatcher.pool.backends
    )


async def test_redirects_and_responses_are_counted(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """After N redirects to one backend, its redirects_total and responses_total{code="307"} are N."""
    backends = await start_backends(nursery, 0, 100)  # b1 is far less loaded: it gets all 5
    dispatcher = await start_dispatcher(nursery, settings_for([*backends]))
    await wait_all_up(dispatcher)
    async with loopback_client() as client:
        for i in range(5):
            response = await client.get(f"{dispatcher.url}/job/{i}")
            assert response.status_code == 307
            assert response.headers["location"] == f"{backends[0].url}/job/{i}"
    samples = await scrape(dispatcher)
    assert value(samples, "dispatcher_redirects_total", backend="b1") == 5
    assert value(samples, "dispatcher_redirects_total", backend="b2") == 0
    assert value(samples, "dispatcher_responses_total", code="307") == 5
    assert value(samples, "dispatcher_backend_load", backend="b1") == 0
    assert value(samples, "dispatcher_backend_load", backend="b2") == 100
    for backend in dispatcher.pool.backends:
        passed = value(samples, "dispatcher_health_checks_total", backend=backend.name, result="pass")
        assert passed == backend.checks_passed >= 1
        count = value(samples, "dispatcher_health_check_duration_seconds_count", backend=backend.name)
        assert count == backend.checks_passed + backend.checks_failed


async def test_backend_up_and_check_counters_follow_the_state(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """backend_up and the state-set flip with the backend's state; the check counters count each result."""
    [backend] = await start_backends(nursery, 3)
    dispatcher = await start_dispatcher(nursery, settings_for([backend], health=health(fall=3, rise=2)))
    await wait_for_state(dispatcher.pool, "b1", "up")
    samples = await scrape(dispatcher)
    assert value(samples, "dispatcher_backend_up", backend="b1") == 1
    assert value(samples, "dispatcher_backend_state", backend="b1", state="up") == 1
    assert value(samples, "dispatcher_backend_load", backend="b1") == 3
    backend.mode = "status"
    await wait_for_state(dispatcher.pool, "b1", "down")
    samples = await scrape(dispatcher)
    assert value(samples, "dispatcher_backend_up", backend="b1") == 0
    assert value(samples, "dispatcher_backend_state", backend="b1", state="down") == 1
    assert value(samples, "dispatcher_backend_state", backend="b1", state="up") == 0
    assert value(samples, "dispatcher_health_checks_total", backend="b1", result="pass") == 1
    assert value(samples, "dispatcher_health_checks_total", backend="b1", result="fail") == 3
    assert value(samples, "dispatcher_health_check_failures_total", backend="b1", reason="status") == 3
    backend.mode = "ok"
    await wait_for_state(dispatcher.pool, "b1", "up")
    samples = await scrape(dispatcher)
    assert value(samples, "dispatcher_backend_up", backend="b1") == 1
    assert value(samples, "dispatcher_health_checks_total", backend="b1", result="pass") == 3


async def test_check_duration_histogram_observes_the_timeout(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """A check that times out is observed in the duration histogram with the timeout as its duration."""
    backend = TestBackend("slow", mode="hang")
    await nursery.start(backend.serve)
    dispatcher = await start_dispatcher(nursery, settings_for([backend], health=health(timeout=1.0)))
    slow = dispatcher.pool.by_name["slow"]
    await wait_for(dispatcher.pool, lambda: slow.checks_failed == 1)
    samples = await scrape(dispatcher)
    assert value(samples, "dispatcher_health_check_duration_seconds_count", backend="slow") == 1
    assert value(samples, "dispatcher_health_check_duration_seconds_sum", backend="slow") == 1.0
    bucket = "dispatcher_health_check_duration_seconds_bucket"
    assert value(samples, bucket, backend="slow", le="0.5") == 0
    assert value(samples, bucket, backend="slow", le="1.0") == 1
    assert value(samples, "dispatcher_health_check_failures_total", backend="slow", reason="timeout") == 1


async def test_open_connections_counts_client_connections(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """dispatcher_open_connections is 1 while a client keeps its connection, 0 once it closes."""
    backends = await start_backends(nursery, 0)
    dispatcher = await start_dispatcher(nursery, settings_for([*backends]))
    await wait_all_up(dispatcher)
    async with loopback_client() as client:
        assert (await client.get(dispatcher.url)).status_code == 307
        assert value(await scrape(dispatcher), "dispatcher_open_connections") == 1
    await trio.testing.wait_all_tasks_blocked()
    assert value(await scrape(dispatcher), "dispatcher_open_connections") == 0


async def test_promtool_accepts_the_exposition(nursery: trio.Nursery) -> None:
    """`promtool check metrics` finds nothing to complain about in a scrape after real traffic."""
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI") == "true":
            pytest.fail("promtool is not installed, and CI must run this test")
        pytest.skip("promtool is not installed")
    backends = await start_backends(nursery, 0, 2)
    dispatcher = await start_dispatcher(nursery, settings_for([*backends]))
    await wait_all_up(dispatcher)
    async with loopback_client() as client:
        for _ in range(3):
            assert (await client.get(dispatcher.url)).status_code == 307
    response = await admin_get(dispatcher, "/metrics")
    assert "dispatcher_redirects_total" in response.text
    checked = await trio.run_process(
        [promtool, "check", "metrics"],
        stdin=response.content,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    report = (checked.stdout + checked.stderr).decode()
    assert checked.returncode == 0, report
    assert report.strip() == "", report


async def test_openmetrics_when_the_scraper_asks(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """An OpenMetrics Accept header gets OpenMetrics (content type, `# EOF`); the default is text 0.0.4."""
    backends = await start_backends(nursery, 0)
    dispatcher = await start_dispatcher(nursery, settings_for([*backends]))
    await wait_all_up(dispatcher)
    response = await admin_get(dispatcher, "/metrics", {"accept": OPENMETRICS})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
    assert response.text.endswith("# EOF\n")
    families = {family.name: family for family in parse_openmetrics(response.text)}
    assert families["dispatcher_redirects"].type == "counter"
    assert families["dispatcher_health_check_duration_seconds"].type == "histogram"
    assert any(s.labels.get("backend") == "b1" for s in families["dispatcher_backend_up"].samples)
    plain = await admin_get(dispatcher, "/metrics")
    assert plain.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert "# EOF" not in plain.text


async def test_healthz_readyz_and_unknown_paths(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """/healthz is always 200; /readyz is 200 only while a backend is up, else 503; other paths 404."""
    [backend] = await start_backends(nursery, 0)
    backend.mode = "status"
    dispatcher = await start_dispatcher(nursery, settings_for([backend], health=health(fall=1, rise=1)))
    pool = dispatcher.pool
    assert (await admin_get(dispatcher, "/readyz")).status_code == 503  # its first check fails
    assert (await admin_get(dispatcher, "/healthz")).status_code == 200
    backend.mode = "ok"
    await wait_for_state(pool, "b1", "up")
    assert (await admin_get(dispatcher, "/readyz")).status_code == 200
    assert (await admin_get(dispatcher, "/healthz")).status_code == 200
    backend.mode = "status"
    await wait_for_state(pool, "b1", "down")
    assert (await admin_get(dispatcher, "/readyz")).status_code == 503
    assert (await admin_get(dispatcher, "/healthz")).status_code == 200
    for path in ("/nope", "/metrics/extra", "/metricsz", "/status/x"):
        assert (await admin_get(dispatcher, path)).status_code == 404, path
