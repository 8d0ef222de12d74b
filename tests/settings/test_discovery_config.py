"""Backends found in DNS: the dns:// and dns+srv:// entries of the backend list and the [dns] table."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from dispatcher.settings.config import (
    Address,
    ConfigError,
    DnsSettings,
    ServiceSpec,
    Settings,
    apply,
    check,
    parse_toml,
    warnings,
)
from dispatcher.wiring.cli import build_parser, load_settings
from tests.test_readme import section

FILE = """
[dns]
interval = "10s"
resolver = "127.0.0.1:8600"
[[backends]]
url = "http://10.0.0.11:8080"
[[backends]]
url = "dns+srv+https://_http._tcp.Web.service.consul./app/"
health = { path = "/ping" }
[[backends]]
url = "dns://web.default.svc.cluster.local:8080"
weight = 3
"""


def test_a_file_gives_both_kinds_of_backend_apart() -> None:
    """Backends by URL stay in `backends`; those found in DNS are `services`, in the file's order."""
    settings = apply(Settings(), parse_toml(FILE))
    assert [spec.name for spec in settings.backends] == ["10.0.0.11:8080"]
    srv, a = settings.services
    assert (srv.record, srv.query, srv.scheme, srv.port, srv.prefix) == (
        "SRV",
        "_http._tcp.web.service.consul",
        "https",
        None,
        "/app",
    )
    assert srv.health_overrides == (("path", "/ping"),)
    assert (a.record, a.query, a.scheme, a.port, a.weight) == (
        "A",
        "web.default.svc.cluster.local",
        "http",
        8080,
        3,
    )
    assert (settings.dns.interval, settings.dns.resolver) == (10.0, Address("127.0.0.1", 8600))


def test_the_dns_defaults_are_envoys_and_haproxys() -> None:
    """Every 5 s (Envoy dns_refresh_rate), given up after 3 s (HAProxy: 3 tries of 1 s), system resolver."""
    dns = Settings().dns
    assert (dns.interval, dns.timeout, dns.resolver) == (5.0, 3.0, None)


@pytest.mark.parametrize(
    ("url", "record", "scheme", "port"),
    [
        ("dns://web.test", "A", "http", 80),
        ("dns+https://web.test", "A", "https", 443),
        ("dns+http://web.test:81", "A", "http", 81),
        ("dns+srv://_http._tcp.web.test", "SRV", "http", None),
        ("dns+srv+https://_https._tcp.web.test", "SRV", "https", None),
    ],
)
def test_each_scheme_names_the_record_and_the_members_scheme(
    url: str, record: str, scheme: str, port: int | None
) -> None:
    """+https gives https members (default port 443); the rest are http; SRV has no port of its own."""
    [service] = apply(Settings(), {"backends": [url]}).services
    assert (service.record, service.scheme, service.port) == (record, scheme, port)


def test_a_member_is_named_host_port_with_the_entrys_prefix_weight_and_health() -> None:
    """The name a backend given by URL has by default; the redirect base keeps the entry's prefix."""
    [service] = apply(Settings(), parse_toml(FILE)).services[:1]
    member = service.member("web-1.node.consul", 8443, 5)
    assert (member.name, member.base, member.weight) == (
        "web-1.node.consul:8443",
        "https://web-1.node.consul:8443/app",
        5.0,
    )
    assert member.health_overrides == (("path", "/ping"),)
    v6 = ServiceSpec("dns://w.test", "A", "w.test", "http", 80).member("2001:db8::1", 80)
    assert (v6.name, v6.base, v6.weight) == ("[2001:db8::1]:80", "http://[2001:db8::1]:80", 1.0)


def test_a_backend_list_given_replaces_both_kinds() -> None:
    """--backend flags replace the file's list, those found in DNS too; other changes keep them."""
    settings = apply(Settings(), parse_toml(FILE))
    assert replace(settings, grace_period=1.0).services == settings.services
    flags = apply(settings, {"backends": ["http://10.0.0.12:8080"]})
    assert (flags.services, [spec.name for spec in flags.backends]) == ((), ["10.0.0.12:8080"])


def test_the_flags_take_dns_backends_and_the_dns_settings() -> None:
    """--backend dns+srv://..., --dns-interval, --dns-timeout, --dns-resolver, as declared."""
    args = build_parser().parse_args(
        [
            "--backend",
            "dns+srv://_http._tcp.web.test",
            "--dns-interval",
            "30s",
            "--dns-timeout",
            "500ms",
            "--dns-resolver",
            "[::1]:5353",
        ]
    )
    settings = load_settings(args)
    assert [service.query for service in settings.services] == ["_http._tcp.web.test"]
    assert (settings.dns.interval, settings.dns.timeout, settings.dns.resolver) == (
        30.0,
        0.5,
        Address("::1", 5353),
    )


@pytest.mark.parametrize(
    ("entry", "line"),
    [
        (
            "dns+srv://_http._tcp.web.test:80",
            "backends[0] = 'dns+srv://_http._tcp.web.test:80': SRV records give",
        ),
        ("dns://10.0.0.1:80", "backends[0] = 'dns://10.0.0.1:80': expected a DNS name"),
        ("dns://a..b:80", "backends[0] = 'dns://a..b:80': expected a DNS name"),
        (
            "dns://web.test:99999",
            "backends[0] = 'dns://web.test:99999': the port must be a number from 1 to 65535",
        ),
        ("dns://web.test?x=1", "backends[0] = 'dns://web.test?x=1': URL may hold a path prefix"),
        ("ftp://web.test", "backends[0] = 'ftp://web.test': URL must start with http://, https://, dns://"),
        ({"url": "dns+srv://_h._tcp.w.test", "weight": 2}, "backends[0].weight = 2: SRV records give"),
        ({"url": "dns://w.test", "weight": 0}, "backends[0].weight = 0: must be greater than 0"),
        ({"url": "dns://w.test", "name": "web"}, "backends[0].name = 'web': members found in DNS are named"),
        (
            {"url": "dns://w.test", "health": {"jitter": 0.5}},
            "backends[0].health.jitter = 0.5: set for every",
        ),
    ],
)
def test_a_bad_dns_backend_is_one_line_naming_it(entry: object, line: str) -> None:
    """The key and the value, then why: as every other setting (the CLI prints it and exits 2)."""
    with pytest.raises(ConfigError) as error:
        apply(Settings(), {"backends": [entry]})
    assert str(error.value).startswith(line)


def test_the_same_dns_backend_twice_is_refused() -> None:
    """Two entries asking for the same records would give the same members twice."""
    with pytest.raises(ConfigError, match=r"^backends\[1\]\.url = 'dns://w.test': duplicate backend url"):
        apply(Settings(), {"backends": ["dns://w.test", "dns://w.test"]})


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("dns.example:53", "expected IP:PORT, an IP address"),
        ("127.0.0.1", "expected HOST:PORT"),
        ("127.0.0.1:0", "port must be a number from 1 to 65535"),
    ],
)
def test_a_bad_resolver_is_one_line_naming_it(value: str, reason: str) -> None:
    """The resolver is an address: a name would need a resolver to find it."""
    with pytest.raises(ConfigError) as error:
        apply(Settings(), {"dns": {"resolver": value}})
    assert str(error.value).startswith(f"dns.resolver = {value!r}: {reason}")


def test_dns_backends_with_workers_pass_the_checks() -> None:
    """--workers with dns:// backends is allowed: each change of members starts a generation of workers
    (tests/net/test_discovery.py proves it live)."""
    settings = apply(Settings(), {"workers": 2, "backends": ["dns://w.test:80"]})
    assert check(settings).workers == 2


def test_a_dns_backends_own_health_timeout_is_warned_about_as_a_backends() -> None:
    """Its members' timeout not shorter than their interval: one warning naming the entry."""
    settings = apply(Settings(), {"backends": [{"url": "dns://w.test", "health": {"interval": "1s"}}]})
    [warning] = warnings(settings)
    assert warning.startswith("dns://w.test: health.timeout (1s) is not shorter than health.interval (1s)")


def test_the_readmes_dns_example_is_a_valid_config() -> None:
    """The README's "Backends from DNS" file parses and gives what it says: two entries, Consul's resolver."""
    [example] = re.findall(r"```toml\n(.*?)```", section("Backends from DNS"), re.DOTALL)
    settings = apply(Settings(), parse_toml(example))
    srv, a = settings.services
    assert (srv.record, srv.scheme, srv.health_overrides) == ("SRV", "https", (("path", "/ready"),))
    assert (a.record, a.port, a.weight) == ("A", 8080, 2.0)
    assert settings.dns == DnsSettings(interval=5.0, timeout=3.0, resolver=Address("127.0.0.1", 8600))
