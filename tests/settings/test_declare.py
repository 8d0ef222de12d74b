"""Each setting is declared once, as a field of `Settings`; the TOML keys, the flags, their help and
the defaults written for a reader all come from that declaration."""

from __future__ import annotations

import dataclasses

import pytest

from dispatcher.settings.config import DnsSettings, HealthSettings, Settings, apply, declared_settings
from dispatcher.settings.declare import DERIVED, SETTING, TABLE, Declared
from dispatcher.wiring.cli import build_parser

DECLARED = list(declared_settings())
# The tables of tables ([pools.NAME], [[routes]]) are the file's alone: no flag could say them.
FLAGGED = [d for d in DECLARED if not d.setting.toml_only]
# The command line's own flags: not settings of the file.
CLI_ONLY = {
    "-h",
    "--help",
    "-V",
    "--version",
    "--config",
    "--log-level",
    "--log-format",
    "--demo",
    "--check-config",
}


def test_every_field_of_the_settings_is_declared() -> None:
    """A field without a declaration would have no TOML key, no flag and no help: none has, but those
    derived from a setting that has them (the backends found in DNS, from the backend list)."""
    for cls in (Settings, HealthSettings, DnsSettings):
        bare = [f.name for f in dataclasses.fields(cls) if not {SETTING, TABLE, DERIVED} & set(f.metadata)]
        assert bare == [], cls
        sources = [f.metadata[DERIVED] for f in dataclasses.fields(cls) if DERIVED in f.metadata]
        assert all(SETTING in cls.__dataclass_fields__[source].metadata for source in sources), cls


def test_the_parser_has_a_flag_for_each_declared_setting_and_its_own() -> None:
    """The parser's flags are the declared ones and the command line's own, each once."""
    flags = [flag for action in build_parser()._actions for flag in action.option_strings]
    assert len(flags) == len(set(flags))
    assert set(flags) == {d.flag for d in FLAGGED} | CLI_ONLY


@pytest.mark.parametrize("declared", FLAGGED, ids=[d.key for d in FLAGGED])
def test_the_default_shown_is_the_default(declared: Declared) -> None:
    """What --help and the README write as the default reads back, as a flag, to the default itself."""
    if declared.shown is None:
        return
    text = declared.setting.kind.text(declared.shown)
    read = apply(Settings(), declared.table(text))
    for part in declared.key.split("."):
        read = getattr(read, part)
    assert read == declared.default


@pytest.mark.parametrize("declared", FLAGGED, ids=[d.key for d in FLAGGED])
def test_help_gives_each_flag_its_declared_default(declared: Declared) -> None:
    """`--health-interval DURATION ... (default 2s)`: the help line is the declaration's."""
    [action] = [a for a in build_parser()._actions if declared.flag in a.option_strings]
    assert action.help is not None
    assert action.help.replace("%%", "%").startswith(declared.setting.help)
    shown = f"(default {declared.shown})"
    assert action.help.endswith(shown) == (declared.shown is not None)


def test_keys_and_flags_are_named_as_before() -> None:
    """The TOML keys and flags users' files and scripts name: `health.rise` is still `--rise`."""
    names = {d.key: d.flag for d in DECLARED}
    assert names["health.rise"] == "--rise"
    assert names["health.ca_file"] == "--health-ca-file"
    assert names["backends"] == "--backend"
    assert names["max_discard"] == "--max-discard"
