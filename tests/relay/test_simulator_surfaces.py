"""The simulator speaks every paid surface: Responses, Anthropic Messages, embeddings and
legacy completions, over real HTTP on loopback, checked against OpenAI's schemas."""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from relay.simulator import build_app
from tests.openai_schema import (
    parse_sse_data,
    responses_validator,
    validate,
    validate_responses_stream,
)
from tests.servers import running_server

TOOLS = [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}]


@pytest.fixture(scope="module")
def sim_url() -> Iterator[str]:
    with running_server(build_app(completion_tokens=5)) as base_url:
        yield base_url


@pytest.fixture
def client(sim_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=sim_url, headers={"Authorization": "Bearer sk-test"}, timeout=5
    ) as http:
        yield http


def sse_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    out, name = [], ""
    for line in text.split("\n"):
        if line.startswith("event: "):
            name = line[len("event: ") :]
        elif line.startswith("data: "):
            out.append((name, json.loads(line[len("data: ") :])))
    return out


# --- Responses -----------------------------------------------------------------------


def test_response_plain_matches_schema_and_counts(client: httpx.Client) -> None:
    body = {"model": "sim-small", "input": "two words", "instructions": "be brief now"}
    answer = client.post("/v1/responses", json=body).json()
    responses_validator("Response").validate(answer)
    assert answer["status"] == "completed"
    assert answer["output"][0]["content"][0]["text"] == "tok0 tok1 tok2 tok3 tok4"
    # 3 + (4 + 2 words) + instructions (4 + 3 words)
    assert answer["usage"]["input_tokens"] == 16
    assert answer["usage"]["output_tokens"] == 5
    assert answer["usage"]["total_tokens"] == 21


def test_response_stream_is_typed_and_ends_completed(client: httpx.Client) -> None:
    response = client.post(
        "/sim/cached=3,reasoning=2/v1/responses",
        json={"model": "sim-small", "input": [{"role": "user", "content": "hi"}], "stream": True},
    )
    events = validate_responses_stream(response.text)
    kinds = [e["type"] for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds.count("response.output_text.delta") == 5
    final = events[-1]["response"]
    assert final["usage"]["input_tokens_details"]["cached_tokens"] == 3
    assert final["usage"]["output_tokens"] == 7
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert text == final["output"][0]["content"][0]["text"]


def test_response_function_call_then_answer(client: httpx.Client) -> None:
    first = client.post(
        "/v1/responses", json={"model": "sim-small", "input": "weather?", "tools": TOOLS}
    ).json()
    responses_validator("Response").validate(first)
    call = first["output"][0]
    assert call["type"] == "function_call" and call["name"] == "get_weather"
    follow = {
        "model": "sim-small",
        "tools": TOOLS,
        "previous_response_id": first["id"],
        "input": [{"type": "function_call_output", "call_id": call["call_id"], "output": "sun"}],
    }
    second = client.post("/v1/responses", json=follow).json()
    assert second["output"][0]["type"] == "message"
    # 3 + the previous input (4 + 1) + its call (4) + the tool's output (4 + 1)
    assert second["usage"]["input_tokens"] == 17


def test_response_function_call_streamed(client: httpx.Client) -> None:
    text = client.post(
        "/v1/responses",
        json={"model": "sim-small", "input": "weather?", "tools": TOOLS, "stream": True},
    ).text
    events = validate_responses_stream(text)
    done = [e for e in events if e["type"] == "response.function_call_arguments.done"]
    assert done[0]["name"] == "get_weather"


def test_stored_response_lifecycle(client: httpx.Client) -> None:
    made = client.post("/v1/responses", json={"model": "sim-small", "input": "keep me"}).json()
    got = client.get(f"/v1/responses/{made['id']}").json()
    assert got["id"] == made["id"]
    items = client.get(f"/v1/responses/{made['id']}/input_items").json()
    assert items["data"][0]["content"] == [{"type": "input_text", "text": "keep me"}]
    assert client.post(f"/v1/responses/{made['id']}/cancel").status_code == 400
    gone = client.delete(f"/v1/responses/{made['id']}").json()
    assert gone == {"id": made["id"], "object": "response", "deleted": True}
    assert client.get(f"/v1/responses/{made['id']}").status_code == 404
    missing = client.post(
        "/v1/responses",
        json={"model": "sim-small", "input": "x", "previous_response_id": made["id"]},
    )
    assert missing.status_code == 400


def test_background_response_cancels(client: httpx.Client) -> None:
    made = client.post(
        "/v1/responses", json={"model": "sim-small", "input": "x", "background": True}
    ).json()
    assert made["status"] == "in_progress"
    cancelled = client.post(f"/v1/responses/{made['id']}/cancel").json()
    assert cancelled["status"] == "cancelled"


def test_response_max_output_tokens_is_incomplete(client: httpx.Client) -> None:
    sim = "/sim/tokens=20/v1/responses"
    answer = client.post(sim, json={"model": "m", "input": "x", "max_output_tokens": 16}).json()
    responses_validator("Response").validate(answer)
    assert answer["status"] == "incomplete"
    assert answer["incomplete_details"] == {"reason": "max_output_tokens"}
    assert answer["usage"]["output_tokens"] == 16


def test_response_input_tokens(client: httpx.Client) -> None:
    answer = client.post("/v1/responses/input_tokens", json={"model": "m", "input": "a b c"})
    assert answer.json() == {"object": "response.input_tokens", "input_tokens": 3 + 4 + 3}


# --- Anthropic Messages --------------------------------------------------------------


def messages_body(**extra: Any) -> dict[str, Any]:
    return {
        "model": "sim-small",
        "max_tokens": 100,
        "system": "be kind",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hello there"}]}],
        **extra,
    }


def test_message_plain_with_x_api_key_and_cache_counts(sim_url: str) -> None:
    with httpx.Client(base_url=sim_url, headers={"x-api-key": "sk-test"}) as http:
        answer = http.post("/sim/cached=2,cache_write=3/v1/messages", json=messages_body()).json()
    assert answer["type"] == "message" and answer["stop_reason"] == "end_turn"
    assert answer["content"] == [{"type": "text", "text": "tok0 tok1 tok2 tok3 tok4"}]
    # prompt 3 + (4 + 2) + system (4 + 2) = 15, of which 2 read and 3 written
    assert answer["usage"] == {
        "input_tokens": 10,
        "cache_creation_input_tokens": 3,
        "cache_read_input_tokens": 2,
        "cache_creation": {"ephemeral_5m_input_tokens": 3, "ephemeral_1h_input_tokens": 0},
        "output_tokens": 5,
        "service_tier": "standard",
    }


def test_message_errors_use_anthropic_envelope(sim_url: str) -> None:
    with httpx.Client(base_url=sim_url) as http:
        refused = http.post("/v1/messages", json=messages_body())
        assert refused.status_code == 401
        assert refused.json()["type"] == "error"
        assert refused.json()["error"]["type"] == "authentication_error"
        bad = http.post("/v1/messages", json={"model": "m"}, headers={"x-api-key": "k"})
        assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"


def test_message_stream_events(client: httpx.Client) -> None:
    text = client.post("/v1/messages", json=messages_body(stream=True, max_tokens=3)).text
    events = sse_events(text)
    names = [name for name, _ in events]
    assert names[0] == "message_start" and names[-1] == "message_stop"
    assert all(name == payload["type"] for name, payload in events)
    deltas = [p["delta"]["text"] for n, p in events if n == "content_block_delta"]
    assert "".join(deltas) == "tok0 tok1 tok2"
    final = next(p for n, p in events if n == "message_delta")
    assert final["delta"]["stop_reason"] == "max_tokens"
    assert final["usage"]["output_tokens"] == 3


def test_message_tool_use_then_result(client: httpx.Client) -> None:
    tools = [{"name": "lookup", "input_schema": {"type": "object"}}]
    first = client.post("/v1/messages", json=messages_body(tools=tools)).json()
    assert first["stop_reason"] == "tool_use"
    use = first["content"][0]
    assert use["type"] == "tool_use" and use["name"] == "lookup"
    turns = [
        *messages_body()["messages"],
        {"role": "assistant", "content": first["content"]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use["id"]}]},
    ]
    second = client.post("/v1/messages", json=messages_body(tools=tools, messages=turns)).json()
    assert second["stop_reason"] == "end_turn"


def test_message_count_tokens(client: httpx.Client) -> None:
    body = messages_body()
    del body["max_tokens"]
    assert client.post("/v1/messages/count_tokens", json=body).json() == {"input_tokens": 15}


# --- Embeddings and completions -----------------------------------------------------


def test_embeddings_float_and_base64_agree(client: httpx.Client) -> None:
    body = {"model": "emb", "input": ["one two", "three"], "dimensions": 4}
    plain = client.post("/v1/embeddings", json=body).json()
    validate(plain, "CreateEmbeddingResponse")
    assert plain["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    packed = client.post("/v1/embeddings", json={**body, "encoding_format": "base64"}).json()
    for floats, encoded in zip(plain["data"], packed["data"], strict=True):
        numbers = struct.unpack("<4f", base64.b64decode(encoded["embedding"]))
        assert list(numbers) == floats["embedding"]


def test_embeddings_token_arrays(client: httpx.Client) -> None:
    answer = client.post("/v1/embeddings", json={"model": "e", "input": [[1, 2, 3], [4]]}).json()
    validate(answer, "CreateEmbeddingResponse")
    assert answer["usage"]["prompt_tokens"] == 4 and len(answer["data"][0]["embedding"]) == 8
    bad = client.post("/v1/embeddings", json={"model": "e", "input": [1, "x"]})
    assert bad.status_code == 400


def validate_completion_chunk(chunk: dict[str, Any]) -> None:
    """OpenAI streams ``finish_reason: null`` until a choice ends, which the published
    ``CreateCompletionResponse`` (shared by streams, it says) does not allow: everything
    else is checked against it."""
    copy = json.loads(json.dumps(chunk))
    for choice in copy["choices"]:
        if choice["finish_reason"] is None:
            choice["finish_reason"] = "stop"
    validate(copy, "CreateCompletionResponse")


def test_completion_plain_echo_and_logprobs(client: httpx.Client) -> None:
    body = {"model": "c", "prompt": "say it", "echo": True, "logprobs": 2, "suffix": "!"}
    answer = client.post("/v1/completions", json=body).json()
    validate(answer, "CreateCompletionResponse")
    assert answer["choices"][0]["text"] == "say ittok0 tok1 tok2 tok3 tok4"
    assert answer["choices"][0]["logprobs"]["tokens"][0] == "tok0"
    assert answer["usage"] == {"prompt_tokens": 2, "completion_tokens": 5, "total_tokens": 7}


def test_completion_stream_with_usage(client: httpx.Client) -> None:
    body = {
        "model": "c",
        "prompt": ["a", "b c"],
        "max_tokens": 2,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    payloads = parse_sse_data(client.post("/v1/completions", json=body).text)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    for chunk in chunks:
        validate_completion_chunk(chunk)
    text = "".join(
        c["choices"][0]["text"] for c in chunks if c["choices"] and c["choices"][0]["index"] == 1
    )
    assert text == "tok0 tok1"
    assert chunks[-1]["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}


def test_surfaces_honour_failure_options(client: httpx.Client) -> None:
    for path, body in (
        ("/v1/responses", {"model": "m", "input": "x"}),
        ("/v1/embeddings", {"model": "m", "input": "x"}),
        ("/v1/completions", {"model": "m", "prompt": "x"}),
    ):
        assert client.post("/sim/fail=503" + path, json=body).status_code == 503
    failed = client.post("/sim/fail=529/v1/messages", json=messages_body())
    assert failed.status_code == 529 and failed.json()["error"]["type"] == "overloaded_error"
