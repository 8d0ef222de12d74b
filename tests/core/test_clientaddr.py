"""Client address: trusted proxies, walking X-Forwarded-For and Forwarded, forgeries, the country header."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatcher.core.clientaddr import (
    CACHE_SIZE,
    FORWARDED,
    X_FORWARDED_FOR,
    TrustedProxies,
    client_address,
    country_code,
    parse_country_header,
    parse_forwarding_header,
    parse_trusted_proxies,
    trusted_country,
)
from dispatcher.settings.values import ConfigError

NETWORKS = ["10.0.0.0/8", "192.0.2.1", "2001:db8::/32"]
XFF = parse_trusted_proxies("trusted_proxies", NETWORKS)
FWD = parse_trusted_proxies("trusted_proxies", NETWORKS, FORWARDED)
PROXY = "10.0.0.1"
CLIENT = "203.0.113.7"


def xff(*lines: str) -> list[tuple[bytes, bytes]]:
    return [(b"host", b"example.com"), *((X_FORWARDED_FOR, line.encode()) for line in lines)]


def fwd(*lines: str) -> list[tuple[bytes, bytes]]:
    return [(b"host", b"example.com"), *((FORWARDED, line.encode()) for line in lines)]


def normal(address: str) -> str:
    ip = ipaddress.ip_address(address)
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return str(mapped or ip)


# Trusted proxies


def test_networks_and_single_addresses_are_trusted() -> None:
    """A CIDR trusts its whole network, a bare address itself only, IPv4 and IPv6 alike."""
    assert "10.255.0.9" in XFF and "192.0.2.1" in XFF and "2001:db8:1::5" in XFF
    assert "192.0.2.2" not in XFF and "11.0.0.1" not in XFF and "2001:db9::1" not in XFF


def test_an_ipv4_mapped_peer_counts_as_its_ipv4_address() -> None:
    """A dual-stack socket gives an IPv4 peer as ::ffff:10.0.0.1: it is 10.0.0.1, trusted by 10.0.0.0/8."""
    assert "::ffff:10.0.0.1" in XFF
    assert XFF.judge("::ffff:10.0.0.1") == ("10.0.0.1", True)
    assert XFF.judge("::FFFF:203.0.113.7") == (CLIENT, False)


def test_a_mapped_network_in_the_config_matches_ipv4_peers() -> None:
    """`::ffff:10.0.0.0/104` is stored as 10.0.0.0/8, since peers are unmapped before matching."""
    trusted = parse_trusted_proxies("k", ["::ffff:10.0.0.0/104"])
    assert [str(network) for network in trusted.networks] == ["10.0.0.0/8"]
    assert "10.1.2.3" in trusted and "::ffff:10.1.2.3" in trusted


def test_an_empty_list_trusts_nobody() -> None:
    """No trusted proxies: every peer is itself, whatever the headers say."""
    nobody = parse_trusted_proxies("k", [])
    assert not nobody and "10.0.0.1" not in nobody
    assert client_address(PROXY, xff(CLIENT), nobody) == PROXY


def test_text_that_is_not_an_address_is_not_trusted() -> None:
    """`-` (a reset socket's peer), names and garbage are never in the list, and never raise."""
    assert "-" not in XFF and "localhost" not in XFF and "" not in XFF
    assert 3 not in XFF


def test_the_cache_of_verdicts_stays_bounded() -> None:
    """A client sending from many addresses cannot grow the cache past CACHE_SIZE, and verdicts stay right."""
    trusted = parse_trusted_proxies("k", ["10.0.0.0/8"])
    for n in range(CACHE_SIZE + 10):
        assert f"2001:db9::{n:x}" not in trusted
    assert len(trusted._known) <= CACHE_SIZE
    assert "10.0.0.1" in trusted and "11.0.0.1" not in trusted


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("10.0.0.0/8", "expected a list of addresses or networks (CIDR)"),
        ({"a": 1}, "expected a list of addresses or networks (CIDR)"),
        (["10.0.0.1/8"], "entry '10.0.0.1/8' has host bits set: write 10.0.0.0/8 for the network"),
        (["2001:db8::1/32"], "entry '2001:db8::1/32' has host bits set: write 2001:db8::/32 for the network"),
        (["10.0.0.0/33"], "entry '10.0.0.0/33' is not an address or CIDR: '33' is not a valid netmask"),
        (["10.0.0.0/8", "proxy.example"], "entry 'proxy.example' is not an address or CIDR: Expected 4"),
        (["::g"], "entry '::g' is not an address or CIDR: Only hex digits permitted"),
        ([7], "entry 7 is not a string: expected an address or CIDR"),
    ],
)
def test_a_bad_entry_is_one_line_naming_the_key_and_the_entry(value: object, reason: str) -> None:
    """A bad list is one ConfigError line with the key, the value, and which entry is wrong and why."""
    with pytest.raises(ConfigError) as caught:
        parse_trusted_proxies("trusted_proxies", value)
    assert caught.value.key == "trusted_proxies"
    assert caught.value.reason.startswith(reason)
    assert "\n" not in str(caught.value)


def test_the_forwarding_header_is_one_of_two() -> None:
    """`x-forwarded-for` or `forwarded`, any case; anything else names the choices."""
    assert parse_forwarding_header("k", "X-Forwarded-For") == X_FORWARDED_FOR
    assert parse_forwarding_header("k", "forwarded") == FORWARDED
    with pytest.raises(ConfigError, match="must be one of x-forwarded-for, forwarded"):
        parse_forwarding_header("k", "x-real-ip")


def test_the_country_header_name_is_lower_case_bytes_as_h11_gives_it() -> None:
    """`CF-IPCountry` is matched as b"cf-ipcountry"; a name that is not a token is refused."""
    assert parse_country_header("k", "CF-IPCountry") == b"cf-ipcountry"
    for bad in ["", "cf ipcountry", "país", 3]:
        with pytest.raises(ConfigError, match="must be a header name"):
            parse_country_header("k", bad)


# The peer alone


def test_an_untrusted_peer_is_the_client_whatever_the_headers_say() -> None:
    """Headers from a peer not in the list are ignored: it cannot choose its own address."""
    headers = xff(CLIENT) + fwd(f"for={CLIENT}")
    assert client_address("198.51.100.9", headers, XFF) == "198.51.100.9"
    assert client_address("198.51.100.9", headers, FWD) == "198.51.100.9"


def test_a_trusted_peer_without_a_forwarding_header_is_the_client() -> None:
    """A health checker or an admin on the proxies' network, with no header, is itself."""
    assert client_address(PROXY, [(b"host", b"example.com")], XFF) == PROXY


def test_the_peer_comes_back_normalised() -> None:
    """A mapped peer comes back as IPv4, IPv6 compressed; text that is not an address unchanged."""
    assert client_address("::ffff:203.0.113.7", [], XFF) == CLIENT
    assert client_address("2001:0db9:0:0::1", [], XFF) == "2001:db9::1"
    assert client_address("-", xff(CLIENT), XFF) == "-"


# X-Forwarded-For


def test_xff_one_hop_from_a_trusted_proxy() -> None:
    """nginx's `$proxy_add_x_forwarded_for` on a direct client: the hop is the client."""
    assert client_address(PROXY, xff(CLIENT), XFF) == CLIENT


def test_xff_walks_from_the_right_past_trusted_hops() -> None:
    """client, forged, real, proxy: trusted hops are skipped and the first untrusted one is the client."""
    assert client_address(PROXY, xff(f"6.6.6.6, {CLIENT}, 10.1.1.1, 192.0.2.1"), XFF) == CLIENT


def test_xff_when_every_hop_is_trusted_takes_the_leftmost() -> None:
    """Traffic from inside (an internal client through two proxies) is the leftmost address, as nginx does."""
    assert client_address(PROXY, xff("10.9.9.9, 10.1.1.1"), XFF) == "10.9.9.9"


def test_xff_lines_join_in_order() -> None:
    """Several header lines are one list (RFC 9110 §5.3): the last line's last hop is read first."""
    assert client_address(PROXY, xff("6.6.6.6, 7.7.7.7", f"{CLIENT}, 10.1.1.1"), XFF) == CLIENT
    assert client_address(PROXY, xff("6.6.6.6", CLIENT), XFF) == CLIENT


@pytest.mark.parametrize(
    ("line", "client"),
    [
        ("203.0.113.7:5678", CLIENT),
        ("  203.0.113.7  ,", CLIENT),
        ("203.0.113.7,,10.1.1.1 , ", CLIENT),
        ("2001:db9::17", "2001:db9::17"),
        ("2001:0DB9:0:0:0:0:0:17", "2001:db9::17"),
        ("[2001:db9::17]", "2001:db9::17"),
        ("[2001:db9::17]:443", "2001:db9::17"),
        ("::ffff:203.0.113.7", CLIENT),
        ("[::ffff:203.0.113.7]:80", CLIENT),
    ],
)
def test_xff_hops_with_ports_brackets_and_spaces(line: str, client: str) -> None:
    """Ports on IPv4 and bracketed IPv6, spaces, empty items and mapped addresses all give the address."""
    assert client_address(PROXY, xff(line), XFF) == client


@pytest.mark.parametrize(
    "garbage",
    [
        "unknown",
        "_hidden",
        "not-an-ip",
        "203.0.113.7:99999",
        "203.0.113.7:port",
        "[203.0.113.7]",
        "[2001:db9::17",
        "fe80::1%eth0",
        '"203.0.113.7"',
        "01.2.3.4",
        "1.2.3",
    ],
)
def test_xff_garbage_stops_the_walk_at_the_last_valid_address(garbage: str) -> None:
    """An unreadable hop ends the walk: the proxy right of it stands for the client; nothing left is read."""
    assert client_address(PROXY, xff(garbage), XFF) == PROXY
    assert client_address(PROXY, xff(f"6.6.6.6, {garbage}, 10.1.1.1"), XFF) == "10.1.1.1"
    assert client_address(PROXY, xff(f"6.6.6.6, {garbage}, {CLIENT}"), XFF) == CLIENT


def test_xff_mode_ignores_a_forwarded_header() -> None:
    """Proxies that append X-Forwarded-For pass a client's own Forwarded through: it is never read."""
    headers = fwd("for=6.6.6.6") + xff(CLIENT)
    assert client_address(PROXY, headers, XFF) == CLIENT
    assert client_address(PROXY, fwd("for=6.6.6.6"), XFF) == PROXY


# Forwarded (RFC 7239)


@pytest.mark.parametrize(
    ("line", "client"),
    [
        # RFC 7239 §4 and §7.4's examples.
        ('for="_gazonk"', PROXY),
        ('For="[2001:db9:cafe::17]:4711"', "2001:db9:cafe::17"),
        ("for=192.0.2.60;proto=http;by=203.0.113.43", "192.0.2.60"),
        ("for=192.0.2.43, for=198.51.100.17", "198.51.100.17"),
        ("for=198.51.100.17, for=10.1.1.1", "198.51.100.17"),
        ("FOR=203.0.113.7", CLIENT),
        ("proto=https; for=203.0.113.7 ;by=10.0.0.1", CLIENT),
        ('for="203.0.113.7:4711"', CLIENT),
        ('for="203.0.113.7:_port"', CLIENT),
        ('for="\\203.0.113.7"', CLIENT),
        ("for=[2001:db9::17]:80", "2001:db9::17"),
        ("for=203.0.113.7,,", CLIENT),
        ('for="[::ffff:203.0.113.7]"', CLIENT),
        ('for=203.0.113.7;host="a;b,c"', CLIENT),
    ],
)
def test_forwarded_elements(line: str, client: str) -> None:
    """for= values quoted or not, IPv6 in brackets, ports (obfuscated too), any case, other parameters."""
    assert client_address(PROXY, fwd(line), FWD) == client


@pytest.mark.parametrize("line", ["for=unknown", "for=_hidden", 'for="[2001:db9::17"', "proto=https"])
def test_forwarded_hops_that_are_not_addresses_stop_the_walk(line: str) -> None:
    """`unknown`, an obfuscated node, a bad node or an element without for= end the walk there."""
    assert client_address(PROXY, fwd(line), FWD) == PROXY
    assert client_address(PROXY, fwd(f"for=6.6.6.6, {line}, for=10.1.1.1"), FWD) == "10.1.1.1"


@pytest.mark.parametrize(
    "line",
    [
        "for=203.0.113.7;for=6.6.6.6",
        'for="203.0.113.7',
        "for=203.0.113.7 for=6.6.6.6",
        "for=",
        "=203.0.113.7",
        "for=203.0.113.7;;x",
        'for="203.0.113.7"x',
    ],
)
def test_a_forwarded_syntax_error_condemns_the_rest_of_its_line(line: str) -> None:
    """A repeated parameter or a syntax error: nothing of that line from there on is read, other lines are."""
    assert client_address(PROXY, fwd(line), FWD) == PROXY
    assert client_address(PROXY, fwd(f"for=6.6.6.6, {line}, for={CLIENT}"), FWD) == PROXY
    assert client_address(PROXY, fwd(f"for=6.6.6.6, {line}", f"for={CLIENT}"), FWD) == CLIENT


def test_forwarded_lines_are_parsed_one_by_one() -> None:
    """A client's unterminated quote cannot swallow the line a trusted proxy added after it."""
    assert client_address(PROXY, fwd('for="6.6.6.6', f"for={CLIENT}"), FWD) == CLIENT
    assert client_address(PROXY, fwd("for=6.6.6.6", f'for="[2001:db9::1]:80", for={PROXY}'), FWD) == (
        "2001:db9::1"
    )


def test_a_forged_pair_that_runs_into_the_proxys_element_yields_nothing() -> None:
    """`x="` before the proxy's `, for=...` is one bad element: the walk stops at the proxy, not 6.6.6.6."""
    assert client_address(PROXY, fwd(f'for=6.6.6.6;x=", for={CLIENT}'), FWD) == PROXY
    assert client_address(PROXY, fwd('for=6.6.6.6;x=", for="[2001:db9::1]"'), FWD) == PROXY


def test_forwarded_mode_ignores_x_forwarded_for() -> None:
    """Proxies that write Forwarded pass a client's own X-Forwarded-For through: it is never read."""
    headers = xff("6.6.6.6") + fwd(f"for={CLIENT}")
    assert client_address(PROXY, headers, FWD) == CLIENT
    assert client_address(PROXY, xff("6.6.6.6"), FWD) == PROXY


# Forged headers, for all inputs

# What h11 lets through as a header value: no CR, LF or NUL, no leading or trailing whitespace.
header_values = st.binary(max_size=80).map(lambda raw: raw.replace(b"\r", b"").replace(b"\n", b"").strip())
header_names = st.sampled_from([X_FORWARDED_FOR, FORWARDED, b"cf-ipcountry", b"x-real-ip", b"host"])
any_headers = st.lists(st.tuples(header_names, header_values), max_size=6)
forward_text = st.lists(
    st.sampled_from(
        ["for=", "For=", '"', "[", "]", ":", ",", ";", " ", "\\", "_x", "unknown", "6.6.6.6", "2001:db9::6"]
    ),
    max_size=12,
).map("".join)
untrusted = st.ip_addresses().map(str).filter(lambda address: address not in XFF)


@given(any_headers, untrusted)
def test_forged_headers_never_change_an_untrusted_peers_address(
    headers: list[tuple[bytes, bytes]], peer: str
) -> None:
    """Whatever bytes a client puts in any header, its address is its own and it has no country."""
    assert client_address(peer, headers, XFF) == normal(peer)
    assert client_address(peer, headers, FWD) == normal(peer)
    assert trusted_country(peer, headers, XFF, b"cf-ipcountry") is None


@given(any_headers, st.sampled_from(["10.0.0.1", "::ffff:10.0.0.1", "192.0.2.1", "2001:db8::1"]))
def test_any_headers_from_a_trusted_peer_give_an_address(
    headers: list[tuple[bytes, bytes]], peer: str
) -> None:
    """Any bytes from a trusted proxy: never an exception, always a normalised address."""
    for trusted in (XFF, FWD):
        address = client_address(peer, headers, trusted)
        assert normal(address) == address


@given(
    st.one_of(forward_text, header_values.map(lambda raw: raw.decode("latin-1"))), untrusted, st.booleans()
)
def test_a_forged_xff_prefix_never_wins_over_the_hop_a_trusted_proxy_appends(
    forged: str, client: str, new_line: bool
) -> None:
    """The client writes anything, the trusted proxy appends the address it saw: that is the client."""
    lines = [forged, client] if new_line else [f"{forged}, {client}"]
    assert client_address(PROXY, xff(*lines), XFF) == normal(client)


@given(
    st.one_of(forward_text, header_values.map(lambda raw: raw.decode("latin-1"))), untrusted, st.booleans()
)
def test_a_forged_forwarded_prefix_never_wins_over_the_element_a_trusted_proxy_appends(
    forged: str, client: str, new_line: bool
) -> None:
    """The proxy's element on its own line gives the client; on the client's, it or the proxy: no forgery."""
    node = f'"[{client}]:4711"' if ":" in client else client
    if new_line:
        assert client_address(PROXY, fwd(forged, f"for={node}"), FWD) == normal(client)
    else:
        assert client_address(PROXY, fwd(f"{forged}, for={node}"), FWD) in (normal(client), PROXY)


@given(header_values, untrusted)
def test_two_trusted_proxies_in_a_row_still_give_the_client(forged: bytes, client: str) -> None:
    """client → proxy A (appends the client) → proxy B (appends A) → us: A is skipped, the client found."""
    headers = [(X_FORWARDED_FOR, forged + f", {client}, 10.2.2.2".encode())]
    assert client_address(PROXY, headers, XFF) == normal(client)


# The country header


def test_the_country_header_is_read_only_from_a_trusted_peer() -> None:
    """cf-ipcountry from Cloudflare (trusted) is the country, upper-cased; from anyone else it is ignored."""
    headers = [(b"cf-ipcountry", b"fr")]
    assert trusted_country(PROXY, headers, XFF, b"cf-ipcountry") == "FR"
    assert trusted_country("::ffff:10.0.0.1", headers, XFF, b"cf-ipcountry") == "FR"
    assert trusted_country(CLIENT, headers, XFF, b"cf-ipcountry") is None
    assert trusted_country(PROXY, headers, XFF, None) is None
    assert trusted_country(PROXY, [], XFF, b"cf-ipcountry") is None


@pytest.mark.parametrize("value", [b"T1", b"FRA", b"F", b"", b"\xc3\xa9s", b"1A", b"F R"])
def test_a_country_value_that_is_not_two_letters_is_none(value: bytes) -> None:
    """Cloudflare's T1 (Tor), three letters, non-ASCII or empty: no country rather than a wrong one."""
    assert trusted_country(PROXY, [(b"cf-ipcountry", value)], XFF, b"cf-ipcountry") is None


def test_with_several_country_lines_the_last_is_taken() -> None:
    """An edge that adds rather than replaces adds after the client's copy: the last line is the edge's."""
    headers = [(b"cf-ipcountry", b"US"), (b"cf-ipcountry", b" de ")]
    assert trusted_country(PROXY, headers, XFF, b"cf-ipcountry") == "DE"


def test_country_code_accepts_two_ascii_letters_only() -> None:
    """The same rule for a header and a database's iso_code: two ASCII letters, upper-cased."""
    assert country_code("gb") == "GB"
    assert [country_code(value) for value in ["GBR", "G", "éa", "12", None, 44]] == [None] * 6


def test_trusted_proxies_repr_names_the_networks_and_the_header() -> None:
    """The start-up log and error messages can show what is trusted."""
    assert repr(TrustedProxies()) == "TrustedProxies([], header=b'x-forwarded-for')"
    assert "2001:db8::/32" in repr(FWD) and "b'forwarded'" in repr(FWD)
