"""Admin safety: no open admin listener off loopback by accident, and a log line for every state change."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import httpx
import pytest
import trio

from dispatcher.settings.config import ConfigError, Settings
from dispatcher.wiring.cli import build_parser, load_settings
from tests.helpers import settings_for, start_backends, start_dispatcher, unused_port, wait_all_up

TOKEN = "s3cret-token"


@pytest.fixture(autouse=True)
def no_token_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DISPATCHER_ADMIN_TOKEN", raising=False)


def settings_of(*args: str) -> Settings:
    return load_settings(build_parser().parse_args([*args, "--backend=http://127.0.0.1:1"]))


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "[::]", "admin.example"])
def test_an_admin_listener_off_loopback_without_a_token_is_refused(host: str) -> None:
    """Off loopback, no token, no --admin-insecure: a ConfigError naming the flag and the way out."""
    with pytest.raises(ConfigError) as caught:
        settings_of(f"--admin-listen={host}:8081")
    assert caught.value.key == "--admin-listen"
    assert "--admin-token" in caught.value.reason
    assert "admin_token" in caught.value.reason and "--admin-insecure" in caught.value.reason


@pytest.mark.parametrize(
    "args",
    [
        ["--admin-listen=127.0.0.1:8081"],
        ["--admin-listen=127.8.9.10:8081"],
        ["--admin-listen=[::1]:8081"],
        ["--admin-listen=localhost:8081"],
        ["--admin-listen=0.0.0.0:8081", f"--admin-token={TOKEN}"],
        ["--admin-listen=0.0.0.0:8081", "--admin-insecure"],
    ],
    ids=["loopback", "loopback-net", "v6-loopback", "localhost", "token", "insecure"],
)
def test_loopback_a_token_or_admin_insecure_is_accepted(args: list[str]) -> None:
    """Loopback needs nothing; elsewhere a token, or saying it is meant, lets it start."""
    settings_of(*args)


def test_the_token_from_the_environment_and_admin_insecure_in_the_file_count(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """DISPATCHER_ADMIN_TOKEN is a token; `admin_insecure = true` in the file is --admin-insecure."""
    config = tmp_path / "dispatcher.toml"
    config.write_text('admin_listen = "0.0.0.0:8081"\nadmin_insecure = true\n')
    settings_of(f"--config={config}")
    monkeypatch.setenv("DISPATCHER_ADMIN_TOKEN", TOKEN)
    settings_of("--admin-listen=0.0.0.0:8081")


async def test_the_process_refuses_to_start_in_one_line() -> None:
    """The refusal is one line on stderr and exit status 2, before anything is bound."""
    port = unused_port()
    command = [sys.executable, "-m", "dispatcher", f"--listen=127.0.0.1:{port}", "--admin-listen=0.0.0.0:0"]
    with trio.fail_after(20):
        result = await trio.run_process(
            [*command, "--backend=http://127.0.0.1:1"], check=False, capture_stderr=True
        )
    stderr = result.stderr.decode()
    assert result.returncode == 2
    assert stderr.startswith("dispatcher: --admin-listen = '0.0.0.0:0': not loopback and no admin_token")
    assert len(stderr.splitlines()) == 1


def admin_lines(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "dispatcher.admin"]


async def test_every_state_change_request_is_logged_with_who_what_and_result(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    """Done: one INFO line; refused (no token, unknown backend, bad word): one WARNING line each, with
    the peer's address, the route, the word asked for and the status."""
    caplog.set_level(logging.INFO, logger="dispatcher")
    backends = await start_backends(nursery, 0)
    dispatcher = await start_dispatcher(nursery, settings_for(backends, admin_token=TOKEN))
    await wait_all_up(dispatcher)
    url = f"{dispatcher.admin_url}/backends"
    good = {"authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(trust_env=False) as client:
        answers = [
            await client.post(f"{url}/b1/state", content="drain", headers=good),
            await client.post(f"{url}/b1/state", content="drain"),
            await client.post(f"{url}/nope/state", content="drain", headers=good),
            await client.post(f"{url}/b1/state", content="explode", headers=good),
            await client.get(url),  # not a change: not logged
        ]
    assert [answer.status_code for answer in answers] == [200, 401, 404, 400, 200]
    lines = admin_lines(caplog)
    assert [level for level, _ in lines] == [logging.INFO] + [logging.WARNING] * 3
    for (_, line), route, word, status in zip(
        lines,
        ["/backends/b1/state", "/backends/b1/state", "/backends/nope/state", "/backends/b1/state"],
        ["drain", "drain", "drain", "explode"],
        [200, 401, 404, 400],
        strict=True,
    ):
        assert line.startswith("admin request from 127.0.0.1:"), line
        assert f": POST {route} '{word}': {status}, " in line, line
    assert lines[0][1].endswith("backend b1 is draining (was up)")
