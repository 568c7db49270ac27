"""A channel's answer that is valid JSON of the wrong shape (a string where the API has an
object): the channel's fault, like a malformed answer. A whole answer is refused as an
invalid response and billed as nothing; a stream ends with an error event after what was
delivered, rather than the relay crashing and cutting the client's connection.

The channels are loopback servers that answer what the test sets, first something
well-formed (so that the test knows the relay uses them), then the malformed answer.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from tests.relay.conftest import UPSTREAM_MODEL, Gateway, usage_events
from tests.servers import asgi_body, running_server

PROMPT_TOKENS, COMPLETION_TOKENS = 9, 4
USAGE = {
    "prompt_tokens": PROMPT_TOKENS,
    "completion_tokens": COMPLETION_TOKENS,
    "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
}


def _chat_answer(message: Any) -> bytes:
    return orjson.dumps(
        {
            "id": "chatcmpl-m",
            "object": "chat.completion",
            "created": 1,
            "model": UPSTREAM_MODEL,
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": USAGE,
        }
    )


def _chat_stream(bad_delta: Any) -> bytes:
    def chunk(delta: Any) -> bytes:
        body = {
            "id": "chatcmpl-m",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": UPSTREAM_MODEL,
            "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
        }
        return b"data: " + orjson.dumps(body) + b"\n\n"

    return (
        chunk({"role": "assistant", "content": "Deliv"})
        + chunk({"content": "ered"})
        + (chunk(bad_delta) + b"data: [DONE]\n\n")
    )


def _anthropic_stream(bad_delta: Any) -> bytes:
    events: list[dict[str, Any]] = [
        {
            "type": "message_start",
            "message": {
                "id": "msg_m",
                "type": "message",
                "role": "assistant",
                "model": UPSTREAM_MODEL,
                "content": [],
                "usage": {"input_tokens": PROMPT_TOKENS, "output_tokens": 1},
            },
        },
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": "Deliv"},
        },
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": "ered"},
        },
        {"type": "content_block_delta", "index": 0, "delta": bad_delta},
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn"},
            "usage": {"output_tokens": 4},
        },
        {"type": "message_stop"},
    ]
    return b"".join(
        b"event: " + e["type"].encode() + b"\ndata: " + orjson.dumps(e) + b"\n\n" for e in events
    )


class Canned:
    """An upstream that answers ``body`` (a stream when ``stream`` is set) to every request."""

    def __init__(self) -> None:
        self.body = b""
        self.stream = False

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await asgi_body(receive)
        kind = b"text/event-stream" if self.stream else b"application/json"
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", kind)]}
        )
        await send({"type": "http.response.body", "body": self.body})


@pytest.fixture
def canned(gateway: Gateway) -> Iterator[tuple[Canned, str]]:
    upstream = Canned()
    with running_server(upstream) as url:
        yield upstream, url


def _point(gateway: Gateway, url: str, provider: str, send: Any) -> int:
    """Point the gateway's channel at ``url`` and wait until the relay answers from it
    (``send`` makes one request and says whether its answer came from there); the number
    of requests that took."""
    gateway.channel.base_url = f"{url}/v1" if provider == "openai" else url
    gateway.channel.provider_type = provider
    gateway.channel.save()
    deadline = time.monotonic() + 10
    sent = 0
    while True:
        sent += 1
        if send() or time.monotonic() > deadline:
            return sent
        time.sleep(0.05)


def _messages(gateway: Gateway, stream: bool) -> httpx.Response:
    return httpx.post(
        gateway.url + "/v1/messages",
        headers={"x-api-key": gateway.secret, "anthropic-version": "2023-06-01"},
        json={
            "model": gateway.model.public_id,
            "max_tokens": 16,
            "stream": stream,
            "messages": [{"role": "user", "content": "Say something."}],
        },
        timeout=20,
    )


def _chat_stream_request(gateway: Gateway) -> httpx.Response:
    return httpx.post(
        gateway.url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {gateway.secret}"},
        json={
            "model": gateway.model.public_id,
            "stream": True,
            "messages": [{"role": "user", "content": "Say something."}],
        },
        timeout=20,
    )


@pytest.mark.parametrize("message", ["a string", {"role": "assistant", "tool_calls": "x"}])
def test_a_translated_answer_of_the_wrong_shape_is_refused_and_not_billed(
    gateway: Gateway, canned: tuple[Canned, str], message: Any
) -> None:
    upstream, url = canned
    upstream.body = _chat_answer({"role": "assistant", "content": "Well formed"})
    sent = _point(
        gateway, url, "openai", lambda: b"Well formed" in _messages(gateway, False).content
    )
    upstream.body = _chat_answer(message)
    answer = _messages(gateway, False)
    assert answer.status_code == 502, answer.text
    body = answer.json()
    assert body["type"] == "error"  # in the Messages API's own envelope
    event = usage_events(sent + 1)[-1]
    assert event.status_code == 502
    assert [a.get("error") for a in event.attempts] == ["invalid_response"]
    assert (event.prompt_tokens, event.completion_tokens, event.cost_retail_micros) == (0, 0, 0)


def _sse_data(answer: httpx.Response) -> list[dict[str, Any]]:
    return [
        orjson.loads(line[len("data: ") :])
        for line in answer.text.split("\n")
        if line.startswith("data: ") and line != "data: [DONE]"
    ]


def test_a_translated_stream_event_of_the_wrong_shape_ends_the_stream_with_an_error(
    gateway: Gateway, canned: tuple[Canned, str]
) -> None:
    upstream, url = canned
    upstream.stream = True
    upstream.body = _chat_stream({"content": "!"})
    sent = _point(gateway, url, "openai", lambda: b"Deliv" in _messages(gateway, True).content)
    upstream.body = _chat_stream("a string")
    answer = _messages(gateway, True)
    assert answer.status_code == 200
    events = _sse_data(answer)
    text = "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta")
    assert text == "Delivered"
    assert events[-1]["type"] == "error"
    event = usage_events(sent + 1)[-1]
    assert (event.completed, event.error_code) == (False, "upstream_stream_broken")


def test_an_adapter_stream_event_of_the_wrong_shape_ends_the_stream_with_an_error(
    gateway: Gateway, canned: tuple[Canned, str]
) -> None:
    """A chat stream from an Anthropic channel whose delta is a string."""
    upstream, url = canned
    upstream.stream = True
    upstream.body = _anthropic_stream({"type": "text_delta", "text": "!"})
    sent = _point(
        gateway, url, "anthropic", lambda: b"Deliv" in _chat_stream_request(gateway).content
    )
    upstream.body = _anthropic_stream("a string")
    answer = _chat_stream_request(gateway)
    assert answer.status_code == 200
    chunks = _sse_data(answer)
    text = "".join(
        c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices")
    )
    assert text == "Delivered"
    assert chunks[-1]["error"]["code"] == "upstream_stream_broken"
    event = usage_events(sent + 1)[-1]
    assert (event.completed, event.error_code) == (False, "upstream_stream_broken")
