"""--workers with routes and pools: every worker routes alike, and one scrape counts every pool."""

import signal
import sys
from pathlib import Path

import trio
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import location_on_new_connection, poll_admin, start_backends, unused_port

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
