"""The web process's HTTP protocol: uvicorn's httptools protocol with read deadlines.

uvicorn times out only idle keep-alive connections (``--timeout-keep-alive``), for both
its h11 and httptools protocols: a client that opens a connection and sends its headers or
body slowly holds the connection, and its memory, for as long as it likes. This subclass
adds, for every connection:

- a header deadline (``RELAY_HEADER_TIMEOUT``): the request head must be complete within
  it of the connection being made, or of the first byte of the next request; else a 408;
- a head size cap (``MAX_HEAD_BYTES``): httptools sets none of its own; else a 431;
- a body deadline (``RELAY_BODY_TIMEOUT``, a little later than the relay's own, which
  answers a 408 in OpenAI's envelope): a body still arriving is cut off by closing the
  connection, for the dashboard's and API's requests too;
- malformed HTTP answered in OpenAI's error envelope rather than as plain text;
- a hook in each request's scope (``ON_LOST``) that calls the application back when the
  client goes away mid-request;
- a response's head held until its body's first bytes, within the event loop's turn
  (``_HeadWithBody``): an answer sent whole leaves in one write rather than two.

Serve with ``uvicorn config.asgi:application --http relay.server:HttpToolsProtocol``.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import orjson
from django.conf import settings
from uvicorn.protocols.http import httptools_impl

# Beyond the relay's own 431 (``relay.app.MAX_HEADER_BYTES``), which answers in full.
MAX_HEAD_BYTES = 64 * 1024
# After the relay's own body deadline, so that it answers first where it reads the body.
BODY_DEADLINE_MARGIN = 2.0

# A body's first bytes up to this size are joined to the response's head in one write
# (``_HeadWithBody``); a larger first piece is not copied for it.
JOIN_BODY_BYTES = 64 * 1024

_REASONS = {400: b"Bad Request", 408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


def error_response(status: int, message: str, code: str) -> bytes:
    """A complete HTTP/1.1 response carrying OpenAI's error envelope; closes the connection."""
    body = orjson.dumps(
        {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": None,
                "code": code,
            }
        }
    )
    return b"".join(
        (
            b"HTTP/1.1 %d %s\r\n" % (status, _REASONS[status]),
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
            body,
        )
    )


# In a request's scope: ``on_lost(callback)`` has ``callback()`` called as soon as the
# client's connection is lost before the response is complete (at once if it already
# was); ``on_lost(None)`` forgets it. ``relay.exchange`` cancels the request's work with
# it, where otherwise a task per request would wait for the ASGI ``http.disconnect``.
ON_LOST = "tollgate.on_lost"


def _on_lost(cycle: httptools_impl.RequestResponseCycle, callback: Any) -> None:
    if callback is not None and cycle.disconnected:
        callback()
        return
    cycle.tollgate_on_lost = callback  # type: ignore[attr-defined]


class HttpToolsProtocol(httptools_impl.HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timeout = float(settings.RELAY_HEADER_TIMEOUT)
        self._body_timeout = float(settings.RELAY_BODY_TIMEOUT) + BODY_DEADLINE_MARGIN
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._in_head = False  # a request head is being read
        self._in_body = False  # a request body is being read
        self._head_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._in_head = True
        # Armed now, for a connection that sends nothing at all.
        self._head_timer = self.loop.call_later(self._head_timeout, self._head_too_slow)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        cycle = self.cycle
        super().connection_lost(exc)
        lost = getattr(cycle, "tollgate_on_lost", None)
        if lost is not None and cycle is not None and cycle.disconnected:
            lost()

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if self.transport.is_closing():
            return
        if self._in_head and self._head_bytes > MAX_HEAD_BYTES:
            self._refuse(
                431,
                f"The request headers are larger than the {MAX_HEAD_BYTES} bytes this "
                "gateway accepts.",
                "request_headers_too_large",
            )
            return
        # Timers only for what did not arrive whole in this read: a request that comes in
        # one piece, nearly all of them, costs none.
        if self._in_head:
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(self._head_timeout, self._head_too_slow)
        elif self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        if self._in_body:
            if self._body_timer is None:
                self._body_timer = self.loop.call_later(self._body_timeout, self._body_too_slow)
        elif self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if not self._in_head:  # a later request on a kept-alive connection
            self._in_head = True
            self._head_bytes = 0

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._in_body = True
        super().on_headers_complete()
        # The application's task starts later: it finds this in its scope.
        cycle = self.cycle
        scope: dict[str, Any] = cycle.scope  # type: ignore[assignment]
        scope[ON_LOST] = functools.partial(_on_lost, cycle)
        cycle.transport = _HeadWithBody(self.transport, self.loop)  # type: ignore[assignment]

    def on_message_complete(self) -> None:
        self._in_body = False
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        self._refuse(400, f"{msg} The OpenAI API expects HTTP/1.1 requests.", "invalid_http")

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # A response is still going out (the next request was pipelined behind it):
            # it is not this request's fault, so look again later.
            self._head_timer = self.loop.call_later(self._head_timeout, self._head_too_slow)
            return
        self._refuse(
            408,
            f"The request headers did not arrive within {self._head_timeout:g} seconds.",
            "request_timeout",
        )

    def _body_too_slow(self) -> None:
        self._body_timer = None
        if not self.transport.is_closing():
            # The application may be answering this request: only cutting the connection
            # is safe here. Its receive() then reports a disconnect.
            self.transport.close()

    def _refuse(self, status: int, message: str, code: str) -> None:
        self._cancel_timers()
        cycle = self.cycle
        if cycle is not None and isinstance(cycle.transport, _HeadWithBody):
            cycle.transport.flush()  # a response's head held back goes out first
        self.transport.write(error_response(status, message, code))
        self.transport.close()

    def _cancel_timers(self) -> None:
        for timer in (self._head_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = None


class _HeadWithBody:
    """A request's view of its connection: the response's head (uvicorn writes it as soon
    as the application starts the response) is held until the body's first bytes, which
    go out with it in one write; if none come within the event loop's turn, the head goes
    alone at the end of it. An answer sent whole, as the relay sends every non-streamed
    one, so costs one system call rather than two (on the bench's 2-core VM a write that
    wakes the reader costs ~45 us; 4.05 writes a request -> 3.02, bench/README.md, issue 18,
    tenth round). A stream's head goes with its first events when they are already there.

    uvicorn's request cycle calls only ``write``, ``close`` and ``is_closing`` on it; the
    protocol's own writes (``HttpToolsProtocol._refuse``) flush it first."""

    __slots__ = ("_head", "_loop", "_state", "_transport")

    _NOTHING, _HELD, _THROUGH = 0, 1, 2

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._head = b""
        self._state = self._NOTHING

    def write(self, data: bytes) -> None:
        if self._state == self._THROUGH:
            self._transport.write(data)
        elif self._state == self._NOTHING:
            self._head = data
            self._state = self._HELD
            self._loop.call_soon(self.flush)
        else:
            head, self._head = self._head, b""
            self._state = self._THROUGH
            if self._transport.is_closing():
                return
            if len(data) <= JOIN_BODY_BYTES:
                self._transport.write(head + data)
            else:  # not worth copying a large body for: two writes, as before
                self._transport.write(head)
                self._transport.write(data)

    def flush(self) -> None:
        """Write the held head, if any; from now on writes go straight through."""
        if self._state == self._HELD:
            head, self._head = self._head, b""
            self._state = self._THROUGH
            if not self._transport.is_closing():
                self._transport.write(head)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()
