# Scenario 10, TLS: the front door over TLS against the same dispatcher over plain HTTP, both over scenario
# 1's three backends, loaded in turns by the same wrk: keep-alive req/s (the cost of encrypting the
# answers), and new connections per second (`Connection: close` on every request: the cost of a handshake,
# wrk's default TLS 1.3 with an ECDSA P-256 certificate from a test CA).
#
# Owns: the test CA and certificate (trustme, written to the log folder), the TLS dispatcher's start and its
# one redirect checked over TLS, the https wrk command line, and the two ratios.
# Rules: the dispatcher runs as users run it, `python -m dispatcher`; every wait is bounded (harness).

import functools
import http.client
import ssl
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace

import trustme
from harness import (
    HOST,
    TARGET,
    WRK_GRACE_SECONDS,
    BenchError,
    WrkFigures,
    WrkLoad,
    all_backends_up,
    check_wrk_report,
    cpu_snapshot,
    free_ports,
    others_cpu_percent,
    prepare_child,
    running,
    stop,
    wait_until_ready,
    wrk_argv,
)

from scenarios.context import Bench, Server
from scenarios.results import Figure, Report, Run, paired_ratio, round_ratios, run_warnings, speed_figures
from scenarios.servers import backend_flags, file_dispatcher

PLAIN, TLS = "plain", "tls"
NEW = " new connections"
CLOSE = ("-H", "Connection: close")  # wrk opens a new connection for each request


@dataclass(frozen=True)
class TlsResult(Report):
    """Scenario 10: keep-alive req/s and new connections/s, TLS against plain (medians of rounds)."""

    runs: list[Run]

    def title(self) -> str:
        return f"10. TLS, {self.runs[0].load}: the front door over TLS vs over plain HTTP (3 backends)"

    def figures(self) -> list[Figure]:
        keep_alive = speed_figures("10", self.runs, TLS, PLAIN, "plain HTTP, keep-alive")
        new = speed_figures("10", self.runs, TLS + NEW, PLAIN + NEW, "plain HTTP, new connections")
        new[0] = replace(new[0], label="new connections/s", unit="/s")
        return [*keep_alive, new[0]]

    def warnings(self) -> list[str]:
        return run_warnings(self.runs, "10")

    def notes(self) -> list[str]:
        keep_alive = paired_ratio(self.runs, TLS, PLAIN)
        new = paired_ratio(self.runs, TLS + NEW, PLAIN + NEW)
        if keep_alive is None or new is None:
            return []
        summary = f"10: TLS/plain, keep-alive req/s {keep_alive:.2f}x, new connections/s {new:.2f}x"
        return [
            summary,
            *round_ratios("10", self.runs, TLS, PLAIN),
            *round_ratios("10", self.runs, TLS + NEW, PLAIN + NEW),
        ]


def run_wrk_over(load: WrkLoad, port: int, https: bool, extra: Sequence[str] = ()) -> WrkFigures:
    """wrk against TARGET on port, over https when `https` (wrk speaks TLS for an https:// URL and does
    not verify the certificate), with `extra` options (`-H`)."""
    *options, url = wrk_argv(load, port)  # no script here: the URL comes last
    if https:
        url = url.replace("http://", "https://", 1)
    completed = subprocess.run(
        [*options, *extra, url],
        capture_output=True,
        text=True,
        timeout=load.duration_seconds + WRK_GRACE_SECONDS,
        preexec_fn=prepare_child(load.cpus),
        check=False,
    )
    return check_wrk_report(completed.returncode, completed.stdout, completed.stderr)


@contextmanager
def tls_dispatcher(bench: Bench, pems: dict[str, str]) -> Iterator[Server]:
    """`python -m dispatcher --tls-cert ... --tls-key ...` over scenario 1's backends, once every backend
    is up and one GET over TLS gave the 307."""
    base_urls = bench.file_backends()
    port, admin_port = free_ports(2)
    argv = [
        sys.executable,
        "-m",
        "dispatcher",
        "--listen",
        f"{HOST}:{port}",
        "--admin-listen",
        f"{HOST}:{admin_port}",
    ]
    argv += [*backend_flags(base_urls), "--tls-cert", pems["cert"], "--tls-key", pems["key"]]
    log = bench.log(TLS)
    with running(argv, log, bench.settings.server_cpus) as process:
        wait_until_ready(functools.partial(all_backends_up, admin_port, len(base_urls)), process, log)
        _check_tls_redirect(port, pems["ca"], base_urls)
        yield Server(TLS, process, port)


def _check_tls_redirect(port: int, ca: str, base_urls: Sequence[str]) -> None:
    context = ssl.create_default_context(cafile=ca)
    connection = http.client.HTTPSConnection("localhost", port, timeout=5, context=context)
    try:
        connection.request("GET", TARGET)
        response = connection.getresponse()
        location = response.getheader("Location")
    finally:
        connection.close()
    if response.status != 307 or location not in {url + TARGET for url in base_urls}:
        raise BenchError(f"tls: GET {TARGET} gave {response.status} Location {location!r}")


def _pems(bench: Bench) -> dict[str, str]:
    """A test CA and a certificate for localhost, written to the log folder."""
    ca = trustme.CA()
    issued = ca.issue_cert("localhost")
    paths = {name: str(bench.settings.log_dir / f"tls-{name}.pem") for name in ("ca", "cert", "key")}
    ca.cert_pem.write_to_path(paths["ca"])
    issued.cert_chain_pems[0].write_to_path(paths["cert"])
    issued.private_key_pem.write_to_path(paths["key"])
    return paths


def tls(bench: Bench) -> TlsResult:
    """10. TLS against plain: keep-alive req/s and new connections/s, the four loads in turns."""
    load = bench.settings.load()
    with ExitStack() as stack:
        plain = stack.enter_context(file_dispatcher(bench, PLAIN))
        secure = stack.enter_context(tls_dispatcher(bench, _pems(bench)))
        sides = [
            (PLAIN, plain, functools.partial(run_wrk_over, load, plain.port, False)),
            (TLS, secure, functools.partial(run_wrk_over, load, secure.port, True)),
            (PLAIN + NEW, plain, functools.partial(run_wrk_over, load, plain.port, False, CLOSE)),
            (TLS + NEW, secure, functools.partial(run_wrk_over, load, secure.port, True, CLOSE)),
        ]
        servers = [plain, secure]
        pids = [server.process.pid for server in servers]
        runs = []
        for round_ in range(bench.settings.rounds):
            for name, server, load_it in sides if round_ % 2 == 0 else list(reversed(sides)):
                bench._park_all_but(server, servers)
                before = cpu_snapshot(pids, bench.helper_pids())
                figures = load_it()
                others = others_cpu_percent(before, cpu_snapshot(pids, bench.helper_pids()))
                runs.append(Run(name, load.describe(), figures, others, ""))
        for server in servers:
            stop(server.process)
    return TlsResult(runs)
