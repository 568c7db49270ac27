"""OpenAI-compatible channels (and Azure OpenAI, which answers in the same format).

The format is translated by ``relay.translate.chat``; this module owns the credentials,
stream framing (SSE ending in ``[DONE]``) and the error envelope's classification.
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
from relay.translate import chat

# Azure's codes for a channel that is set up wrong, which another channel may not be.
CHANNEL_ERRORS = frozenset({"DeploymentNotFound", "OperationNotSupported"})


def request_body(request: c.Request, *, upstream_model: str, stream: bool) -> bytes:
    body = chat.request_from_canonical(dataclasses.replace(request, stream=stream))
    body["model"] = upstream_model
    return orjson.dumps(body)


def decode(body: bytes) -> c.Response:
    answer = orjson.loads(body)
    if not isinstance(answer, dict) or "choices" not in answer:
        raise ValueError("not a chat completion")
    return chat.response_to_canonical(answer)


class OpenAIStream(SseStream):
    """Chat completion chunks in, canonical events out."""

    def __init__(self, secrets: tuple[str, ...] = ()) -> None:
        super().__init__(secrets)
        self.decoder = chat.Decoder()
        self.done = False
        self.finished = False  # the answer's finish_reason came

    def end(self) -> list[c.Event]:
        # Whole without [DONE] once its finish_reason came: servers such as llama.cpp's
        # and TGI's sent no [DONE] for a long time (``relay.dialects.base``, pass-through).
        if not self.done and not self.finished:
            raise StreamIncomplete("the stream ended without [DONE]")
        return []

    def event(self, payload: bytes) -> list[c.Event]:
        if payload.strip() == b"[DONE]":
            self.done = True
            return []
        chunk = orjson.loads(payload)
        if not isinstance(chunk, dict):
            raise ValueError("malformed stream chunk")
        if "error" in chunk:
            error = chunk["error"]
            named = (error.get("type"), error.get("code")) if isinstance(error, dict) else ()
            status = 400 if request_at_fault(*named) else 502
            raise StreamFailed(failure_from(status, chunk, self.secrets))
        if not chunk.get("choices") and not chunk.get("usage"):
            return []  # Azure's prompt_filter_results preamble carries nothing for us
        events = self.decoder.feed(chunk)
        if not self.finished:
            self.finished = any(isinstance(event, c.StreamFinish) for event in events)
        return events


def failure_from(status: int, body: Any, secrets: tuple[str, ...]) -> ProviderFailure:
    error = body.get("error") if isinstance(body, Mapping) else None
    message = error.get("message") if isinstance(error, Mapping) else None
    code = error.get("code") if isinstance(error, Mapping) else None
    text = clip(str(message or f"The provider answered HTTP {status}."), secrets)
    if code in CHANNEL_ERRORS:
        return ProviderFailure(
            FailureKind.RETRYABLE, 502, text, type="server_error", code="upstream_error"
        )
    return by_status(status, text, code=clip_code(code, secrets))


def parse_failure(status: int, body: bytes, secrets: tuple[str, ...]) -> ProviderFailure:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = None
    return failure_from(status, parsed, secrets)


@dataclasses.dataclass(frozen=True, slots=True)
class OpenAIConfig:
    api_key: str
    base_url: str  # up to and including /v1


class OpenAIAdapter:
    provider_type = "openai"

    def __init__(self, config: OpenAIConfig) -> None:
        self.config = config

    async def build(
        self, request: c.Request, *, upstream_model: str, stream: bool
    ) -> UpstreamRequest:
        headers = {
            "authorization": f"Bearer {self.config.api_key}",
            "content-type": "application/json",
            "accept": "text/event-stream" if stream else "application/json",
        }
        url = self.config.base_url.rstrip("/") + "/chat/completions"
        content = request_body(request, upstream_model=upstream_model, stream=stream)
        return UpstreamRequest("POST", url, headers, content)

    def decode(self, body: bytes) -> c.Response:
        return decode(body)

    def stream_decoder(self) -> OpenAIStream:
        return OpenAIStream((self.config.api_key,))

    def failure(self, status: int, headers: Mapping[str, str], body: bytes) -> ProviderFailure:
        return parse_failure(status, body, (self.config.api_key,))

    def identity(self, upstream_model: str) -> Identity:
        return Identity(secrets=(self.config.api_key,), names=(host(self.config.base_url),))
