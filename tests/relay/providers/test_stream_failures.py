"""An error inside a provider's stream is classified as its HTTP answer would have been:
the request's fault (too long, invalid) is the client's error, which must not count
against the channel; anything else (overload, a server error) is the channel's."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from relay.providers import anthropic, bedrock, google, openai
from relay.providers.base import FailureKind, StreamFailed
from relay.providers.streams import ProviderStream
from relay.simulator.native.bedrock import exception


def _failure(stream: ProviderStream, data: bytes) -> Any:
    with pytest.raises(StreamFailed) as failed:
        stream.feed(data)
        stream.finish()
    return failed.value.failure


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        ({"type": "invalid_request_error", "message": "Too long"}, FailureKind.CLIENT),
        ({"type": "overloaded_error", "message": "Busy"}, FailureKind.RETRYABLE),
        ({"type": "api_error", "message": "Oops"}, FailureKind.RETRYABLE),
    ],
)
def test_anthropic(error: dict[str, str], kind: FailureKind) -> None:
    failure = _failure(anthropic.AnthropicStream(), _sse({"type": "error", "error": error}))
    assert failure.kind is kind


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (
            {"type": "invalid_request_error", "code": "context_length_exceeded", "message": "x"},
            FailureKind.CLIENT,
        ),
        ({"type": "server_error", "code": None, "message": "x"}, FailureKind.RETRYABLE),
        # A refused key wears the request's type; the channel is at fault all the same.
        (
            {"type": "invalid_request_error", "code": "invalid_api_key", "message": "x"},
            FailureKind.RETRYABLE,
        ),
        ("a bare string", FailureKind.RETRYABLE),
    ],
)
def test_openai(error: Any, kind: FailureKind) -> None:
    failure = _failure(openai.OpenAIStream(), _sse({"error": error}))
    assert failure.kind is kind


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("validationException", FailureKind.CLIENT),
        ("modelStreamErrorException", FailureKind.RETRYABLE),
        ("throttlingException", FailureKind.RETRYABLE),
        ("internalServerException", FailureKind.RETRYABLE),
    ],
)
def test_bedrock(name: str, kind: FailureKind) -> None:
    failure = _failure(bedrock.BedrockStream(), exception(name, "No."))
    assert failure.kind is kind


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        ({"code": 400, "status": "INVALID_ARGUMENT", "message": "x"}, FailureKind.CLIENT),
        ({"code": 503, "status": "UNAVAILABLE", "message": "x"}, FailureKind.RETRYABLE),
        ({"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "x"}, FailureKind.RETRYABLE),
        ({"code": 500, "status": "INTERNAL", "message": "x"}, FailureKind.RETRYABLE),
        ({"status": "INTERNAL", "message": "x"}, FailureKind.RETRYABLE),
    ],
)
def test_google(error: dict[str, Any], kind: FailureKind) -> None:
    failure = _failure(google.GoogleStream(), _sse({"error": error}))
    assert failure.kind is kind
