"""One HTTP exchange on the relay: ASGI plumbing and key authentication.

The body is read by ``relay.intake``, under its caps, deadline and limits.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import time
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from portal.crypto import api_key_digest
from relay import errors
from relay.server import ON_LOST
from relay.snapshot import IPAddress, KeyInfo

if TYPE_CHECKING:
    from relay.app import RelayApp

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

JSON_HEADERS = ((b"content-type", b"application/json"),)
CLOSE_HEADERS = ((b"connection", b"close"),)
STREAM_HEADERS = (
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
)


class ClientGone(Exception):
    """The client disconnected before the request was read; nothing is to be answered."""


def _mask(secret: str) -> str:
    return f"{secret[:6]}***{secret[-4:]}" if len(secret) > 12 else "***"


def new_request_id() -> str:
    """A request id: 128 random bits, as hex (what uuid4().hex gave, without building a
    UUID: 2.1 -> 0.5 us). Leased admissions make theirs with it too (``relay.leases``)."""
    return "req_" + os.urandom(16).hex()


def new_request_ids(count: int) -> list[str]:
    """``count`` request ids as ``new_request_id`` makes them, from one read of the
    system's random source rather than one each (a lease's: ``relay.leases``)."""
    text = os.urandom(16 * count).hex()
    return ["req_" + text[at : at + 32] for at in range(0, 32 * count, 32)]


class Exchange:
    __slots__ = (
        "anthropic",
        "app",
        "body_read",
        "created_at",
        "disconnected",
        "extra_headers",
        "held_body",
        "held_head",
        "receive",
        "request_id",
        "response_finished",
        "response_started",
        "scope",
        "send",
        "started",
    )

    def __init__(self, app: RelayApp, scope: Scope, receive: Receive, send: Send) -> None:
        self.app = app
        self.scope = scope
        self.receive = receive
        self.send = send
        self.started = time.monotonic()
        self.created_at = datetime.now(UTC)
        self.request_id = new_request_id()
        self.response_started = False
        # The last byte of the response was handed to the server.
        self.response_finished = False
        self.disconnected = False
        # The whole request body was received (``relay.intake``).
        self.body_read = False
        # Sent with whatever response goes out (the rate-limit headers).
        self.extra_headers: list[tuple[bytes, bytes]] = []
        # Anthropic's Messages API: errors in its envelope, and the key may be x-api-key.
        self.anthropic = False
        # A stream's head, held to go with its first bytes (``start_stream``).
        self.held_head: dict[str, Any] | None = None
        # Body bytes held to go with the next ones or the end (``hold_body``).
        self.held_body = b""

    def elapsed_ms(self) -> int:
        return int((time.monotonic() - self.started) * 1000)

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.scope["headers"]:
            if key == name:
                return value
        return None

    async def authenticate(self) -> KeyInfo:
        raw = self.header(b"authorization")
        if self.anthropic and (api_key := self.header(b"x-api-key")):
            raw = b"Bearer " + api_key
        if not raw:
            raise errors.authentication(
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                code=None,
            )
        scheme, _, token = raw.decode("latin-1").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise errors.authentication(
                "The Authorization header must use Bearer auth: Authorization: Bearer YOUR_KEY.",
                code=None,
            )
        client = self.scope.get("client")
        key = await self.app.cache.key(api_key_digest(token), client[0] if client else None)
        if key is None:
            raise errors.authentication(f"Incorrect API key provided: {_mask(token)}.")
        if not key.active:
            raise errors.authentication("This API key has been revoked or its owner is inactive.")
        if key.expires_at is not None and key.expires_at <= time.time():
            raise errors.authentication("This API key has expired.", code="expired_api_key")
        if key.networks and not key.allows_address(self.client_address()):
            raise errors.RelayError(
                403,
                "This API key may not be used from your network address.",
                type="permission_error",
                code="ip_not_allowed",
            )
        return key

    def client_address(self) -> IPAddress | None:
        """The caller's address. Behind a load balancer, the ASGI server puts the client's
        address here from X-Forwarded-For when the balancer is trusted (uvicorn's
        ``--forwarded-allow-ips``)."""
        client = self.scope.get("client")
        try:
            return ipaddress.ip_address(client[0]) if client else None
        except ValueError:
            return None

    async def until_disconnect(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work``, cancelling it if the client goes away before it finishes.

        Cancelling closes the upstream request too, so an abandoned stream stops costing.
        The work runs in this task. Under the relay's own server, the connection's loss
        cancels it directly (``relay.server.ON_LOST``); under another, a watcher task
        waits for the ASGI disconnect.
        """
        task = asyncio.current_task()
        assert task is not None
        on_lost = self.scope.get(ON_LOST)
        if on_lost is not None:  # the relay's own server calls back (``relay.server``)

            def lost() -> None:
                if not self.response_finished:
                    self.disconnected = True
                    task.cancel()

            on_lost(lost)
            watcher = None
        else:
            watcher = asyncio.ensure_future(self._cancel_on_disconnect(task))
        try:
            await work
        except asyncio.CancelledError:
            if not self.disconnected:
                raise  # cancelled from outside (shutdown): not ours to swallow
            task.uncancel()
        finally:
            if watcher is not None:
                watcher.cancel()
            elif on_lost is not None:
                on_lost(None)

    async def _cancel_on_disconnect(self, task: asyncio.Task[Any]) -> None:
        while (await self.receive())["type"] != "http.disconnect":
            pass
        # The server also says "disconnect" once the whole response is out: the work
        # may still be tidying up (closing the upstream response) and is left to finish.
        if not self.response_finished:
            self.disconnected = True
            task.cancel()

    def _body_left(self) -> bool:
        """The client may still be sending a body nobody will read."""
        if self.body_read:
            return False
        length = self.header(b"content-length")
        return length not in (None, b"0") or self.header(b"transfer-encoding") is not None

    async def respond_json(
        self, status: int, body: bytes, headers: tuple[tuple[bytes, bytes], ...] = ()
    ) -> None:
        self.response_started = True
        # Answered before its body was read (refused by a limit or cap): close the
        # connection rather than receive the rest of the body only to discard it.
        close = CLOSE_HEADERS if self._body_left() else ()
        await self.send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    *JSON_HEADERS,
                    (b"content-length", str(len(body)).encode()),
                    *self._id_headers(),
                    *self.extra_headers,
                    *headers,
                    *close,
                ],
            }
        )
        self.response_finished = True
        await self.send({"type": "http.response.body", "body": body})

    def _id_headers(self) -> tuple[tuple[bytes, bytes], ...]:
        """The request id as OpenAI's clients read it, and on Anthropic's API as its SDKs
        do too (``request-id``: a message's ``_request_id``, an error's ``request_id``)."""
        request_id = self.request_id.encode()
        if self.anthropic:
            return ((b"x-request-id", request_id), (b"request-id", request_id))
        return ((b"x-request-id", request_id),)

    async def respond_error(self, error: errors.RelayError) -> None:
        if self.anthropic:  # Anthropic's error bodies name the request too
            body = error.anthropic_body(self.request_id)
            await self.respond_json(error.anthropic_status(), body, error.headers)
            return
        await self.respond_json(error.status, error.body(), error.headers)

    async def start_stream(self, *, hold: bool = False) -> None:
        """Start the streamed response. With ``hold`` its head waits for the first body
        bytes and goes out with them in one write (``relay.server``): for an upstream
        whose whole answer is already here, so that nothing waits on the network."""
        self.response_started = True
        head = {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                *STREAM_HEADERS,
                *self._id_headers(),
                *self.extra_headers,
            ],
        }
        if hold:
            self.held_head = head
        else:
            await self.send(head)

    def hold_body(self, data: bytes) -> None:
        """Keep ``data`` to go out with the next body bytes or with the end, in one
        message: the last events of an answer whose end is already here. Whatever ends
        the response (its end, an error event, a timeout's) sends them first."""
        self.held_body += data

    async def send_body(self, data: bytes) -> None:
        if self.held_head is not None:
            await self._send_held_head()
        if self.held_body:
            data, self.held_body = self.held_body + data, b""
        await self.send({"type": "http.response.body", "body": data, "more_body": True})

    async def _send_held_head(self) -> None:
        head, self.held_head = self.held_head, None
        assert head is not None
        await self.send(head)

    async def end_body(self, data: bytes = b"") -> None:
        """The response's last bytes (``data``, if any) and its end, in one message: one
        write rather than two."""
        if self.held_head is not None:
            await self._send_held_head()
        if self.held_body:
            data, self.held_body = self.held_body + data, b""
        self.response_finished = True
        await self.send({"type": "http.response.body", "body": data, "more_body": False})
