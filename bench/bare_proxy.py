"""The floor for the relay benchmark: a pass-through proxy that does nothing but forward.

A raw ASGI app served by the same server and flags as Tollgate, with the same pooled
``httpx.AsyncClient`` set-up per worker as ``relay.upstream`` (8 clients, requests spread
round-robin; ``BARE_CLIENTS=1`` for one). It reads the
request body, posts it unchanged to ``BARE_UPSTREAM`` + the path after ``/v1``, and sends
the response bytes back as they arrive: no auth, JSON parsing, limits or metering. Any
cost Tollgate adds above this is the gateway's own.

    BARE_UPSTREAM=http://127.0.0.1:9100/sim/tokens=20/v1 \\
        uvicorn bench.bare_proxy:app --loop uvloop --http httptools --no-access-log
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

# Request headers worth passing on; the rest (host, connection, ...) belong to this hop.
FORWARDED_REQUEST_HEADERS = frozenset({b"authorization", b"content-type", b"accept"})
FORWARDED_RESPONSE_HEADERS = frozenset({"content-type", "content-length", "cache-control"})


class BareProxy:
    """Requests are spread round-robin over ``shards`` clients (``BARE_CLIENTS``, 8, as
    the relay had before it moved to aiohttp's transport), so each httpcore pool holds
    fewer connections."""

    def __init__(self, upstream: str, shards: int = 1) -> None:
        self.upstream = upstream.rstrip("/")
        self.shards = max(shards, 1)
        self.clients: list[httpx.AsyncClient] = []
        self.turn = 0

    def _client(self) -> httpx.AsyncClient:
        if not self.clients:
            self.clients = [
                httpx.AsyncClient(
                    timeout=httpx.Timeout(connect=5.0, read=60.0, write=5.0, pool=5.0),
                    limits=httpx.Limits(max_connections=None, max_keepalive_connections=256),
                    follow_redirects=False,
                    trust_env=False,
                )
                for _ in range(self.shards)
            ]
        self.turn = (self.turn + 1) % self.shards
        return self.clients[self.turn]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        if path == "/healthz":
            await _respond(send, 200, b'{"status":"ok"}')
            return
        if not path.startswith("/v1/"):
            await _respond(send, 404, b'{"error":"not found"}')
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = [(k, v) for k, v in scope["headers"] if k in FORWARDED_REQUEST_HEADERS]
        client = self._client()
        request = client.build_request(
            scope["method"], self.upstream + path[3:], content=bytes(body), headers=headers
        )
        try:
            response = await client.send(request, stream=True)
        except httpx.HTTPError:
            await _respond(send, 502, b'{"error":"upstream unreachable"}')
            return
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status_code,
                    "headers": [
                        (name.encode(), value.encode())
                        for name, value in response.headers.items()
                        if name in FORWARDED_RESPONSE_HEADERS
                    ],
                }
            )
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await response.aclose()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                # Made before the first request, not by it: building the clients (their
                # TLS contexts) costs ~1 s of a loaded machine's CPU, which a worker that
                # the warm-up happened not to reach paid inside a measured run.
                self._client()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                for client in self.clients:
                    await client.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return


async def _respond(send: Send, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


app = BareProxy(
    os.environ.get("BARE_UPSTREAM", "http://127.0.0.1:9100/v1"),
    shards=int(os.environ.get("BARE_CLIENTS", "8")),
)
