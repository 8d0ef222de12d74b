"""Declare: each setting is declared once, as a field of `Settings`, and read from that field by all.

A field says its name (the TOML key; in a table such as [health], `health.<name>`), its type and
default (Python's own), and in its metadata the rest: the `Kind` of value it holds (how TOML's value is
checked, how a flag's text is read, how the default is written back), the help line, the flag when it
is not `--<key>`, and whether a [[backends]] entry may set it for that backend alone. `config` lays a
TOML table over those fields (`lay`); the CLI makes its flags from them and the README's check reads
their defaults (`declared`). Precedent: `dataclasses.field(metadata=)`, which the standard library
keeps for such uses.

Owns: `Kind`, `Setting`, the field specifiers `setting()`, `table()` and `derived()`, `declared()` and
`lay()`.
Rules: no I/O; names no particular setting (that is `config`'s catalogue).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeVar

from dispatcher.settings.values import ConfigError, unknown_setting

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T")
D = TypeVar("D", bound="DataclassInstance")
Parse = Callable[[str, Any], Any]

SETTING = "dispatcher.setting"  # the metadata key of a setting's declaration
TABLE = "dispatcher.table"  # the metadata key of a field that is a table of settings ([health])
DERIVED = "dispatcher.derived"  # the metadata key of a field filled from another setting's value


@dataclass(frozen=True, slots=True)
class Kind:
    """A kind of value: a duration, a count, an address... and how each side reads and writes it."""

    parse: Parse  # (key, value from TOML or `text`) -> the value Settings holds, or a ConfigError
    metavar: str | None  # what the flag takes; None: a switch, the flag alone sets it true
    text: Callable[[str], object] = str  # a flag's text to what TOML would hold (int for a count)
    show: Callable[[Any], str] = str  # a default as --help and the README write it
    secret: bool = False  # an error must not repeat what was given (a token)
    repeatable: bool = False  # the flag may be given again, each one adding a value (--backend)


@dataclass(frozen=True, slots=True)
class Setting:
    """The declaration a field carries: its kind, its help line and where else it may be set."""

    kind: Kind
    help: str
    flag: str | None = None  # None: --<key>, the dots and underscores written as dashes
    metavar: str | None = None  # None: the kind's
    per_backend: bool = False  # a [[backends]] entry may set it for that backend alone
    toml_only: bool = False  # a table of tables ([pools], [[routes]]): no flag could say it


def setting(
    default: T,
    kind: Kind,
    help: str,
    *,
    flag: str | None = None,
    metavar: str | None = None,
    per_backend: bool = False,
    toml_only: bool = False,
) -> T:
    """The field of one setting, with its declaration in the field's metadata."""
    declaration = Setting(kind, help, flag, metavar, per_backend, toml_only)
    return field(default=default, metadata={SETTING: declaration})


def table(default: T) -> T:
    """The field of a table of settings ([health]), itself a frozen dataclass of `setting()` fields."""
    return field(default=default, metadata={TABLE: True})


def derived(default: T, source: str) -> T:
    """A field that is no setting of its own, filled from the setting `source` (the backends found in
    DNS, from the backend list): no TOML key, no flag, no help of its own; `source` has them."""
    return field(default=default, metadata={DERIVED: source})


@dataclass(frozen=True, slots=True)
class Declared:
    """One setting as the CLI and the README see it: its key, its default and its declaration."""

    key: str  # as TOML nests it: `header_timeout`, `health.interval`
    default: Any
    setting: Setting

    @property
    def name(self) -> str:
        """The field's name in its own table: `interval` for `health.interval`."""
        return self.key.rpartition(".")[2]

    @property
    def flag(self) -> str:
        return self.setting.flag or "--" + self.key.replace(".", "-").replace("_", "-")

    @property
    def dest(self) -> str:
        """The attribute argparse gives the flag's value."""
        return self.flag.removeprefix("--").replace("-", "_")

    @property
    def metavar(self) -> str | None:
        return self.setting.metavar or self.setting.kind.metavar

    @property
    def shown(self) -> str | None:
        """The default as written for a reader, or None when there is none to write (off, unset)."""
        if self.default is None or self.default is False or self.default == ():
            return None
        return self.setting.kind.show(self.default)

    def table(self, value: object) -> dict[str, Any]:
        """`value` as TOML would hold it: `{"health": {"interval": value}}` for `health.interval`."""
        *tables, name = self.key.split(".")
        nested: dict[str, Any] = {name: value}
        for outer in reversed(tables):
            nested = {outer: nested}
        return nested


def declared(cls: type[DataclassInstance], prefix: str = "") -> Iterator[Declared]:
    """Every setting of the dataclass `cls` and of its tables, in the order of their fields."""
    for each in dataclasses.fields(cls):
        if TABLE in each.metadata:
            nested: Any = each.default
            yield from declared(type(nested), f"{prefix}{each.name}.")
        elif SETTING in each.metadata:
            yield Declared(prefix + each.name, each.default, each.metadata[SETTING])


def lay(target: D, values: Mapping[str, Any], prefix: str = "") -> D:
    """`target` (a dataclass of settings) with `values` (a TOML table) laid over it, each value checked
    by its kind; a key that is not a setting is an error, so that a typo never falls back to a default."""
    fields = {each.name: each for each in dataclasses.fields(target) if _declares(each)}
    for key, value in values.items():
        if key not in fields:
            raise unknown_setting(prefix + key, value, key, list(fields))
    changes = {
        name: _read(each, getattr(target, name), values[name], prefix + name)
        for name, each in fields.items()
        if name in values
    }
    return replace(target, **changes)


def _declares(each: dataclasses.Field[Any]) -> bool:
    return SETTING in each.metadata or TABLE in each.metadata


def _read(each: dataclasses.Field[Any], current: Any, value: object, key: str) -> Any:
    if TABLE in each.metadata:
        if not isinstance(value, Mapping):
            raise ConfigError(key, value, "must be a table")
        return lay(current, value, key + ".")
    return each.metadata[SETTING].kind.parse(key, value)
