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
    if event.find(b"\r") == -1:
        if event.startswith(b"data: ") and event.find(b"\n") == -1:
            return event[6:]  # one data line: nearly every event of an untyped stream
        if event.startswith(b"event: "):
            # A name line, then one data line: nearly every event of a typed stream
            # (Responses, Anthropic's Messages): 0.5 us an event rather than the line walk's 0.7.
            data = event.find(b"\n") + 1
            if event.startswith(b"data: ", data) and event.find(b"\n", data) == -1:
                return event[data + 6 :]
    parts = []
    for line in event.splitlines():
        if line.startswith(b"data:"):
            value = line[5:]
            parts.append(value[1:] if value.startswith(b" ") else value)
    return b"\n".join(parts) if parts else None


def take_events(
    buffer: bytearray, start: int = 0, max_event_bytes: int | None = None
) -> tuple[list[bytes], int]:
    """Remove the complete events from the front of ``buffer`` (which holds no separator
    before ``start``) and return them, without separators and blank ones, with where the
    next search may start once more bytes arrive. An event longer than
    ``max_event_bytes`` is refused (``ValueError``), even one that arrived whole.

    Each separator is searched for once, then again only past an event that ended after
    where it was found: a read holding many events is not rescanned per event (three
    searches of the rest of the buffer per event made this the relay's costliest
    function on streams), and the buffer is cut once per read, not per event."""
    found = [buffer.find(separator, start) for separator in _SEPARATORS]
    kinds = [kind for kind, index in enumerate(found) if index != -1]
    if not kinds:
        return [], rescan_from(buffer)
    events = []
    taken = 0
    with memoryview(buffer) as view:
        if len(kinds) == 1:  # one kind of line ending (nearly every stream): one search
            separator = _SEPARATORS[kinds[0]]
            index = found[kinds[0]]
            while index != -1:
                _check_size(index - taken, max_event_bytes)
                event = bytes(view[taken:index])
                if event.strip():
                    events.append(event)
                taken = index + len(separator)
                index = buffer.find(separator, taken)
        else:
            while True:
                best, which = -1, 0
                for kind, index in enumerate(found):
                    if index != -1 and (best == -1 or index < best):
                        best, which = index, kind
                if best == -1:
                    break
                _check_size(best - taken, max_event_bytes)
                event = bytes(view[taken:best])
                if event.strip():
                    events.append(event)
                taken = best + len(_SEPARATORS[which])
                for kind, index in enumerate(found):
                    if index != -1 and index < taken:
                        found[kind] = buffer.find(_SEPARATORS[kind], taken)
    del buffer[:taken]
    return events, rescan_from(buffer)


def _check_size(size: int, limit: int | None) -> None:
    if limit is not None and size > limit:  # whole in one read, but no smaller for it
        raise ValueError("an upstream stream event exceeds the size limit")


def split_read(read: bytes, max_event_bytes: int | None = None) -> tuple[list[bytes], bytes]:
    """The complete events of ``read``, which begins an event and holds no CR, and what
    is left of it (the start of the next event): the events ``take_events`` would find
    in it, by one ``split`` instead of a search per event and a copy through a buffer."""
    *events, rest = read.split(b"\n\n")
    if max_event_bytes is not None and events and max(map(len, events)) > max_event_bytes:
        raise ValueError("an upstream stream event exceeds the size limit")
    # Blank events (only whitespace) are dropped, as ``take_events`` drops them.
    return [event for event in events if event and not event.isspace()], rest


async def iter_event_batches(
    chunks: AsyncIterator[bytes], max_event_bytes: int
) -> AsyncIterator[list[bytes]]:
    """Yield, for each read from the upstream, the events it completed (without their
    separators), as soon as they are complete: the relay forwards them in one write."""
    buffer = bytearray()
    start = 0
    async for chunk in chunks:
        # A read that starts an event and has LF line endings (when reads end where
        # events end, as they nearly always do, that is every read): one split.
        if not buffer and b"\r" not in chunk:
            events, rest = split_read(chunk, max_event_bytes)
            if rest:
                buffer += rest
                start = rescan_from(buffer)
        else:
            buffer += chunk
            events, start = take_events(buffer, start, max_event_bytes)
        if events:
            yield events
        if len(buffer) > max_event_bytes:
            raise ValueError("an upstream stream event exceeds the size limit")
    if buffer.strip():
        yield [bytes(buffer)]
