"""Anthropic's native Messages API: ``x-api-key`` and ``anthropic-version`` headers.

Talking to Anthropic natively keeps what its OpenAI-compatible layer drops: prompt-cache
writes, ``cache_control`` blocks and extended thinking. The format itself is translated by
``relay.translate.messages`` (shared with the ``/v1/messages`` surface); this module owns
the credentials, the URL, stream framing and Anthropic's errors.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import orjson

from relay.providers.base import (
    FailureKind,
    Identity,
    ProviderFailure,
    StreamFailed,
    UpstreamRequest,
    by_status,
    clip,
    clip_code,
    host,
    request_at_fault,
)
from relay.providers.streams import SseStream, StreamIncomplete
from relay.translate import canonical as c
from relay.translate import messages, messages_stream

DEFAULT_BASE_URL = "https://api.anthropic.com"
API_VERSION = "2023-06-01"


@dataclasses.dataclass(frozen=True, slots=True)
class AnthropicConfig:
    api_key: str
    base_url: str = DEFAULT_BASE_URL
    version: str = API_VERSION

    def messages_url(self) -> str:
        return self.base_url.rstrip("/") + "/v1/messages"

    def headers(self, *, stream: bool) -> dict[str, str]:
        return {
            "x-api-key": self.api_key,
            "anthropic-version": self.version,
            "content-type": "application/json",
            "accept": "text/event-stream" if stream else "application/json",
        }


class AnthropicStream(SseStream):
    """Messages stream events in, canonical events out."""

    def __init__(self, secrets: tuple[str, ...] = ()) -> None:
        super().__init__(secrets)
        self.decoder = messages_stream.Decoder()
        self.stopped = False

    def end(self) -> list[c.Event]:
        if not self.stopped:
            raise StreamIncomplete("the stream ended before message_stop")
        return []

    def prompt_usage(self) -> c.Usage | None:
        return self.decoder.prompt

    def event(self, payload: bytes) -> list[c.Event]:
        event = orjson.loads(payload)
        if not isinstance(event, dict):
            raise ValueError("malformed stream event")
        if event.get("type") == "error":
            error = event.get("error")
            kind = error.get("type") if isinstance(error, dict) else None
            # As the HTTP status it would have had: the request's 400, else an overload.
            status = 400 if request_at_fault(kind) else 529
            raise StreamFailed(failure_from(status, event, self.secrets))
        if event.get("type") == "message_stop":
            self.stopped = True
        return self.decoder.feed(event)


def failure_from(status: int, body: Any, secrets: tuple[str, ...]) -> ProviderFailure:
    error = body.get("error") if isinstance(body, Mapping) else None
    kind = error.get("type") if isinstance(error, Mapping) else None
    message = error.get("message") if isinstance(error, Mapping) else None
    text = clip(str(message or f"Anthropic answered HTTP {status}."), secrets)
    if kind == "overloaded_error":
        return ProviderFailure(
            FailureKind.RETRYABLE, 503, text, type="server_error", code="upstream_overloaded"
        )
    if kind in ("authentication_error", "permission_error"):
        return by_status(401, text)
    return by_status(status, text, code=clip_code(kind, secrets))


class AnthropicAdapter:
    provider_type = "anthropic"

    def __init__(self, config: AnthropicConfig) -> None:
        self.config = config

    async def build(
        self, request: c.Request, *, upstream_model: str, stream: bool
    ) -> UpstreamRequest:
        body = messages.request_from_canonical(dataclasses.replace(request, stream=stream))
        body["model"] = upstream_model
        return UpstreamRequest(
            "POST",
            self.config.messages_url(),
            self.config.headers(stream=stream),
            orjson.dumps(body),
        )

    def decode(self, body: bytes) -> c.Response:
        answer = orjson.loads(body)
        if not isinstance(answer, dict) or answer.get("type") != "message":
            raise ValueError("not a Messages answer")
        return messages.response_to_canonical(answer)

    def stream_decoder(self) -> AnthropicStream:
        return AnthropicStream((self.config.api_key,))

    def failure(self, status: int, headers: Mapping[str, str], body: bytes) -> ProviderFailure:
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            parsed = None
        return failure_from(status, parsed, (self.config.api_key,))

    def identity(self, upstream_model: str) -> Identity:
        return Identity(secrets=(self.config.api_key,), names=(host(self.config.base_url),))
