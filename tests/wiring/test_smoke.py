"""A first end-to-end pass: real backends, the real app, a real client."""

import httpx
import trio

from tests.helpers import settings_for, start_backends, start_dispatcher, wait_all_up


async def test_post_body_arrives_at_backend_through_307(nursery: trio.Nursery) -> None:
    """httpx follows the 307 with the same method and body, and the backend gets the body intact."""
    backends = await start_backends(nursery, 0, 5)
    dispatcher = await start_dispatcher(nursery, settings_for(backends))
    await wait_all_up(dispatcher)
    body = bytes(range(256)) * 1000
    async with httpx.AsyncClient(follow_redirects=True) as client:
        response = await client.post(f"{dispatcher.url}/up?x=1", content=body)
    assert response.status_code == 200
    received = backends[0].received + backends[1].received
    assert [(r.method, r.target, r.body) for r in received] == [("POST", "/up?x=1", body)]
