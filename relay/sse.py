"""Server-sent events: split an upstream byte stream into whole events as they arrive."""

from __future__ import annotations

from collections.abc import AsyncIterator

# An event ends at a blank line; providers use either LF or CRLF line endings.
_SEPARATORS = (b"\r\n\r\n", b"\n\n", b"\r\r")
# A separator cut by a read boundary may have begun this many bytes before the end.
_OVERLAP = max(len(s) for s in _SEPARATORS) - 1


def rescan_from(buffer: bytes | bytearray) -> int:
    """Where the next search of ``buffer`` (found to hold no separator) may start once
    more bytes arrive: searching a large event from its start on every read would cost
    time quadratic in its size, which a channel could use to stall the relay."""
    return max(len(buffer) - _OVERLAP, 0)


def _split_point(buffer: bytes | bytearray, start: int = 0) -> tuple[int, int]:
    best, width = -1, 0
    for separator in _SEPARATORS:
        index = buffer.find(separator, start)
        if index != -1 and (best == -1 or index < best):
            best, width = index, len(separator)
    return best, width


def event_data(event: bytes) -> bytes | None:
    """The joined ``data:`` payload of one event, or None when it has none (a comment)."""
    parts = []
    for line in event.splitlines():
        if line.startswith(b"data:"):
            value = line[5:]
            parts.append(value[1:] if value.startswith(b" ") else value)
    return b"\n".join(parts) if parts else None


async def iter_event_batches(
    chunks: AsyncIterator[bytes], max_event_bytes: int
) -> AsyncIterator[list[bytes]]:
    """Yield, for each read from the upstream, the events it completed (without their
    separators), as soon as they are complete: the relay forwards them in one write."""
    buffer = bytearray()
    start = 0
    async for chunk in chunks:
        buffer += chunk
        events = []
        while True:
            index, width = _split_point(buffer, start)
            if index == -1:
                start = rescan_from(buffer)
                break
            start = 0
            if index > max_event_bytes:  # whole in one read, but no smaller for it
                raise ValueError("an upstream stream event exceeds the size limit")
            event = bytes(buffer[:index])
            del buffer[: index + width]
            if event.strip():
                events.append(event)
        if events:
            yield events
        if len(buffer) > max_event_bytes:
            raise ValueError("an upstream stream event exceeds the size limit")
    if buffer.strip():
        yield [bytes(buffer)]
