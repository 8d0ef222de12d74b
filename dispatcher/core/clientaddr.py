"""Client address: who the client is when proxies stand between it and the front door.

Owns: the trusted proxies (networks whose forwarding headers are believed), the walk of a forwarding
header's hops to the client's address, and a country header set by a trusted edge.
Rules: pure (no I/O, no trio; the stdlib and `settings` only), so that every rule is tested on plain
strings and bytes. The headers are h11's: lower-case names, byte values, in the order received.

The one rule that matters: a client must never choose its own address (and so its region, or its hash
key) by writing a header. Only the peer, the machine at the other end of the socket, is known; what it
says is believed only when it is in `trusted`, and a trusted proxy's header is believed only as far
as the hops that trusted proxies wrote.

The walk is nginx's realip module with `real_ip_recursive on` (ngx_http_get_forwarded_addr_internal):
every proxy appends the address it saw to the right, so the hops are read from the right, trusted
addresses are skipped, and the first untrusted one is the client, which is the address our outermost
trusted proxy saw at the other end of its own socket. Whatever the client wrote lies to the left of it
and is never read. When every hop is trusted the leftmost is taken (nginx does the same). Envoy's
`xff_num_trusted_hops` (and Traefik's `ipStrategy.depth`) trusts a fixed count of hops from the
right instead, which assumes the same number of proxies on every path: a list of networks does not.

One header is read, the one the trusted proxies write (`TrustedProxies.header`, nginx's
`real_ip_header`), never "Forwarded if present, else X-Forwarded-For": nginx, HAProxy, AWS ALB and
Cloudflare append to X-Forwarded-For and pass a client's own Forwarded through untouched, so reading
whichever is present would let that client's Forwarded decide.

A hop that is not an address (garbage, RFC 7239's `unknown` or an obfuscated `_hidden`) ends the walk,
and the last valid address seen from the right is the client: the address of the trusted proxy that
wrote the unreadable hop, or the peer itself. nginx does the same (it keeps the last address it parsed).
Reading past such a hop would believe what lies left of it, which that proxy did not vouch for; so an
unreadable hop can cost precision (the proxy stands in for its client) but never lets a forged value in.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from dispatcher.settings.values import ConfigError

if TYPE_CHECKING:
    from dispatcher.settings.config import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# The forwarding headers a proxy may write. X-Forwarded-For is what nginx
# (`$proxy_add_x_forwarded_for`), HAProxy (`option forwardfor`), Envoy, AWS ALB and Cloudflare append;
# RFC 7239's Forwarded is what HAProxy's `option forwarded` and some CDNs write.
X_FORWARDED_FOR = b"x-forwarded-for"
FORWARDED = b"forwarded"
FORWARDING_HEADERS = {"x-forwarded-for": X_FORWARDED_FOR, "forwarded": FORWARDED}

# Parsed addresses and verdicts are remembered: the same few proxies and clients come back on every
# request, and a hit (a dict look-up, ~0.05 µs) saves ipaddress's parse and the masks (~6 µs for IPv4,
# ~11 µs for IPv6). Bounded, so that a client with a whole IPv6 /64 to send from cannot grow it: when
# full it is emptied (cheaper per request than an LRU's bookkeeping, and the next few thousand
# requests fill it again with whoever is really there).
CACHE_SIZE = 4096


class Networks:
    """Networks that an address (text, as a peer's, a hop's or a client's) is in or not: the trusted
    proxies', or a route's `clients`. Each verdict is remembered (see CACHE_SIZE): a route's check
    parsed the address and tested every network on each request it was tested on, about 2.5 us in
    process, more than the rest of a ten-route match."""

    def __init__(self, networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network] = ()) -> None:
        self.networks = tuple(_unmapped_network(network) for network in networks)
        self._v4 = tuple((int(n.network_address), int(n.netmask)) for n in self.networks if n.version == 4)
        self._v6 = tuple((int(n.network_address), int(n.netmask)) for n in self.networks if n.version == 6)
        self._known: dict[str, tuple[str | None, bool]] = {}

    def __contains__(self, address: object) -> bool:
        """Whether `address` is in one of the networks; False for text that is not an address.
        IPv4-mapped IPv6 (`::ffff:10.0.0.1`, a dual-stack socket's IPv4 peer) is its IPv4 address."""
        return isinstance(address, str) and self.judge(address)[1]

    def judge(self, address: str) -> tuple[str | None, bool]:
        """The address's normalised text (ipaddress's compressed form, mapped IPv4 unmapped; None when
        it is not an address) and whether it is in the networks, remembered (see CACHE_SIZE)."""
        known = self._known.get(address)
        if known is None:
            if len(self._known) >= CACHE_SIZE:
                self._known.clear()
            known = self._known[address] = _judge(self._v4, self._v6, address)
        return known

    def __bool__(self) -> bool:
        return bool(self.networks)


class TrustedProxies(Networks):
    """The networks whose forwarding headers are believed, and which header they write.

    An empty one trusts nobody: then every header is ignored, which is the default because a front
    door that believes headers from anyone lets every client choose its own address.
    """

    def __init__(
        self,
        networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network] = (),
        header: bytes = X_FORWARDED_FOR,
    ) -> None:
        super().__init__(networks)
        self.header = header

    def __repr__(self) -> str:
        networks = ", ".join(str(network) for network in self.networks)
        return f"TrustedProxies([{networks}], header={self.header!r})"


def _judge(
    v4: tuple[tuple[int, int], ...], v6: tuple[tuple[int, int], ...], address: str
) -> tuple[str | None, bool]:
    try:
        ip: IPAddress = ipaddress.ip_address(address)
    except ValueError:
        return None, False
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    value = int(ip)
    networks = v4 if ip.version == 4 else v6
    return str(ip), any(value & mask == network for network, mask in networks)


def _unmapped_network(
    network: ipaddress.IPv4Network | ipaddress.IPv6Network,
) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """`::ffff:10.0.0.0/104` as `10.0.0.0/8`: peers are unmapped before they are matched, so a mapped
    network must be too, or it would never match."""
    if network.version == 6 and network.prefixlen >= 96 and int(network.network_address) >> 32 == 0xFFFF:
        address = ipaddress.IPv4Address(int(network.network_address) & 0xFFFFFFFF)
        return ipaddress.IPv4Network((address, network.prefixlen - 96))
    return network


def trusted_of(settings: Settings) -> TrustedProxies:
    """The trusted proxies a checked config names, with the header they write."""
    networks = (ipaddress.ip_network(text) for text in settings.trusted_proxies)
    return TrustedProxies(networks, settings.forwarding_header.encode())


def parse_trusted_proxies(key: str, value: object, header: bytes = X_FORWARDED_FOR) -> TrustedProxies:
    """A list of addresses and CIDR networks (`10.0.0.0/8`, `2001:db8::/32`, `192.0.2.7`), as nginx's
    `set_real_ip_from`. A network with host bits set (`10.0.0.1/8`) is refused, not silently widened or
    narrowed: which one was meant is the operator's to say, and trust is the wrong place to guess."""
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ConfigError(key, value, "expected a list of addresses or networks (CIDR)")
    return TrustedProxies((_network(key, value, entry) for entry in value), header)


def _network(key: str, value: object, entry: object) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if not isinstance(entry, str):
        raise ConfigError(key, value, f"entry {entry!r} is not a string: expected an address or CIDR")
    text = entry.strip()
    kind = ipaddress.IPv6Network if ":" in text else ipaddress.IPv4Network
    try:
        return kind(text)
    except (ipaddress.AddressValueError, ipaddress.NetmaskValueError) as error:
        # ipaddress says which part is wrong ("'33' is not a valid netmask"); one line, as the CLI prints.
        raise ConfigError(key, value, f"entry {entry!r} is not an address or CIDR: {error}") from None
    except ValueError:
        wide = kind(text, strict=False)
        raise ConfigError(
            key, value, f"entry {entry!r} has host bits set: write {wide} for the network"
        ) from None


def parse_forwarding_header(key: str, value: object) -> bytes:
    """Which header the trusted proxies write: `x-forwarded-for` or `forwarded` (nginx's
    `real_ip_header`). One only: a proxy that appends to one passes a client's forged copy of the other
    through untouched, so reading whichever is present would let a client choose its address."""
    if not isinstance(value, str) or value.lower() not in FORWARDING_HEADERS:
        raise ConfigError(key, value, f"must be one of {', '.join(FORWARDING_HEADERS)}")
    return FORWARDING_HEADERS[value.lower()]


def parse_country_header(key: str, value: object) -> bytes:
    """A header name (`CF-IPCountry`, `CloudFront-Viewer-Country`) as h11 gives it: lower-case bytes."""
    if not isinstance(value, str) or not _TOKEN.fullmatch(value):
        raise ConfigError(key, value, "must be a header name (letters, digits and -)")
    return value.lower().encode("ascii")


def client_address(peer: str, headers: Sequence[tuple[bytes, bytes]], trusted: TrustedProxies) -> str:
    """The client's address: the peer's, or, when the peer is a trusted proxy, the first untrusted hop
    of `trusted.header` read from the right (the module's header says why that cannot be forged).

    `peer` is the host of getpeername() (`203.0.113.7`, `::1`, `::ffff:10.0.0.1`); text that is not an
    address (`-` for a reset socket) comes back unchanged. The result is ipaddress's compressed text.
    """
    # The common case, an untrusted peer, is this one dict look-up whatever the headers say.
    address, is_trusted = trusted._known.get(peer) or trusted.judge(peer)
    if not is_trusted or address is None:
        return peer if address is None else address
    lines = [value for name, value in headers if name == trusted.header]
    if not lines:
        return address
    hops = _forwarded_hops(lines) if trusted.header == FORWARDED else _xff_hops(lines)
    for hop in reversed(hops):
        hop_address, is_trusted = trusted.judge(_node_host(hop))
        if hop_address is None:
            break  # unreadable: what lies left of it was vouched for by nobody we trust
        address = hop_address
        if not is_trusted:
            break
    return address


def trusted_country(
    peer: str, headers: Sequence[tuple[bytes, bytes]], trusted: TrustedProxies, header: bytes | None
) -> str | None:
    """The country a trusted edge put in `header` (Cloudflare's `cf-ipcountry`), upper-cased; None when
    there is no such header, the peer is not trusted (a client's own copy is ignored), or the value is
    not two ASCII letters (Cloudflare's `T1` for Tor), or says the edge does not know (`XX`, as
    Cloudflare writes it): then a GeoIP database, if there is one, is asked instead. With several lines
    the last is taken: an edge that adds rather than replaces adds after what the client sent."""
    if header is None or peer not in trusted:
        return None
    value = None
    for name, line in headers:
        if name == header:
            value = line
    code = None if value is None else country_code(value.strip(b" \t").decode("latin-1"))
    return None if code == UNKNOWN_COUNTRY else code


UNKNOWN_COUNTRY = "XX"  # ISO 3166's user-assigned code, which edges (Cloudflare) send for "no country"


def country_code(value: object) -> str | None:
    """An ISO 3166-1 alpha-2 code, upper-cased, from text that should be one; None otherwise."""
    if isinstance(value, str) and len(value) == 2 and value.isascii() and value.isalpha():
        return value.upper()
    return None


# RFC 9110 §5.6.2: token = 1*tchar.
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _xff_hops(lines: Iterable[bytes]) -> list[str | None]:
    """X-Forwarded-For's hops, left to right: every line in order, split at commas (RFC 9110 §5.3: the
    lines of a list header join as one list), empty items dropped as the list rule allows."""
    hops: list[str | None] = []
    for line in lines:
        for item in line.decode("latin-1").split(","):
            item = item.strip(" \t")
            if item:
                hops.append(item)
    return hops


# RFC 7239 §4: forwarded-pair = token "=" value, value = token / quoted-string. A token value is taken
# more widely than tchar (up to a delimiter), because proxies write `for=[2001:db8::1]:80` unquoted;
# leniency is safe because any syntax error still condemns the rest of its line (`_forwarded_line`).
_PAIR = re.compile(
    r"""[ \t]*(?P<name>[!#$%&'*+.^_`|~0-9A-Za-z-]+)="""
    r"""(?:"(?P<quoted>(?:[^"\\]|\\.)*)"|(?P<token>[^\s",;]+))[ \t]*"""
)
_SEPARATOR = re.compile(r"[ \t]*(?P<separator>[;,]|\Z)")
_QUOTED_PAIR = re.compile(r"\\(.)")


def _forwarded_hops(lines: Iterable[bytes]) -> list[str | None]:
    """Forwarded's `for=` hops, left to right (None for an element without one, or where a line stops
    parsing: both end the walk). Each line is parsed on its own, so a client's unterminated quote
    cannot swallow a line that a trusted proxy added after it."""
    hops: list[str | None] = []
    for line in lines:
        hops.extend(_forwarded_line(line.decode("latin-1")))
    return hops


def _forwarded_line(text: str) -> list[str | None]:
    """One line's elements' `for=` values. A syntax error ends the line with None and drops the rest:
    a pair that runs from a client's text into a proxy's (`x="` before `, for=...`) must not yield a
    value, and the walk stops at the None before anything left of it is read."""
    hops: list[str | None] = []
    element: dict[str, str] = {}
    position = 0
    while True:
        pair = _PAIR.match(text, position)
        if pair is not None:
            name = pair["name"].lower()
            if name in element:  # RFC 7239 §4: a parameter MUST NOT occur twice in an element
                return [*hops, None]
            quoted = pair["quoted"]
            if quoted is None:
                element[name] = pair["token"]
            else:
                element[name] = _QUOTED_PAIR.sub(r"\1", quoted) if "\\" in quoted else quoted
            position = pair.end()
        separator = _SEPARATOR.match(text, position)
        if separator is None:
            return [*hops, None]
        if separator["separator"] != ";":  # `,` or the end: the element is complete
            if element:  # `,,` is an empty element, which the list rule allows and ignores
                hops.append(element.get("for"))
            if not separator["separator"]:
                return hops
            element = {}
        position = separator.end()


def _node_host(node: str | None) -> str:
    """The address part of a hop (`1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`, `[2001:db8::1]:80`, RFC
    7239 §6.3's obfuscated ports `_p`) for `TrustedProxies.judge`; `""` (no address) for anything else.
    A zone (`fe80::1%eth0`) is refused: another host's interface name means nothing here, and it is
    text a client could fill with anything."""
    if node is None or "%" in node:
        return ""
    if node.startswith("["):
        host, bracket, port = node[1:].partition("]")
        good = bracket and ":" in host and (not port or (port[0] == ":" and _port(port[1:])))
        return host if good else ""
    if node.count(":") == 1:  # IPv4 and a port: an IPv6 address has at least two colons
        host, _, port = node.partition(":")
        return host if _port(port) else ""
    return node


def _port(text: str) -> bool:
    """A port number, or RFC 7239 §6.3's obfuscated port (`_` then letters, digits, `.`, `_`, `-`)."""
    if text.isascii() and text.isdigit():
        return len(text) <= 5 and int(text) <= 65535
    return _OBFUSCATED_PORT.fullmatch(text) is not None


_OBFUSCATED_PORT = re.compile(r"_[0-9A-Za-z._-]+")
