"""Settings: parse and validate the TOML file and the command line into one frozen `Settings`.

Owns: the catalogue of settings. Each is declared once, as a field of `Settings` or of its [health]
table (`HealthSettings`): its TOML key, type, default, kind of value, help line and flag (see
`declare`); the defaults here, with the precedent behind each. Also the TOML file's shape: the
[[backends]] entries, each with its own health settings over the global ones (HAProxy's per-server
`inter`, `rise`, `fall`), resolved into `BackendSpec.health`; and the entries whose members are
published in DNS (`dns://`, `dns+srv://`: `ServiceSpec`), which `Settings` keeps apart in `services`,
with the [dns] table of how they are resolved (`DnsSettings`).
Rules: no I/O here (the caller reads the file), no trio, no sockets. Every error is a `ConfigError`
naming the key and the value, so the CLI can print one line and exit 2 instead of a traceback.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import re
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from dispatcher.settings.declare import Declared, Kind, declared, derived, lay, setting, table
from dispatcher.settings.routing import (
    DEFAULT_HASH_KEY,
    Fallback,
    HashKey,
    RouteSpec,
    covers,
    parse_fallback,
    parse_hash_key,
    parse_routes,
    unreachable,
)
from dispatcher.settings.values import (
    Address,
    ConfigError,
    boolean,
    count,
    file_path,
    format_duration,
    fraction,
    ip_address_port,
    network,
    non_negative_duration,
    one_of,
    parse_address,
    parse_duration,
    positive,
    positive_duration,
    split_url,
    token,
    unknown_setting,
    url_path,
    whole_number,
)
from dispatcher.settings.values import weight as weight_of

# Re-exported (mypy --strict asks for it): the rest of the package imports every setting's name and
# type from `config` alone, the value parsers' among them.
__all__ = [
    "Address",
    "BackendSpec",
    "ConfigError",
    "DnsSettings",
    "Fallback",
    "HashKey",
    "HealthSettings",
    "PoolSpec",
    "RouteSpec",
    "ServiceSpec",
    "Settings",
    "SniCertificate",
    "TlsSettings",
    "TomlError",
    "apply",
    "check",
    "declared_settings",
    "format_duration",
    "is_loopback",
    "parse_address",
    "parse_backend",
    "parse_duration",
    "parse_toml",
    "warnings",
]

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
POLICIES = ("least-loaded", "p2c", "round-robin", "random", "hash")
DEFAULT_POLICY = "least-loaded"

DEFAULT_LISTEN = "0.0.0.0:8080"
# `--demo` fronts backends on loopback and prints loopback URLs: its front door is on loopback too,
# not on every interface of a laptop on a café's network, unless --listen (or the file) says so.
DEMO_LISTEN = "127.0.0.1:8080"
# Not 9090: that is the Prometheus server's own port.
DEFAULT_ADMIN_LISTEN = "127.0.0.1:8081"

# Pools from DNS service discovery (issue 14). Envoy re-resolves a STRICT_DNS cluster every
# `dns_refresh_rate`, 5 s by default (HAProxy's resolvers keep a valid answer for `hold valid 10s`);
# records whose TTL is shorter are asked again sooner (Envoy's `respect_dns_ttl`), see net/discovery.
DEFAULT_DNS_INTERVAL = 5.0
# HAProxy's resolvers retry a query after `timeout retry 1s`, `resolve_retries 3` times: a resolution
# is given up after about 3 s, well within the interval.
DEFAULT_DNS_TIMEOUT = 3.0

# The schemes of a backend entry whose members are published in DNS: the record asked for ("A": every
# A and AAAA record, the entry's port; "SRV": each record's target, port and weight) and the scheme of
# the members' redirects, http unless the scheme ends in +https (the form of git+ssh:// and of
# SQLAlchemy's postgresql+psycopg://: what is looked up first, the transport last).
DISCOVERY_SCHEMES = {
    "dns": ("A", "http"),
    "dns+http": ("A", "http"),
    "dns+https": ("A", "https"),
    "dns+srv": ("SRV", "http"),
    "dns+srv+http": ("SRV", "http"),
    "dns+srv+https": ("SRV", "https"),
}
# A DNS name (RFC 1035 §2.3.4: labels of 1-63 characters, 253 in all), underscores allowed for
# SRV's `_service._proto` labels (RFC 2782), an absolute name's final dot too.
_DNS_NAME = re.compile(
    r"(?=.{1,253}\.?$)[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?)*\.?"
)


# The kinds of value a setting holds: how TOML's value is checked, a flag's text read, a default shown.
ADDRESS = Kind(parse_address, "HOST:PORT")
DURATION = Kind(positive_duration, "DURATION", show=format_duration)
DURATION_OR_OFF = Kind(non_negative_duration, "DURATION", show=format_duration)  # 0 is off
COUNT = Kind(count, "N", text=int)
WHOLE = Kind(whole_number, "N", text=int)  # 0 allowed
FRACTION = Kind(fraction, "FRACTION", text=float)
SWITCH = Kind(boolean, None)
URL_PATH = Kind(url_path, "PATH")
FILE = Kind(file_path, "FILE")
TOKEN = Kind(token, "TOKEN", secret=True)
RESOLVER = Kind(ip_address_port, "IP:PORT")
POLICY = Kind(one_of(POLICIES), "NAME")


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
class HealthSettings:
    """How backends are checked: the [health] table, the --health-* flags, and those of its keys that
    a [[backends]] entry may set for itself (`per_backend`)."""

    path: str = setting(DEFAULT_HEALTH_PATH, URL_PATH, "checked with GET <backend><path>", per_backend=True)
    interval: float = setting(
        DEFAULT_INTERVAL, DURATION, "between checks of one backend, as HAProxy's inter", per_backend=True
    )
    timeout: float = setting(DEFAULT_TIMEOUT, DURATION, "per check", per_backend=True)
    rise: int = setting(
        DEFAULT_RISE,
        COUNT,
        "passes in a row to come back up, as HAProxy's rise",
        flag="--rise",
        per_backend=True,
    )
    fall: int = setting(
        DEFAULT_FALL,
        COUNT,
        "failures in a row to go down, as HAProxy's fall",
        flag="--fall",
        per_backend=True,
    )
    # These two are for every backend at once (HAProxy's per-server keys are `inter`, `rise`, `fall`):
    # one spread of the checks, and one CA file, which the CLI proves loadable at start and reload.
    jitter: float = setting(DEFAULT_JITTER, FRACTION, "spread of the interval")
    # https backends are verified against the system's CA store, or against this PEM bundle instead
    # (HAProxy's `ca-file`): backends on an internal CA. The CLI loads it, so a bad file is refused.
    ca_file: str | None = setting(
        None,
        FILE,
        "verify https backends against these CA certificates, not the system's (HAProxy ca-file)",
        metavar="PEM",
    )


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
    # What its [[backends]] entry sets in its own `health` table, as sorted (key, value) pairs: kept
    # apart, so that a key it does not set follows the global [health] through every reload.
    health_overrides: tuple[tuple[str, Any], ...] = ()
    # Its effective health settings, those overrides over the global ones. `Settings` resolves it
    # whenever one is made (the file, the flags, a reload, a test): read it, do not build it.
    health: HealthSettings = HealthSettings()

    @property
    def base(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.prefix}"

    def resolved(self, health: HealthSettings) -> BackendSpec:
        """This backend with its own health settings laid over `health`, the global ones."""
        own = replace(health, **dict(self.health_overrides)) if self.health_overrides else health
        return self if own == self.health else replace(self, health=own)


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """A backend entry whose members are published in DNS (`dns://`, `dns+srv://`): what to ask for,
    and what every member it finds shares (its redirects' scheme and path prefix, its health table)."""

    url: str  # as configured: the entry's name in logs and metrics
    record: str  # "SRV", or "A" for every A and AAAA record
    query: str  # the name asked for, absolute (no search domains), without its final dot
    scheme: str  # the members' redirects': http or https
    port: int | None  # the members' port (dns://); None for SRV, whose records give each one's
    prefix: str = ""
    weight: float = 1.0  # the members' weight (dns://); SRV records give each one's
    health_overrides: tuple[tuple[str, Any], ...] = ()

    def member(self, host: str, port: int, weight: float | None = None) -> BackendSpec:
        """The member at host:port. It is named host:port, as a backend given by URL is by default: the
        same record found again is the same backend, which keeps its state (Pool.reconcile). A host
        that makes no URL is a ConfigError naming this entry."""
        display = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        spec = parse_backend(self.url, f"{self.scheme}://{display}{self.prefix}")
        own = self.weight if weight is None else weight
        return replace(spec, weight=float(own), health_overrides=self.health_overrides)


def parse_service(key: str, url: str, weight: object = None) -> ServiceSpec:
    """Validate a `dns://NAME[:PORT][/prefix]` or `dns+srv://NAME[/prefix]` backend (no DNS asked here)."""
    parts = split_url(key, url)
    record, scheme = DISCOVERY_SCHEMES[parts.scheme]
    host, port = _host_and_port(key, url)
    if not _DNS_NAME.fullmatch(host) or _is_address(host):
        raise ConfigError(key, url, "expected a DNS name to resolve after the scheme")
    if record == "SRV" and port is not None:
        raise ConfigError(key, url, "SRV records give each member's port: no port in a dns+srv:// URL")
    if record == "SRV" and weight is not None:
        raise ConfigError(f"{key}.weight", weight, "SRV records give each member's weight")
    default_port = 443 if scheme == "https" else 80
    return ServiceSpec(
        url=url,
        record=record,
        query=host.removesuffix("."),
        scheme=scheme,
        port=None if record == "SRV" else (port if port is not None else default_port),
        prefix=parts.path.rstrip("/"),
        weight=1.0 if weight is None else weight_of(f"{key}.weight", weight),
    )


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _host_and_port(key: str, url: str) -> tuple[str, int | None]:
    """A backend URL's host and port (None when it gives none), checked as every backend URL is."""
    parts = split_url(key, url)
    if parts.query or parts.fragment or "@" in parts.netloc:
        raise ConfigError(key, url, "URL may hold a path prefix, not a query, fragment or user")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        raise ConfigError(key, url, "invalid port") from None
    if not host or any(c in host for c in " /\\"):
        raise ConfigError(key, url, "URL has no host")
    return host, port


def parse_backend(key: str, url: object, name: object = None, weight: object = 1) -> BackendSpec:
    """Validate one backend URL; the Location's scheme, host and port only ever come from here."""
    if not isinstance(url, str):
        raise ConfigError(key, url, "expected a URL string")
    parts = split_url(key, url)
    if parts.scheme not in ("http", "https"):
        raise ConfigError(
            key, url, "URL must start with http://, https://, dns:// or dns+srv:// (+https for https members)"
        )
    host, port = _host_and_port(key, url)
    port = port if port is not None else (443 if parts.scheme == "https" else 80)
    display = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return BackendSpec(
        name=_backend_name(key, name, display),
        url=url,
        scheme=parts.scheme,
        host=host,
        port=port,
        prefix=parts.path.rstrip("/"),
        weight=weight_of(f"{key}.weight", weight),
    )


def _backend_name(key: str, name: object, default: str) -> str:
    if name is None:
        return default
    if not isinstance(name, str) or not name or not name.isprintable() or "/" in name:
        raise ConfigError(f"{key}.name", name, "must be a non-empty printable string without '/'")
    return name


class _Entries(tuple[BackendSpec | ServiceSpec, ...]):
    """The backend entries as given, by the file or by the flags, both kinds in their order. `Settings`
    splits them into `backends` and `services`: a list given replaces both (--backend flags replace
    the file's backends, those from DNS among them), while `replace(settings, backends=...)` with a
    plain tuple keeps `services` as they were."""

    __slots__ = ()


def _backends(key: str, entries: object) -> _Entries:
    if not isinstance(entries, list):
        raise ConfigError(key, entries, "must be an array of tables ([[backends]])")
    specs = _Entries(_backend_entry(f"{key}[{i}]", entry) for i, entry in enumerate(entries))
    seen: set[str] = set()
    for i, spec in enumerate(specs):
        name, what = (spec.name, "name") if isinstance(spec, BackendSpec) else (spec.url, "url")
        if name in seen:
            raise ConfigError(f"{key}[{i}].{what}", name, f"duplicate backend {what}")
        seen.add(name)
    return specs


_ENTRY_KEYS = ("url", "name", "weight", "health")


def _top_level(but: Sequence[str] = ()) -> tuple[str, ...]:
    """The top level's keys (`header_timeout`, `[health]`'s table is `health`), but those of `but`:
    one of them inside a table was most likely written below its header by mistake."""
    return tuple(name for name in (each.name for each in dataclasses.fields(Settings)) if name not in but)


def _backend_entry(key: str, entry: object) -> BackendSpec | ServiceSpec:
    if isinstance(entry, str):
        return _service_or_backend(key, entry, None, None)
    if not isinstance(entry, Mapping):
        raise ConfigError(key, entry, "must be a table with a url")
    for name in entry:
        if name not in _ENTRY_KEYS:
            raise unknown_setting(f"{key}.{name}", entry[name], name, _ENTRY_KEYS, _top_level())
    if "url" not in entry:
        raise ConfigError(f"{key}.url", None, "missing")
    spec = _service_or_backend(key, entry["url"], entry.get("name"), entry.get("weight"))
    own = _own_health(f"{key}.health", entry.get("health", {}))
    if isinstance(spec, ServiceSpec):
        return replace(spec, health_overrides=own)
    return replace(spec, health_overrides=own).resolved(HealthSettings())


def _service_or_backend(key: str, url: object, name: object, weight: object) -> BackendSpec | ServiceSpec:
    """A backend given by its URL, or (dns://, dns+srv://) the entry its members are found by."""
    if not (isinstance(url, str) and split_url(key, url).scheme in DISCOVERY_SCHEMES):
        return parse_backend(key, url, name, 1 if weight is None else weight)
    if name is not None:
        raise ConfigError(f"{key}.name", name, "members found in DNS are named host:port, by their records")
    return parse_service(key, url, weight)


# The [health] keys only the global table sets; the others a backend may set for itself.
_GLOBAL_HEALTH_ONLY = {each.name for each in declared(HealthSettings) if not each.setting.per_backend}


def _own_health(key: str, table: object) -> tuple[tuple[str, Any], ...]:
    """A backend's `health` table, checked as [health] is, as sorted (key, value) pairs."""
    if not isinstance(table, Mapping):
        raise ConfigError(key, table, "must be a table")
    for name, value in table.items():
        if name in _GLOBAL_HEALTH_ONLY:
            raise ConfigError(f"{key}.{name}", value, "set for every backend at once, in [health]")
    own = lay(HealthSettings(), table, key + ".")
    return tuple(sorted((name, getattr(own, name)) for name in table))


BACKENDS = Kind(_backends, "URL", repeatable=True)
# HAProxy's hash-balance-factor is a percentage (125 is its documented example); the paper's c: 1.25.
DEFAULT_BALANCE_FACTOR = 1.25
# The pool that the top level of the file configures ([[backends]], --backend, policy, fallback):
# requests that no route takes go to it, as to HAProxy's `default_backend`.
DEFAULT_POOL = "default"


_HASH_KEY = HashKey(DEFAULT_HASH_KEY)
_FALLBACK = Fallback()


@dataclass(frozen=True, slots=True)
class PoolSpec:
    """One pool: its backends, how they are checked and chosen, and what it answers when none is usable.

    The default pool is the file's top level; the named ones are [pools.NAME] tables. Each keeps one
    set of health checks however many routes send to it."""

    name: str
    backends: tuple[BackendSpec, ...] = ()
    services: tuple[ServiceSpec, ...] = ()
    health_overrides: tuple[tuple[str, Any], ...] = ()  # its `health` table, over the global [health]
    policy: str = DEFAULT_POLICY
    hash_key: HashKey = _HASH_KEY
    balance_factor: float = DEFAULT_BALANCE_FACTOR
    fallback: Fallback = _FALLBACK

    def health(self, global_health: HealthSettings) -> HealthSettings:
        """Its health settings: its own table's keys over the global [health]."""
        return (
            replace(global_health, **dict(self.health_overrides)) if self.health_overrides else global_health
        )


_POOL_KEYS = ("backends", "health", "policy", "hash_key", "hash_balance_factor", "fallback")
_POOL_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def _pools(key: str, tables: object) -> tuple[PoolSpec, ...]:
    """The [pools.NAME] tables, in the file's order."""
    if not isinstance(tables, Mapping):
        raise ConfigError(key, tables, "must be a table of pools ([pools.NAME])")
    return tuple(_pool(f"{key}.{name}", name, table) for name, table in tables.items())


def _pool(key: str, name: str, table: object) -> PoolSpec:
    if not _POOL_NAME.fullmatch(name):
        raise ConfigError(key, name, "a pool's name is letters, digits, - _ . (it labels metrics)")
    if name == DEFAULT_POOL:
        raise ConfigError(
            key, name, "the default pool is the file's top level: [[backends]], policy, [fallback]"
        )
    if not isinstance(table, Mapping):
        raise ConfigError(key, table, "must be a table with backends")
    for each in table:
        if each not in _POOL_KEYS:
            raise unknown_setting(f"{key}.{each}", table[each], each, _POOL_KEYS, _top_level(_POOL_KEYS))
    if not table.get("backends"):
        raise ConfigError(f"{key}.backends", table.get("backends"), "a pool needs one backend or more")
    entries = _backends(f"{key}.backends", table["backends"])
    policy = POLICY.parse(f"{key}.policy", table.get("policy", DEFAULT_POLICY))
    for hashing in ("hash_key", "hash_balance_factor"):
        if hashing in table and policy != "hash":
            # Set without the policy that reads it, it would do nothing: no stickiness, and no word.
            raise ConfigError(f"{key}.{hashing}", table[hashing], 'only policy = "hash" reads it')
    return PoolSpec(
        name=name,
        backends=tuple(spec for spec in entries if isinstance(spec, BackendSpec)),
        services=tuple(spec for spec in entries if isinstance(spec, ServiceSpec)),
        health_overrides=_own_health(f"{key}.health", table.get("health", {})),
        policy=policy,
        hash_key=parse_hash_key(f"{key}.hash_key", table.get("hash_key", DEFAULT_HASH_KEY)),
        balance_factor=_balance_factor(f"{key}.hash_balance_factor", table.get("hash_balance_factor", 1.25)),
        fallback=parse_fallback(f"{key}.fallback", table.get("fallback", {})),
    )


def _balance_factor(key: str, value: object) -> float:
    if (value == 0 or value == math.inf) and not isinstance(value, bool):
        return math.inf  # HAProxy's `hash-balance-factor 0`: no bound, plain consistent hashing; or `inf`
    reason = "must be 0 (no bound) or more than 1: at 1 every backend is full at the mean load"
    if isinstance(value, str):  # `"inf"` in quotes, say
        raise ConfigError(key, value, f"{reason} (a number, not a string: TOML writes inf bare)")
    try:
        factor = positive(key, value)
    except ConfigError:  # a negative number, or not a number: the same rule, said in full
        raise ConfigError(key, value, reason) from None
    if factor <= 1.0:
        raise ConfigError(key, value, reason)
    return factor


def _trusted(key: str, value: object) -> tuple[str, ...]:
    """Addresses or CIDR networks, from the file (a list) or a flag (one per --trusted-proxy)."""
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list | tuple) or not all(isinstance(v, str) for v in values):
        raise ConfigError(key, value, "must be a list of addresses or CIDR networks")
    for text in values:
        network(key, text)
    return tuple(values)


def _forwarding_header(key: str, value: object) -> str:
    if not isinstance(value, str) or value.lower() not in ("x-forwarded-for", "forwarded"):
        raise ConfigError(key, value, "must be x-forwarded-for or forwarded (RFC 7239)")
    return value.lower()


def _header_name(key: str, value: object) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+", value):
        raise ConfigError(key, value, "must be a header name")
    return value.lower()


POOLS = Kind(_pools, None)
ROUTES = Kind(parse_routes, None)
FALLBACK = Kind(parse_fallback, None)
HASH_KEY = Kind(parse_hash_key, "SOURCE[:NAME]", show=str)
BALANCE_FACTOR = Kind(_balance_factor, "FACTOR", text=float)
TRUSTED = Kind(_trusted, "CIDR", repeatable=True)
HEADER_NAME = Kind(_header_name, "NAME")
_LISTEN = parse_address("listen", DEFAULT_LISTEN)
_ADMIN_LISTEN = parse_address("admin_listen", DEFAULT_ADMIN_LISTEN)
_HEALTH = HealthSettings()


@dataclass(frozen=True, slots=True)
class DnsSettings:
    """How the members of dns:// and dns+srv:// backends are found: the [dns] table, the --dns-* flags."""

    interval: float = setting(
        DEFAULT_DNS_INTERVAL,
        DURATION,
        "between resolutions of dns:// and dns+srv:// backends, sooner when the records' TTL is shorter "
        "(Envoy dns_refresh_rate)",
    )
    timeout: float = setting(DEFAULT_DNS_TIMEOUT, DURATION, "for one resolution")
    resolver: Address | None = setting(  # noqa: RUF009 (as listen's, above)
        None, RESOLVER, "the DNS server to ask, instead of the system's (/etc/resolv.conf)"
    )


_DNS = DnsSettings()


# TLS on the front door (issue 14, item 1).
@dataclass(frozen=True, slots=True)
class SniCertificate:
    """One [[tls.certificates]] entry: a certificate, its key, its chain, and the names (SNI) it serves."""

    cert: str
    key: str
    names: tuple[str, ...]
    ca: str | None = None


def _sni_certificates(key: str, entries: object) -> tuple[SniCertificate, ...]:
    """[[tls.certificates]] tables ({cert, key, names, ca}), or --tls-certificate CERT,KEY,NAME[,NAME...]."""
    if not isinstance(entries, list):
        raise ConfigError(key, entries, "must be an array of tables ([[tls.certificates]])")
    certificates = tuple(_sni_certificate(f"{key}[{i}]", entry) for i, entry in enumerate(entries))
    # One name, one certificate: with two, which one a client got would depend on their order, and
    # the operator who added the second would not know the first still served it (nginx warns
    # "conflicting server name" and keeps the first; a refusal says it before anything starts).
    served: dict[str, int] = {}
    for i, certificate in enumerate(certificates):
        for j, name in enumerate(certificate.names):
            first = served.setdefault(name, i)
            if first != i:
                raise ConfigError(f"{key}[{i}].names[{j}]", name, f"already served by {key}[{first}]")
    return certificates


def _sni_certificate(key: str, entry: object) -> SniCertificate:
    if isinstance(entry, str):
        cert, _, rest = entry.partition(",")
        private, _, listed = rest.partition(",")
        # An empty name (`a.test,,b.test`) is kept, to be refused below, not dropped without a word.
        entry = {"cert": cert, "key": private, "names": listed.split(",") if listed else []}
    if not isinstance(entry, Mapping):
        raise ConfigError(key, entry, "must be a table with cert, key and names")
    for field_name in entry:
        if field_name not in ("cert", "key", "names", "ca"):
            raise unknown_setting(
                f"{key}.{field_name}", entry[field_name], field_name, ("cert", "key", "names", "ca")
            )
    names = entry.get("names")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"{key}.names", names, "must be a list of the server names it serves")
    ca = entry.get("ca")
    return SniCertificate(
        file_path(f"{key}.cert", entry.get("cert")),
        file_path(f"{key}.key", entry.get("key")),
        tuple(_server_name(f"{key}.names[{i}]", name) for i, name in enumerate(names)),
        None if ca is None else file_path(f"{key}.ca", ca),
    )


# A name a client may ask for in SNI: a host name (RFC 1123 §2.1: letters, digits and hyphens, labels of
# 1-63 characters not starting or ending with a hyphen, 253 in all), or `*.` and one, the wildcard for
# one leftmost label, the only kind `_choose` (net/certificates) matches, as nginx's `server_name` and
# RFC 6125 §6.4.3 do. Anything else (`foo*.test`, `*`, `*.`, `a..b`) no client's name could match.
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_SERVER_NAME = re.compile(rf"(?=.{{1,253}}$)(?:\*\.)?{_LABEL}(?:\.{_LABEL})*")


def _server_name(key: str, name: str) -> str:
    """One SNI name, in lower case and without a final dot (SNI carries none: RFC 6066 §3), as routes'
    hosts are read."""
    host = name.lower().removesuffix(".")
    if not _SERVER_NAME.fullmatch(host):
        reason = "must be a DNS name, or *. and a DNS name (*.example.com: any one label before it)"
        hint = "; an internationalised name in its xn-- form" if not name.isascii() else ""
        raise ConfigError(key, name, reason + hint)
    if _is_address(host):
        raise ConfigError(
            key, name, "an address is never an SNI name (RFC 6066 §3): the default certificate serves it"
        )
    return host


SNI_CERTIFICATES = Kind(_sni_certificates, "CERT,KEY,NAME[,NAME...]", repeatable=True)


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """The front door over TLS: the [tls] table, the --tls-* flags. Off while no certificate is given."""

    cert: str | None = setting(None, FILE, "serve TLS with this certificate (PEM)", metavar="PEM")
    key: str | None = setting(None, FILE, "the certificate's private key (PEM)", metavar="PEM")
    ca: str | None = setting(None, FILE, "the intermediate certificates sent with it (PEM)", metavar="PEM")
    certificates: tuple[SniCertificate, ...] = setting(
        (),
        SNI_CERTIFICATES,
        "one more certificate, for the server names (SNI) given; repeatable",
        flag="--tls-certificate",
    )
    redirect_listen: Address | None = setting(  # noqa: RUF009 (as listen's)
        None, ADDRESS, "a plain HTTP listener answering every request with a 308 to https"
    )
    # RFC 6797; off by default: once a browser has seen it, the host cannot go back to plain HTTP.
    hsts: float = setting(0.0, DURATION_OR_OFF, "send Strict-Transport-Security with this max-age; 0s is off")

    @property
    def enabled(self) -> bool:
        return self.cert is not None or bool(self.certificates)


_TLS = TlsSettings()


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the operator asked for; each field is the one declaration of its setting."""

    # `setting()` and `table()` return a `dataclasses.field`, which ruff cannot see through (RUF009);
    # these defaults are frozen dataclasses, safe to share between instances.
    listen: Address = setting(_LISTEN, ADDRESS, f"the front door; with --demo {DEMO_LISTEN}")  # noqa: RUF009
    admin_listen: Address = setting(_ADMIN_LISTEN, ADDRESS, "metrics, /healthz, /readyz")  # noqa: RUF009
    backends: tuple[BackendSpec, ...] = setting(
        (),
        BACKENDS,
        "backend base URL, http:// or https://, optional path prefix; or dns://NAME:PORT or "
        "dns+srv://NAME for the members DNS publishes; repeatable",
        flag="--backend",
    )
    # The dns:// and dns+srv:// entries of the backend list, as given (__post_init__ sorts the two
    # kinds): `backends` holds those given by URL.
    services: tuple[ServiceSpec, ...] = derived((), "backends")
    health: HealthSettings = table(_HEALTH)  # noqa: RUF009
    dns: DnsSettings = table(_DNS)  # noqa: RUF009
    tls: TlsSettings = table(_TLS)  # noqa: RUF009
    header_timeout: float = setting(DEFAULT_HEADER_TIMEOUT, DURATION, "to send a request head")
    keepalive_timeout: float = setting(DEFAULT_KEEPALIVE_TIMEOUT, DURATION, "idle keep-alive")
    grace_period: float = setting(DEFAULT_GRACE_PERIOD, DURATION, "on SIGTERM")
    # HAProxy's `option idle-close-on-response` (2.6): at a stop (and for the old workers of a
    # --workers reload) an idle keep-alive connection is kept until its next request, which is
    # answered with `Connection: close`, instead of being closed at once. A client that reuses a
    # connection without retrying on a closed one (Python's http.client) then loses no request; the
    # stop waits on idle connections for up to the grace period.
    idle_close_on_response: bool = setting(
        False,
        SWITCH,
        "at a stop or reload, answer an idle connection's next request with Connection: close "
        "instead of closing it at once (HAProxy idle-close-on-response)",
    )
    max_discard: int = setting(
        DEFAULT_MAX_DISCARD,
        WHOLE,
        "a request body up to this is read and dropped to keep the connection",
        metavar="BYTES",
    )
    admin_token: str | None = setting(
        None, TOKEN, "bearer token required by state-changing admin requests (or env DISPATCHER_ADMIN_TOKEN)"
    )
    # An admin listener off loopback with no token lets anyone who reaches it drain the pool: refused
    # at start (`check`) unless the operator says this is meant (a firewalled network).
    admin_insecure: bool = setting(
        False,
        SWITCH,
        "allow an admin listener off loopback without a token (a network only trusted hosts reach)",
    )
    max_connections: int = setting(
        DEFAULT_MAX_CONNECTIONS,
        COUNT,
        "open client connections at most; past it new ones wait in the backlog",
    )
    reuse_port: bool = setting(
        False,
        SWITCH,
        "bind with SO_REUSEPORT, so that two instances can share the port for a rolling restart",
    )
    # HAProxy's runtime `add server` / `del server` are lost on a reload (unless saved to a state
    # file): the file is the truth. Kept only when the operator says so.
    keep_runtime_backends: bool = setting(
        False,
        SWITCH,
        "keep backends added or removed through the admin API (POST/DELETE /backends) across a reload",
    )
    slow_start: float = setting(
        0.0,
        DURATION_OR_OFF,
        "ramp a recovered (or out of maint) backend's weight from 10% to 100% over this time; 0s is off",
    )
    workers: int = setting(1, COUNT, "front-door processes sharing the port (SO_REUSEPORT); checks run once")
    policy: str = setting(DEFAULT_POLICY, POLICY, f"how a backend is chosen: {', '.join(POLICIES)}")
    # The access log (issue 14, item 3; dispatcher/expose/access_log.py): off unless a path is given,
    # as nginx's `access_log off`; `-` is stdout. Its kinds are its own, declared here with it.
    access_log: str | None = setting(
        None,
        Kind(file_path, "PATH|-"),
        "one line per answer, appended to PATH (- is stdout); reopened on SIGUSR1",
    )
    access_log_format: str = setting(
        "text", Kind(one_of(("text", "json")), "FORMAT"), "text (combined log format and more) or json lines"
    )
    # Routes and pools (issue 13; dispatcher/settings/routing.py, dispatcher/core/routes.py). The top
    # level is the default pool; these tables add named ones and what sends requests to them.
    hash_key: HashKey = setting(  # noqa: RUF009 (as listen's)
        _HASH_KEY,
        HASH_KEY,
        "what policy = hash hashes: cookie:NAME, header:NAME, path or client",
    )
    hash_balance_factor: float = setting(
        DEFAULT_BALANCE_FACTOR,
        BALANCE_FACTOR,
        "policy = hash: a backend takes a key while its load is under this times the mean; 0: no bound",
    )
    fallback: Fallback = setting(  # noqa: RUF009 (as listen's)
        _FALLBACK, FALLBACK, "the default pool's answer when none is usable", toml_only=True
    )
    pools: tuple[PoolSpec, ...] = setting((), POOLS, "named pools: [pools.NAME]", toml_only=True)
    routes: tuple[RouteSpec, ...] = setting((), ROUTES, "[[routes]]: first match wins", toml_only=True)
    # X-Forwarded-For and Forwarded are believed only from these peers (nginx's set_real_ip_from).
    trusted_proxies: tuple[str, ...] = setting(
        (),
        TRUSTED,
        "believe X-Forwarded-For / Forwarded from these peers (address or CIDR); repeatable",
        flag="--trusted-proxy",
    )
    # One header, never "Forwarded if present, else X-Forwarded-For": proxies that append to one pass a
    # client's own copy of the other through, and that forged copy would then name the client.
    forwarding_header: str = setting(
        "x-forwarded-for",
        Kind(_forwarding_header, "NAME"),
        "the header trusted proxies append the client's address to: x-forwarded-for or forwarded",
    )
    geoip_db: str | None = setting(
        None, FILE, "a MaxMind DB (GeoLite2 Country or a site's own) for routes' countries", metavar="MMDB"
    )
    country_header: str | None = setting(
        None, HEADER_NAME, "a country code header set by a trusted proxy (as CF-IPCountry), for routes"
    )

    def __post_init__(self) -> None:
        if isinstance(self.backends, _Entries):  # a list given: it replaces both kinds
            services = tuple(spec for spec in self.backends if isinstance(spec, ServiceSpec))
            object.__setattr__(self, "services", services)
            plain = tuple(spec for spec in self.backends if isinstance(spec, BackendSpec))
            object.__setattr__(self, "backends", plain)
        # Each backend's effective health settings follow the global ones it does not set itself:
        # resolved here, so that no way of making or replacing a Settings can leave them stale.
        resolved = tuple(spec.resolved(self.health) for spec in self.backends)
        object.__setattr__(self, "backends", resolved)
        pools = []
        for pool in self.pools:
            health = pool.health(self.health)
            pools.append(replace(pool, backends=tuple(spec.resolved(health) for spec in pool.backends)))
        object.__setattr__(self, "pools", tuple(pools))

    @property
    def default_pool(self) -> PoolSpec:
        """The pool of the top level: --backend, [[backends]], policy, hash_key, [fallback]."""
        return PoolSpec(
            DEFAULT_POOL,
            self.backends,
            self.services,
            (),
            self.policy,
            self.hash_key,
            self.hash_balance_factor,
            self.fallback,
        )

    @property
    def all_pools(self) -> tuple[PoolSpec, ...]:
        """The default pool first, then the named ones in the file's order."""
        return (self.default_pool, *self.pools)


def declared_settings() -> Iterator[Declared]:
    """Every setting, in the order of its fields: what the CLI makes its flags of."""
    return declared(Settings)


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
    return lay(settings, table)


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


def check(settings: Settings, resolve: Callable[[str], Sequence[str]] | None = None) -> Settings:
    """Rules across settings, once all of the file and the flags are in: a ConfigError if one fails.
    `resolve` (a listen host name to the addresses a bind would take) lets the listeners' rule see
    through names; without it names are compared as written (this module does no I/O)."""
    _check_listeners(settings, resolve)
    if not (is_loopback(settings.admin_listen.host) or settings.admin_token or settings.admin_insecure):
        raise ConfigError(
            "admin_listen",
            str(settings.admin_listen),
            "not loopback and no admin_token: anyone who reaches it could drain every backend; set "
            "admin_token (--admin-token, or DISPATCHER_ADMIN_TOKEN), or admin_insecure = true "
            "(--admin-insecure) if only trusted hosts can reach it",
        )
    _check_tls(settings)
    _check_pools(settings)
    if settings.policy != "hash":
        for hashing, default in (("hash_key", _HASH_KEY), ("hash_balance_factor", DEFAULT_BALANCE_FACTOR)):
            if getattr(settings, hashing) != default:
                reason = 'only policy = "hash" (--policy hash) reads it'
                raise ConfigError(hashing, str(getattr(settings, hashing)), reason)
    return settings


def _check_listeners(settings: Settings, resolve: Callable[[str], Sequence[str]] | None) -> None:
    """No two listeners on one address. The second bind would fail with "address already in use" once
    the first had started; with --reuse-port on both, the kernel would deal one listener's connections
    to the other. Port 0 asks the system for a free port, a different one each time (tests). A name
    (`localhost`) binds every address it resolves to: with `resolve`, each of those is compared."""
    listeners = [("listen", settings.listen), ("admin_listen", settings.admin_listen)]
    if settings.tls.redirect_listen is not None:
        listeners.append(("tls.redirect_listen", settings.tls.redirect_listen))
    for i, (key, address) in enumerate(listeners):
        for earlier, other in listeners[:i]:
            reason = _shared(address, earlier, other)
            if reason is None and resolve is not None and address.port == other.port:
                reason = _shared_resolved(address, earlier, other, resolve)
            if reason is not None:
                raise ConfigError(key, str(address), f"{reason}: two listeners cannot share an address")


def _shared_resolved(
    address: Address, key: str, other: Address, resolve: Callable[[str], Sequence[str]]
) -> str | None:
    """`_shared` between the addresses the two hosts resolve to (a literal resolves to itself)."""
    ours = [address.host] if not isinstance(_listen_host(address.host), str) else resolve(address.host)
    theirs = [other.host] if not isinstance(_listen_host(other.host), str) else resolve(other.host)
    if ours == [address.host] and theirs == [other.host]:
        return None  # two literals: `_shared` has said
    for mine in ours:
        for its in theirs:
            reason = _shared(Address(mine, address.port), key, Address(its, other.port))
            if reason is not None:
                named = [(host, ip) for host, ip in ((address.host, mine), (other.host, its)) if host != ip]
                return f"{reason} once resolved ({', '.join(f'{host} is {ip}' for host, ip in named)})"
    return None


def _shared(address: Address, key: str, other: Address) -> str | None:
    """Why `address` is one that `other` (the listener `key`) already takes, or None if it is not:
    the same host and port, or the same port under the wildcard of its family (`0.0.0.0`, `::`)."""
    if address.port == 0 or address.port != other.port:
        return None
    ours, theirs = _listen_host(address.host), _listen_host(other.host)
    if ours == theirs:
        return f"the same address as {key}"
    for wildcard, host in ((theirs, ours), (ours, theirs)):
        if not isinstance(wildcard, str) and wildcard.is_unspecified and isinstance(host, type(wildcard)):
            every = f"{wildcard} takes port {address.port} on every IPv{wildcard.version} address"
            return f"overlaps {key} ({other}): {every}"
    return None


def _listen_host(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | str:
    """A listen host compared as the address it is (`::1` is `0:0::1`), or as a name in lower case (not
    resolved: no I/O)."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return host.lower()


def _check_pools(settings: Settings) -> None:
    """Routes name pools that exist; backend names are unique across pools (the admin API and the
    metrics name a backend alone); a pool without its own health checks is not one."""
    names = {each.name for each in settings.all_pools}
    for i, route in enumerate(settings.routes):
        for j, wanted in enumerate(route.pools):
            if wanted not in names:
                key = f"routes[{i}].pool" if route.pool is not None else f"routes[{i}].split[{j}].pool"
                raise ConfigError(key, wanted, f"no such pool (pools: {', '.join(sorted(names))})")
    seen: dict[str, str] = {}
    for each in settings.all_pools:
        for index, spec in enumerate(each.backends):
            if spec.name in seen and seen[spec.name] != each.name:
                where = "backends" if each.name == DEFAULT_POOL else f"pools.{each.name}.backends"
                reason = f"backend name already used in pool {seen[spec.name]}: names are unique"
                raise ConfigError(f"{where}[{index}].name", spec.name, reason)
            seen[spec.name] = each.name
    for named in settings.pools:
        if named.services:
            key, url = f"pools.{named.name}.backends", named.services[0].url
            raise ConfigError(key, url, "dns:// backends are for the default pool for now")


# What turns TLS on, as an operator gives it: what to add when a TLS setting is set without it.
_CERTIFICATE_NEEDED = "give a certificate, tls.cert (--tls-cert) or tls.certificates (--tls-certificate)"


def _check_tls(settings: Settings) -> None:
    """A certificate needs its key; the 308 listener and HSTS need a certificate. Without one the front
    door is plain HTTP: a 308 to https would send clients to a port that does not speak it, and HSTS,
    sent over TLS alone (RFC 6797 §7.2), would never be sent. Either would start and do nothing."""
    tls = settings.tls
    if (tls.cert is None) != (tls.key is None):
        given, missing = ("cert", "key") if tls.key is None else ("key", "cert")
        raise ConfigError(
            f"tls.{missing}", None, f"missing: tls.{given} needs its {missing} (--tls-{missing})"
        )
    if tls.enabled:
        return
    if tls.redirect_listen is not None:
        reason = f"redirects to the front door over TLS, which is off: {_CERTIFICATE_NEEDED}"
        raise ConfigError("tls.redirect_listen", str(tls.redirect_listen), reason)
    if tls.hsts:
        reason = f"is sent over TLS only, which is off: {_CERTIFICATE_NEEDED}"
        raise ConfigError("tls.hsts", format_duration(tls.hsts), reason)


# Codes that look like countries and never are one in a MaxMind database or an edge's header: ISO
# 3166's reserved and user-assigned codes people write.
_NO_SUCH_COUNTRY = {
    "UK": "the United Kingdom is GB",
    "EU": "EU is a continent in GeoIP databases, not a country",
    "XX": "XX is an edge's 'unknown'",
    "ZZ": "ZZ is 'unknown region'",
}


def warnings(settings: Settings) -> list[str]:
    """What is allowed but probably not meant, for the log at start and at each reload: a check timeout
    not shorter than its interval, in [health] and in each backend that sets either itself."""
    found = [_timeout_warning(settings.health)] if _timeout_too_long(settings.health) else []
    found += unreachable(settings.routes)
    found += [
        f"routes[{i}] ({route.name}): a split without a name: its cookie ({route.cookie.name}) and its "
        "metrics are named by its place in the list, so a route added before it renames them and every "
        "visitor is drawn again; give it a name"
        for i, route in enumerate(settings.routes)
        if route.split
        and not route.named
        and route.cookie is not None
        and route.cookie.name == f"dispatcher-{route.name}"
    ]
    if settings.geoip_db is None and settings.country_header is None:
        found += [
            f"routes[{i}] ({route.name}): countries, but neither geoip_db nor country_header is set: "
            "it never matches"
            for i, route in enumerate(settings.routes)
            if route.countries
        ]
    found += [
        f"routes[{i}] ({route.name}): countries has {code}, which no client's country is: {why}"
        for i, route in enumerate(settings.routes)
        for code in sorted(route.countries)
        if (why := _NO_SUCH_COUNTRY.get(code)) is not None
    ]
    if settings.country_header is not None and not settings.trusted_proxies:
        # Believed only from a trusted peer (a client must not choose its region), so with none
        # it is never read: the header's routes match only by geoip_db, or never.
        found.append(
            f"country_header = {settings.country_header!r}: no trusted_proxies, so it is read from "
            "no one (only a trusted edge's header is believed): set trusted_proxies to the edge's "
            "addresses"
        )
    used = {pool for route in settings.routes for pool in route.pools}
    found += [f"pools.{pool.name}: no route sends to it" for pool in settings.pools if pool.name not in used]
    takes_all = next((i for i, route in enumerate(settings.routes) if _takes_every_request(route)), None)
    if takes_all is not None and (settings.backends or settings.services) and "default" not in used:
        route = settings.routes[takes_all]
        found.append(
            f"routes[{takes_all}] ({route.name}) takes every request: the default pool's backends "
            "([[backends]], --backend) are never sent one"
        )
    if not settings.tls.enabled:
        found += [
            f"routes[{i}] ({route.name}): cookie.secure = true on a plain-HTTP front door: browsers keep "
            "a Secure cookie only from https, so visitors are drawn again at each request unless a TLS "
            "terminator is in front"
            for i, route in enumerate(settings.routes)
            if route.cookie is not None and route.cookie.secure
        ]
    for i, spec in enumerate(settings.backends):
        own = {name for name, _ in spec.health_overrides}
        if own & {"interval", "timeout"} and _timeout_too_long(spec.health):
            found.append(f"backends[{i}] ({spec.name}): {_timeout_warning(spec.health)}")
    for service in settings.services:  # its members' health, as a backend's
        overrides = dict(service.health_overrides)
        health = replace(settings.health, **overrides)
        if overrides.keys() & {"interval", "timeout"} and _timeout_too_long(health):
            found.append(f"{service.url}: {_timeout_warning(health)}")
    for pool in settings.pools:  # a named pool's own [health] over the global one, then its backends'
        pool_health = pool.health(settings.health)
        own = {name for name, _ in pool.health_overrides}
        if own & {"interval", "timeout"} and _timeout_too_long(pool_health):
            found.append(f"pools.{pool.name}: {_timeout_warning(pool_health)}")
        for i, spec in enumerate(pool.backends):
            overrides = dict(spec.health_overrides)
            health = replace(pool_health, **overrides)
            if overrides.keys() & {"interval", "timeout"} and _timeout_too_long(health):
                found.append(f"pools.{pool.name}.backends[{i}] ({spec.name}): {_timeout_warning(health)}")
    return found


def _takes_every_request(route: RouteSpec) -> bool:
    """A route as wide as one with no condition: none, the path prefix `/` (every path starts with
    one), clients of every address (`0.0.0.0/0` and `::/0`), as `covers` reads them."""
    return covers(route, RouteSpec("any request"))


def _timeout_too_long(health: HealthSettings) -> bool:
    return health.timeout >= health.interval


def _timeout_warning(health: HealthSettings) -> str:
    return (
        f"health.timeout ({format_duration(health.timeout)}) is not shorter than health.interval "
        f"({format_duration(health.interval)}): a backend that hangs is checked once per timeout, "
        f"not per interval, and is marked down only after fall x timeout "
        f"({format_duration(health.fall * health.timeout)}); make the timeout shorter"
    )
