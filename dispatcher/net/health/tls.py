"""The check of an https backend, over trio's SSLStream, one short task per check.

Owns: each https backend's kept-alive TLS connection and one check over it: send the request, read
the answer, and leave a load stream's connection open for `stream.read_tls`.
Rules: it connects, retries and times out through `client` (the path the sweep takes too) and returns
its result: the health checks give it to the pool. It never imports the sweep.

Why a task per check and not the sweep: an SSLStream has no descriptor that says when a whole record
can be read, and TLS backends are few; their checks need no grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import trio

from dispatcher.core.pool import CheckResult
from dispatcher.net.health.client import CheckClient, CheckFailed, answer_within, may_retry
from dispatcher.protocol.answer import AnswerReader, BadAnswer


@dataclass(slots=True)
class _Link:
    """A kept-alive connection to one backend, and whether its current check heard anything yet."""

    stream: trio.abc.Stream
    reader: AnswerReader
    received: bool = False


class TlsCheck:
    """One https backend's checks, each over its kept-alive TLS connection (opened again as needed)."""

    def __init__(self, client: CheckClient) -> None:
        self.client = client
        self._link: _Link | None = None

    @property
    def connected(self) -> bool:
        return self._link is not None

    @property
    def stream_link(self) -> trio.abc.Stream | None:
        """The connection, when its last answer was a load stream that stays open."""
        link = self._link
        return link.stream if link is not None and link.reader.streaming else None

    @property
    def answer(self) -> AnswerReader:
        """The reader of the connection's answers (a load stream's body goes on through it)."""
        assert self._link is not None
        return self._link.reader

    async def check(self, start: float) -> CheckResult:
        """One check, begun at `start`, within the timeout; never raises for anything the backend does."""
        try:
            with answer_within(start, self.client.settings.timeout):
                status, headers, body = await self._exchange()
        except CheckFailed as failure:
            await self.close()
            return failure.result(trio.current_time() - start)
        return self.client.judge(status, headers, body, trio.current_time() - start)

    async def _exchange(self) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        link = self._link
        if link is not None:
            try:
                return await self._request(link)
            except CheckFailed:
                if not may_retry(reused=True, received=link.received):
                    raise
                await self.close()
        self._link = link = _Link(await self.client.connect(), AnswerReader())
        return await self._request(link)

    async def _request(self, link: _Link) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        answer = link.reader
        answer.begin()
        link.received = False
        try:
            await link.stream.send_all(self.client.request())
            while not answer.feed(await self._receive(link)):
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as error:
            raise CheckFailed("protocol", f"connection lost: {error}") from None
        except BadAnswer as error:
            raise CheckFailed("protocol", str(error)) from None
        if not answer.reusable and not answer.streaming:
            await self.close()
        return answer.status, answer.headers, answer.body

    @staticmethod
    async def _receive(link: _Link) -> bytes:
        data = bytes(await link.stream.receive_some(65536))
        link.received = link.received or bool(data)
        return data

    async def close(self) -> None:
        if self._link is not None:
            link, self._link = self._link, None
            await trio.aclose_forcefully(link.stream)
