"""The shared, pooled HTTP clients the relay forwards with (a few per process and loop)."""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import certifi
import httpx
from django.conf import settings

# httpcore's pool walks every connection it holds whenever a request is queued or a
# response closes: a readability check (a system call) on each idle connection and, for
# each, a count of all the idle ones, so its cost per request grows with the square of
# the open connections. Requests spread round-robin over a few clients keep every pool
# small: at 64 concurrent requests this took the bare proxy from ~2.2 to ~1.1 ms of CPU
# per request (bench/README.md).
POOL_SHARDS = 8
USER_AGENT = "Tollgate"


class _Shards:
    __slots__ = ("clients", "turn")

    def __init__(self, clients: list[httpx.AsyncClient]) -> None:
        self.clients = clients
        self.turn = 0


_clients: dict[int, _Shards] = {}


def client() -> httpx.AsyncClient:
    """A client of the running event loop (the next in turn); created on first use.

    Clients per loop: a pool's connections belong to the loop that opened them, and
    tests run more than one server (each on its own loop) in one process.
    """
    loop_id = id(asyncio.get_running_loop())
    shards = _clients.get(loop_id)
    if shards is None or shards.clients[0].is_closed:
        # One TLS context for all of them: loading the CA bundle is slow and sizeable.
        tls = ssl.create_default_context(cafile=certifi.where())
        shards = _clients[loop_id] = _Shards([_new_client(tls) for _ in range(POOL_SHARDS)])
    shards.turn = (shards.turn + 1) % POOL_SHARDS
    return shards.clients[shards.turn]


def _new_client(tls: ssl.SSLContext) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        verify=tls,
        timeout=httpx.Timeout(
            connect=settings.RELAY_CONNECT_TIMEOUT,
            read=settings.RELAY_FIRST_BYTE_TIMEOUT,
            write=settings.RELAY_CONNECT_TIMEOUT,
            pool=settings.RELAY_CONNECT_TIMEOUT,
        ),
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=256),
        follow_redirects=False,
        trust_env=False,
    )


def headers(secret: str, accept: str) -> httpx.Headers:
    """What the relay sends a channel with every request, but for its length."""
    return httpx.Headers(
        {
            "accept": accept,
            "accept-encoding": "gzip, deflate",
            "authorization": f"Bearer {secret}",
            "connection": "keep-alive",
            "content-type": "application/json",
            "user-agent": USER_AGENT,
        }
    )


def request(
    http: httpx.AsyncClient,
    target: httpx.URL,
    headers: httpx.Headers,
    content: bytes,
    timeout: httpx.Timeout | None,
) -> httpx.Request:
    """A POST to a channel, built directly: ``AsyncClient.build_request`` parses the URL
    and merges the client's defaults, headers and cookies on every call, ~4x the cost
    (bench/README.md); a route's URL and headers are made once per snapshot instead."""
    extensions: dict[str, Any] = {"timeout": (timeout or http.timeout).as_dict()}
    return httpx.Request("POST", target, headers=headers, content=content, extensions=extensions)


async def close_client() -> None:
    loop_id = id(asyncio.get_running_loop())
    shards = _clients.pop(loop_id, None)
    if shards is not None:
        for created in shards.clients:
            await created.aclose()
