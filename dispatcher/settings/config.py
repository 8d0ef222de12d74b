"""Settings: parse and validate the TOML file and the command line into one frozen `Settings`.

Owns: the names of every setting (flags, TOML keys), their defaults and the precedent behind each.
Rules: no I/O here (the caller reads the file), no trio, no sockets. Every error is a `ConfigError`
naming the key and the value, so the CLI can print one line and exit 2 instead of a traceback.
"""

from __future__ import annotations

import ipaddress
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

# HAProxy's `default-server` check defaults: `inter 2s`, `rise 2`, `fall 3`. Its check timeout
# defaults to `inter`; we use 1 s so that a hung backend is noticed within one round.
DEFAULT_HEALTH_PATH = "/health"
DEFAULT_INTERVAL = 2.0
DEFAULT_TIMEOUT = 1.0
DEFAULT_RISE = 2
DEFAULT_FALL = 3
# Envoy's `interval_jitter_percent` and HAProxy's `spread-checks` (advised 2-5 %) both exist so that a
# large pool is not checked in one burst; 10 % spreads 1,000 backends over 0.4 s of a 2 s interval.
DEFAULT_JITTER = 0.1
# HAProxy `timeout http-request` is commonly set to 10 s; a client that has not sent a complete
# request head by then is slow or hostile (slowloris) and gets 408.
DEFAULT_HEADER_TIMEOUT = 10.0
# nginx `keepalive_timeout 75s`: how long an idle keep-alive connection is kept open.
DEFAULT_KEEPALIVE_TIMEOUT = 75.0
# How long SIGTERM waits for exchanges in flight; Kubernetes' default terminationGracePeriodSeconds
# is 30 s, so finishing well within it leaves room for the pod's own shutdown.
DEFAULT_GRACE_PERIOD = 10.0
# A request body sent without `Expect: 100-continue` is read and thrown away up to this size so that
# the connection stays usable; a larger body closes the connection (after a lingering close).
DEFAULT_MAX_DISCARD = 64 * 1024

# HAProxy's `maxconn`, nginx's `worker_connections`: past it, new connections wait in the backlog.
# 10,000 keep-alive connections cost about 100 MiB here (see benchmarks/), well within a small VM.
DEFAULT_MAX_CONNECTIONS = 10_000

# How a backend is chosen (issue 6). `least-loaded` uses the load estimate that stays sane between
# reports (dispatcher/core/estimate.py); `p2c` is Envoy's LEAST_REQUEST and HAProxy's `random(2)`;
# `round-robin` is weighted and smooth; `random` is weighted. Weights and slow start apply to all.
POLICIES = ("least-loaded", "p2c", "round-robin", "random")
DEFAULT_POLICY = "least-loaded"

DEFAULT_LISTEN = "0.0.0.0:8080"
# Not 9090: that is the Prometheus server's own port.
DEFAULT_ADMIN_LISTEN = "127.0.0.1:8081"


class ConfigError(ValueError):
    """A setting that cannot be used; `str()` is the one line the CLI prints."""

    def __init__(self, key: str, value: object, reason: str) -> None:
        self.key, self.value, self.reason = key, value, reason
        super().__init__(f"{key} = {value!r}: {reason}")


class TomlError(ConfigError):
    """A config file that is not TOML. `str()` is `path:line:column: reason`, the form compilers use
    and editors jump to."""

    def __init__(self, path: str, line: int | None, column: int | None, reason: str) -> None:
        super().__init__("config", path, reason)
        self.line, self.column = line, column

    def __str__(self) -> str:
        place = "" if self.line is None else f":{self.line}:{self.column}"
        return f"{self.value}{place}: {self.reason}"


@dataclass(frozen=True, slots=True)
class Address:
    """A host and port to listen on."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class BackendSpec:
    """One configured backend. `base` is what a Location starts with: scheme://host:port/prefix."""

    name: str
    url: str
    scheme: str
    host: str
    port: int
    prefix: str
    weight: float = 1.0

    @property
    def base(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.prefix}"


@dataclass(frozen=True, slots=True)
class HealthSettings:
    path: str = DEFAULT_HEALTH_PATH
    interval: float = DEFAULT_INTERVAL
    timeout: float = DEFAULT_TIMEOUT
    rise: int = DEFAULT_RISE
    fall: int = DEFAULT_FALL
    jitter: float = DEFAULT_JITTER
    # https backends are verified against the system's CA store, or against this PEM bundle instead
    # (HAProxy's `ca-file`): backends on an internal CA. The CLI loads it, so a bad file is refused.
    ca_file: str | None = None


@dataclass(frozen=True, slots=True)
class Settings:
    listen: Address = field(default_factory=lambda: parse_address("listen", DEFAULT_LISTEN))
    admin_listen: Address = field(default_factory=lambda: parse_address("admin_listen", DEFAULT_ADMIN_LISTEN))
    backends: tuple[BackendSpec, ...] = ()
    health: HealthSettings = field(default_factory=HealthSettings)
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    keepalive_timeout: float = DEFAULT_KEEPALIVE_TIMEOUT
    grace_period: float = DEFAULT_GRACE_PERIOD
    max_discard: int = DEFAULT_MAX_DISCARD
    admin_token: str | None = None
    # An admin listener off loopback with no token lets anyone who reaches it drain the pool: refused
    # at start (`check`) unless the operator says this is meant (a firewalled network).
    admin_insecure: bool = False
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    reuse_port: bool = False
    slow_start: float = 0.0
    workers: int = 1
    policy: str = DEFAULT_POLICY


def parse_address(key: str, text: object) -> Address:
    """`HOST:PORT` or `[V6]:PORT`; port 0 asks the system for a free port (tests)."""
    if not isinstance(text, str) or ":" not in text:
        raise ConfigError(key, text, "expected HOST:PORT")
    host, _, port_text = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host:
        raise ConfigError(key, text, "expected HOST:PORT")
    return Address(host, _port(key, text, port_text))


def _port(key: str, text: str, port_text: str) -> int:
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(key, text, "port must be a number from 0 to 65535")
    return int(port_text)


def parse_backend(key: str, url: object, name: object = None, weight: object = 1) -> BackendSpec:
    """Validate one backend URL; the Location's scheme, host and port only ever come from here."""
    if not isinstance(url, str):
        raise ConfigError(key, url, "expected a URL string")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ConfigError(key, url, "URL must start with http:// or https://")
    if parts.query or parts.fragment or "@" in parts.netloc:
        raise ConfigError(key, url, "URL may hold a path prefix, not a query, fragment or user")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        raise ConfigError(key, url, "invalid port") from None
    if not host or any(c in host for c in " /\\"):
        raise ConfigError(key, url, "URL has no host")
    port = port if port is not None else (443 if parts.scheme == "https" else 80)
    display = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return BackendSpec(
        name=_backend_name(key, name, display),
        url=url,
        scheme=parts.scheme,
        host=host,
        port=port,
        prefix=parts.path.rstrip("/"),
        weight=_positive(f"{key}.weight", weight),
    )


def _backend_name(key: str, name: object, default: str) -> str:
    if name is None:
        return default
    if not isinstance(name, str) or not name or not name.isprintable() or "/" in name:
        raise ConfigError(f"{key}.name", name, "must be a non-empty printable string without '/'")
    return name


def _positive(key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(key, value, "must be a number")
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(key, value, "must be greater than 0")
    return float(value)


# Durations as nginx writes them (`10s`, `500ms`, `1m`, `1h`: "Measurement units" in its docs), one
# number and one unit; a bare number is seconds, as every duration here was before units existed.
_DURATION = re.compile(r"(?P<number>[0-9]+(?:\.[0-9]*)?|\.[0-9]+) *(?P<unit>ms|s|m|h)?")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(key: str, value: object) -> float:
    """Seconds, from a number of seconds or a string with a unit: `2s`, `500ms`, `1.5s`, `1m`, `1h`."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    match = _DURATION.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise ConfigError(
            key, value, "expected a duration: seconds, or a number with ms, s, m or h (2s, 500ms)"
        )
    return float(match["number"]) * _UNIT_SECONDS[match["unit"]]


def _positive_duration(key: str, value: object) -> float:
    seconds = parse_duration(key, value)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(key, value, "must be a duration greater than 0")
    return seconds


def _non_negative_duration(key: str, value: object) -> float:
    seconds = parse_duration(key, value)
    if not math.isfinite(seconds) or seconds < 0:
        raise ConfigError(key, value, "must be a duration of at least 0")
    return seconds


def format_duration(seconds: float) -> str:
    """A duration as it could be written in the config: `1s`, `0.5s`, `120s`."""
    return f"{seconds:g}s"


def _count(key: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(key, value, "must be a whole number of at least 1")
    return value


def _boolean(key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(key, value, "must be true or false")
    return value


def _fraction(key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
        raise ConfigError(key, value, "must be a number from 0 to below 1")
    return float(value)


def _policy(key: str, value: object) -> str:
    if value not in POLICIES:
        raise ConfigError(key, value, f"must be one of {', '.join(POLICIES)}")
    assert isinstance(value, str)
    return value


def _token(key: str, value: object) -> str:
    if not isinstance(value, str) or len(value) < 8 or not value.isascii() or not value.isprintable():
        raise ConfigError(key, "<hidden>", "must be at least 8 printable ASCII characters")
    if " " in value:
        raise ConfigError(key, "<hidden>", "must not contain spaces")
    return value


def _health_path(key: str, value: object) -> str:
    if not isinstance(value, str) or not value.startswith("/") or not value.isprintable():
        raise ConfigError(key, value, "must be a path starting with '/'")
    if any(c in value for c in " #"):
        raise ConfigError(key, value, "must not contain spaces or '#'")
    return value


def _file_path(key: str, value: object) -> str:
    if not isinstance(value, str) or not value or not value.isprintable():
        raise ConfigError(key, value, "must be a file path")
    return value


_HEALTH_KEYS: dict[str, Any] = {
    "path": _health_path,
    "interval": _positive_duration,
    "timeout": _positive_duration,
    "rise": _count,
    "fall": _count,
    "jitter": _fraction,
    "ca_file": _file_path,
}
_TOP_KEYS: dict[str, Any] = {
    "header_timeout": _positive_duration,
    "keepalive_timeout": _positive_duration,
    "grace_period": _positive_duration,
    "max_discard": lambda key, value: int(_count(key, value)),
    "max_connections": lambda key, value: int(_count(key, value)),
    "reuse_port": lambda key, value: _boolean(key, value),
    "admin_insecure": lambda key, value: _boolean(key, value),
    "slow_start": _non_negative_duration,
    "workers": lambda key, value: int(_count(key, value)),
    "policy": _policy,
}
_KNOWN_TOP = {"listen", "admin_listen", "admin_token", "health", "backends", *_TOP_KEYS}


# How tomllib ends its messages: "Invalid value (at line 3, column 9)", or "(at end of document)".
_TOML_PLACE = re.compile(
    r"(?P<what>.*) \(at (?:line (?P<line>\d+), column (?P<column>\d+)|end of document)\)"
)


def parse_toml(text: str, path: str = "config") -> dict[str, Any]:
    """TOML text to a raw table; a syntax error becomes a TomlError naming `path`, line and column."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        what, line, column = _toml_place(str(error), text)
        raise TomlError(path, line, column, f"not valid TOML: {what}") from None


def _toml_place(message: str, text: str) -> tuple[str, int | None, int | None]:
    """The reason, line and column of a tomllib message. "At end of document" (tomllib's place for an
    error on a last line that ends the file) is placed just after the file's last character."""
    match = _TOML_PLACE.fullmatch(message)
    if match is None:
        return message, None, None
    if match["line"] is not None:
        return match["what"], int(match["line"]), int(match["column"])
    end = len(text.rstrip())
    line = text.count("\n", 0, end) + 1
    return match["what"], line, end - text.rfind("\n", 0, end)


def apply(settings: Settings, table: Mapping[str, Any]) -> Settings:
    """Lay a table (from TOML, or built from flags) over `settings`, validating every key."""
    for key in table:
        if key not in _KNOWN_TOP:
            raise ConfigError(key, table[key], "unknown setting")
    changes: dict[str, Any] = {}
    for key in ("listen", "admin_listen"):
        if key in table:
            changes[key] = parse_address(key, table[key])
    for key, check in _TOP_KEYS.items():
        if key in table:
            changes[key] = check(key, table[key])
    if "admin_token" in table:
        changes["admin_token"] = _token("admin_token", table["admin_token"])
    if "health" in table:
        changes["health"] = _apply_health(settings.health, table["health"])
    if "backends" in table:
        changes["backends"] = _backends(table["backends"])
    return replace(settings, **changes)


def is_loopback(host: str) -> bool:
    """Whether a listen host is loopback. A name other than `localhost` is not known to be (it is not
    resolved here: no I/O), so it counts as reachable from elsewhere."""
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def check(settings: Settings) -> Settings:
    """Rules across settings, once all of the file and the flags are in: a ConfigError if one fails."""
    if not (is_loopback(settings.admin_listen.host) or settings.admin_token or settings.admin_insecure):
        raise ConfigError(
            "admin_listen",
            str(settings.admin_listen),
            "not loopback and no admin_token: anyone who reaches it could drain every backend; set "
            "admin_token (or DISPATCHER_ADMIN_TOKEN), or admin_insecure = true (--admin-insecure) if "
            "only trusted hosts can reach it",
        )
    return settings


def warnings(settings: Settings) -> list[str]:
    """What is allowed but probably not meant, for the log at start and at each reload."""
    health = settings.health
    found = []
    if health.timeout >= health.interval:
        found.append(
            f"health.timeout ({format_duration(health.timeout)}) is not shorter than health.interval "
            f"({format_duration(health.interval)}): a backend that hangs is checked once per timeout, "
            f"not per interval, and is marked down only after fall x timeout "
            f"({format_duration(health.fall * health.timeout)}); make the timeout shorter"
        )
    return found


def _apply_health(health: HealthSettings, table: object) -> HealthSettings:
    if not isinstance(table, Mapping):
        raise ConfigError("health", table, "must be a table")
    changes: dict[str, Any] = {}
    for key, value in table.items():
        if key not in _HEALTH_KEYS:
            raise ConfigError(f"health.{key}", value, "unknown setting")
        changes[key] = _HEALTH_KEYS[key](f"health.{key}", value)
    return replace(health, **changes)


def _backends(entries: object) -> tuple[BackendSpec, ...]:
    if not isinstance(entries, list):
        raise ConfigError("backends", entries, "must be an array of tables ([[backends]])")
    specs = tuple(_backend_entry(f"backends[{i}]", entry) for i, entry in enumerate(entries))
    seen: set[str] = set()
    for i, spec in enumerate(specs):
        if spec.name in seen:
            raise ConfigError(f"backends[{i}].name", spec.name, "duplicate backend name")
        seen.add(spec.name)
    return specs


def _backend_entry(key: str, entry: object) -> BackendSpec:
    if isinstance(entry, str):
        return parse_backend(key, entry)
    if not isinstance(entry, Mapping):
        raise ConfigError(key, entry, "must be a table with a url")
    for name in entry:
        if name not in ("url", "name", "weight"):
            raise ConfigError(f"{key}.{name}", entry[name], "unknown setting")
    if "url" not in entry:
        raise ConfigError(f"{key}.url", None, "missing")
    return parse_backend(key, entry["url"], entry.get("name"), entry.get("weight", 1))
