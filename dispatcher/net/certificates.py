"""Certificates: the TLS front door's server context, its certificates chosen by SNI, reread on reload.

Owns: building `ssl.SSLContext`s from the [tls] settings (the ssl module's modern server defaults,
`create_default_context(Purpose.CLIENT_AUTH)`, with TLS 1.2 at least and ALPN `http/1.1`), choosing the
certificate for the server name a client asks for (SNI), and swapping the context on a reload.
Rules: no HTTP, no trio. A file that cannot be used is a `ConfigError` naming its key (`tls.key`), so the
CLI prints one line and exits 2; at a reload the running certificates stay and one line is logged.

Names are matched as nginx's `server_name` and HAProxy's `crt-list` do: the exact name first, then a
wildcard `*.example.com` for one label; a name nothing matches (or no SNI at all) gets the default
certificate, `tls.cert`, or the first of [[tls.certificates]] when there is none.
"""

from __future__ import annotations

import contextlib
import logging
import os
import ssl
import tempfile
from collections.abc import Iterator, Mapping

from dispatcher.settings.config import ConfigError, SniCertificate, TlsSettings

log = logging.getLogger("dispatcher.tls")

# ALPN (RFC 7301): the front door speaks HTTP/1.1 only; a client offering h2 too falls back to it.
ALPN = ["http/1.1"]


class Certificates:
    """The context new TLS connections are wrapped with; a reload replaces it, open connections keep
    the one they were made with."""

    def __init__(self, tls: TlsSettings) -> None:
        self.context = server_context(tls)

    def reload(self, tls: TlsSettings) -> bool:
        """Reread the certificates; one that cannot be used is refused in one log line, and the running
        ones stay."""
        try:
            self.context = server_context(tls)
        except ConfigError as error:
            log.error("TLS reload refused, the running certificates stay: %s", error)
            return False
        return True


def server_context(tls: TlsSettings) -> ssl.SSLContext:
    """The default certificate's context, which hands a connection over to the context of the
    certificate for its SNI name (`_choose`)."""
    by_name: dict[str, ssl.SSLContext] = {}
    contexts = []
    for i, entry in enumerate(tls.certificates):
        context = _context(f"tls.certificates[{i}]", entry)
        contexts.append(context)
        by_name.update(dict.fromkeys(entry.names, context))
    if tls.cert is not None and tls.key is not None:
        default = _context("tls", SniCertificate(tls.cert, tls.key, (), tls.ca))
    elif contexts:
        default = _context("tls.certificates[0]", tls.certificates[0])
    else:
        raise ConfigError("tls.cert", None, "missing: TLS needs a certificate")

    # typeshed names an SSLObject; the front door's connections are SSLSockets (net.tlsdoor), which
    # take a new context the same way.
    def choose(connection: ssl.SSLObject, name: str | None, _: ssl.SSLContext) -> None:
        chosen = _choose(by_name, name)
        if chosen is not None:
            connection.context = chosen

    default.sni_callback = choose
    return default


def _choose(by_name: Mapping[str, ssl.SSLContext], name: str | None) -> ssl.SSLContext | None:
    """The context for an SNI name: the exact name, else a wildcard for its first label; else None."""
    if not name:
        return None
    name = name.lower()
    found = by_name.get(name)
    if found is None and "." in name:
        found = by_name.get("*." + name.partition(".")[2])
    return found


def _context(key: str, entry: SniCertificate) -> ssl.SSLContext:
    """A server context for one certificate, its key and chain; a ConfigError names the bad file."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(ALPN)
    certificate = _read(f"{key}.cert", entry.cert)
    chain = b"" if entry.ca is None else _read(f"{key}.ca", entry.ca)
    _read(f"{key}.key", entry.key)
    if b"-----BEGIN CERTIFICATE-----" not in certificate:
        raise ConfigError(f"{key}.cert", entry.cert, "no PEM certificate in it")
    with _joined(certificate + b"\n" + chain) as path:
        try:
            context.load_cert_chain(path, entry.key)
        except ssl.SSLError as error:
            reason = "does not match the certificate" if "MISMATCH" in str(error) else "not a PEM private key"
            raise ConfigError(f"{key}.key", entry.key, f"{reason} ({entry.cert})") from None
    return context


def _read(key: str, path: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as error:
        raise ConfigError(key, path, f"cannot read: {error.strerror or error}") from None


@contextlib.contextmanager
def _joined(pem: bytes) -> Iterator[str]:
    """The certificate and its chain in one file: `load_cert_chain` reads the chain from the
    certificate's file only."""
    descriptor, path = tempfile.mkstemp(suffix=".pem")
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(pem)
        yield path
    finally:
        os.unlink(path)
