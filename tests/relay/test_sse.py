"""Splitting upstream server-sent events: separators cut by any read boundary are found,
and one huge event arriving in small reads costs time linear in its size (a channel that
sends a 15 MB picture in 4 KB reads must not stall the relay's event loop)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator

import pytest

from relay import sse
from relay.providers.streams import SseSplitter

EVENTS = b"".join(b"data: %d\r\n\r\n" % i for i in range(50)) + b"data: x\n\ndata: y\r\rdata: z\n\n"
EXPECTED = [b"%d" % i for i in range(50)] + [b"x", b"y", b"z"]


def reads(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def split_provider(pieces: list[bytes]) -> list[bytes]:
    splitter = SseSplitter()
    found = [data for piece in pieces for _, data in splitter.feed(piece)]
    return found + [data for _, data in splitter.finish()]


def split_relay(pieces: list[bytes]) -> list[bytes]:
    async def source() -> AsyncIterator[bytes]:
        for piece in pieces:
            yield piece

    async def collect() -> list[bytes]:
        events = []
        async for batch in sse.iter_event_batches(source(), 16 * 1024 * 1024):
            events.extend(batch)
        return events

    return [sse.event_data(e) or b"" for e in asyncio.run(collect())]


@pytest.mark.parametrize("split", [split_provider, split_relay])
@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 7, 64, 100_000])
def test_separators_cut_by_reads_are_found(split: object, size: int) -> None:
    assert split(reads(EVENTS, size)) == EXPECTED  # type: ignore[operator]


@pytest.mark.parametrize("split", [split_provider, split_relay])
def test_a_huge_event_in_small_reads_costs_linear_time(split: object) -> None:
    # Searching the whole buffer on every read took ~50 s here for 15 MB in 4 KB reads.
    event = b"data: " + b"A" * 15_000_000 + b"\r\n\r\n"
    started = time.process_time()
    [data] = split(reads(event, 4096))  # type: ignore[operator]
    assert len(data) == 15_000_000
    assert time.process_time() - started < 3


@pytest.mark.parametrize("split", [split_provider, split_relay])
@pytest.mark.parametrize("size", [4096, 40_000_000])
def test_an_event_over_the_limit_is_refused_however_it_is_read(split: object, size: int) -> None:
    """The 16 MiB limit holds for an event that arrives whole in one read, not only for
    one still incomplete when a read ends."""
    event = b"data: " + b"A" * 17_000_000 + b"\n\ndata: next\n\n"
    with pytest.raises(ValueError, match="size limit"):
        split(reads(event, size))  # type: ignore[operator]


def test_a_read_of_many_events_keeps_them_whole_and_in_order() -> None:
    # Separators of every kind, blank events and an event holding a lone CR or LF.
    data = b"".join(
        (b"data: a%d\ndata: b\r\n\r\n" if i % 3 == 0 else b"data: %d\r\r" if i % 3 == 1 else
         b"\n\ndata: c%d\rx\n\n") % i
        for i in range(300)
    )  # fmt: skip
    expected = []
    for i in range(300):
        if i % 3 == 0:
            expected.append(b"a%d\nb" % i)
        elif i % 3 == 1:
            expected.append(b"%d" % i)
        else:
            expected.append(b"c%d" % i)  # "x" after a lone CR is a line of its own
    buffer = bytearray(data + b"data: tail")
    events, start = sse.take_events(buffer)
    assert [sse.event_data(e) for e in events] == expected
    assert buffer == b"data: tail"  # the unfinished event stays
    assert start == len(buffer) - 3


def relay_batches(pieces: list[bytes], limit: int = 16 * 1024 * 1024) -> list[list[bytes]]:
    async def source() -> AsyncIterator[bytes]:
        for piece in pieces:
            yield piece

    async def collect() -> list[list[bytes]]:
        return [batch async for batch in sse.iter_event_batches(source(), limit)]

    return asyncio.run(collect())


def buffered_batches(pieces: list[bytes], limit: int = 16 * 1024 * 1024) -> list[list[bytes]]:
    """Every read through the buffer and ``take_events``: what ``iter_event_batches``
    did for every read before it split reads that begin an event with one ``split``."""
    buffer, start, batches = bytearray(), 0, []
    for piece in pieces:
        buffer += piece
        events, start = sse.take_events(buffer, start, limit)
        if events:
            batches.append(events)
    if buffer.strip():
        batches.append([bytes(buffer)])
    return batches


# Events of every shape a stream may hold, each with what a provider's splitter makes of
# it: (event name, data), or None for an event without data (a comment, a blank one).
SHAPES: list[tuple[bytes, tuple[str, bytes] | None]] = [
    (b": keep-alive", None),
    (b" \t ", None),
    (b'event: delta\ndata: {"a":1}', ("delta", b'{"a":1}')),
    (b"event:ping\ndata:  x", ("ping", b" x")),
    (b"id: 5\nevent: e\ndata: z", ("e", b"z")),
    (b"event: two\ndata: a\ndata: b", ("two", b"a\nb")),
    (b"data: line one\ndata: line two", ("", b"line one\nline two")),
    (b"data:", ("", b"")),
    (b'data: {"text":"a\\\\ b\\"c"}', ("", b'{"text":"a\\\\ b\\"c"}')),
]


def _random_stream(rng: random.Random) -> tuple[bytes, list[tuple[str, bytes]]]:
    """A stream and the (name, data) of its events."""
    separators = [b"\n\n"] * 8 + [b"\r\n\r\n", b"\r\r", b"\n\n\n"]
    lf_only = rng.random() < 0.7
    parts, expected = [], []
    for _ in range(rng.randrange(1, 12)):
        event, parsed = rng.choice(SHAPES)
        parts.append(event + (b"\n\n" if lf_only else rng.choice(separators)))
        if parsed is not None:
            expected.append(parsed)
    if rng.random() < 0.3:
        parts.append(b"data: unfinished")
        expected.append(("", b"unfinished"))
    return b"".join(parts), expected


def _random_reads(data: bytes, rng: random.Random) -> list[bytes]:
    if rng.random() < 0.5:  # one read per event, as upstreams nearly always write them
        pieces = [p + b"\n\n" for p in data.split(b"\n\n")]
        pieces[-1] = pieces[-1][:-2]
        return [p for p in pieces if p]
    cuts = sorted(rng.sample(range(1, len(data)), min(rng.randrange(6), len(data) - 1)))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


def test_reads_give_the_batches_the_buffered_search_gives() -> None:
    rng = random.Random(18)
    for _ in range(3000):
        pieces = _random_reads(_random_stream(rng)[0], rng)
        assert relay_batches(pieces) == buffered_batches(pieces), pieces


def test_a_provider_stream_gives_every_event_however_it_is_read() -> None:
    rng = random.Random(20)
    for _ in range(3000):
        data, expected = _random_stream(rng)
        pieces = _random_reads(data, rng)
        splitter = SseSplitter()
        found = [event for piece in pieces for event in splitter.feed(piece)]
        assert found + splitter.finish() == expected, pieces


def test_an_event_over_the_limit_in_a_split_read_is_refused() -> None:
    pieces = [b"data: small\n\n", b"data: " + b"A" * 100 + b"\n\ndata: next\n\n"]
    assert relay_batches(pieces[:1], limit=64) == [[b"data: small"]]
    with pytest.raises(ValueError, match="size limit"):
        relay_batches(pieces, limit=64)


def test_the_short_cuts_read_events_as_the_line_walk_does() -> None:
    # One data line, and a name line then one data line (typed streams).
    rng = random.Random(19)
    events = [b"data: x", b"data:x", b"data:  x", b"data: ", b"data:", b": c", b"event: e", b""]
    events += [b"event: e\ndata: x", b"event: e\ndata:x", b"event: e\ndata: ", b"event: e\n"]
    events += [b"event: e\nid: 1\ndata: x", b"event:e\ndata: x", b"event: e\rdata: x"]
    for _ in range(2000):
        event = rng.choice(events) + bytes(rng.choice(b"ab \r\n:") for _ in range(rng.randrange(4)))
        # A final LF adds no line, and takes the line-by-line walk.
        assert sse.event_data(event) == sse.event_data(event + b"\n"), event
