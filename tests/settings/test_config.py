"""Settings: defaults from HAProxy, the TOML shape of the issue, one clear error per bad value."""

import pytest

from dispatcher.settings.config import (
    Address,
    ConfigError,
    Settings,
    apply,
    check,
    parse_address,
    parse_backend,
    parse_toml,
)

EXAMPLE = """
listen = "0.0.0.0:8080"
admin_listen = "127.0.0.1:8081"
[health]
path = "/health"
interval = 2
timeout = 1
rise = 2
fall = 3
[[backends]]
url = "http://10.0.0.11:8080"
name = "web-1"
weight = 2
[[backends]]
url = "https://10.0.0.12/app/"
"""


def test_defaults_are_haproxys() -> None:
    """inter 2s, rise 2, fall 3 (HAProxy), /health, 1 s timeout, front door 8080, admin 8081."""
    settings = Settings()
    assert (settings.health.interval, settings.health.rise, settings.health.fall) == (2.0, 2, 3)
    assert (settings.health.path, settings.health.timeout) == ("/health", 1.0)
    assert settings.listen == Address("0.0.0.0", 8080)
    assert settings.admin_listen == Address("127.0.0.1", 8081)


def test_example_file_parses() -> None:
    """The issue's TOML shape gives names, weights, default names and path prefixes."""
    settings = apply(Settings(), parse_toml(EXAMPLE))
    first, second = settings.backends
    assert (first.name, first.weight, first.base) == ("web-1", 2.0, "http://10.0.0.11:8080")
    assert (second.name, second.weight, second.base) == ("10.0.0.12:443", 1.0, "https://10.0.0.12:443/app")


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('listen = "nope"', "listen"),
        ('listen = "h:99999"', "listen"),
        ("[health]\nrise = 0", "health.rise"),
        ("[health]\ninterval = -1", "health.interval"),
        ('[health]\ntimeout = "1 fortnight"', "health.timeout"),
        ('[health]\npath = "health"', "health.path"),
        ("[health]\nbogus = 1", "health.bogus"),
        ("colour = 1", "colour"),
        ('[[backends]]\nurl = "ftp://x"', "backends[0]"),
        ('[[backends]]\nurl = "http://x"\nweight = 0', "backends[0].weight"),
        ('[[backends]]\nurl = "http://x?q=1"', "backends[0]"),
        ('[[backends]]\nname = "a"', "backends[0].url"),
        ('[[backends]]\nurl = "http://a"\n[[backends]]\nurl = "http://a"', "backends[1].name"),
        ("listen = ", "config"),
    ],
)
def test_bad_values_name_their_key(text: str, key: str) -> None:
    """Every bad value raises a ConfigError whose key says where it is."""
    with pytest.raises(ConfigError) as caught:
        apply(Settings(), parse_toml(text))
    assert caught.value.key == key
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("127.0.0.1:0", Address("127.0.0.1", 0)),
        ("[::1]:8080", Address("::1", 8080)),
        ("h:80", Address("h", 80)),
    ],
)
def test_addresses(text: str, address: Address) -> None:
    """HOST:PORT and [V6]:PORT both parse."""
    assert parse_address("listen", text) == address


@pytest.mark.parametrize(
    "url",
    [
        "http://[::1",  # urlsplit raised ValueError: a traceback out of --check-config
        "http://[zz]:80",
        "http://host:80]",
        "https://[",
        "dns://[::1",
        "dns+srv://[x",
        "http://[::1]x",  # was read as [::1] on port 80
        "http://h:0",  # a backend cannot be reached on port 0
        "http://h:65536",
    ],
)
def test_a_malformed_backend_url_is_one_line_naming_its_key(url: str) -> None:
    """From the file and from a flag alike: a ConfigError naming the key, never a ValueError."""
    with pytest.raises(ConfigError) as caught:
        apply(Settings(), parse_toml(f'[[backends]]\nurl = "{url}"'))
    assert caught.value.key == "backends[0]" and "\n" not in str(caught.value)


def test_bracketed_and_zoned_addresses_still_parse() -> None:
    """An IPv6 literal, with a zone, and an empty port (the default) are URLs as before."""
    assert parse_backend("b", "http://[fe80::1%25eth0]:80").port == 80
    assert parse_backend("b", "http://h:/x").port == 80


def test_backend_default_name_is_host_port() -> None:
    """The metrics label defaults to the URL's host:port, the default port made explicit."""
    assert parse_backend("b", "http://example.test").name == "example.test:80"
    assert parse_backend("b", "http://[::1]:81/x").base == "http://[::1]:81/x"


@pytest.mark.parametrize(
    ("text", "place"),
    [
        ('listen = "0.0.0.0:8080"\n[health\ninterval = 2\n', "/etc/d.toml:2:8: not valid TOML: Expected ']'"),
        ('x = "\\q"\n', "/etc/d.toml:1:8: not valid TOML: Unescaped '\\' in a string"),
        ("workers = 1\nlisten = \n", "/etc/d.toml:2:10: not valid TOML: Invalid value"),
        # tomllib says "at end of document" here; the error is placed just after the last character.
        ("workers = 1\nlisten = ", "/etc/d.toml:2:9: not valid TOML: Invalid value"),
    ],
    ids=["in-a-line", "in-a-string", "last-line", "end-of-document"],
)
def test_a_toml_syntax_error_names_the_file_line_and_column(text: str, place: str) -> None:
    """A file that is not TOML: `path:line:column: not valid TOML: <tomllib's reason>`, on one line."""
    with pytest.raises(ConfigError) as caught:
        parse_toml(text, "/etc/d.toml")
    assert str(caught.value).startswith(place)
    assert "\n" not in str(caught.value)


# A TLS certificate beside every case, so that tls.redirect_listen is allowed (check reads no file).
TLS = '[tls]\ncert = "c.pem"\nkey = "k.pem"\n'


def listeners(listen: str, admin: str, redirect: str | None = None) -> Settings:
    """Settings with these listeners, as the file gives them."""
    text = f'listen = "{listen}"\nadmin_listen = "{admin}"\n{TLS}'
    return apply(Settings(), parse_toml(text + (f'redirect_listen = "{redirect}"\n' if redirect else "")))


@pytest.mark.parametrize(
    ("given", "line"),
    [
        (
            ("127.0.0.1:8500", "127.0.0.1:8500"),
            "admin_listen = '127.0.0.1:8500': the same address as listen",
        ),
        (("[::1]:8500", "[0:0::1]:8500"), "admin_listen = '[0:0::1]:8500': the same address as listen"),
        (
            ("0.0.0.0:8500", "127.0.0.1:8500"),
            "admin_listen = '127.0.0.1:8500': overlaps listen (0.0.0.0:8500): 0.0.0.0 takes port 8500 on "
            "every IPv4 address",
        ),
        (
            ("127.0.0.1:8500", "127.0.0.1:8501", "127.0.0.1:8500"),
            "tls.redirect_listen = '127.0.0.1:8500': the same address as listen",
        ),
        (
            ("127.0.0.1:8500", "127.0.0.1:8501", "127.0.0.1:8501"),
            "tls.redirect_listen = '127.0.0.1:8501': the same address as admin_listen",
        ),
        (
            ("127.0.0.1:8500", "127.0.0.1:8501", "[::]:8501"),
            None,  # :: is IPv6 alone: trio's listeners set IPV6_V6ONLY
        ),
        (("127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"), None),  # port 0: a free port each
        (("0.0.0.0:8080", "127.0.0.1:8081", "0.0.0.0:80"), None),
    ],
    ids=[
        "listen-admin",
        "same-v6-written-two-ways",
        "under-the-wildcard",
        "redirect-listen",
        "redirect-admin",
        "v6-wildcard-v4-address",
        "port-0",
        "apart",
    ],
)
def test_two_listeners_on_one_address_are_refused_naming_the_second(
    given: tuple[str, ...], line: str | None
) -> None:
    """listen, admin_listen and tls.redirect_listen on one address: a ConfigError naming the later one
    and the one it clashes with, before anything binds (no "address already in use" mid-start)."""
    settings = listeners(*given)
    if line is None:
        assert check(settings) is settings
        return
    with pytest.raises(ConfigError) as caught:
        check(settings)
    assert str(caught.value) == f"{line}: two listeners cannot share an address"


def test_a_date_given_where_a_string_belongs_is_shown_as_the_file_wrote_it() -> None:
    """TOML reads a bare date as a date: the error shows `1979-05-27`, not `datetime.date(1979, 5, 27)`."""
    with pytest.raises(ConfigError) as caught:
        apply(Settings(), parse_toml("listen = 1979-05-27"))
    assert str(caught.value).startswith("listen = 1979-05-27: ")
