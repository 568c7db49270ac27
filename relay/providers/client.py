"""Sending one canonical request through an adapter, plain or streamed.

This is the seam between the relay core and the adapters: the core hands over a canonical
request and gets back a canonical answer, canonical stream events, or a ``ProviderError``
that says whether to fail over, suspend the channel, or answer the client.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx

from relay.providers.base import (
    Adapter,
    AnswerRefusesRequest,
    FailureKind,
    ProviderFailure,
)
from relay.providers.bedrock import UnsupportedContent
from relay.providers.vertex import credentials_failure
from relay.providers.vertex_auth import TokenFetchFailed
from relay.translate import canonical as c

MAX_ERROR_BODY_BYTES = 64 * 1024
MAX_RESPONSE_BYTES = 64 * 1024 * 1024


class ProviderError(Exception):
    """A provider call that failed, with the failure classified."""

    def __init__(self, failure: ProviderFailure) -> None:
        super().__init__(failure.message)
        self.failure = failure


def _transport(exc: httpx.HTTPError) -> ProviderError:
    timeout = isinstance(exc, httpx.TimeoutException)
    return ProviderError(
        ProviderFailure(
            FailureKind.RETRYABLE,
            504 if timeout else 502,
            "timeout" if timeout else "unreachable",
            type="server_error",
            code="upstream_error",
        )
    )


async def _read(response: httpx.Response, limit: int) -> bytes:
    body = bytearray()
    async for piece in response.aiter_bytes():
        body += piece
        if len(body) > limit:
            break
    return bytes(body[:limit])


async def _open(
    adapter: Adapter,
    http: httpx.AsyncClient,
    request: c.Request,
    upstream_model: str,
    stream: bool,
    timeout: httpx.Timeout | None,
) -> httpx.Response:
    try:
        built = await adapter.build(request, upstream_model=upstream_model, stream=stream)
    except TokenFetchFailed as exc:
        raise ProviderError(credentials_failure(exc)) from None
    except (UnsupportedContent, c.TranslationError) as exc:
        raise ProviderError(ProviderFailure(FailureKind.CLIENT, 400, str(exc))) from None
    try:
        response = await http.send(built.to_httpx(timeout), stream=True)
    except httpx.HTTPError as exc:
        raise _transport(exc) from None
    if response.status_code >= 400:
        try:
            body = await _read(response, MAX_ERROR_BODY_BYTES)
        except httpx.HTTPError:
            body = b""
        finally:
            await response.aclose()
        raise ProviderError(adapter.failure(response.status_code, response.headers, body))
    return response


async def complete(
    adapter: Adapter,
    http: httpx.AsyncClient,
    request: c.Request,
    *,
    upstream_model: str,
    timeout: httpx.Timeout | None = None,
) -> c.Response:
    """The canonical answer to a plain (not streamed) request."""
    response = await _open(adapter, http, request, upstream_model, False, timeout)
    try:
        body = await _read(response, MAX_RESPONSE_BYTES)
    except httpx.HTTPError as exc:
        raise _transport(exc) from None
    finally:
        await response.aclose()
    try:
        return adapter.decode(body)
    except AnswerRefusesRequest as exc:  # the request's fault (a blocked prompt), as worded
        raise ProviderError(exc.failure) from None
    except (ValueError, TypeError, AttributeError):
        raise ProviderError(
            ProviderFailure(
                FailureKind.RETRYABLE,
                502,
                "The upstream sent an invalid response.",
                type="server_error",
                code="upstream_error",
            )
        ) from None


async def stream(
    adapter: Adapter,
    http: httpx.AsyncClient,
    request: c.Request,
    *,
    upstream_model: str,
    timeout: httpx.Timeout | None = None,
) -> AsyncIterator[list[c.Event]]:
    """Canonical events, one list per upstream read, as they arrive.

    Failures before the stream opens raise ``ProviderError`` (fail over); a failure once
    it has begun raises ``StreamFailed`` or ``ValueError`` (end the stream).
    """
    response = await _open(adapter, http, request, upstream_model, True, timeout)
    decoder = adapter.stream_decoder()
    try:
        async for data in response.aiter_bytes():
            events = decoder.feed(data)
            if events:
                yield events
        tail = decoder.finish()
        if tail:
            yield tail
    finally:
        await response.aclose()
