"""The shared, pooled HTTP client the relay forwards with (one per process and loop)."""

from __future__ import annotations

import asyncio

import httpx
from django.conf import settings

_clients: dict[int, httpx.AsyncClient] = {}


def client() -> httpx.AsyncClient:
    """The client of the running event loop; created on first use.

    One client per loop: a pool's connections belong to the loop that opened them, and
    tests run more than one server (each on its own loop) in one process.
    """
    loop_id = id(asyncio.get_running_loop())
    existing = _clients.get(loop_id)
    if existing is not None and not existing.is_closed:
        return existing
    created = httpx.AsyncClient(
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
    _clients[loop_id] = created
    return created


async def close_client() -> None:
    loop_id = id(asyncio.get_running_loop())
    existing = _clients.pop(loop_id, None)
    if existing is not None:
        await existing.aclose()
