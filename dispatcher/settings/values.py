"""Values: one setting's value of one kind (an address, a duration, a count...) checked on its own.

Owns: `ConfigError` (every bad value is one, naming its key) and the parser of each kind of value.
Rules: no I/O, nothing of the package imported; a parser takes `(key, value)`, returns the value as
`Settings` holds it, or raises a `ConfigError` naming `key`, so that the CLI prints one line and exits 2.
"""

from __future__ import annotations

import datetime
import difflib
import ipaddress
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit


class ConfigError(ValueError):
    """A setting that cannot be used; `str()` is the one line the CLI prints."""

    def __init__(self, key: str, value: object, reason: str) -> None:
        self.key, self.value, self.reason = key, value, reason
        # None: a setting that is missing, which has no value to show (`tls.key = None` reads as one).
        # A boolean, a date or a time as the file writes it (`true`, `1979-05-27`, not Python's reprs).
        if isinstance(value, bool):
            shown = "true" if value else "false"
        elif isinstance(value, datetime.date | datetime.time):
            shown = value.isoformat()
        else:
            shown = repr(value)
        super().__init__(f"{key}: {reason}" if value is None else f"{key} = {shown}: {reason}")


@dataclass(frozen=True, slots=True)
class Address:
    """A host and port to listen on."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_address(key: str, text: object) -> Address:
    """`HOST:PORT` or `[V6]:PORT`; port 0 asks the system for a free port (tests)."""
    if not isinstance(text, str) or ":" not in text:
        raise ConfigError(key, text, "expected HOST:PORT")
    host, _, port_text = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host:
        raise ConfigError(key, text, "expected HOST:PORT")
    return Address(host, _port(key, text, port_text))


def ip_address_port(key: str, text: object) -> Address:
    """`IP:PORT` or `[V6]:PORT`, the host an address literal: a DNS resolver's address, which cannot be
    a name (there would be nothing to resolve it with)."""
    address = parse_address(key, text)
    try:
        ipaddress.ip_address(address.host)
    except ValueError:
        raise ConfigError(
            key, text, "expected IP:PORT, an IP address (a resolver cannot be a name)"
        ) from None
    if address.port == 0:
        raise ConfigError(key, text, "port must be a number from 1 to 65535")
    return address


def _port(key: str, text: str, port_text: str) -> int:
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(key, text, "port must be a number from 0 to 65535")
    return int(port_text)


def positive(key: str, value: object) -> float:
    """A finite number greater than 0."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(key, value, "must be a number")
    if not math.isfinite(value):
        raise ConfigError(key, value, "must be a finite number (TOML reads 1e400 as infinity)")
    if value <= 0:
        raise ConfigError(key, value, "must be greater than 0")
    return float(value)


# Weights are relative; past this their sums lose the small ones (a split of 1e308 and 1e308 overflows
# to inf and sends everything to one side). HAProxy stops at 256, nginx and Envoy take integers.
MAX_WEIGHT = 1_000_000


def weight(key: str, value: object) -> float:
    """A backend's or a split variant's weight: a finite number greater than 0, at most MAX_WEIGHT."""
    number = positive(key, value)
    if number > MAX_WEIGHT:
        raise ConfigError(key, value, f"must be at most {MAX_WEIGHT:,}: weights are relative")
    return number


# Durations as nginx writes them (`10s`, `500ms`, `1m`, `1h`: "Measurement units" in its docs), one
# number and one unit; a bare number is seconds, as every duration here was before units existed.
# A minus sign is read too, as TOML reads `-1`: `-1s` is a duration out of range, which the range
# check says, not one that cannot be read.
_DURATION = re.compile(r"(?P<sign>-)?(?P<number>[0-9]+(?:\.[0-9]*)?|\.[0-9]+) *(?P<unit>ms|s|m|h)?")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


# The longest duration anything takes: 2^31 - 1 seconds, 68 years, the largest delay-seconds a client
# must read (RFC 9111 §1.2.2) and a cookie's Max-Age bound. Past it, `retry_after = 1e300` became a
# Retry-After of 301 digits and `grace_period = 1e300` a shutdown that never ends.
MAX_DURATION = 2**31 - 1


def parse_duration(key: str, value: object) -> float:
    """Seconds, from a number of seconds or a string with a unit: `2s`, `500ms`, `1.5s`, `1m`, `1h`, at
    most MAX_DURATION either way. Not checked for its sign (`-1s` is -1.0): that is `positive_duration`'s
    and `non_negative_duration`'s."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        match = _DURATION.fullmatch(value.strip()) if isinstance(value, str) else None
        if match is None:
            raise ConfigError(
                key, value, "expected a duration: seconds, or a number with ms, s, m or h (2s, 500ms)"
            )
        seconds = float(match["number"]) * _UNIT_SECONDS[match["unit"]]
        seconds = -seconds if match["sign"] else seconds
    if not abs(seconds) <= MAX_DURATION:  # inf and nan too (TOML's 1e400 is inf)
        raise ConfigError(key, value, f"must be a duration of at most 68 years ({MAX_DURATION}s)")
    return seconds


def positive_duration(key: str, value: object) -> float:
    seconds = parse_duration(key, value)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(key, value, "must be a duration greater than 0")
    return seconds


def non_negative_duration(key: str, value: object) -> float:
    seconds = parse_duration(key, value)
    if not math.isfinite(seconds) or seconds < 0:
        raise ConfigError(key, value, "must be a duration of at least 0")
    return seconds


def format_duration(seconds: float) -> str:
    """A duration as it could be written in the config: `1s`, `0.5s`, `120s`, `31536000s`. Fifteen
    digits, not `:g`'s six: a year of HSTS is not `3.1536e+07s`, which no duration here reads."""
    return f"{seconds:.15g}s"


def count(key: str, value: object) -> int:
    """A whole number of at least 1 (rise, fall, workers, bytes)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(key, value, "must be a whole number of at least 1")
    return value


def whole_number(key: str, value: object) -> int:
    """A whole number of at least 0 (max_discard: 0 reads no body, so every body closes)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(key, value, "must be a whole number of at least 0")
    return value


def boolean(key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(key, value, "must be true or false")
    return value


def fraction(key: str, value: object) -> float:
    """A number from 0 to below 1 (the jitter)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
        raise ConfigError(key, value, "must be a number from 0 to below 1")
    return float(value)


def one_of(choices: Sequence[str]) -> Callable[[str, object], str]:
    """A parser that takes one of `choices` (the policy's names)."""

    def parse(key: str, value: object) -> str:
        if not isinstance(value, str) or value not in choices:
            raise ConfigError(key, value, f"must be one of {', '.join(choices)}")
        return value

    return parse


def token(key: str, value: object) -> str:
    """A bearer token; an error shows `<hidden>`, never the value (it may be a real token mistyped)."""
    if not isinstance(value, str) or len(value) < 8 or not value.isascii() or not value.isprintable():
        raise ConfigError(key, "<hidden>", "must be at least 8 printable ASCII characters")
    if " " in value:
        raise ConfigError(key, "<hidden>", "must not contain spaces")
    return value


def url_path(key: str, value: object) -> str:
    """A path for a request line (the health path): starts with '/', no spaces, no fragment."""
    if not isinstance(value, str) or not value.startswith("/") or not value.isprintable():
        raise ConfigError(key, value, "must be a path starting with '/'")
    if any(c in value for c in " #"):
        raise ConfigError(key, value, "must not contain spaces or '#'")
    if not value.isascii():  # it goes into request lines, Locations and Set-Cookie as it is
        raise ConfigError(key, value, "must be ASCII: percent-encode other characters (é is %C3%A9)")
    return value


def file_path(key: str, value: object) -> str:
    if not isinstance(value, str) or not value or not value.isprintable():
        raise ConfigError(key, value, "must be a file path")
    return value


# host[:port]: a bracketed IP literal or a name of the characters a host may hold (RFC 3986 §3.2.2,
# no userinfo), then an optional port of digits.
_AUTHORITY = re.compile(r"(?:\[([^\[\]]*)\]|[^\[\]:]*)(?::([0-9]*))?", re.ASCII)


def split_url(key: str, url: str) -> SplitResult:
    """`url` split as urllib does, with its authority checked whole: urlsplit raises ValueError on
    an unbalanced bracket (a traceback out of a config check, and a dropped admin request), reads
    `http://[::1]x` as [::1] on port 80, and `[zz]` as a host."""
    if not url.isascii():  # its host, port and path go into Locations and request lines as they are
        raise ConfigError(key, url, "must be ASCII: percent-encode other characters (é is %C3%A9)")
    try:
        parts = urlsplit(url)
    except ValueError as error:
        raise ConfigError(key, url, f"not a URL: {error}") from None
    authority = _AUTHORITY.fullmatch(parts.netloc.rpartition("@")[2])
    if authority is None:
        raise ConfigError(key, url, "the host must be a name or an IP address, with an optional :port")
    literal, port = authority.groups()
    if literal is not None:
        try:
            ipaddress.IPv6Address(literal.partition("%")[0])
        except ValueError:
            raise ConfigError(key, url, f"[{literal}] is not an IPv6 address") from None
    if port is not None and port != "" and not 0 < int(port) < 65536:
        raise ConfigError(key, url, "the port must be a number from 1 to 65535")
    return parts


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def network(key: str, text: str) -> Network:
    """An address or CIDR network in any spelling ipaddress reads (`2001:DB8::/32`, `2001:0db8::/32`,
    `::ffff:10.0.0.0/104`), as nginx's `set_real_ip_from` takes it. Host bits set (`10.0.0.1/8`) are
    refused, not silently widened or narrowed: which network was meant is the operator's to say, and
    trust (trusted proxies, a route's clients) is the wrong place to guess."""
    try:
        return ipaddress.ip_network(text)
    except ValueError:
        pass
    try:
        wide = ipaddress.ip_network(text, strict=False)
    except ValueError as error:
        # ipaddress says which part is wrong ("'33' is not a valid netmask"); one line, as the CLI prints.
        raise ConfigError(key, text, f"must be an address or CIDR network, as 10.0.0.0/8: {error}") from None
    raise ConfigError(key, text, f"has host bits set: write {wide} for the network")


# A top-level setting written below a [table] or [[table]] header: TOML puts it in that table.
_BELOW_A_TABLE = "; a key written below a [table] belongs to that table in TOML: move it above the first one"


def unknown_setting(
    key: str, value: object, name: str, known: Sequence[str], top_level: Sequence[str] = ()
) -> ConfigError:
    """`unknown setting`, with the known name it is closest to (`trusted_proxy`, the flag's
    `country-header`), or, for a key of the top level found in a table, why it is there."""
    if name in top_level:
        return ConfigError(key, value, "unknown setting" + _BELOW_A_TABLE)
    close = difflib.get_close_matches(name.replace("-", "_"), list(known), n=1, cutoff=0.75)
    return ConfigError(key, value, "unknown setting" + (f"; did you mean {close[0]}?" if close else ""))
