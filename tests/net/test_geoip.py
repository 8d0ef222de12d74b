"""GeoIP: countries from a real MaxMind DB file written in the test, and files that cannot be used."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mmdb_writer import MMDBWriter
from netaddr import IPSet  # type: ignore[import-untyped]

from dispatcher.net.geoip import CACHE_SIZE, CountryDatabase
from dispatcher.settings.values import ConfigError

LANGUAGES = ["de", "en", "es", "fr", "ja", "pt-BR", "ru", "zh-CN"]


def place(code: str, name: str) -> dict[str, Any]:
    """A country as GeoLite2-Country stores it: a geoname id, the code, names in eight languages."""
    return {"geoname_id": 1, "iso_code": code, "names": {language: name for language in LANGUAGES}}


# Networks of the documentation ranges (RFC 5737, RFC 3849), as GeoLite2 would record them.
RECORDS: dict[str, dict[str, Any]] = {
    "203.0.113.0/24": {"continent": {"code": "EU"}, "country": place("FR", "France")},
    "198.51.100.0/24": {"registered_country": place("JP", "Japan")},  # registered only (anycast)
    "192.0.2.0/25": {"country": place("de", "Germany"), "registered_country": place("AT", "Austria")},
    "192.0.2.128/25": {"country": {"iso_code": "DEU"}},  # not a two-letter code
    "2001:db8::/33": {"country": place("SE", "Sweden"), "registered_country": place("NO", "Norway")},
    "2001:db8:8000::/33": {"city": {"names": {"en": "Nowhere"}}},  # a record without a country
}


def write_database(path: Path, ip_version: int = 6, records: dict[str, Any] = RECORDS) -> Path:
    """A MaxMind DB file as GeoLite2-Country is laid out: IPv6, IPv4 in ::/96."""
    writer = MMDBWriter(
        ip_version=ip_version,
        database_type="GeoLite2-Country",
        languages=["en"],
        description="dispatcher test database",
        ipv4_compatible=ip_version == 6,
    )
    for network, record in records.items():
        writer.insert_network(IPSet([network]), record)
    writer.to_db_file(str(path))
    return path


@pytest.fixture
def database(tmp_path: Path) -> CountryDatabase:
    return CountryDatabase.open(write_database(tmp_path / "GeoLite2-Country.mmdb"))


def test_an_ipv4_address_has_its_networks_country(database: CountryDatabase) -> None:
    """An IPv4 address in a network of an IPv6 database (IPv4 in ::/96, as GeoLite2) has its country."""
    assert database.country_of("203.0.113.77") == "FR"


def test_an_ipv6_address_has_its_networks_country(database: CountryDatabase) -> None:
    """The country where it is used comes before the one it is registered in."""
    assert database.country_of("2001:db8:1::5") == "SE"


def test_without_a_country_the_registered_country_is_taken(database: CountryDatabase) -> None:
    """MaxMind gives only registered_country for some networks (anycast, satellite): that is the answer."""
    assert database.country_of("198.51.100.1") == "JP"


def test_a_code_is_upper_cased_and_a_bad_one_is_none(database: CountryDatabase) -> None:
    """A site's own database may write `de` or `DEU`: the first is DE, the second no country."""
    assert database.country_of("192.0.2.1") == "DE"
    assert database.country_of("192.0.2.200") is None


def test_an_ipv4_mapped_address_is_looked_up_as_ipv4(database: CountryDatabase) -> None:
    """::ffff:203.0.113.77 is 203.0.113.77 even where the file does not alias ::ffff:0:0/96."""
    assert database.country_of("::ffff:203.0.113.77") == "FR"


@pytest.mark.parametrize("address", ["10.0.0.1", "2001:db9::1", "2001:db8:8000::1"])
def test_an_address_the_database_does_not_place_has_no_country(
    database: CountryDatabase, address: str
) -> None:
    """No network, or a record without a country: None, and a region route does not match."""
    assert database.country_of(address) is None


@pytest.mark.parametrize("address", ["", "-", "not an address", "203.0.113", "fe80::1%eth0", "999.1.1.1"])
def test_a_bad_address_has_no_country(database: CountryDatabase, address: str) -> None:
    """Text that is not an address is no country, never an exception on the request path."""
    assert database.country_of(address) is None


def test_an_ipv6_address_in_an_ipv4_only_database_has_no_country(tmp_path: Path) -> None:
    """The reader refuses IPv6 in an IPv4 database with ValueError: here it is just no country."""
    ipv4_records = {network: record for network, record in RECORDS.items() if ":" not in network}
    database = CountryDatabase.open(write_database(tmp_path / "v4.mmdb", 4, ipv4_records))
    assert database.country_of("203.0.113.77") == "FR"
    assert database.country_of("2001:db8::1") is None


def test_a_record_that_is_not_a_map_has_no_country(tmp_path: Path) -> None:
    """A site's own database may store plain strings: no country, no exception."""
    path = write_database(tmp_path / "site.mmdb", records={"203.0.113.0/24": "FR", "2001:db8::/32": []})
    database = CountryDatabase.open(path)
    assert database.country_of("203.0.113.1") is None
    assert database.country_of("2001:db8::1") is None


def test_repeated_look_ups_come_from_the_cache(database: CountryDatabase) -> None:
    """The same address twice is decoded once (a GeoLite2 record costs ~9 µs to decode, a hit ~0.15 µs)."""
    for _ in range(3):
        assert database.country_of("203.0.113.77") == "FR"
    info = database._cached.cache_info()
    assert (info.hits, info.misses, info.maxsize) == (2, 1, CACHE_SIZE)


def test_the_start_up_line_names_the_type_and_the_build_date(tmp_path: Path) -> None:
    """The log says which database was loaded and when it was built: a stale file shows."""
    before = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    database = CountryDatabase.open(write_database(tmp_path / "GeoLite2-Country.mmdb"))
    after = datetime.datetime.now(datetime.UTC)
    assert database.database_type == "GeoLite2-Country"
    assert database.build_date is not None and before <= database.build_date <= after
    assert database.ip_version == 6
    assert database.describe() == (
        f"GeoLite2-Country, built {database.build_date:%Y-%m-%d}, IPv6 ({tmp_path / 'GeoLite2-Country.mmdb'})"
    )


def test_after_close_look_ups_have_no_country(database: CountryDatabase) -> None:
    """A closed database (a reload swapped it) answers None rather than raising on a late request."""
    assert database.country_of("203.0.113.77") == "FR"
    database.close()
    assert database.country_of("203.0.113.77") is None


def test_a_missing_file_is_one_line_naming_the_key(tmp_path: Path) -> None:
    """`geoip_db = "/nope"`: a ConfigError naming geoip_db, the path and the OS's reason, no traceback."""
    path = tmp_path / "GeoLite2-Country.mmdb"
    with pytest.raises(ConfigError) as caught:
        CountryDatabase.open(path)
    assert str(caught.value) == f"geoip_db = {str(path)!r}: cannot read: No such file or directory"


def test_a_directory_is_one_line_naming_the_key(tmp_path: Path) -> None:
    """A directory where the file should be: the OS's reason, in one line."""
    with pytest.raises(ConfigError) as caught:
        CountryDatabase.open(tmp_path)
    assert str(caught.value) == f"geoip_db = {str(tmp_path)!r}: cannot read: Is a directory"


@pytest.mark.parametrize(
    "content",
    [b"", b"not a database\n", b"\x89PNG\r\n\x1a\n" + bytes(200), b"\xab\xcd\xefMaxMind.com" + b"\x00" * 20],
)
def test_a_file_that_is_not_a_maxmind_db_is_one_line(tmp_path: Path, content: bytes) -> None:
    """Empty, text, another format, or the metadata marker followed by junk: one line, not a traceback."""
    path = tmp_path / "GeoLite2-Country.mmdb"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        CountryDatabase.open(path)
    assert caught.value.key == "geoip_db" and caught.value.value == str(path)
    assert caught.value.reason == "not a MaxMind DB file (no valid metadata section)"


def test_a_truncated_database_is_one_line(tmp_path: Path) -> None:
    """A download cut short loses the metadata at the end of the file: refused at start."""
    whole = write_database(tmp_path / "whole.mmdb").read_bytes()
    path = tmp_path / "cut.mmdb"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ConfigError, match="not a MaxMind DB file"):
        CountryDatabase.open(path)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=300), st.binary(max_size=300), st.booleans())
def test_any_bytes_open_as_a_database_or_a_config_error(
    tmp_path: Path, before: bytes, after: bytes, marked: bool
) -> None:
    """Whatever the file holds, opening it gives a database or a ConfigError, never another exception."""
    path = tmp_path / "fuzz.mmdb"
    path.write_bytes(before + (b"\xab\xcd\xefMaxMind.com" if marked else b"") + after)
    try:
        database = CountryDatabase.open(path)
    except ConfigError as error:
        assert error.key == "geoip_db" and "\n" not in str(error)
    else:
        assert database.describe()
        database.close()


def test_a_database_without_countries_is_warned_about(tmp_path: Path) -> None:
    """An ASN file opened by mistake opens fine and finds no country for anyone: a warning says so."""
    path = tmp_path / "GeoLite2-ASN.mmdb"
    writer = MMDBWriter(ip_version=6, database_type="GeoLite2-ASN", ipv4_compatible=True)
    writer.insert_network(IPSet(["203.0.113.0/24"]), {"autonomous_system_number": 64496})
    writer.to_db_file(str(path))
    asn = CountryDatabase.open(path)
    assert asn.warning() == (
        "geoip_db: GeoLite2-ASN holds no countries: routes' countries never match with it "
        "(use a Country, City or Enterprise database)"
    )
    assert CountryDatabase.open(write_database(tmp_path / "c.mmdb")).warning() is None
