"""The render engine: the bytes of a /metrics scrape, made incrementally, kept between scrapes, gzipped,
in steps.

Owns: `Metrics`, what the admin listener serves: the encoding negotiated from Accept (as prometheus-client's
own handlers choose it), the per-backend families as the encoder rendered them, kept per encoding for the
next scrape (KEPT_ENCODINGS), gzip when Accept-Encoding allows it, and the steps (RENDER_STEP, GZIP_STEP)
between which the front door runs.
Rules: every byte of a scrape is written by prometheus-client's encoders, never by hand: a scrape of 1,000
backends must stay well under 100 ms (issue 3), so lines the encoder wrote are kept and only the samples
whose figures changed are given to it again, and a kept line is spliced only where the encoder's layout is
the one expected (else nothing is kept). What is kept is replaced as a whole, never changed in place, so
that scrapes may interleave. What is measured is catalogue.py's: this module names no metric and reads no
figure but through it (benchmarks/scrape.py measures the cost).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.registry import Collector

from dispatcher.core.pool import Pool
from dispatcher.core.pools import Pools
from dispatcher.core.stats import ServerStats
from dispatcher.expose.catalogue import (
    BACKEND_FAMILIES,
    BackendFamily,
    Labels,
    Memberships,
    PoolReading,
    RouteCounts,
    SampleLabels,
    registry,
    rest_registry,
)

# A scrape yields after this many samples given to the encoder (1-2 ms of CPU) and after this many bytes
# gzipped (~1 ms), so that the front door never waits longer for the admin listener.
RENDER_STEP = 500
GZIP_STEP = 256 * 1024
T = TypeVar("T")
Steps = Generator[None, None, T]  # a computation in steps: the caller may run other work at each yield
Scrape = tuple[bytes, str, bool]

# Rendered families are kept per encoding (format, version and escaping, as named by the content type
# that choose_encoder gives with it) for this many encodings: Prometheus' choice and a person's curl.
KEPT_ENCODINGS = 2

Encoder = Callable[[Collector], bytes]


@dataclass(frozen=True, slots=True)
class Block:
    """One per-backend family as prometheus-client rendered it: its header (HELP, TYPE) and a line for
    each sample (without its newline); and the backends and figures it shows."""

    names: tuple[str, ...]
    values: list[float]
    header: bytes
    lines: list[bytes]

    def parts(self) -> Iterator[bytes]:
        yield self.header
        if self.lines:
            yield b"\n".join(self.lines)
            yield b"\n"


class Families(Collector):
    """Metric families already built: lets the encoder render one family on its own."""

    def __init__(self, *families: Metric) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


class Metrics:
    """Scrapes of the pool and the server, with the standard process collector.

    prometheus-client formats every sample of every scrape: about 3 us a sample (6 us in OpenMetrics with
    the `underscores` escaping Prometheus 2 gets, hence `_without_needless_escaping`), for the 30,000
    samples of 1,000 backends. Yet between two scrapes (every 15 s or so) many of them do not change:
    states, weights, failure counts, the fail count of a backend that passes, the low buckets of a
    histogram. So each per-backend family is kept as prometheus-client's encoder rendered it, a line per
    sample, with the figures it shows; the next scrape of that encoding has the encoder render only the
    samples whose figures differ, and takes their new lines in place of the old ones. Both encoders write
    a family as its header then one line per sample, and a body as its families in order then an end
    (`# EOF` in OpenMetrics): so the same bytes.
    """

    def __init__(self, pool: Pool | Pools, stats: ServerStats) -> None:
        self.pool = pool
        self.stats = stats
        self.memberships: Memberships | None = None  # with dns:// entries: set by the wiring
        self.router: RouteCounts | None = None  # the routes' counters now: set by the wiring
        # Both replaced as a whole, never changed in place: a scrape that is between steps reads one
        # version, and two scrapes at once both stay right (the later one's blocks are kept).
        self._labels = SampleLabels.of(())
        self._blocks: dict[str, tuple[Block, ...]] = {}  # by content type, the most recently used last

    @property
    def pool(self) -> Pool | Pools:
        """What is scraped: one pool (tests, benchmarks) or every pool."""
        return self._pool

    @pool.setter
    def pool(self, pool: Pool | Pools) -> None:
        self._pool = pool
        self.pools = pool if isinstance(pool, Pools) else Pools(pool)

    def registry(self, now: float) -> CollectorRegistry:
        """A registry for one scrape at trio time `now`, kept nowhere: what `exposition` must equal."""
        return registry(self.pools, self.stats, now, self.memberships, self.router)

    def exposition(
        self, now: float, accept: str | None, accept_encoding: str | None = None
    ) -> tuple[bytes, str, bool]:
        """The whole scrape at once (tests, benchmarks): `scrape` run to its end."""
        steps = self.scrape(now, accept, accept_encoding)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                result: Scrape = done.value
                return result

    def scrape(self, now: float, accept: str | None, accept_encoding: str | None = None) -> Steps[Scrape]:
        """The scrape body, its content type, and whether it is gzipped (as Prometheus asks by default),
        in steps of a millisecond or two: the admin listener lets the front door run between them.

        A scrape of 1,000 backends is 50 ms or more of CPU. In one piece it would hold every client's
        redirect back that long; in a worker thread it would be worse, as the thread keeps the GIL for
        up to 5 ms each time the event loop makes a system call.
        OpenMetrics when the scraper's Accept asks for it, as prometheus-client's own handlers do.
        Several scrapes may interleave: what is kept between scrapes is replaced, never changed.
        """
        encoder, content_type = choose_encoder(accept or "")
        encoder = _without_needless_escaping(encoder)
        parts = yield from self._parts(encoder, content_type, now)
        if accept_encoding and _accepts_gzip(accept_encoding):
            return (yield from _gzip(parts)), content_type, True
        return b"".join(parts), content_type, False

    def _parts(self, encoder: Encoder, content_type: str, now: float) -> Steps[list[bytes]]:
        """The body in parts: the pool's families, kept or rendered again, then the rest rendered whole."""
        kept = self._blocks
        blocks = yield from self._pool_blocks(encoder, kept.get(content_type, ()), now)
        if blocks is None:  # a prometheus-client that lays its output out otherwise: keep nothing
            return [encoder(self.registry(now))]
        self._keep(kept, content_type, tuple(blocks))
        return [part for block in blocks for part in block.parts()] + [
            encoder(rest_registry(self.stats, self.memberships, self.pools, self.router))
        ]

    def _pool_blocks(
        self, encoder: Encoder, previous: tuple[Block, ...], now: float
    ) -> Steps[list[Block] | None]:
        """Every per-backend family rendered, from the previous blocks and the samples that changed;
        None if the encoder's output is not laid out as a header and one line per sample."""
        reading = PoolReading.of(self.pools, now)
        labels = yield from self._labels_of(reading.names)
        blocks: list[Block] = []
        olds = previous or (None,) * len(BACKEND_FAMILIES)
        for family, label_sets, old in zip(BACKEND_FAMILIES, labels.families, olds, strict=True):
            block = yield from _block(encoder, family, reading, label_sets, old)
            if block is None:
                return None
            blocks.append(block)
        return blocks

    def _labels_of(self, names: tuple[str, ...]) -> Steps[SampleLabels]:
        """The label sets of these backends: those kept if the pool's names are the same, else new ones."""
        labels = self._labels  # read once: another scrape may replace it
        if labels.names != names:
            labels = self._labels = SampleLabels.of(names)
            yield
        return labels

    def _keep(self, kept: dict[str, tuple[Block, ...]], content_type: str, blocks: tuple[Block, ...]) -> None:
        """Keep `blocks` as the most recent encoding's, forgetting the least recent beyond KEPT_ENCODINGS."""
        others = [(other, old) for other, old in kept.items() if other != content_type]
        del others[: max(0, len(others) + 1 - KEPT_ENCODINGS)]
        self._blocks = dict([*others, (content_type, blocks)])


def _accepts_gzip(accept_encoding: str) -> bool:
    """RFC 9110 §12.5.3: `gzip` listed with a q-value above 0."""
    for item in accept_encoding.split(","):
        coding, _, params = item.strip().partition(";")
        if coding.strip().lower() in ("gzip", "*"):
            q = params.strip().removeprefix("q=").strip() if params else "1"
            try:
                return float(q) > 0
            except ValueError:
                return False
    return False


def _without_needless_escaping(encoder: Encoder) -> Encoder:
    """The same encoder with `allow-utf-8` escaping where `underscores` or `values` was negotiated.

    Prometheus 2 asks for OpenMetrics without an escaping, so it gets `underscores`; prometheus-client
    0.26 then rewrites every sample's name a character at a time, though names in the legacy character
    set come out unchanged: twice the cost of a scrape. Every name and label name of the catalogue is in
    that set (a test checks it), and for such names `allow-utf-8` writes the same bytes without the walk.
    The content type still names the escaping that was negotiated.
    """
    if isinstance(encoder, partial) and encoder.keywords.get("escaping") in NEEDLESS_ESCAPINGS:
        return partial(encoder.func, *encoder.args, **{**encoder.keywords, "escaping": openmetrics.ALLOWUTF8})
    return encoder


NEEDLESS_ESCAPINGS = (openmetrics.UNDERSCORES, openmetrics.VALUES)


def _block(
    encoder: Encoder, family: BackendFamily, reading: PoolReading, label_sets: list[Labels], old: Block | None
) -> Steps[Block | None]:
    """`family` as the pool reads now: `old` itself if it shows the same backends and figures, else
    rendered again (from `old`'s lines where it shows the same backends)."""
    values = reading.values(family)
    same_backends = old if old is not None and old.names == reading.names else None
    if same_backends is not None and same_backends.values == values:
        return same_backends
    return (yield from _render(encoder, family, reading.names, label_sets, values, same_backends))


def _render(
    encoder: Encoder,
    family: BackendFamily,
    names: tuple[str, ...],
    label_sets: list[Labels],
    values: list[float],
    old: Block | None,
) -> Steps[Block | None]:
    """`family` rendered by the encoder: the samples whose figures differ from `old`'s (a block of the
    same backends), the other lines taken from `old`; None if the layout is not as expected. The
    encoder gets RENDER_STEP samples at a time."""
    header, end = _framing(encoder, family)
    todo, lines = _to_render(values, old)
    for start in range(0, len(todo), RENDER_STEP):
        part = list(todo[start : start + RENDER_STEP])
        fresh = _sample_lines(encoder, header, end, family.metric(label_sets, values, part))
        if fresh is None:
            return None
        for i, line in zip(part, fresh, strict=True):
            lines[i] = line
        yield
    return Block(names, values, header, lines)


def _to_render(values: list[float], old: Block | None) -> tuple[Sequence[int], list[bytes]]:
    """The indexes of the samples the encoder must render, and the lines kept (from `old`) for the rest."""
    if old is None:
        return range(len(values)), [b""] * len(values)
    todo = [i for i, (was, now) in enumerate(zip(old.values, values, strict=True)) if was != now]
    return todo, list(old.lines)  # a copy: another scrape may be reading the old block


def _framing(encoder: Encoder, family: BackendFamily) -> tuple[bytes, bytes]:
    """What the encoder writes before a family's samples (HELP, TYPE) and after the last family."""
    end = encoder(Families())
    return encoder(Families(family.metric([], []))).removesuffix(end), end


def _sample_lines(encoder: Encoder, header: bytes, end: bytes, metric: Metric) -> list[bytes] | None:
    """The encoder's one line per sample of `metric`; None if its output is not `header` (what it makes
    of the family with no samples), a line per sample, then `end` (`# EOF` in OpenMetrics).

    Both of prometheus-client's encoders write a family as HELP and TYPE then one line per sample:
    label values and help texts have their newlines escaped.
    """
    text = encoder(Families(metric))
    if not (text.startswith(header) and text.endswith(end)):
        return None
    lines = text[len(header) : len(text) - len(end)].split(b"\n")
    if lines.pop() != b"" or len(lines) != len(metric.samples):
        return None
    return lines


def _gzip(parts: list[bytes]) -> Steps[bytes]:
    """The body gzipped (level 1: Prometheus asks for gzip for the bytes on the wire, not for the last
    percent of them), GZIP_STEP bytes at a time: 2 MB in one call holds the event loop for ~10 ms."""
    compressor = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)  # 16 +: a gzip header
    body = b"".join(parts)
    out = []
    for start in range(0, len(body), GZIP_STEP):
        out.append(compressor.compress(body[start : start + GZIP_STEP]))
        yield
    out.append(compressor.flush())
    return b"".join(out)
