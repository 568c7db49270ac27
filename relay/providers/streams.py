"""Splitting a provider's server-sent events as their bytes arrive, without async."""

from __future__ import annotations

from relay import sse


class SseSplitter:
    """Feed bytes, get back the complete events as ``(event name, data)`` pairs."""

    __slots__ = ("buffer", "limit")

    def __init__(self, limit: int = 16 * 1024 * 1024) -> None:
        self.buffer = bytearray()
        self.limit = limit

    def feed(self, data: bytes) -> list[tuple[str, bytes]]:
        self.buffer += data
        events = []
        while True:
            index, width = sse._split_point(self.buffer)
            if index == -1:
                break
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
    data = sse.event_data(raw)
    if data is None:
        return None  # a comment: keeps the connection alive, carries nothing
    name = ""
    for line in raw.splitlines():
        if line.startswith(b"event:"):
            name = line[6:].strip().decode("utf-8", "replace")
    return name, data
