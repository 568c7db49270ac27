"""An experiment beside the floor: bench/bare_proxy.py with aiohttp instead of httpx.

Same ASGI server, same pass-through, only the upstream HTTP client differs, so the gap
between the two shows what the client itself costs per request. It uses the project's own
aiohttp, the one the relay sends through (``relay/upstream.py``).
"""

from __future__ import annotations

import os

import aiohttp

from bench.bare_proxy import FORWARDED_REQUEST_HEADERS, Receive, Scope, Send, _respond

FORWARDED_RESPONSE_HEADERS = frozenset({"content-type", "content-length", "cache-control"})


class AiohttpBareProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.session: aiohttp.ClientSession | None = None

    def _session(self) -> aiohttp.ClientSession:
        if self.session is None:
            self.session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30),
                timeout=aiohttp.ClientTimeout(sock_connect=5, sock_read=60),
                auto_decompress=False,
            )
        return self.session

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    self._session()  # before the first request, as bench/bare_proxy.py
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    if self.session is not None:
                        await self.session.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        if path == "/healthz":
            await _respond(send, 200, b'{"status":"ok"}')
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {
            k.decode("latin-1"): v.decode("latin-1")
            for k, v in scope["headers"]
            if k in FORWARDED_REQUEST_HEADERS
        }
        try:
            response = await self._session().request(
                scope["method"], self.upstream + path[3:], data=bytes(body), headers=headers
            )
        except aiohttp.ClientError:
            await _respond(send, 502, b'{"error":"upstream unreachable"}')
            return
        async with response:
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status,
                    "headers": [
                        (name.lower().encode(), value.encode())
                        for name, value in response.headers.items()
                        if name.lower() in FORWARDED_RESPONSE_HEADERS
                    ],
                }
            )
            async for chunk in response.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})


app = AiohttpBareProxy(os.environ.get("BARE_UPSTREAM", "http://127.0.0.1:9100/v1"))
