"""Prometheus' own tools against the dispatcher: promtool on /metrics and on deploy/prometheus/, and a
real Prometheus server scraping a dispatcher that runs in this process.

Each test needs the `prometheus` or `promtool` binary. Without it the test is skipped, except in CI
(CI=true), where .ci/run installs them and a missing binary is a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio

from tests.helpers import (
    Dispatcher,
    health,
    settings_for,
    start_backends,
    start_dispatcher,
    unused_port,
    wait_all_up,
)

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
# How long Prometheus may take to start, scrape and answer the query; it scrapes every second.
PROMETHEUS_PATIENCE = 30.0


def require_tool(name: str) -> str:
    """The path of `name`; skip without it, but fail in CI, where it must have been installed."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is not installed, and CI=true requires it")
        pytest.skip(f"{name} is not installed")
    return path


@pytest.fixture
def promtool() -> str:
    """Resolved at set-up, so that a skip keeps its reason (not wrapped by the test's nursery)."""
    return require_tool("promtool")


@pytest.fixture
def prometheus() -> str:
    return require_tool("prometheus")


async def run_tool(*argv: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process(argv, stdin=stdin, capture_stdout=True, capture_stderr=True, check=False)


def output(result: subprocess.CompletedProcess[bytes]) -> str:
    return (result.stdout + result.stderr).decode(errors="replace")


async def test_promtool_check_metrics_passes(nursery: trio.Nursery, promtool: str) -> None:
    """`promtool check metrics` finds no problem in /metrics (text format) after redirects."""
    backends = await start_backends(nursery, 0, 5)
    dispatcher = await start_dispatcher(nursery, settings_for([*backends], health=health(interval=3600)))
    with trio.fail_after(10):
        await wait_all_up(dispatcher)
    async with httpx.AsyncClient(follow_redirects=False) as client:
        for _ in range(3):
            assert (await client.get(f"{dispatcher.url}/x")).status_code == 307
        response = await client.get(f"{dispatcher.admin_url}/metrics", headers={"accept": "text/plain"})
    assert response.headers["content-type"].startswith("text/plain")
    result = await run_tool(promtool, "check", "metrics", stdin=response.content)
    assert result.returncode == 0, output(result)


async def test_promtool_alert_rule_tests_pass(promtool: str) -> None:
    """`promtool test rules deploy/prometheus/alerts_test.yml` passes."""
    result = await run_tool(promtool, "test", "rules", str(DEPLOY / "alerts_test.yml"))
    assert result.returncode == 0, output(result)
    assert "SUCCESS" in output(result)


async def test_promtool_check_config_passes(promtool: str) -> None:
    """`promtool check config deploy/prometheus/prometheus.yml` passes, rule files included."""
    result = await run_tool(promtool, "check", "config", str(DEPLOY / "prometheus.yml"))
    assert result.returncode == 0, output(result)
    assert "alerts.yml" in output(result)  # it found and checked the rule file too


def _scrape_config(admin_port: int) -> str:
    return f"""
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: dispatcher
    static_configs:
      - targets: ["127.0.0.1:{admin_port}"]
"""


async def _query(client: httpx.AsyncClient, api: str, query: str) -> float | None:
    """The single value of an instant query; None while Prometheus is not up or has no sample."""
    try:
        response = await client.get(f"{api}/api/v1/query", params={"query": query})
    except httpx.TransportError:
        return None  # not listening yet
    if response.status_code != 200:
        return None
    result = response.json()["data"]["result"]
    return float(result[0]["value"][1]) if len(result) == 1 else None


async def _wait_for_scrape(api: str, redirects: int) -> tuple[float | None, float | None]:
    """Poll Prometheus until it has scraped `redirects` redirects and the target is up, or give up.

    Prometheus is an external process with its own clock and schedule: there is no event to wait on,
    so this polls with a short real sleep, bounded by PROMETHEUS_PATIENCE.
    """
    total = up = None
    async with httpx.AsyncClient() as client:
        with trio.move_on_after(PROMETHEUS_PATIENCE):
            while total != redirects or up != 1:
                total = await _query(client, api, "sum(dispatcher_redirects_total)")
                up = await _query(client, api, 'up{job="dispatcher"}')
                if total != redirects or up != 1:
                    await trio.sleep(0.2)
    return total, up


async def _send_redirects(dispatcher: Dispatcher, count: int) -> None:
    async with httpx.AsyncClient(follow_redirects=False) as client:
        for i in range(count):
            response = await client.get(f"{dispatcher.url}/item/{i}")
            assert response.status_code == 307


async def test_prometheus_scrapes_the_redirect_count(nursery: trio.Nursery, prometheus: str) -> None:
    """A real Prometheus scraping the admin listener sees target up and sum(redirects) == requests."""
    backends = await start_backends(nursery, 0, 3, 6)
    dispatcher = await start_dispatcher(nursery, settings_for([*backends]))
    with trio.fail_after(10):
        await wait_all_up(dispatcher)
    requests = 37
    await _send_redirects(dispatcher, requests)

    port = unused_port()
    with tempfile.TemporaryDirectory(prefix="dispatcher-prometheus-") as tmp:
        workdir = Path(tmp)
        (workdir / "prometheus.yml").write_text(_scrape_config(dispatcher.admin_port))
        argv = [
            prometheus,
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ]
        with open(workdir / "prometheus.log", "wb") as log:
            async with trio.open_nursery() as server:
                process: trio.Process = await server.start(
                    partial(trio.run_process, argv, check=False, stdout=log, stderr=log, deliver_cancel=_kill)
                )
                try:
                    total, up = await _wait_for_scrape(f"http://127.0.0.1:{port}", requests)
                finally:
                    server.cancel_scope.cancel()  # kills it; run_process waits for it to exit
        assert process.returncode is not None
        diagnosis = (workdir / "prometheus.log").read_text(errors="replace")[-3000:]
        assert up == 1, diagnosis
        assert total == requests, diagnosis
    assert not workdir.exists()


async def _kill(process: trio.Process) -> None:
    process.kill()
