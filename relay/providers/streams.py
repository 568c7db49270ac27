"""Provider stream decoding: bytes in as they arrive, canonical events out, without async.

``ProviderStream`` is the one shape every adapter's decoder has (``feed`` bytes, ``finish``
at the end of the body); a provider supplies how its framing splits into messages and
what each message means. ``SseStream`` is that shape over server-sent events.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from relay import sse
from relay.translate import canonical as c


class StreamIncomplete(ValueError):
    """The provider's stream ended, cleanly, before the event that says its answer is
    complete: a truncated answer, not a whole one. A ValueError, so a caller that knows
    nothing of it still takes the stream for broken."""


class ProviderStream:
    """Feed the body's bytes as they arrive; ``finish`` once it ended. Subclasses give
    ``split`` (bytes to whole messages), ``event`` (one message to canonical events) and
    ``end`` (the closing events, or ``StreamIncomplete`` when the stream stopped short)."""

    def __init__(self, secrets: tuple[str, ...] = ()) -> None:
        self.secrets = secrets
        # What ended the stream inside a read, raised once that read's events are out.
        self._failed: Exception | None = None

    def feed(self, data: bytes) -> list[c.Event]:
        return self._decode(self.split(data))

    def finish(self) -> list[c.Event]:
        return self._decode(self.rest()) + self.end()

    def _decode(self, messages: Iterable[Any]) -> list[c.Event]:
        """The messages' events. A message that fails (the provider's error, or one that
        cannot be read) after others of the same read: their events are returned, so that
        what the client was to see before the failure reaches it, and the failure is
        raised by the next call."""
        if self._failed is not None:
            raise self._failed
        events: list[c.Event] = []
        for message in messages:
            try:
                events += self.event(message)
            except Exception as exc:
                if not events:
                    raise
                self._failed = exc
                break
        return events

    def split(self, data: bytes) -> Iterable[Any]:
        raise NotImplementedError

    def rest(self) -> Iterable[Any]:
        """Whatever the framing still holds when the body ends."""
        return ()

    def event(self, message: Any) -> list[c.Event]:
        raise NotImplementedError

    def end(self) -> list[c.Event]:
        return []

    def prompt_usage(self) -> c.Usage | None:
        """The provider's counts of the prompt, when it sends them before the stream's
        usage (Anthropic, in ``message_start``): a stream cut before its usage is billed
        for them (``UsageRecord.prompt_usage``). None for a provider that sends none."""
        return None


class SseStream(ProviderStream):
    """A provider stream of server-sent events; ``event`` gets each event's data."""

    def __init__(self, secrets: tuple[str, ...] = ()) -> None:
        super().__init__(secrets)
        self.splitter = SseSplitter()

    def split(self, data: bytes) -> Iterable[bytes]:
        return [payload for _, payload in self.splitter.feed(data)]

    def rest(self) -> Iterable[bytes]:
        return [payload for _, payload in self.splitter.finish()]


class SseSplitter:
    """Feed bytes, get back the complete events as ``(event name, data)`` pairs."""

    __slots__ = ("buffer", "limit", "start")

    def __init__(self, limit: int = 16 * 1024 * 1024) -> None:
        self.buffer = bytearray()
        self.limit = limit
        self.start = 0  # the buffer holds no separator before this

    def feed(self, data: bytes) -> list[tuple[str, bytes]]:
        if not self.buffer and data.find(b"\r") == -1:
            # A read that starts an event, with LF line endings: nearly every read.
            raws, rest = sse.split_read(data, self.limit)
            self.buffer += rest
            self.start = sse.rescan_from(self.buffer)
            if len(self.buffer) > self.limit:
                raise ValueError("a provider's stream event exceeds the size limit")
            return [event for raw in raws if (event := _parse(raw)) is not None]
        self.buffer += data
        events = []
        while True:
            index, width = sse._split_point(self.buffer, self.start)
            if index == -1:
                self.start = sse.rescan_from(self.buffer)
                break
            self.start = 0
            if index > self.limit:  # whole in one read, but no smaller for it
                raise ValueError("a provider's stream event exceeds the size limit")
            raw = bytes(self.buffer[:index])
            del self.buffer[: index + width]
            event = _parse(raw)
            if event is not None:
                events.append(event)
        if len(self.buffer) > self.limit:
            raise ValueError("a provider's stream event exceeds the size limit")
        return events

    def finish(self) -> list[tuple[str, bytes]]:
        raw, self.buffer = bytes(self.buffer), bytearray()
        event = _parse(raw) if raw.strip() else None
        return [event] if event is not None else []


def _parse(raw: bytes) -> tuple[str, bytes] | None:
    # One "event:" line and one "data:" line, LF-separated: how providers name events.
    if raw.startswith(b"event:") and raw.find(b"\r") == -1:
        end = raw.find(b"\n")
        if end != -1 and raw.startswith(b"data: ", end + 1) and raw.find(b"\n", end + 1) == -1:
            return raw[6:end].strip().decode("utf-8", "replace"), raw[end + 7 :]
    data = sse.event_data(raw)
    if data is None:
        return None  # a comment: keeps the connection alive, carries nothing
    name = ""
    for line in raw.splitlines():
        if line.startswith(b"event:"):
            name = line[6:].strip().decode("utf-8", "replace")
    return name, data
