"""POST /v1/chat/completions over real HTTP: pass-through, mapping, streaming, schemas."""

from __future__ import annotations

import copy
import json
from typing import Any

from tests.openai_schema import validate
from tests.relay.conftest import (
    PUBLIC_MODEL,
    UPSTREAM_MODEL,
    UPSTREAM_SECRET,
    Gateway,
    Simulator,
    chat_body,
    sse_chunks,
)

# Every kind of field the OpenAI API takes, plus one it does not know yet: the relay must
# hand all of them to the upstream untouched.
FULL_REQUEST: dict[str, Any] = {
    "model": PUBLIC_MODEL,
    "messages": [
        {"role": "developer", "content": "Answer tersely."},
        {"role": "system", "content": [{"type": "text", "text": "Be kind."}]},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this picture?"},
                {
                    "type": "image_url",
                    "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"},
                },
            ],
            "name": "alice",
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "lookup", "arguments": '{"q": "cat"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "a cat"},
    ],
    "tools": [
        {
            "type": "function",
            "function": {
                "name": "lookup",
                "description": "Look something up",
                "parameters": {
                    "type": "object",
                    "properties": {"q": {"type": "string"}},
                    "required": ["q"],
                },
                "strict": True,
            },
        }
    ],
    "tool_choice": "none",
    "parallel_tool_calls": False,
    "n": 2,
    "logprobs": True,
    "top_logprobs": 2,
    "response_format": {
        "type": "json_schema",
        "json_schema": {
            "name": "answer",
            "schema": {"type": "object", "properties": {"a": {"type": "string"}}},
            "strict": True,
        },
    },
    "seed": 42,
    "stop": ["\n\n", "END"],
    "user": "user-1234",
    "metadata": {"order": "17", "team": "blue"},
    "reasoning_effort": "low",
    "modalities": ["text"],
    "temperature": 0.25,
    "top_p": 0.9,
    "presence_penalty": -0.5,
    "frequency_penalty": 1.5,
    "logit_bias": {"50256": -100},
    "max_completion_tokens": 64,
    "service_tier": "auto",
    "store": False,
    "prediction": {"type": "content", "content": "a cat"},
    "x_vendor_extension": {"nested": [1, 2.5, None, True, "é✓"]},
}


def test_completion_validates_and_maps_the_model_both_ways(
    gateway: Gateway, sim: Simulator
) -> None:
    response = gateway.client.post("/v1/chat/completions", json=chat_body())

    assert response.status_code == 200, response.text
    body = response.json()
    validate(body, "CreateChatCompletionResponse")
    assert body["model"] == PUBLIC_MODEL
    assert response.headers["x-request-id"].startswith("req_")
    (seen,) = sim.requests()
    assert seen["body"]["model"] == UPSTREAM_MODEL
    assert seen["headers"]["authorization"] == f"Bearer {UPSTREAM_SECRET}"
    assert seen["headers"]["content-type"] == "application/json"
    assert seen["headers"]["accept"] == "application/json"
    assert seen["headers"]["user-agent"] == "Tollgate"
    assert int(seen["headers"]["content-length"]) > 0
    # The client's own key never travels upstream.
    assert gateway.secret not in json.dumps(seen)


def test_every_request_field_reaches_the_upstream_unchanged(
    gateway: Gateway, sim: Simulator
) -> None:
    response = gateway.client.post("/v1/chat/completions", json=FULL_REQUEST)

    assert response.status_code == 200, response.text
    validate(response.json(), "CreateChatCompletionResponse")
    assert len(response.json()["choices"]) == 2
    (seen,) = sim.requests()
    expected = copy.deepcopy(FULL_REQUEST)
    expected["model"] = UPSTREAM_MODEL
    assert seen["body"] == expected


def test_streams_pass_every_field_and_only_add_include_usage(
    gateway: Gateway, sim: Simulator
) -> None:
    request = {
        **FULL_REQUEST,
        "stream": True,
        "stream_options": {"include_obfuscation": False},
    }
    with gateway.client.stream("POST", "/v1/chat/completions", json=request) as response:
        assert response.status_code == 200
        chunks, done = sse_chunks(response)

    assert done
    (seen,) = sim.requests()
    expected = copy.deepcopy(request)
    expected["model"] = UPSTREAM_MODEL
    expected["stream_options"] = {"include_obfuscation": False, "include_usage": True}
    assert seen["body"] == expected
    assert seen["headers"]["accept"] == "text/event-stream"
    assert {c["choices"][0]["index"] for c in chunks if c["choices"]} == {0, 1}


def test_stream_chunks_validate_and_the_unrequested_usage_chunk_is_dropped(
    gateway: Gateway,
) -> None:
    with gateway.client.stream(
        "POST", "/v1/chat/completions", json=chat_body(stream=True)
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        chunks, done = sse_chunks(response)

    assert done
    assert len(chunks) > 3
    for chunk in chunks:
        validate(chunk, "CreateChatCompletionStreamResponse")
        assert chunk["model"] == PUBLIC_MODEL
        assert chunk["choices"], "a usage-only chunk reached a client that did not ask for it"
        assert "usage" not in chunk
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text.startswith("tok0 tok1")


def test_stream_with_include_usage_ends_with_the_usage_chunk(gateway: Gateway) -> None:
    body = chat_body(stream=True, stream_options={"include_usage": True})
    with gateway.client.stream("POST", "/v1/chat/completions", json=body) as response:
        chunks, done = sse_chunks(response)

    assert done
    for chunk in chunks:
        validate(chunk, "CreateChatCompletionStreamResponse")
        assert chunk["model"] == PUBLIC_MODEL
    *content, last = chunks
    assert last["choices"] == []
    assert last["usage"]["completion_tokens"] > 0
    assert all(c.get("usage") is None for c in content)


def test_tool_calls_stream_as_deltas(gateway: Gateway) -> None:
    body = chat_body(
        stream=True,
        tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {}}}],
    )
    with gateway.client.stream("POST", "/v1/chat/completions", json=body) as response:
        chunks, done = sse_chunks(response)

    assert done
    for chunk in chunks:
        validate(chunk, "CreateChatCompletionStreamResponse")
    calls = [
        call
        for chunk in chunks
        for choice in chunk["choices"]
        for call in choice["delta"].get("tool_calls") or ()
    ]
    assert calls[0]["function"]["name"] == "get_weather"
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
