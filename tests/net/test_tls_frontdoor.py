"""The front door over TLS on real loopback sockets, with a test CA (trustme) and real clients.

httpx (verifying against the test CA's file), curl (`--cacert`) and trio's own SSLStream (to name the
SNI server name and read the certificate it got); timeouts in virtual time (`autojump_clock`).
"""

from __future__ import annotations

import logging
import os
import signal
import ssl
import subprocess
import sys
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing
import trustme

from dispatcher.net.certificates import server_context
from dispatcher.settings import config
from dispatcher.settings.config import ConfigError, SniCertificate, TlsSettings
from dispatcher.wiring.cli import build_parser, load_settings, main
from tests.helpers import (
    Dispatcher,
    TestBackend,
    dispatcher_command,
    parse_responses,
    poll_admin,
    read_until_close,
    receive_responses,
    request_head,
    settings_for,
    start_backends,
    start_dispatcher,
    unused_port,
    wait_all_up,
)


@dataclass
class Pems:
    """A test CA's file and a certificate for `names` with its key, written in `folder`."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def issue(cls, ca: trustme.CA, folder: Path, stem: str, *names: str) -> Pems:
        issued = ca.issue_cert(*names)
        pems = cls(folder / "ca.pem", folder / f"{stem}.pem", folder / f"{stem}.key")
        ca.cert_pem.write_to_path(str(pems.ca))
        issued.cert_chain_pems[0].write_to_path(str(pems.cert))
        issued.private_key_pem.write_to_path(str(pems.key))
        return pems


@dataclass
class TlsFront:
    dispatcher: Dispatcher
    backends: list[TestBackend]
    pems: Pems

    @property
    def url(self) -> str:
        return f"https://localhost:{self.dispatcher.port}"

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.pems.ca))

    async def connect(self, server_name: str = "localhost") -> trio.SSLStream[trio.SocketStream]:
        """A TLS connection asking for `server_name` (SNI), its handshake done."""
        tcp = await trio.open_tcp_stream("127.0.0.1", self.dispatcher.port)
        tls = trio.SSLStream(tcp, self.client_context(), server_hostname=server_name)
        await tls.do_handshake()
        return tls


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


async def test_a_reload_reaches_the_redirect_listener(
    nursery: trio.Nursery, ca: trustme.CA, tmp_path: Path
) -> None:
    """The 308 listener takes a reload's settings as the front door does: a new connection there runs
    under the new header timeout, and is closed when it passes."""
    redirect = config.Address("127.0.0.1", unused_port())
    front = await start_tls(nursery, Pems.issue(ca, tmp_path, "site", "localhost"), redirect_listen=redirect)
    running = front.dispatcher.running
    running.reload(replace(running.settings, header_timeout=0.3))
    assert running.redirects is not None and running.redirects.settings.header_timeout == 0.3
    with trio.fail_after(5):  # the old 10 s would not close it in time
        async with await trio.open_tcp_stream("127.0.0.1", redirect.port) as idle:
            await idle.send_all(b"GET /a HTTP/1.1\r\n")  # a head begun, never finished
            received = b""
            while chunk := await idle.receive_some(4096):
                received += chunk
    assert received.startswith(b"HTTP/1.1 408 ")


async def start_tls(nursery: trio.Nursery, pems: Pems, **tls: Any) -> TlsFront:
    backends = await start_backends(nursery, 0.1)
    settings = settings_for(backends, tls=TlsSettings(cert=str(pems.cert), key=str(pems.key), **tls))
    dispatcher = await start_dispatcher(nursery, settings)
    await wait_all_up(dispatcher)
    return TlsFront(dispatcher, backends, pems)


def serial(tls: trio.SSLStream[trio.SocketStream]) -> str:
    peer = tls.getpeercert()
    assert peer is not None
    return str(peer["serialNumber"])


async def test_httpx_gets_the_307_over_tls_on_one_kept_alive_connection(
    nursery: trio.Nursery, ca: trustme.CA, tmp_path: Path
) -> None:
    """httpx, verifying against the CA's file, gets each 307 over one TLS 1.2+ connection."""
    front = await start_tls(nursery, Pems.issue(ca, tmp_path, "site", "localhost"))
    async with httpx.AsyncClient(verify=front.client_context()) as client:
        for i in range(3):
            response = await client.get(f"{front.url}/r{i}?q=1")
            assert response.status_code == 307
            assert response.headers["location"] == f"{front.backends[0].url}/r{i}?q=1"
            assert "strict-transport-security" not in response.headers  # off by default
    assert front.dispatcher.running.stats.connections_total == 1


async def test_curl_negotiates_http_1_1_by_alpn(
    nursery: trio.Nursery, ca: trustme.CA, tmp_path: Path
) -> None:
    """curl --cacert verifies the certificate, is offered http/1.1 by ALPN, and reads the 307."""
    front = await start_tls(nursery, Pems.issue(ca, tmp_path, "site", "localhost"))
    result = await trio.run_process(
        ["/usr/bin/curl", "-sS", "-v", "-i", "--cacert", str(front.pems.ca), f"{front.url}/a?b=c"],
        capture_stdout=True,
        capture_stderr=True,
    )
    assert result.stdout.decode().split("\r\n")[0] == "HTTP/1.1 307 Temporary Redirect"
    assert "ALPN: server accepted http/1.1" in result.stderr.decode()


async def test_a_tls_1_1_client_is_refused(nursery: trio.Nursery, ca: trustme.CA, tmp_path: Path) -> None:
    """TLS 1.2 at least: a client that offers no more than TLS 1.1 fails its handshake."""
    front = await start_tls(nursery, Pems.issue(ca, tmp_path, "site", "localhost"))
    context = front.client_context()
    with warnings.catch_warnings():  # TLS 1.1 is deprecated: that is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    async with await trio.open_tcp_stream("127.0.0.1", front.dispatcher.port) as tcp:
        with pytest.raises(trio.BrokenResourceError):
            await trio.SSLStream(tcp, context).do_handshake()
    stats = front.dispatcher.running.stats
    with trio.fail_after(5):  # the server's side of the failed handshake is counted as it closes
        while stats.tls_handshake_failures["error"] != 1:
            await trio.sleep(0.01)
    assert stats.tls_handshake_failures["timeout"] == 0


async def test_sni_chooses_the_certificate_of_the_name_and_falls_back_to_the_default(
    nursery: trio.Nursery, ca: trustme.CA, tmp_path: Path
) -> None:
    """A client asking for a name of [[tls.certificates]] gets its certificate (a wildcard too); any
    other name gets the default one."""
    default = Pems.issue(ca, tmp_path, "site", "localhost")
    other = Pems.issue(ca, tmp_path, "other", "other.test", "*.wild.test")
    entry = SniCertificate(str(other.cert), str(other.key), ("other.test", "*.wild.test"))
    front = await start_tls(nursery, default, certificates=(entry,))
    seen = {}
    for name in ("localhost", "other.test", "a.wild.test"):
        async with await front.connect(name) as tls:
            seen[name] = serial(tls)
            await tls.send_all(request_head("/x", f"Host: {name}"))
            [response] = await receive_responses(tls, 1)
            assert response.status == 307
    assert seen["other.test"] == seen["a.wild.test"] != seen["localhost"]
    # A name no entry serves: the default certificate, which does not verify for it.
    async with await trio.open_tcp_stream("127.0.0.1", front.dispatcher.port) as tcp:
        with pytest.raises(trio.BrokenResourceError):
            await trio.SSLStream(tcp, front.client_context(), server_hostname="nobody.test").do_handshake()


async def test_the_redirect_listener_sends_every_request_to_https(
    nursery: trio.Nursery, ca: trustme.CA, tmp_path: Path
) -> None:
    """The plain listener answers a 308 to the same host and target over https, on the TLS port."""
    plain = unused_port()
    redirect = config.Address("127.0.0.1", plain)
    front = await start_tls(nursery, Pems.issue(ca, tmp_path, "site", "localhost"), redirect_listen=redirect)
    async with httpx.AsyncClient() as client:
        response = await client.post(f"http://localhost:{plain}/p/q?x=1", content=b"body")
        assert response.status_code == 308
        assert response.headers["location"] == f"{front.url}/p/q?x=1"
        # Followed: the 308 keeps the method and the body, the 307 sends them on to the backend.
    async with httpx.AsyncClient(verify=front.client_context()) as client:
        response = await client.post(response.headers["location"], content=b"body")
        assert response.status_code == 307


async def test_hsts_is_sent_when_set(nursery: trio.Nursery, ca: trustme.CA, tmp_path: Path) -> None:
    """tls.hsts gives every answer `Strict-Transport-Security: max-age` in seconds (RFC 6797)."""
    front = await start_tls(nursery, Pems.issue(ca, tmp_path, "site", "localhost"), hsts=365 * 86400.0)
    async with httpx.AsyncClient(verify=front.client_context()) as client:
        response = await client.get(f"{front.url}/a")
    assert response.status_code == 307
    assert response.headers["strict-transport-security"] == "max-age=31536000"


async def test_hsts_is_sent_on_a_refusal_too(nursery: trio.Nursery, ca: trustme.CA, tmp_path: Path) -> None:
    """A malformed request's 400 over TLS carries Strict-Transport-Security as a 307 does: every answer."""
    front = await start_tls(nursery, Pems.issue(ca, tmp_path, "site", "localhost"), hsts=60.0)
    tls = await front.connect()
    async with tls:
        await tls.send_all(b"GET /a HTTP/1.1\r\nhost: x\r\nbad header line\r\n\r\n")
        received = b""
        while b"\r\n\r\n" not in received and (chunk := await tls.receive_some(4096)):
            received += chunk
    assert received.startswith(b"HTTP/1.1 400 ")
    assert b"strict-transport-security: max-age=60\r\n" in received


async def test_hsts_is_sent_once_on_a_refusal_of_a_read_head(
    nursery: trio.Nursery, ca: trustme.CA, tmp_path: Path
) -> None:
    """A head refused once read (505, 508, 414) carries Strict-Transport-Security once, not twice."""
    front = await start_tls(nursery, Pems.issue(ca, tmp_path, "site", "localhost"), hsts=60.0)
    heads = [
        b"GET / HTTP/2.0\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Dispatcher-Check: 1\r\n\r\n",
        b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    ]
    for head in heads:
        async with await front.connect() as tls:
            await tls.send_all(head)
            [response] = await receive_responses(tls, 1)
        assert response.status in (505, 508, 414)
        assert response.header(b"strict-transport-security") == b"max-age=60"  # fails if sent twice


async def test_the_redirect_listener_keeps_the_connection_rules_and_the_absolute_form_host(
    nursery: trio.Nursery, ca: trustme.CA, tmp_path: Path
) -> None:
    """The 308 listener closes after `Connection: close` and HTTP/1.0, keeps a 1.0 keep-alive, takes
    an absolute-form target's host over Host (RFC 9112 §3.2.2), and answers HEAD without a body."""
    plain = unused_port()
    redirect = config.Address("127.0.0.1", plain)
    front = await start_tls(nursery, Pems.issue(ca, tmp_path, "site", "localhost"), redirect_listen=redirect)
    https = front.dispatcher.port
    cases = [
        (b"GET /a HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n", b"close"),
        (b"GET /a HTTP/1.0\r\nHost: localhost\r\n\r\n", b"close"),
        (b"GET /a HTTP/1.0\r\nHost: localhost\r\nConnection: keep-alive\r\n\r\n", b"keep-alive"),
        (b"GET /a HTTP/1.1\r\nHost: localhost\r\n\r\n", None),
    ]
    for head, connection in cases:
        async with await trio.open_tcp_stream("127.0.0.1", plain) as tcp:
            await tcp.send_all(head)
            [response] = await receive_responses(tcp, 1)
        assert (response.status, response.header(b"connection")) == (308, connection)
        assert response.header(b"location") == f"https://localhost:{https}/a".encode()
    async with await trio.open_tcp_stream("127.0.0.1", plain) as tcp:
        await tcp.send_all(b"HEAD http://example.test/b?c HTTP/1.1\r\nHost: localhost\r\n\r\n")
        await tcp.send_all(b"GET /x HTTP/1.1\r\nHost: a b\r\n\r\n")
        answer = await read_until_close(tcp)
    async with await trio.open_tcp_stream("127.0.0.1", plain) as tcp:  # a large head in one read
        await tcp.send_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nX: " + b"b" * 17000 + b"\r\n\r\n")
        [large] = await receive_responses(tcp, 1)
    assert (large.status, large.closes) == (431, True)
    [moved, refused], rest = parse_responses(answer, bodyless=True)
    assert (moved.status, moved.header(b"location")) == (308, f"https://example.test:{https}/b?c".encode())
    assert (refused.status, refused.closes) == (400, True)
    assert rest.startswith(b"invalid or repeated Host")  # the 400's body, read as bodyless here


async def test_the_access_log_names_the_backend_of_a_307_over_tls_with_hsts(
    nursery: trio.Nursery, ca: trustme.CA, tmp_path: Path
) -> None:
    """With HSTS on, the access log still reads each 307's backend back from its Location."""
    pems = Pems.issue(ca, tmp_path, "site", "localhost")
    backends = await start_backends(nursery, 0.1)
    path = tmp_path / "access.log"
    tls = TlsSettings(cert=str(pems.cert), key=str(pems.key), hsts=60.0)
    async with trio.open_nursery() as serving:  # ends when the dispatcher has stopped: the log is flushed
        dispatcher = await start_dispatcher(serving, settings_for(backends, tls=tls, access_log=str(path)))
        await wait_all_up(dispatcher)
        front = TlsFront(dispatcher, backends, pems)
        async with httpx.AsyncClient(verify=front.client_context()) as client:
            response = await client.get(f"{front.url}/logged?x=1")
        assert response.headers["strict-transport-security"] == "max-age=60"
        dispatcher.stop.set()
    [line] = path.read_text().splitlines()
    assert '"GET /logged?x=1 HTTP/1.1" 307 ' in line
    assert line.split('"')[-2] == "b1"


async def test_a_reload_swaps_the_certificate_and_an_old_connection_keeps_working(
    nursery: trio.Nursery, ca: trustme.CA, tmp_path: Path
) -> None:
    """Certificate files rewritten and reloaded: new connections get the new one, an open
    connection keeps its own and is still answered."""
    pems = Pems.issue(ca, tmp_path, "site", "localhost")
    front = await start_tls(nursery, pems)
    async with await front.connect() as old:
        before = serial(old)
        Pems.issue(ca, tmp_path, "site", "localhost")  # the same paths, a new certificate
        front.dispatcher.running.reload(front.dispatcher.running.settings)
        async with await front.connect() as new:
            assert serial(new) != before
        await old.send_all(request_head("/still", "Host: localhost"))
        [response] = await receive_responses(old, 1)
        assert response.status == 307


async def test_a_bad_reload_is_refused_in_one_line_and_the_running_certificate_stays(
    nursery: trio.Nursery, ca: trustme.CA, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A key that does not match the new certificate: one error line, and connections still get the
    certificate that was running."""
    pems = Pems.issue(ca, tmp_path, "site", "localhost")
    front = await start_tls(nursery, pems)
    async with await front.connect() as tls:
        before = serial(tls)
    ca.issue_cert("localhost").cert_chain_pems[0].write_to_path(str(pems.cert))  # the old key stays
    with caplog.at_level(logging.ERROR):
        front.dispatcher.running.reload(front.dispatcher.running.settings)
    [line] = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    assert line.startswith("TLS reload refused, the running certificates stay: tls.key = ")
    async with await front.connect() as tls:
        assert serial(tls) == before


async def _log_lines(process: trio.Process, seen: dict[str, trio.Event]) -> None:
    """Set each event of `seen` when the process logs a line containing its key."""
    assert process.stderr is not None
    text = ""
    async for chunk in process.stderr:
        text += chunk.decode(errors="replace")
        for needle, event in seen.items():
            if needle in text:
                event.set()


async def test_sighup_rereads_the_certificate_of_a_real_process(
    nursery: trio.Nursery, ca: trustme.CA, tmp_path: Path
) -> None:
    """`python -m dispatcher --tls-cert --tls-key`: SIGHUP serves new connections the rewritten
    certificate while an open one keeps working; a key that no longer matches is refused in one line."""
    pems = Pems.issue(ca, tmp_path, "site", "localhost")
    [backend] = await start_backends(nursery, 0.1)
    port, admin = unused_port(), unused_port()
    flags = ["--tls-cert", str(pems.cert), "--tls-key", str(pems.key), "--health-interval", "0.1"]
    argv = dispatcher_command(port, admin, [backend.url], *flags)
    process = await trio.lowlevel.open_process(argv, stderr=subprocess.PIPE)
    seen = {"reloaded": trio.Event(), "reload refused": trio.Event()}
    nursery.start_soon(_log_lines, process, seen)
    context = ssl.create_default_context(cafile=str(pems.ca))
    try:
        await poll_admin(admin, "/readyz", lambda status, _: status == 200)
        tcp = await trio.open_tcp_stream("127.0.0.1", port)
        async with trio.SSLStream(tcp, context, server_hostname="localhost") as old:
            await old.do_handshake()
            first = serial(old)
            Pems.issue(ca, tmp_path, "site", "localhost")
            process.send_signal(signal.SIGHUP)
            await seen["reloaded"].wait()
            second = await _serial_at(port, context)
            assert second != first
            await old.send_all(request_head("/still", "Host: localhost"))
            [response] = await receive_responses(old, 1)
            assert response.status == 307
        ca.issue_cert("localhost").cert_chain_pems[0].write_to_path(str(pems.cert))  # the old key stays
        process.send_signal(signal.SIGHUP)
        await seen["reload refused"].wait()
        assert await _serial_at(port, context) == second
    finally:
        process.send_signal(signal.SIGTERM)
        assert await process.wait() == 0


async def _serial_at(port: int, context: ssl.SSLContext) -> str:
    """The serial number of the certificate a new connection to `port` gets."""
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    async with trio.SSLStream(tcp, context, server_hostname="localhost") as tls:
        await tls.do_handshake()
        return serial(tls)


async def start_one_slot(nursery: trio.Nursery, pems: Pems, header_timeout: float) -> TlsFront:
    """A TLS front door with one connection slot, so that a test sees when a connection frees it."""
    backends = await start_backends(nursery, 0.1)
    tls = TlsSettings(cert=str(pems.cert), key=str(pems.key))
    settings = settings_for(backends, tls=tls, header_timeout=header_timeout, max_connections=1)
    return TlsFront(await start_dispatcher(nursery, settings), backends, pems)


async def test_a_stalled_handshake_is_closed_at_the_header_timeout(
    nursery: trio.Nursery, ca: trustme.CA, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A client that connects and never sends its ClientHello is closed at header_timeout exactly,
    as a slowloris client is, and holds one of max_connections until then."""
    front = await start_one_slot(nursery, Pems.issue(ca, tmp_path, "site", "localhost"), 4.0)
    dispatcher = front.dispatcher
    stalled = await trio.open_tcp_stream("127.0.0.1", dispatcher.port)
    start = trio.current_time()

    async def second_client() -> None:
        async with await front.connect():  # waits in the backlog while the slot is held
            assert trio.current_time() - start == pytest.approx(4.0)

    async with trio.open_nursery() as clients:
        clients.start_soon(second_client)
        async with stalled:
            assert await read_until_close(stalled) == b""
            assert trio.current_time() - start == pytest.approx(4.0)
    assert dispatcher.running.stats.tls_handshake_failures == {"error": 0, "http": 0, "timeout": 1}


async def test_shutdown_closes_an_idle_tls_connection_at_once(
    nursery: trio.Nursery, ca: trustme.CA, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """At stop, an idle kept-alive TLS connection is closed at once, not after the grace period, and
    cleanly: a close_notify, which trio's SSLStream reads as the end (a truncation or an alert would
    raise BrokenResourceError)."""
    pems = Pems.issue(ca, tmp_path, "site", "localhost")
    backends = await start_backends(nursery, 0.1)
    tls = TlsSettings(cert=str(pems.cert), key=str(pems.key))
    async with trio.open_nursery() as serving:  # ends when the dispatcher has stopped
        dispatcher = await start_dispatcher(serving, settings_for(backends, tls=tls))
        await wait_all_up(dispatcher)
        client = await TlsFront(dispatcher, backends, pems).connect()
        await client.send_all(request_head("/a", "Host: localhost"))
        [response] = await receive_responses(client, 1)
        assert response.status == 307
        start = trio.current_time()
        dispatcher.stop.set()
    assert trio.current_time() - start < 1.0  # the grace period is 10 s
    assert await client.receive_some() == b""
    await client.aclose()


async def test_the_keepalive_timeout_ends_a_tls_connection_with_close_notify(
    nursery: trio.Nursery, ca: trustme.CA, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """An idle TLS connection closed at its keep-alive timeout gets a close_notify before the FIN."""
    pems = Pems.issue(ca, tmp_path, "site", "localhost")
    backends = await start_backends(nursery, 0.1)
    tls = TlsSettings(cert=str(pems.cert), key=str(pems.key))
    dispatcher = await start_dispatcher(nursery, settings_for(backends, tls=tls, keepalive_timeout=5.0))
    await wait_all_up(dispatcher)
    async with await TlsFront(dispatcher, backends, pems).connect() as client:
        await client.send_all(request_head("/a", "Host: localhost"))
        [response] = await receive_responses(client, 1)
        assert response.status == 307
        start = trio.current_time()
        assert await client.receive_some() == b""
        assert trio.current_time() - start == pytest.approx(5.0)


def test_a_key_that_does_not_match_is_one_line_and_exit_2(
    ca: trustme.CA, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """At start, a key that is not the certificate's: one line naming tls.key, exit status 2."""
    site = Pems.issue(ca, tmp_path, "site", "localhost")
    other = Pems.issue(ca, tmp_path, "other", "other.test")
    flags = ["--backend", "http://127.0.0.1:9", "--tls-cert", str(site.cert), "--tls-key", str(other.key)]
    assert main(flags) == 2
    assert capsys.readouterr().err == (
        f"dispatcher: tls.key = '{other.key}': does not match the certificate ({site.cert})\n"
    )


@pytest.mark.parametrize(
    ("tls", "key", "reason"),
    [
        ({"cert": "missing.pem", "key": "k.pem"}, "tls.cert", "cannot read"),
        ({"cert": "c.pem"}, "tls.key", "missing"),
    ],
)
def test_a_certificate_that_cannot_be_used_names_its_key(
    tmp_path: Path, tls: dict[str, str], key: str, reason: str
) -> None:
    """A file that is not there, or a certificate without its key: a ConfigError naming the key."""
    given = {name: str(tmp_path / path) for name, path in tls.items()}
    with pytest.raises(ConfigError) as error:
        settings = config.check(config.apply(config.Settings(), {"tls": given}))
        server_context(settings.tls)
    assert error.value.key == key
    assert error.value.reason.startswith(reason)


NO_CERTIFICATE = (
    "which is off: give a certificate, tls.cert (--tls-cert) or tls.certificates (--tls-certificate)"
)


@pytest.mark.parametrize(
    ("flags", "line"),
    [
        (
            ["--tls-redirect-listen", "127.0.0.1:9"],
            f"--tls-redirect-listen = '127.0.0.1:9': redirects to the front door over TLS, {NO_CERTIFICATE}",
        ),
        (["--tls-hsts", "8760h"], f"--tls-hsts = '8760h': is sent over TLS only, {NO_CERTIFICATE}"),
    ],
    ids=["redirect-listen", "hsts"],
)
def test_tls_settings_without_a_certificate_are_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], flags: list[str], line: str
) -> None:
    """The 308 listener or HSTS with no certificate would start and do nothing (the front door is plain
    HTTP): refused in one line naming the flag that set it, exit status 2, by the check a start makes
    (run here as --check-config, which starts nothing even where the check is missing)."""
    assert main(["--check-config", os.devnull, "--backend", "http://127.0.0.1:9", *flags]) == 2
    assert capsys.readouterr().err == f"dispatcher: {line}\n"
    with pytest.raises(ConfigError) as caught:
        load_settings(build_parser().parse_args(["--backend", "http://127.0.0.1:9", *flags]))
    assert str(caught.value) == line


@pytest.mark.parametrize(
    "tls",
    [
        {"redirect_listen": "127.0.0.1:9", "hsts": "1h"},
        {"hsts": "1h", "certificates": [{"cert": "a.pem", "key": "a.key", "names": ["a.test"]}]},
        {"hsts": 0},
    ],
    ids=["tls-cert", "tls-certificates", "hsts-off"],
)
def test_tls_settings_with_a_certificate_or_off_pass_the_check(tls: dict[str, Any]) -> None:
    """Either kind of certificate turns TLS on for them; `hsts = 0` is off and needs none."""
    given = {"cert": "c.pem", "key": "k.pem", **tls} if "redirect_listen" in tls else tls
    settings = config.apply(config.Settings(), {"tls": given})
    assert config.check(settings) is settings


def test_certificates_for_sni_come_from_an_array_of_tables_or_a_flag() -> None:
    """[[tls.certificates]] and --tls-certificate CERT,KEY,NAME... give the same entries."""
    text = '[[tls.certificates]]\ncert = "a.pem"\nkey = "a.key"\nnames = ["A.test", "b.test"]\n'
    from_file = config.apply(config.Settings(), config.parse_toml(text)).tls.certificates
    from_flag = config.apply(config.Settings(), {"tls": {"certificates": ["a.pem,a.key,A.test,b.test"]}})
    assert (
        from_file == from_flag.tls.certificates == (SniCertificate("a.pem", "a.key", ("a.test", "b.test")),)
    )


NAME_REASON = "must be a DNS name, or *. and a DNS name (*.example.com: any one label before it)"


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("foo*.test", NAME_REASON),
        ("", NAME_REASON),  # `ok.test,,b.test` on the flag: an empty name is refused, not dropped
        ("*", NAME_REASON),
        ("*.", NAME_REASON),
        ("a..b", NAME_REASON),
        ("*.*.test", NAME_REASON),
        ("a.*.test", NAME_REASON),
        ("*a.test", NAME_REASON),
        ("-a.test", NAME_REASON),
        ("a b.test", NAME_REASON),
        ("a" * 64 + ".test", NAME_REASON),
        ("bücher.test", NAME_REASON + "; an internationalised name in its xn-- form"),
        ("10.0.0.1", "an address is never an SNI name (RFC 6066 §3): the default certificate serves it"),
    ],
)
def test_a_certificate_name_that_no_server_name_could_match_is_refused(name: str, reason: str) -> None:
    """A name is a DNS name, or `*.` and one (one wildcard label, leftmost, whole): anything else is a
    ConfigError naming the entry's name in the file, and the flag with the name given on it."""
    table = {"certificates": [{"cert": "a.pem", "key": "a.key", "names": ["ok.test", name]}]}
    with pytest.raises(ConfigError) as caught:
        config.apply(config.Settings(), {"tls": table})
    assert str(caught.value) == f"tls.certificates[0].names[1] = {name!r}: {reason}"
    flags = ["--backend=http://127.0.0.1:9", f"--tls-certificate=a.pem,a.key,ok.test,{name}"]
    with pytest.raises(ConfigError) as caught:
        load_settings(build_parser().parse_args(flags))
    assert str(caught.value) == f"--tls-certificate = {name!r}: {reason}"


def test_a_name_two_certificates_serve_is_refused() -> None:
    """One server name in two entries (as read: `A.test.` is `a.test`): a ConfigError naming the second
    and the entry that serves it first, in the file and on the flags, not one of them silently."""
    table = {
        "certificates": [
            {"cert": "a.pem", "key": "a.key", "names": ["a.test", "b.test"]},
            {"cert": "c.pem", "key": "c.key", "names": ["c.test", "A.test."]},
        ]
    }
    with pytest.raises(ConfigError) as caught:
        config.apply(config.Settings(), {"tls": table})
    assert (
        str(caught.value) == "tls.certificates[1].names[1] = 'a.test': already served by tls.certificates[0]"
    )
    flags = ["--backend=http://127.0.0.1:9", "--tls-certificate=a.pem,a.key,a.test"]
    flags.append("--tls-certificate=c.pem,c.key,a.test")
    with pytest.raises(ConfigError) as caught:
        load_settings(build_parser().parse_args(flags))
    assert str(caught.value) == "--tls-certificate = 'a.test': already served by tls.certificates[0]"


def test_certificate_names_are_read_as_sni_sends_them() -> None:
    """Lower case, without a final dot (SNI carries none); a wildcard for one label is kept as given."""
    table = {
        "certificates": [{"cert": "a.pem", "key": "a.key", "names": ["Api.Test.", "*.xn--bcher-kva.test"]}]
    }
    entry = config.apply(config.Settings(), {"tls": table}).tls.certificates[0]
    assert entry.names == ("api.test", "*.xn--bcher-kva.test")


async def test_tls_with_workers_serves_https_and_the_308_listener_from_every_worker(
    nursery: trio.Nursery, ca: trustme.CA, tmp_path: Path
) -> None:
    """--workers 2 over TLS: each worker loads the certificate and answers over https (curl verifies it),
    and each serves the plain 308 listener beside it, on the same ports."""
    pems = Pems.issue(ca, tmp_path, "site", "localhost")
    (backend,) = await start_backends(nursery, 0.1)
    port, admin, plain = unused_port(), unused_port(), unused_port()
    argv = [sys.executable, "-m", "dispatcher", "--workers", "2", "--listen", f"127.0.0.1:{port}"]
    argv += ["--admin-listen", f"127.0.0.1:{admin}", "--backend", backend.url, "--log-level", "warning"]
    argv += [
        "--tls-cert",
        str(pems.cert),
        "--tls-key",
        str(pems.key),
        "--tls-redirect-listen",
        f"127.0.0.1:{plain}",
    ]
    process = await trio.lowlevel.open_process(argv)
    try:
        await poll_admin(admin, "/readyz", lambda status, _: status == 200)
        for _ in range(4):  # new connections: the kernel spreads them over both workers
            result = await trio.run_process(
                ["/usr/bin/curl", "-sS", "-i", "--cacert", str(pems.ca), f"https://localhost:{port}/a?b=1"],
                capture_stdout=True,
            )
            assert result.stdout.startswith(b"HTTP/1.1 307 "), result.stdout
            assert f"location: {backend.url}/a?b=1".encode() in result.stdout
        async with httpx.AsyncClient() as client:
            response = await client.get(f"http://localhost:{plain}/p?q=1")
        assert response.status_code == 308
        assert response.headers["location"] == f"https://localhost:{port}/p?q=1"
    finally:
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(20):
            assert await process.wait() == 0


async def test_plain_http_at_the_tls_port_gets_a_plain_400(
    nursery: trio.Nursery, ca: trustme.CA, tmp_path: Path
) -> None:
    """A plain HTTP request where a ClientHello belongs is answered in plain text, 400, as nginx does,
    and counted; a TLS client after it is served as ever."""
    front = await start_tls(nursery, Pems.issue(ca, tmp_path, "site", "localhost"), hsts=3600.0)
    async with await trio.open_tcp_stream("127.0.0.1", front.dispatcher.port) as tcp:
        await tcp.send_all(b"GET /a HTTP/1.1\r\nHost: localhost\r\nUser-Agent: t\r\n\r\n")
        answer = b""
        with trio.fail_after(5):
            while chunk := await tcp.receive_some(4096):
                answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0] == b"HTTP/1.1 400 Bad Request"
    assert b"connection: close" in head.lower()
    assert b"strict-transport-security" not in head.lower()  # never over plain HTTP (RFC 6797 §8.1)
    assert b"HTTPS port" in body
    assert front.dispatcher.running.stats.tls_handshake_failures == {"error": 0, "http": 1, "timeout": 0}
    async with httpx.AsyncClient(verify=front.client_context()) as client:
        response = await client.get(f"{front.url}/b", follow_redirects=False)
    assert response.status_code == 307


async def test_a_plain_http_client_that_stays_is_closed_at_the_header_timeout_and_counted_once(
    nursery: trio.Nursery, ca: trustme.CA, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """After its 400 the connection lingers for the client's close; a client that never closes is
    cut at header_timeout, and stays counted as `http`, not also as a `timeout`."""
    front = await start_one_slot(nursery, Pems.issue(ca, tmp_path, "site", "localhost"), 2.0)
    dispatcher = front.dispatcher
    start = trio.current_time()
    async with await trio.open_tcp_stream("127.0.0.1", dispatcher.port) as plain:
        await plain.send_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert (await read_until_close(plain)).startswith(b"HTTP/1.1 400 ")  # FIN after the answer
        async with await front.connect():  # the one slot is free once the lingering close ended
            assert trio.current_time() - start == pytest.approx(2.0)
    assert dispatcher.running.stats.tls_handshake_failures == {"error": 0, "http": 1, "timeout": 0}
