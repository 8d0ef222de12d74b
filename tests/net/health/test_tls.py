"""Health checks of https backends: a real TLS backend on loopback, with a certificate made for the test
by the `openssl` command, trusted through `ca_file` (HAProxy's `ca-file`) or refused by the system store.

The intervals run in virtual time (`autojump_clock`), as in test_checks.py.
"""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import trio
import trio.testing

from dispatcher.net.health import HealthChecks
from dispatcher.wiring import cli
from tests.helpers import CountingBackend, health, pool_for, record_checks, wait_for
from tests.net.health.test_stream import StreamingBackend, maint_closes_at_once_and_ready_reopens, streaming

OPENSSL = shutil.which("openssl")
pytestmark = pytest.mark.skipif(
    OPENSSL is None and os.environ.get("CI") != "true", reason="needs the openssl command (CI installs it)"
)


@dataclass(frozen=True)
class Certificate:
    cert: Path
    key: Path


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    """A self-signed certificate for 127.0.0.1: its own CA, so `ca_file` can point at it."""
    assert OPENSSL is not None, "CI=true: the openssl command must be installed"
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            OPENSSL,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return Certificate(cert, key)


@dataclass(eq=False)
class TlsBackend(CountingBackend):
    """A CountingBackend behind TLS: `https://127.0.0.1:PORT`."""

    __test__ = False
    certificate: Certificate | None = None

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        assert self.certificate is not None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.certificate.cert, self.certificate.key)
        listeners = await trio.open_tcp_listeners(port, host=host)
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        tls = [trio.SSLListener(listener, context, https_compatible=True) for listener in listeners]
        await trio.serve_listeners(self.handle, tls)  # type: ignore[arg-type]  # an SSLStream will do

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"


async def test_https_backend_trusted_through_ca_file_passes_and_keeps_its_connection(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, certificate: Certificate
) -> None:
    """With `ca_file` naming the backend's CA, checks pass, read the load, and reuse one TLS connection."""
    backend = TlsBackend("b1", load=3, certificate=certificate)
    await nursery.start(backend.serve)
    settings = health(interval=2.0, ca_file=str(certificate.cert))
    pool = pool_for([backend], settings)
    seen = record_checks(pool)
    t0 = trio.current_time()
    nursery.start_soon(HealthChecks(pool).run)
    await wait_for(pool, lambda: pool.by_name["b1"].checks_passed + pool.by_name["b1"].checks_failed == 3)
    assert [(c.at - t0, c.passed) for c in seen] == [(0.0, True), (2.0, True), (4.0, True)]
    assert pool.by_name["b1"].load == 3.0
    assert (backend.connections, backend.health_checks) == (1, 3)


async def test_https_backend_on_an_unknown_ca_fails_as_tls_saying_why(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, certificate: Certificate
) -> None:
    """Without `ca_file` the system store does not know the test CA: the check fails, naming the cause."""
    backend = TlsBackend("b1", certificate=certificate)
    await nursery.start(backend.serve)
    settings = health(interval=2.0)
    pool = pool_for([backend], settings)
    nursery.start_soon(HealthChecks(pool).run)
    await wait_for(pool, lambda: pool.by_name["b1"].checks_failed == 1)
    last = pool.by_name["b1"].last_check
    assert last is not None and last.reason == "tls"
    assert "CERTIFICATE_VERIFY_FAILED" in last.detail
    assert pool.by_name["b1"].checks_passed == 0


@pytest.mark.parametrize("content", [None, "not a certificate\n"], ids=["missing", "not-pem"])
def test_a_ca_file_that_cannot_be_used_is_refused_naming_the_key(tmp_path: Path, content: str | None) -> None:
    """A missing file or one without certificates: a ConfigError on health.ca_file (the CLI: exit 2)."""
    path = tmp_path / "ca.pem"
    if content is not None:
        path.write_text(content)
    args = cli.build_parser().parse_args(["--backend", "https://127.0.0.1:1", "--health-ca-file", str(path)])
    with pytest.raises(cli.ConfigError, match=r"health\.ca_file"):
        cli.load_settings(args)


def test_the_ca_file_setting_reaches_the_health_settings(tmp_path: Path, certificate: Certificate) -> None:
    """`--health-ca-file` and `[health] ca_file` give the same setting; the flag wins."""
    config_file = tmp_path / "dispatcher.toml"
    config_file.write_text(
        f'[health]\nca_file = "{certificate.cert}"\n[[backends]]\nurl = "https://127.0.0.1:1"\n'
    )
    from_file = cli.load_settings(cli.build_parser().parse_args(["--config", str(config_file)]))
    assert from_file.health == replace(from_file.health, ca_file=str(certificate.cert))
    assert from_file.health.ca_file == str(certificate.cert)
    other = tmp_path / "other.pem"
    other.write_bytes(certificate.cert.read_bytes())
    flagged = cli.build_parser().parse_args(["--config", str(config_file), "--health-ca-file", str(other)])
    assert cli.load_settings(flagged).health.ca_file == str(other)


def tls_streaming_backend(certificate: Certificate) -> StreamingBackend:
    """An https backend whose stream opens with a report of 4."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificate.cert, certificate.key)
    return StreamingBackend("s1", first=b"data: 4\n\n", tls=context)


async def test_a_stream_over_tls_is_read_as_it_arrives_and_fails_when_silent(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, certificate: Certificate
) -> None:
    """An https backend's stream: its events are reports at once; silence fails it and it reconnects."""
    backend = tls_streaming_backend(certificate)
    pool = await streaming(nursery, backend, ca_file=str(certificate.cert))
    state = pool.by_name["s1"]
    assert (state.load, state.source) == (4.0, "stream")
    sent = trio.current_time()
    await backend.send(b"data: 6\n\n")
    await wait_for(pool, lambda: state.load == 6.0)
    assert state.report is not None and state.report.at == sent
    await wait_for(pool, lambda: state.checks_failed == 1)
    assert state.last_check_at == sent + 2.0 + 1.0
    assert state.last_check is not None and state.last_check.reason == "timeout"
    await wait_for(pool, lambda: backend.connections == 2)


async def test_maint_closes_a_stream_over_tls_at_once_and_ready_opens_a_new_one(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, certificate: Certificate
) -> None:
    """A TLS stream is read in its check's task: maint ends that task, not the next check's time."""
    backend = tls_streaming_backend(certificate)
    pool = await streaming(nursery, backend, ca_file=str(certificate.cert), interval=60.0)
    await maint_closes_at_once_and_ready_reopens(pool, backend)
