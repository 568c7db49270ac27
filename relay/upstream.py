"""The shared, pooled HTTP client the relay forwards with (one per process and loop).

The relay speaks httpx's API (requests, timeouts, streamed responses, its exception
types) everywhere, but the bytes move through aiohttp, by httpx-aiohttp's transport:
httpx's own stack (httpcore, h11, anyio) cost ~0.7 ms of CPU per request in the bare
proxy, aiohttp's ~0.15 ms (bench/README.md). aiohttp's connector pools connections
without httpcore's per-request walk over every idle connection, so one client per loop
suffices where httpcore needed eight.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import aiohttp
import certifi
import httpx
from django.conf import settings
from httpx_aiohttp import AiohttpTransport

USER_AGENT = "Tollgate"
# Idle upstream connections are kept this long for the next request.
KEEPALIVE_SECONDS = 30.0


class _Loop:
    """The client of one event loop, and the transport under it."""

    __slots__ = ("client", "transport")

    def __init__(self, client: httpx.AsyncClient, transport: _Transport) -> None:
        self.client = client
        self.transport = transport


_loops: dict[int, _Loop] = {}


def _current() -> _Loop:
    loop_id = id(asyncio.get_running_loop())
    found = _loops.get(loop_id)
    if found is None or found.client.is_closed:
        # Loading the CA bundle is slow and sizeable: once per loop.
        tls = ssl.create_default_context(cafile=certifi.where())
        transport = _Transport(verify=tls, trust_env=False, client=lambda: _session(tls))
        found = _loops[loop_id] = _Loop(_new_client(transport), transport)
    return found


def client() -> httpx.AsyncClient:
    """The client of the running event loop, created on first use.

    One per loop: a pool's connections belong to the loop that opened them, and tests
    run more than one server (each on its own loop) in one process.
    """
    return _current().client


def default_timeout() -> httpx.Timeout:
    """The timeouts of a request whose route sets none: the settings' when the loop's
    client was made."""
    return _current().client.timeout


async def send(request: httpx.Request) -> httpx.Response:
    """Send ``request`` (its timeouts in its extensions) and return the response unread.

    What ``client().send(request, stream=True)`` does, minus the client's steps the relay
    never uses (auth, cookies, redirects, event hooks), which cost ~0.1 ms a request.
    """
    return await _current().transport.handle_async_request(request)


class _Transport(AiohttpTransport):
    """httpx-aiohttp's transport, with refused and dropped connections told apart from
    timeouts.

    The library maps every ``aiohttp.ClientConnectionError`` to ``httpx.ConnectTimeout``,
    so a refused connection or a server that hangs up before answering would reach the
    relay as a timeout (504) instead of an unreachable upstream (502). Only aiohttp's own
    timeouts stay timeouts here.
    """

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return await super().handle_async_request(request)
        except httpx.ConnectTimeout as exc:
            cause = exc.__cause__
            if cause is None or isinstance(cause, (TimeoutError, aiohttp.ServerTimeoutError)):
                raise
            if isinstance(cause, aiohttp.ClientConnectorError):
                raise httpx.ConnectError(str(cause), request=request) from cause
            raise httpx.RemoteProtocolError(str(cause), request=request) from cause


def _session(tls: ssl.SSLContext) -> aiohttp.ClientSession:
    # Made on the first request, inside the loop that will use it.
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, ssl=tls, keepalive_timeout=KEEPALIVE_SECONDS),
        auto_decompress=False,  # httpx decodes, as it would with its own transport
        trust_env=False,
    )


def _new_client(transport: _Transport) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=transport,
        timeout=httpx.Timeout(
            connect=settings.RELAY_CONNECT_TIMEOUT,
            read=settings.RELAY_FIRST_BYTE_TIMEOUT,
            write=settings.RELAY_CONNECT_TIMEOUT,
            pool=settings.RELAY_CONNECT_TIMEOUT,
        ),
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
    target: httpx.URL,
    headers: httpx.Headers,
    content: bytes,
    timeout: httpx.Timeout | None,
) -> httpx.Request:
    """A POST to a channel, built directly: ``AsyncClient.build_request`` parses the URL
    and merges the client's defaults, headers and cookies on every call, ~4x the cost
    (bench/README.md); a route's URL and headers are made once per snapshot instead."""
    extensions: dict[str, Any] = {"timeout": (timeout or default_timeout()).as_dict()}
    return httpx.Request("POST", target, headers=headers, content=content, extensions=extensions)


async def close_client() -> None:
    loop_id = id(asyncio.get_running_loop())
    found = _loops.pop(loop_id, None)
    if found is not None:
        await found.client.aclose()
