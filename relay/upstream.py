"""The shared, pooled HTTP client the relay forwards with: aiohttp, one session per loop.

The hot path uses aiohttp's request and response directly. httpx's own stack (httpcore,
h11, anyio) cost ~0.7 ms of CPU per request in the bare proxy, aiohttp's ~0.15 ms
(bench/README.md); httpx's API over aiohttp (httpx-aiohttp) still cost ~0.24 ms a request
in its own objects. What httpx did for the relay is done here instead: its timeouts per
phase, its error classes (so usage events keep naming failures the same way), and the
decoding of compressed answers. httpx stays where speed does not matter (discovery,
health checks, webhooks): docs/architecture.md, "HTTP clients".
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Mapping

import aiohttp
import certifi
from django.conf import settings
from yarl import URL as URL  # the parsed URLs routes keep (``Route.target``)

USER_AGENT = "Tollgate"
# Idle upstream connections are kept this long for the next request.
KEEPALIVE_SECONDS = 30.0

# What a request sends a channel: lower-case names, built once per route and snapshot.
Headers = dict[str, str]
Response = aiohttp.ClientResponse
ClientError = aiohttp.ClientError


class UpstreamError(Exception):
    """The exchange with a channel failed below HTTP. The class names are what a usage
    event's attempt records (``ConnectError``...), as they were under httpx."""


class TimeoutException(UpstreamError):
    """No connection, or no byte of the answer, within its phase's timeout."""


class ConnectError(UpstreamError):
    """Nothing answered at the channel's address: refused, unknown host, TLS refused."""


class RemoteProtocolError(UpstreamError):
    """Connected, but the channel hung up or did not speak HTTP."""


class ReadError(UpstreamError):
    """The answer broke while its body was read (cut short, or undecodable)."""


def timeouts(connect: float, first_byte: float) -> aiohttp.ClientTimeout:
    """aiohttp's timeouts for the relay's phases. ``first_byte`` bounds every wait for the
    upstream's next bytes, the first included; the whole exchange is bounded by the caller
    (``asyncio.timeout`` of the total timeout), so aiohttp's own total is off."""
    return aiohttp.ClientTimeout(
        total=None, connect=connect, sock_connect=connect, sock_read=first_byte
    )


class _Loop:
    """The session of one event loop, and the default timeouts of its time."""

    __slots__ = ("default_timeout", "session")

    def __init__(self, session: aiohttp.ClientSession, default: aiohttp.ClientTimeout) -> None:
        self.session = session
        self.default_timeout = default


_loops: dict[int, _Loop] = {}


def _current() -> _Loop:
    loop_id = id(asyncio.get_running_loop())
    found = _loops.get(loop_id)
    if found is None or found.session.closed:
        # Loading the CA bundle is slow and sizeable: once per loop.
        tls = ssl.create_default_context(cafile=certifi.where())
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ssl=tls, keepalive_timeout=KEEPALIVE_SECONDS),
            # Compressed answers (gzip, deflate: what ``headers`` accepts) are decoded as
            # they are read, as httpx decoded them: the relay parses and forwards plain bytes.
            auto_decompress=True,
            trust_env=False,
            # No cookies kept: one session serves every tenant and channel, and a cookie a
            # channel sets must not ride along on the next request (another tenant's, or to
            # another channel on that host). It also spares the jar's work on each request.
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=timeouts(settings.RELAY_CONNECT_TIMEOUT, settings.RELAY_FIRST_BYTE_TIMEOUT),
        )
        found = _loops[loop_id] = _Loop(session, session.timeout)
    return found


def default_timeout() -> aiohttp.ClientTimeout:
    """The timeouts of a request whose route sets none: the settings' when the loop's
    session was made."""
    return _current().default_timeout


async def send(
    method: str,
    url: URL,
    headers: Mapping[str, str],
    content: bytes | None,
    timeout: aiohttp.ClientTimeout | None,
) -> aiohttp.ClientResponse:
    """Send a request and return the response with its body unread; the caller releases
    it (``release``) when done. aiohttp's failures are raised as ``UpstreamError``.

    A parsed URL and a route's ready headers skip aiohttp's parsing of them per request;
    redirects are never followed (a channel that redirects is answered as it is).
    """
    loop = _current()
    try:
        return await loop.session.request(
            method,
            url,
            headers=headers,
            data=content or None,
            timeout=timeout or loop.default_timeout,
            allow_redirects=False,
        )
    except aiohttp.ClientError as exc:
        raise error_of(exc) from exc
    except TimeoutError as exc:  # aiohttp raises its own timeouts, but be sure
        raise TimeoutException(str(exc)) from exc


def error_of(exc: aiohttp.ClientError) -> UpstreamError:
    """The relay's class of an aiohttp failure. Timeouts are told apart from refused
    connections (502, not 504) and from a channel that hung up."""
    message = str(exc) or type(exc).__name__
    if isinstance(exc, aiohttp.ServerTimeoutError):  # connecting, or waiting for bytes
        return TimeoutException(message)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return ConnectError(message)
    if isinstance(exc, aiohttp.ClientPayloadError):
        return ReadError(message)
    return RemoteProtocolError(message)


# The most a stream hands on at once. The stream parsers check their event size limit
# between pieces, so a piece must stay small next to that limit: aiohttp's ``readany``
# returns everything buffered, which on a fast link holds a whole oversized event.
STREAM_PIECE_BYTES = 64 * 1024


async def iter_chunks(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """The answer's body as it arrives (decoded), in pieces of at most
    ``STREAM_PIECE_BYTES``; a failure while reading is raised as ``UpstreamError``."""
    content = response.content
    try:
        while chunk := await content.read(STREAM_PIECE_BYTES):
            yield chunk
    except aiohttp.ClientError as exc:
        raise error_of(exc) from exc


def headers(secret: str, accept: str) -> Headers:
    """What the relay sends a channel with every request, but for its length and host."""
    return {
        "accept": accept,
        "accept-encoding": "gzip, deflate",
        "authorization": f"Bearer {secret}",
        "connection": "keep-alive",
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }


def url(text: str, *, encoded: bool = False) -> URL:
    """A channel's URL, parsed once (per route and snapshot, or per built request)."""
    return URL(text, encoded=encoded)


async def close_client() -> None:
    loop_id = id(asyncio.get_running_loop())
    found = _loops.pop(loop_id, None)
    if found is not None:
        await found.session.close()
