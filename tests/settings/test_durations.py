"""Durations with units (`2s`, `500ms`, `1m`) in flags and TOML, and the warning for a check timeout
that is not shorter than its interval."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

import pytest
import trio

from dispatcher.settings.config import (
    ConfigError,
    Settings,
    apply,
    format_duration,
    parse_duration,
    parse_toml,
)
from dispatcher.wiring.cli import build_parser, load_settings
from tests.helpers import health, settings_for, start_backends, start_dispatcher

# Every duration setting: TOML table, key, flag, and where it lands in Settings.
DURATIONS: list[tuple[str | None, str, str, Callable[[Settings], float]]] = [
    ("health", "interval", "--health-interval", lambda s: s.health.interval),
    ("health", "timeout", "--health-timeout", lambda s: s.health.timeout),
    (None, "header_timeout", "--header-timeout", lambda s: s.header_timeout),
    (None, "keepalive_timeout", "--keepalive-timeout", lambda s: s.keepalive_timeout),
    (None, "grace_period", "--grace-period", lambda s: s.grace_period),
    (None, "slow_start", "--slow-start", lambda s: s.slow_start),
]
IDS = [key for _, key, _, _ in DURATIONS]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("2s", 2.0),
        ("500ms", 0.5),
        ("1m", 60.0),
        ("1.5s", 1.5),
        ("1h", 3600.0),
        ("2", 2.0),
        (" 75 s", 75.0),
        (2, 2.0),
        (0.25, 0.25),
    ],
)
def test_durations_read_units_and_bare_numbers_are_seconds(text: object, seconds: float) -> None:
    """ms, s, m, h; a number, or a string without a unit, is seconds."""
    assert parse_duration("k", text) == seconds


@pytest.mark.parametrize(
    "text", ["2 parsecs", "1.5.5s", "s", "", "--1s", "- 1s", "1s500ms", "inf", True, None]
)
def test_a_duration_that_is_not_one_names_its_key(text: object) -> None:
    """Anything else is a ConfigError naming the key."""
    with pytest.raises(ConfigError) as caught:
        parse_duration("health.interval", text)
    assert caught.value.key == "health.interval"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(10.0, "10s"), (0.5, "0.5s"), (0.1 + 0.2, "0.3s"), (90.0, "90s"), (365 * 86400.0, "31536000s")],
)
def test_a_duration_is_written_as_the_config_could_write_it(seconds: float, text: str) -> None:
    """Seconds with a unit, in plain digits however long (a year of HSTS), and read back the same."""
    assert format_duration(seconds) == text
    assert parse_duration("k", text) == pytest.approx(seconds)


def test_a_negative_duration_is_read_as_the_number_is() -> None:
    """`"-1s"` reads as -1.0, as TOML's `-1` does: out of range, not unreadable, for the range check."""
    assert parse_duration("k", "-1s") == parse_duration("k", -1) == -1.0
    assert parse_duration("k", "-500ms") == -0.5


@pytest.mark.parametrize(("table", "key", "flag", "read"), DURATIONS, ids=IDS)
@pytest.mark.parametrize("form", ["word", "equals", "toml"])
def test_a_negative_duration_is_out_of_range_naming_its_flag_or_key(
    table: str | None, key: str, flag: str, read: Callable[[Settings], float], form: str
) -> None:
    """`--header-timeout -1s` (two words, or `=-1s`) and `header_timeout = "-1s"`: the range the setting
    takes, as for `0s`, not argparse's "expected one argument" nor "expected a duration"."""
    if form == "toml":
        line = f'{key} = "-1s"'
        with pytest.raises(ConfigError) as caught:
            apply(Settings(), parse_toml(f"[{table}]\n{line}\n" if table else f"{line}\n"))
        name = f"{table}.{key}" if table else key
    else:
        words = [flag, "-1s"] if form == "word" else [f"{flag}=-1s"]
        with pytest.raises(ConfigError) as caught:
            load_settings(build_parser().parse_args([*words, "--backend=http://127.0.0.1:1"]))
        name = flag
    least = "of at least 0" if key == "slow_start" else "greater than 0"
    assert str(caught.value) == f"{name} = '-1s': must be a duration {least}"


@pytest.mark.parametrize(("table", "key", "flag", "read"), DURATIONS, ids=IDS)
def test_every_duration_setting_takes_units_in_toml(
    table: str | None, key: str, flag: str, read: Callable[[Settings], float]
) -> None:
    """`interval = "500ms"` in [health], `grace_period = "1m"` at the top: seconds in Settings."""
    line = f'{key} = "1.5m"'
    text = f"[{table}]\n{line}\n" if table else f"{line}\n"
    assert read(apply(Settings(), parse_toml(text))) == 90.0


@pytest.mark.parametrize(("table", "key", "flag", "read"), DURATIONS, ids=IDS)
def test_every_duration_flag_takes_units(
    table: str | None, key: str, flag: str, read: Callable[[Settings], float]
) -> None:
    """`--health-timeout 500ms` and the like; a bad one is an error naming the flag."""
    args = build_parser().parse_args([f"{flag}=500ms", "--backend=http://127.0.0.1:1"])
    assert read(load_settings(args)) == 0.5
    with pytest.raises(ConfigError) as caught:
        load_settings(build_parser().parse_args([f"{flag}=5 fortnights"]))
    assert (caught.value.key, caught.value.value) == (flag, "5 fortnights")


def timeout_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "health.timeout" in r.getMessage()
    ]


async def test_a_timeout_not_shorter_than_the_interval_warns_at_start_and_reload(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    """timeout >= interval: a warning at start and at each reload that keeps it, none once it is fixed."""
    backends = await start_backends(nursery, 0)
    settings = settings_for(backends, health=health(interval=2.0, timeout=2.0))
    dispatcher = await start_dispatcher(nursery, settings)
    assert timeout_warnings(caplog) == [
        "health.timeout (2s) is not shorter than health.interval (2s): a backend that hangs is checked once "
        "per timeout, not per interval, and is marked down only after fall x timeout (6s); make the timeout "
        "shorter"
    ]
    caplog.clear()
    dispatcher.running.reload(replace(settings, health=health(interval=1.0, timeout=1.5)))
    assert len(timeout_warnings(caplog)) == 1
    caplog.clear()
    dispatcher.running.reload(replace(settings, health=health(interval=2.0, timeout=1.0)))
    assert timeout_warnings(caplog) == []


@pytest.mark.parametrize(("table", "key", "flag", "_"), DURATIONS, ids=IDS)
@pytest.mark.parametrize("value", ["1e300", "inf", "nan", '"1000000h"'])
def test_a_duration_past_68_years_is_refused_in_the_file(
    table: str | None, key: str, flag: str, _: Callable[[Settings], float], value: str
) -> None:
    """2^31 - 1 seconds at most, as a client's delay-seconds: `retry_after = 1e300` had become a
    Retry-After of 301 digits, and 1e400 (inf in TOML) a reason saying it was not greater than 0."""
    text = f"[{table}]\n{key} = {value}\n" if table else f"{key} = {value}\n"
    with pytest.raises(ConfigError) as caught:
        apply(Settings(), parse_toml(text))
    assert caught.value.reason == "must be a duration of at most 68 years (2147483647s)"


def test_the_longest_duration_is_taken() -> None:
    assert parse_duration("k", 2**31 - 1) == 2**31 - 1
    assert parse_duration("k", "1h") == 3600.0
