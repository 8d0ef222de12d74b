"""GeoIP: the country of a client address, from a MaxMind DB file (GeoLite2, GeoIP2, or a site's own).

Owns: opening the file (`geoip_db`) with the `maxminddb` reader, the country code of an address, and
the line that says at start which database was loaded.
Rules: a file that cannot be used is a `ConfigError` naming `geoip_db`, one line, never a traceback; a
look-up never raises (a bad address, an IPv6 address in an IPv4-only database, a corrupt record: None,
and a region route then does not match). Reading the file is I/O, so it lives in `net`; what the code
means (`country_code`) is core's.

Cost: the reader's C extension (MODE_AUTO: memory-mapped, libmaxminddb) walks the tree in ~0.5 µs, but
decodes the whole record, every language's names of the continent, country and registered country:
~9 µs per look-up on a GeoLite2-Country record. Clients come back, so the codes of the last
CACHE_SIZE addresses are kept: a hit costs ~0.15 µs. Measured on this machine with a GeoLite2-shaped
record (8 languages): 9.2 µs uncached, 0.14 µs from the cache. (The pure-Python reader takes ~220 µs.)

The file is trusted as the config file is. maxminddb 3.2.0's C extension can crash the process on a
corrupt data section (`from_map` reads a map key as a string without checking its type, found by
flipping bytes of a test database), so a file must arrive whole: geoipupdate checks what it downloads
and renames it into place, and a site's own file should be written the same way.
"""

from __future__ import annotations

import datetime
import functools
import ipaddress
import os
from typing import Any

import maxminddb

from dispatcher.core.clientaddr import country_code
from dispatcher.settings.values import ConfigError

KEY = "geoip_db"
# Codes of this many addresses are remembered (each entry ~200 bytes: ~1 MB). A client that cycles
# through more addresses than this only costs the uncached ~9 µs per request.
CACHE_SIZE = 4096
# MaxMind's database types whose records have no country (GeoLite2-ASN, GeoIP2-ISP, ...).
_NO_COUNTRIES = ("ASN", "ISP", "Domain", "Connection-Type", "Anonymous-IP", "Anonymous-Plus")


class CountryDatabase:
    """An open MaxMind DB and the country codes of the addresses looked up lately."""

    def __init__(self, reader: maxminddb.Reader, path: str) -> None:
        self.path = path
        self._reader = reader
        metadata = reader.metadata()
        self.database_type: str = metadata.database_type
        self.build_date = _date(metadata.build_epoch)
        self.ip_version: int = metadata.ip_version
        self._cached = functools.lru_cache(maxsize=CACHE_SIZE)(self._look_up)

    def country_of(self, address: str) -> str | None:
        """The ISO 3166 code of `address` (upper-case), or None: see `_look_up`."""
        return self._cached(address)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> CountryDatabase:
        """Open `path`; a missing, unreadable or non-MaxMind file is a one-line ConfigError."""
        text = os.fspath(path)
        try:
            with open(text, "rb"):  # the OS's reason (missing, a directory, permissions) in plain words
                pass
            reader = maxminddb.open_database(text, maxminddb.MODE_AUTO)
        except OSError as error:
            raise ConfigError(KEY, text, f"cannot read: {error.strerror or error}") from None
        except (maxminddb.InvalidDatabaseError, ValueError):
            raise ConfigError(KEY, text, "not a MaxMind DB file (no valid metadata section)") from None
        return cls(reader, text)

    def describe(self) -> str:
        """The start-up log line's words: which database, built when (GeoLite2 is rebuilt twice a
        week; a date months old says the updater stopped)."""
        built = "on an unknown date" if self.build_date is None else f"{self.build_date:%Y-%m-%d}"
        return f"{self.database_type}, built {built}, IPv{self.ip_version} ({self.path})"

    def warning(self) -> str | None:
        """What to warn of at start and reload: a MaxMind database that holds no countries (an ASN,
        ISP or Domain file opened by mistake), whose every look-up would quietly find none."""
        if any(word in self.database_type for word in _NO_COUNTRIES):
            return (
                f"{KEY}: {self.database_type} holds no countries: routes' countries never match with "
                "it (use a Country, City or Enterprise database)"
            )
        return None

    def close(self) -> None:
        """Unmap the file; look-ups after this return None."""
        self._cached.cache_clear()
        self._reader.close()

    def _look_up(self, address: str) -> str | None:
        """The ISO 3166 code of `address`: the country where it is used, else the one it is registered
        in (MaxMind gives only that for some networks, anycast and satellite ones); None when the
        database knows neither, or cannot answer."""
        try:
            ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(address)
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped  # MaxMind's files alias ::ffff:0:0/96 to IPv4; other writers may not
            record = self._reader.get(ip)
        except (ValueError, maxminddb.InvalidDatabaseError):
            # A bad address, IPv6 in an IPv4-only database, a closed reader, or a corrupt record.
            return None
        if not isinstance(record, dict):
            return None
        return _code(record.get("country")) or _code(record.get("registered_country"))


def _code(place: Any) -> str | None:
    """`place["iso_code"]` when it is a country code; a site's own database may hold anything."""
    return country_code(place.get("iso_code")) if isinstance(place, dict) else None


def _date(epoch: int) -> datetime.datetime | None:
    """The build date; None when the file's epoch is not a date (a site's own writer may leave it 0
    or fill it with anything)."""
    try:
        return datetime.datetime.fromtimestamp(epoch, datetime.UTC) if epoch > 0 else None
    except (OverflowError, OSError, ValueError):
        return None
