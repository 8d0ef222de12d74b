"""--workers with routes and pools: every worker routes alike, and one scrape counts every pool."""

import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

import trio
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import (
    TestBackend,
    listens,
    location_on_new_connection,
    poll_admin,
    read_until_close,
    start_backends,
    unused_port,
    worker_pids,
)

CONFIG = """
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin}"
workers = 2
[health]
jitter = 0
[[backends]]
url = "{web}"
name = "web"
[pools.forms]
backends = [ {{ url = "{forms}", name = "forms" }} ]
[pools.app]
policy = "hash"
hash_key = "cookie:session"
hash_balance_factor = 100  # the bound never binds here: what is proved is that the workers' rings agree
backends = [
  {{ url = "{a1}", name = "a1" }}, {{ url = "{a2}", name = "a2" }}, {{ url = "{a3}", name = "a3" }},
]
[[routes]]
name = "submit"
path_prefix = "/submit"
methods = ["POST"]
pool = "forms"
replace_prefix = "/v2/submit"
[[routes]]
name = "app"
path_prefix = "/app"
pool = "app"
strip_prefix = true
"""


async def test_two_workers_route_alike_and_count_every_pool(nursery: trio.Nursery, tmp_path: Path) -> None:
    """Both workers send a route's requests to its pool with its rewrite, hash a key to one backend,
    and the master's scrape labels each backend's redirects with its pool and sums the route counters."""
    web, forms, a1, a2, a3 = await start_backends(nursery, 0, 0, 0, 0, 0)
    port, admin = unused_port(), unused_port()
    urls = {"web": web.url, "forms": forms.url, "a1": a1.url, "a2": a2.url, "a3": a3.url}
    config = tmp_path / "dispatcher.toml"
    config.write_text(CONFIG.format(port=port, admin=admin, **urls))
    argv = [sys.executable, "-m", "dispatcher", "--config", str(config), "--log-level", "warning"]
    process = await trio.lowlevel.open_process(argv)
    try:
        await poll_admin(admin, "/pools/app", lambda status, text: status == 200 and '"usable": 3' in text)
        await poll_admin(admin, "/readyz", lambda status, _: status == 200)
        submit = b"POST /submit/x?y=1 HTTP/1.1\r\nhost: t\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        for _ in range(10):
            assert await location_on_new_connection(port, submit) == forms.url.encode() + b"/v2/submit/x?y=1"
        plain = b"GET /other HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n"
        assert await location_on_new_connection(port, plain) == web.url.encode() + b"/other"
        # Each key on one backend, whichever worker takes its connection.
        for key in range(6):
            app = b"GET /app/p HTTP/1.1\r\nhost: t\r\ncookie: session=k%d\r\nconnection: close\r\n\r\n" % key
            assert len({await location_on_new_connection(port, app) for _ in range(4)}) == 1, key
        text = await poll_admin(
            admin,
            "/metrics",
            lambda _, text: 'dispatcher_redirects_total{backend="forms",pool="forms"} 10.0' in text,
        )
        redirects = {
            (s.labels["pool"], s.labels["backend"]): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == "dispatcher_redirects_total"
        }
        assert set(redirects) == {
            ("default", "web"),
            ("forms", "forms"),
            ("app", "a1"),
            ("app", "a2"),
            ("app", "a3"),
        }
        assert sum(v for (pool, _), v in redirects.items() if pool == "app") == 24
        # The route counters are the workers', summed in the master's scrape as the backends' are.
        text = await poll_admin(
            admin, "/metrics", lambda _, text: 'dispatcher_route_requests_total{route="app"} 24.0' in text
        )
        assert 'dispatcher_route_requests_total{route="submit"} 10.0' in text
        assert 'dispatcher_route_requests_total{route=""} 1.0' in text
        assert 'dispatcher_route_variant_requests_total{pool="forms",route="submit"} 10.0' in text
    finally:
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(20):
            assert await process.wait() == 0


MAINT_CONFIG = """
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin}"
admin_token = "s3cret-token"
workers = 2
[health]
jitter = 0
[[backends]]
url = "{web}"
name = "web"
[pools.forms]
backends = [ {{ url = "{forms}", name = "forms" }} ]
fallback = {{ redirect = "https://status.example.com/" }}
[[routes]]
name = "submit"
path_prefix = "/submit"
pool = "forms"
"""


async def test_a_pool_in_maintenance_sends_every_workers_requests_to_its_fallback(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """POST /pools/forms/state maint is the master's word, and every worker answers with the pool's
    fallback from then on (new connections land on either worker), also after a reload's new
    workers start; ready brings the pool's backend back in every worker. The master's scrape counts
    every fallback answer of every worker, those of the generation the reload retired included."""
    web, forms = await start_backends(nursery, 0, 0)
    port, admin = unused_port(), unused_port()
    config = tmp_path / "dispatcher.toml"
    config.write_text(MAINT_CONFIG.format(port=port, admin=admin, web=web.url, forms=forms.url))
    argv = [sys.executable, "-m", "dispatcher", "--config", str(config), "--log-level", "error"]
    process = await trio.lowlevel.open_process(argv)
    submit = b"GET /submit/x HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n"
    fallback, backend = b"https://status.example.com/", forms.url.encode() + b"/submit/x"

    answered = 0  # fallback answers sent, by either worker

    async def locations(count: int = 12) -> set[bytes]:
        nonlocal answered
        found = [await location_on_new_connection(port, submit) for _ in range(count)]
        answered += found.count(fallback)
        return set(found)

    async def set_pool(word: bytes) -> None:
        async with await trio.open_tcp_stream("127.0.0.1", admin) as stream:
            await stream.send_all(
                b"POST /pools/forms/state HTTP/1.1\r\nhost: 127.0.0.1\r\n"
                b"authorization: Bearer s3cret-token\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s"
                % (len(word), word)
            )
            assert (await read_until_close(stream)).startswith(b"HTTP/1.1 200 ")

    async def until(wanted: set[bytes]) -> None:
        with trio.fail_after(10):
            while await locations() != wanted:
                await trio.sleep(0.05)  # a worker takes the master's word within its sync interval

    try:
        await poll_admin(admin, "/readyz", lambda status, _: status == 200)
        assert await locations() == {backend}
        await set_pool(b"maint")
        await until({fallback})
        old = set(worker_pids(process.pid))
        process.send_signal(signal.SIGHUP)  # new workers: the pool stays in maintenance in them
        with trio.fail_after(20):
            while not ((new := set(worker_pids(process.pid))) and not new & old):
                await trio.sleep(0.05)  # the old generation drains away
        assert all(listens(pid, port) for pid in new)
        assert await locations(30) == {fallback}
        counted = f'dispatcher_pool_fallback_responses_total{{fallback="redirect",pool="forms"}} {answered}.0'
        await poll_admin(admin, "/metrics", lambda _, text: counted in text)
        await set_pool(b"ready")
        await until({backend})
        # A reload that drops the redirect, then maintenance again: the pool's 503s count in a series
        # of their own, and the redirect's stays where it stood, summed over every generation.
        plain = MAINT_CONFIG.replace('fallback = {{ redirect = "https://status.example.com/" }}\n', "")
        config.write_text(plain.format(port=port, admin=admin, web=web.url, forms=forms.url))
        old = new
        process.send_signal(signal.SIGHUP)
        with trio.fail_after(20):
            while not ((new := set(worker_pids(process.pid))) and not new & old):
                await trio.sleep(0.05)
        await set_pool(b"maint")
        refused = 0
        with trio.fail_after(10):
            while refused < 3:  # until every worker has the master's word, some still redirect
                async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
                    await stream.send_all(submit)
                    refused += (await read_until_close(stream)).startswith(b"HTTP/1.1 503 ")
        counted_503 = 'dispatcher_pool_fallback_responses_total{fallback="unavailable",pool="forms"} 3.0'
        text = await poll_admin(admin, "/metrics", lambda _, text: counted_503 in text)
        assert (
            f'dispatcher_pool_fallback_responses_total{{fallback="redirect",pool="forms"}} {answered}.0'
            in text
        )
    finally:
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(20):
            assert await process.wait() == 0


RENEWED_CONFIG = """
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin}"
workers = 2
[health]
jitter = 0
timeout = "5s"  # the new backend's first check is held open by the test: it must not time out
[[backends]]
url = "{web}"
name = "web"
[pools.forms]
backends = [ {{ url = "{forms}", name = "{name}" }} ]
fallback = {{ redirect = "https://status.example.com/" }}
[[routes]]
name = "submit"
path_prefix = "/submit"
pool = "forms"
"""


@dataclass
class HeldBackend(TestBackend):
    """A backend that holds its first health check until `release` is set, and says when it came."""

    asked: trio.Event = field(default_factory=trio.Event)
    release: trio.Event = field(default_factory=trio.Event)

    async def handle(self, stream: trio.SocketStream) -> None:
        self.asked.set()
        await self.release.wait()
        await super().handle(stream)


async def test_a_reload_that_renews_every_backend_of_a_pool_checks_the_new_ones_before_the_switch(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """--workers: a reload replaces forms1, the forms pool's only backend, with forms2. forms2 is
    checked before the new workers take over, and until its first check has answered forms1 takes
    the pool's requests; then forms2 does. It was checked only after the switch: until its first
    check came back, every worker answered the pool's fallback."""
    web, forms1 = await start_backends(nursery, 0, 0)
    forms2 = HeldBackend("forms2")
    await nursery.start(forms2.serve)
    port, admin = unused_port(), unused_port()
    config = tmp_path / "dispatcher.toml"
    fields = {"port": port, "admin": admin, "web": web.url}
    config.write_text(RENEWED_CONFIG.format(**fields, forms=forms1.url, name="forms1"))
    argv = [sys.executable, "-m", "dispatcher", "--config", str(config), "--log-level", "error"]
    process = await trio.lowlevel.open_process(argv)
    submit = b"GET /submit/x HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n"
    try:
        await poll_admin(admin, "/readyz", lambda status, _: status == 200)
        assert await location_on_new_connection(port, submit) == forms1.url.encode() + b"/submit/x"
        before = set(worker_pids(process.pid))
        config.write_text(RENEWED_CONFIG.format(**fields, forms=forms2.url, name="forms2"))
        process.send_signal(signal.SIGHUP)
        with trio.fail_after(20):
            await forms2.asked.wait()  # its first check has come, and is held
        found = {await location_on_new_connection(port, submit) for _ in range(12)}
        assert found == {forms1.url.encode() + b"/submit/x"}
        forms2.release.set()
        old, new = forms1.url.encode() + b"/submit/x", forms2.url.encode() + b"/submit/x"
        with trio.fail_after(20):
            while (location := await location_on_new_connection(port, submit)) != new:
                assert location == old  # never the fallback on the way
                await trio.sleep(0.05)  # the new workers take over once they listen
            while set(worker_pids(process.pid)) & before:
                assert await location_on_new_connection(port, submit) in (old, new)  # the old ones drain
                await trio.sleep(0.05)
        assert {await location_on_new_connection(port, submit) for _ in range(12)} == {new}
    finally:
        forms2.release.set()
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(20):
            assert await process.wait() == 0
