"""Per-backend health settings (HAProxy's per-server `inter`, `rise`, `fall`): a [[backends]] entry's
`health` table, checked as [health] is, resolved over the global settings into `BackendSpec.health`."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import pytest
import trio

from dispatcher.settings.config import ConfigError, HealthSettings, Settings, apply, parse_toml, warnings
from dispatcher.wiring.cli import build_parser, load_settings
from tests.helpers import health, settings_for, start_backends, start_dispatcher

FILE = """
[health]
interval = "2s"
timeout = "1s"
jitter = 0.2
[[backends]]
url = "http://10.0.0.11:8080"
name = "slow"
health = { path = "/ping", interval = "10s", timeout = "3s", rise = 1, fall = 5 }
[[backends]]
url = "http://10.0.0.12:8080"
name = "plain"
[[backends]]
url = "http://10.0.0.13:8080"
name = "subtable"
[backends.health]
interval = "500ms"
"""


def by_name(settings: Settings) -> dict[str, HealthSettings]:
    return {spec.name: spec.health for spec in settings.backends}


def test_a_backend_sets_its_own_health_over_the_global_ones() -> None:
    """Its own keys win, the others (jitter, ca_file included) are the global [health]'s."""
    settings = apply(Settings(), parse_toml(FILE))
    healths = by_name(settings)
    assert healths["slow"] == replace(
        settings.health, path="/ping", interval=10.0, timeout=3.0, rise=1, fall=5
    )
    assert healths["plain"] == settings.health == HealthSettings(jitter=0.2)
    assert healths["subtable"] == replace(settings.health, interval=0.5)


def test_the_global_health_reaches_every_key_a_backend_does_not_set() -> None:
    """A later [health] (a flag, a reload) changes what a backend inherits, never what it set."""
    settings = apply(Settings(), parse_toml(FILE))
    changed = replace(settings, health=replace(settings.health, timeout=0.25, rise=4))
    healths = by_name(changed)
    assert (healths["slow"].timeout, healths["slow"].rise) == (3.0, 1)
    assert (healths["subtable"].interval, healths["subtable"].timeout, healths["subtable"].rise) == (
        0.5,
        0.25,
        4,
    )
    assert healths["plain"] == changed.health


def test_flags_lay_the_global_health_under_the_files_backends(tmp_path: Path) -> None:
    """--health-timeout reaches the backends that do not set a timeout; --backend flags have none."""
    path = tmp_path / "dispatcher.toml"
    path.write_text(FILE)
    settings = load_settings(build_parser().parse_args([f"--config={path}", "--health-timeout=250ms"]))
    assert {name: h.timeout for name, h in by_name(settings).items()} == {
        "slow": 3.0,
        "plain": 0.25,
        "subtable": 0.25,
    }
    flagged = load_settings(build_parser().parse_args([f"--config={path}", "--backend=http://10.0.0.9:80"]))
    assert [spec.health for spec in flagged.backends] == [flagged.health]


@pytest.mark.parametrize(
    ("entry", "key"),
    [
        ("health = { interval = -1 }", "backends[0].health.interval"),
        ('health = { interval = "1 fortnight" }', "backends[0].health.interval"),
        ('health = { timeout = "0s" }', "backends[0].health.timeout"),
        ('health = { path = "ping" }', "backends[0].health.path"),
        ("health = { rise = 0 }", "backends[0].health.rise"),
        ("health = { fall = 1.5 }", "backends[0].health.fall"),
        ("health = { bogus = 1 }", "backends[0].health.bogus"),
        ("health = { jitter = 0.5 }", "backends[0].health.jitter"),
        ('health = { ca_file = "/etc/ca.pem" }', "backends[0].health.ca_file"),
        ('health = "fast"', "backends[0].health"),
    ],
)
def test_a_bad_backend_health_value_names_its_key(entry: str, key: str) -> None:
    """Each key is checked as [health]'s is, and the error names the backend's key, in one line."""
    with pytest.raises(ConfigError) as caught:
        apply(Settings(), parse_toml(f'[[backends]]\nurl = "http://a"\n{entry}\n'))
    assert caught.value.key == key
    assert "\n" not in str(caught.value)


def test_the_error_names_the_backend_by_its_place() -> None:
    """The second backend's bad interval is `backends[1].health.interval`."""
    text = '[[backends]]\nurl = "http://a"\n[[backends]]\nurl = "http://b"\nhealth = { interval = "soon" }\n'
    with pytest.raises(ConfigError) as caught:
        apply(Settings(), parse_toml(text))
    assert str(caught.value).startswith("backends[1].health.interval = 'soon': expected a duration")


def test_what_only_the_global_health_sets_says_where_it_goes() -> None:
    """jitter and ca_file are for every backend at once: the error says to set them in [health]."""
    with pytest.raises(ConfigError) as caught:
        apply(Settings(), parse_toml('[[backends]]\nurl = "http://a"\nhealth = { jitter = 0.5 }\n'))
    assert str(caught.value) == "backends[0].health.jitter = 0.5: set for every backend at once, in [health]"


SLOW = (
    "health.timeout (3s) is not shorter than health.interval (2s): a backend that hangs is checked once "
    "per timeout, not per interval, and is marked down only after fall x timeout (9s); make the timeout "
    "shorter"
)


def test_a_backend_timeout_not_shorter_than_its_interval_is_warned_about() -> None:
    """The warning names the backend by place and name; one that sets neither key is the global's."""
    text = (
        '[[backends]]\nurl = "http://a"\nname = "a"\nhealth = { timeout = "3s" }\n'
        '[[backends]]\nurl = "http://b"\nname = "b"\nhealth = { rise = 5 }\n'
        '[[backends]]\nurl = "http://c"\nname = "c"\nhealth = { interval = "5s", timeout = "3s" }\n'
    )
    assert warnings(apply(Settings(), parse_toml(text))) == [f"backends[0] (a): {SLOW}"]


def backend_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "backends[" in r.getMessage()
    ]


def with_own_health(settings: Settings, **own: object) -> Settings:
    """`settings` with its one backend setting `own` health keys, as its [[backends]] entry would."""
    [spec] = settings.backends
    return replace(settings, backends=(replace(spec, health_overrides=tuple(sorted(own.items()))),))


async def test_the_backend_warning_comes_at_start_and_at_each_reload_that_keeps_it(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    """As the global one does: at start, again at a reload that keeps it, not once it is fixed."""
    backends = await start_backends(nursery, 0)
    settings = settings_for(backends, health=health(interval=2.0, timeout=1.0))
    slow = with_own_health(settings, timeout=3.0)
    dispatcher = await start_dispatcher(nursery, slow)
    dispatcher.running.reload(slow)
    dispatcher.running.reload(settings)
    assert backend_warnings(caplog) == [f"backends[0] (b1): {SLOW}"] * 2


async def test_a_reload_changes_a_backends_own_health_and_keeps_the_backend(nursery: trio.Nursery) -> None:
    """SIGHUP's settings: the same backend (its state kept) now carries its new own health settings."""
    backends = await start_backends(nursery, 0)
    settings = settings_for(backends)
    dispatcher = await start_dispatcher(nursery, settings)
    [backend] = dispatcher.pool.backends
    assert backend.spec.health == settings.health
    dispatcher.running.reload(with_own_health(settings, interval=5.0, fall=7))
    [kept] = dispatcher.pool.backends
    assert kept is backend
    assert backend.spec.health == replace(settings.health, interval=5.0, fall=7)
