"""One HTTP exchange with the simulator: reading the request, watching the client."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from relay.simulator.options import JSON_HEADERS
from relay.simulator.responses import error_envelope, new_id

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


TRICKLE_BYTES = 8


class SimulatedReset(Exception):
    """Raised inside the app so the ASGI server drops the connection mid-stream."""


def hide_simulated_resets(record: logging.LogRecord) -> bool:
    # uvicorn logs every exception escaping the app; a requested reset is not a fault and
    # would bury real errors in test and benchmark output.
    exc = record.exc_info[1] if record.exc_info else None
    return not isinstance(exc, SimulatedReset)


class SimExchange:
    """One request/response in progress, aware of the client going away."""

    __slots__ = (
        "_body",
        "_receive",
        "_send",
        "_waiter",
        "_watcher",
        "anthropic",
        "disconnected",
        "finished",
        "trickle",
    )

    def __init__(self, receive: Receive, send: Send) -> None:
        self._receive = receive
        self._send = send
        self._body: bytes | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self.disconnected = False
        self.finished = False
        # Seconds between TRICKLE_BYTES-sized pieces of every body sent; 0 sends at once.
        self.trickle = 0.0
        # Errors go out in Anthropic's envelope rather than OpenAI's (the Messages API).
        self.anthropic = False

    async def read_body(self) -> bytes:
        """The request's body; read once, so a handler that looked at it first (Azure's
        version check) leaves it for the one that answers."""
        if self._body is not None:
            return self._body
        chunks = []
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self.disconnected = True
                break
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        self._body = b"".join(chunks)
        return self._body

    def watch(self) -> None:
        """Start noticing a disconnect; only long answers pay for the watcher task."""
        if self._watcher is None and not self.disconnected and not self.finished:
            self._watcher = asyncio.get_running_loop().create_task(self._wait_for_disconnect())

    async def _wait_for_disconnect(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        # uvicorn also reports a disconnect once the response is complete; that is no loss.
        if not self.finished:
            self.disconnected = True
            if self._waiter is not None and not self._waiter.done():
                self._waiter.set_result(None)

    async def pause(self, seconds: float | None) -> bool:
        """Wait ``seconds`` (``None``: until the client leaves); False if the client left.

        A bare future plus a timer keeps a paused request at no CPU and no extra task.
        """
        if seconds is not None and seconds <= 0:
            return not self.disconnected
        self.watch()
        if self.disconnected:
            return False
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiter = waiter
        timer = None
        if seconds is not None:
            timer = loop.call_later(seconds, _resolve, waiter)
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()
        return not self.disconnected

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        await self._send({"type": "http.response.start", "status": status, "headers": headers})

    async def chunk(self, body: bytes) -> None:
        await self._write(body)
        if not self.trickle:
            await self._send({"type": "http.response.body", "body": body, "more_body": True})

    async def end(self, body: bytes = b"") -> None:
        await self._write(body)
        self.finished = True
        await self._send(
            {
                "type": "http.response.body",
                "body": b"" if self.trickle else body,
                "more_body": False,
            }
        )

    async def _write(self, body: bytes) -> None:
        """Trickle ``body`` out piece by piece (only when ``trickle`` is set)."""
        if not self.trickle:
            return
        for start in range(0, len(body), TRICKLE_BYTES):
            piece = body[start : start + TRICKLE_BYTES]
            await self._send({"type": "http.response.body", "body": piece, "more_body": True})
            if not await self.pause(self.trickle):
                return

    async def respond(
        self, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        head = list(headers or JSON_HEADERS)
        head.append((b"content-length", str(len(body)).encode()))
        head.append((b"x-request-id", new_id("req_").encode()))
        await self.start(status, head)
        await self.end(body)

    async def respond_json(self, status: int, payload: Any) -> None:
        await self.respond(status, orjson.dumps(payload))

    async def respond_error(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None
    ) -> None:
        headers = list(JSON_HEADERS)
        if status == 429:
            headers.append((b"retry-after", b"1"))
        if self.anthropic:
            envelope = anthropic_error(status, message)
        else:
            envelope = error_envelope(status, message, param=param, code=code)
        await self.respond(status, orjson.dumps(envelope), headers)

    def close(self) -> None:
        self.finished = True
        if self._watcher is not None:
            self._watcher.cancel()


def anthropic_error(status: int, message: str) -> dict[str, Any]:
    """Anthropic's error body; ``error.type`` follows the status as Anthropic's API does."""
    kind = {
        400: "invalid_request_error",
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        413: "request_too_large",
        429: "rate_limit_error",
        529: "overloaded_error",
    }.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
