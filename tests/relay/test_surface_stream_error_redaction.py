"""In-stream errors on /v1/responses and /v1/messages carry no channel key (issue 14).

An upstream repeats the key it was sent in every field of an error event inside a stream:
as a Responses ``error`` event or ``response.failed`` (pass-through to a channel serving
Responses natively), as an Anthropic ``error`` event (pass-through to one serving
Messages), or as a chat completions error chunk (a channel serving neither, so the
request was translated). The client gets the error in its own format with the key
redacted, and the usage event records the failure without it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from billing.models import UsageEvent
from portal.models import Channel
from relay.metering import usage_writer
from tests.relay.conftest import PUBLIC_MODEL, Gateway
from tests.servers import asgi_body, running_server

LEAKED_KEY = "sk-echoed-surface-1a2b3c4d"


def _sse(name: str | None, payload: dict[str, Any]) -> bytes:
    head = b"event: " + name.encode() + b"\n" if name else b""
    return head + b"data: " + orjson.dumps(payload) + b"\n\n"


def _events(path: str, key: str, body: bytes) -> bytes:
    error = {"message": f"Invalid key {key}", "type": f"invalid:{key}", "code": key}
    if path.endswith("/responses"):
        response = {"id": "resp_1", "object": "response", "status": "in_progress", "output": []}
        head = _sse("response.created", {"type": "response.created", "response": response})
        head += _sse(
            "response.output_text.delta",
            {"type": "response.output_text.delta", "item_id": "m", "delta": "hi"},
        )
        if b"as-failed" in body:
            failed = {**response, "status": "failed", "error": error}
            return head + _sse("response.failed", {"type": "response.failed", "response": failed})
        fields = {"code": key, "message": error["message"], "param": f"key={key}"}
        return head + _sse("error", {"type": "error", **fields})
    if path.endswith("/messages"):
        start = {"id": "msg_1", "type": "message", "role": "assistant", "content": []}
        head = _sse("message_start", {"type": "message_start", "message": start})
        head += _sse(
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta"}},
        )
        return head + _sse("error", {"type": "error", "error": error})
    chunk = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "model": "m",
        "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}],
    }
    return _sse(None, chunk) + _sse(None, {"error": error})


async def echoing_upstream(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    headers = dict(scope["headers"])
    key = (headers.get(b"x-api-key") or headers.get(b"authorization", b"")).decode()
    key = key.removeprefix("Bearer ")
    body = await asgi_body(receive)
    head = [(b"content-type", b"text/event-stream")]
    await send({"type": "http.response.start", "status": 200, "headers": head})
    await send({"type": "http.response.body", "body": _events(scope["path"], key, body)})


@pytest.fixture
def echoing(relay_settings: Any, gateway: Gateway) -> Iterator[Gateway]:
    # Every answer is an error event, which counts against the channel: the retries while
    # the relay takes in the change would open its breaker before the stream is seen.
    relay_settings.RELAY_BREAKER_FAILURES = 1000
    with running_server(echoing_upstream) as url:
        channel = gateway.channel
        channel.base_url = f"{url}/v1"
        channel.secret = LEAKED_KEY
        channel.save()
        yield gateway


def _stream(gateway: Gateway, path: str, body: dict[str, Any]) -> str:
    """The stream's text, once the relay serves the echoing channel (it reloads within a
    moment of the change)."""
    deadline = time.monotonic() + 10
    while True:
        with gateway.client.stream("POST", path, json=body) as response:
            text = response.read().decode()
        if "invalid:" in text or time.monotonic() > deadline:
            assert response.status_code == 200, text
            return text
        time.sleep(0.05)


def _data(text: str) -> list[dict[str, Any]]:
    return [orjson.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]


def _metered_without_key(count: int) -> None:
    deadline = time.monotonic() + 10
    while UsageEvent.objects.filter(error_code="upstream_stream_error").count() < count:
        assert time.monotonic() < deadline, "the stream's usage event was never written"
        usage_writer.flush(timeout=1)
    assert LEAKED_KEY not in str(list(UsageEvent.objects.values()))
    assert Channel.objects.filter(last_check_error__contains=LEAKED_KEY).count() == 0


RESPONSES = {"model": PUBLIC_MODEL, "input": "Say hello", "stream": True}
MESSAGES = {
    "model": PUBLIC_MODEL,
    "max_tokens": 32,
    "messages": [{"role": "user", "content": "Say hello"}],
    "stream": True,
}


def _native(gateway: Gateway, surfaces: list[str]) -> None:
    gateway.channel.native_surfaces = surfaces
    gateway.channel.save()


def test_responses_pass_through_error_event_is_redacted(echoing: Gateway) -> None:
    _native(echoing, ["responses"])
    text = _stream(echoing, "/v1/responses", RESPONSES)
    assert LEAKED_KEY not in text
    error = _data(text)[-1]
    assert error["type"] == "error"
    assert error["message"] == "Invalid key [redacted]"
    assert (error["code"], error["param"]) == ("[redacted]", "key=[redacted]")
    failed = _stream(echoing, "/v1/responses", {**RESPONSES, "input": "as-failed"})
    assert LEAKED_KEY not in failed
    final = _data(failed)[-1]
    assert final["type"] == "response.failed"
    assert final["response"]["error"]["message"] == "Invalid key [redacted]"
    _metered_without_key(1)


def test_responses_translated_error_is_redacted(echoing: Gateway) -> None:
    text = _stream(echoing, "/v1/responses", RESPONSES)
    assert LEAKED_KEY not in text
    error = _data(text)[-1]
    assert error["type"] == "error"
    assert error["message"].startswith("Invalid key [redacted]")
    _metered_without_key(1)


def test_messages_pass_through_error_event_is_redacted(echoing: Gateway) -> None:
    _native(echoing, ["messages"])
    text = _stream(echoing, "/v1/messages", MESSAGES)
    assert LEAKED_KEY not in text
    error = _data(text)[-1]
    assert error["type"] == "error"
    assert error["error"] == {
        "message": "Invalid key [redacted]",
        "type": "invalid:[redacted]",
        "code": "[redacted]",
    }
    _metered_without_key(1)


def test_messages_translated_error_is_redacted(echoing: Gateway) -> None:
    text = _stream(echoing, "/v1/messages", MESSAGES)
    assert LEAKED_KEY not in text
    error = _data(text)[-1]
    assert error["type"] == "error"
    assert error["error"]["message"].startswith("Invalid key [redacted]")
    _metered_without_key(1)
