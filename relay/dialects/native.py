"""What a request needs to go to a channel through its provider adapter
(``relay.providers``): the canonical request, and how the canonical answer and stream
events become the client's own dialect again."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Protocol

import orjson

from relay import errors
from relay.translate import canonical, chat


class StreamEncoder(Protocol):
    def feed(self, event: canonical.Event) -> list[bytes]: ...

    def close(self) -> list[bytes]: ...


@dataclasses.dataclass(slots=True)
class NativeCodec:
    request: canonical.Request
    to_client: Callable[[canonical.Response], dict[str, Any]]
    encoder: Callable[[], StreamEncoder]
    stream_error: Callable[[errors.RelayError], bytes]


class ChatFrames:
    """Canonical events as chat completion chunks, framed as SSE and ending in [DONE]."""

    def __init__(self, model: str, include_usage: bool) -> None:
        self.encoder = chat.Encoder(model, include_usage)

    def feed(self, event: canonical.Event) -> list[bytes]:
        return [b"data: " + orjson.dumps(chunk) + b"\n\n" for chunk in self.encoder.feed(event)]

    def close(self) -> list[bytes]:
        return [b"data: [DONE]\n\n"]


def chat_codec(payload: dict[str, Any], public: str, include_usage: bool) -> NativeCodec:
    try:
        request = chat.request_to_canonical(payload)
    except canonical.TranslationError as exc:
        raise errors.invalid_request(str(exc), param=exc.param) from None
    return NativeCodec(
        request,
        chat.response_from_canonical,
        lambda: ChatFrames(public, include_usage),
        lambda error: b"data: " + error.body() + b"\n\n",
    )
