"""Requests translate between chat completions, Responses and Anthropic Messages through
the canonical form, feature by feature and in both directions."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import orjson
import pytest

from relay.providers import bedrock, google
from relay.providers.anthropic import AnthropicAdapter, AnthropicConfig
from relay.translate import canonical as c
from relay.translate import chat, messages, responses

IMAGE = "data:image/png;base64,iVBORw0KGgo="
SCHEMA = {"type": "object", "properties": {"a": {"type": "string"}}}


def chat_request() -> dict[str, Any]:
    return {
        "model": "m",
        "messages": [
            {"role": "system", "content": "be brief"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": IMAGE}},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "look", "arguments": '{"q": 1}'},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "a cat"},
        ],
        "tools": [{"type": "function", "function": {"name": "look", "parameters": SCHEMA}}],
        "tool_choice": "required",
        "max_completion_tokens": 50,
        "reasoning_effort": "high",
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "out", "schema": SCHEMA},
        },
        "stop": ["END"],
        "stream": True,
    }


def test_chat_round_trips_through_canonical() -> None:
    canonical = chat.request_to_canonical(chat_request())
    again = chat.request_from_canonical(canonical)
    assert again["messages"] == [
        {"role": "system", "content": "be brief"},
        chat_request()["messages"][1],
        {
            "role": "assistant",
            "content": None,
            "tool_calls": chat_request()["messages"][2]["tool_calls"],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "a cat"},
    ]
    assert again["tools"] == chat_request()["tools"]
    assert again["tool_choice"] == "required"
    assert again["max_completion_tokens"] == 50
    assert again["reasoning_effort"] == "high"
    assert again["response_format"] == chat_request()["response_format"]
    assert again["stream_options"] == {"include_usage": True}


def test_chat_to_messages_and_back() -> None:
    body = messages.request_from_canonical(chat.request_to_canonical(chat_request()))
    assert body["system"] == [{"type": "text", "text": "be brief"}]
    user, assistant, tool = body["messages"]
    assert user["content"][1] == {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
    }
    assert assistant["content"] == [
        {"type": "tool_use", "id": "call_1", "name": "look", "input": {"q": 1}}
    ]
    assert tool == {
        "role": "user",
        "content": [
            {
                "type": "tool_result",
                "tool_use_id": "call_1",
                "content": [{"type": "text", "text": "a cat"}],
            }
        ],
    }
    assert body["tools"] == [{"name": "look", "input_schema": SCHEMA}]
    assert body["tool_choice"] == {"type": "any"}
    assert body["max_tokens"] == 50
    assert "thinking" not in body  # a forced tool and 50 tokens: Anthropic takes none
    assert body["stop_sequences"] == ["END"]
    # Structured output under the API's name (``output_format`` was the beta's).
    assert body["output_config"] == {"format": {"type": "json_schema", "schema": SCHEMA}}
    assert "output_format" not in body
    back = chat.request_from_canonical(messages.request_to_canonical(body))
    assert back["response_format"]["json_schema"]["schema"] == SCHEMA
    beta = {**body, "output_format": body["output_config"]["format"]}
    del beta["output_config"]
    again = chat.request_from_canonical(messages.request_to_canonical(beta))
    assert again["response_format"]["json_schema"]["schema"] == SCHEMA
    assert back["messages"][1]["content"][1]["image_url"]["url"] == IMAGE
    assert back["messages"][2]["tool_calls"][0]["function"]["arguments"] == '{"q":1}'
    assert back["messages"][3] == {"role": "tool", "tool_call_id": "call_1", "content": "a cat"}
    assert "reasoning_effort" not in back
    assert back["tool_choice"] == "required"


def _to_anthropic(**fields: Any) -> dict[str, Any]:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
    return messages.request_from_canonical(chat.request_to_canonical(body))


def test_thinking_sent_to_anthropic_is_one_it_takes() -> None:
    """At least 1,024 tokens and below ``max_tokens`` (never raised: the hold covers the
    client's cap), with no forced tool and no sampling settings thinking refuses."""
    uncapped = _to_anthropic(reasoning_effort="high")
    assert uncapped["max_tokens"] == 4096
    assert uncapped["thinking"] == {"type": "enabled", "budget_tokens": 4095}
    roomy = _to_anthropic(reasoning_effort="medium", max_completion_tokens=20_000)
    assert roomy["thinking"] == {"type": "enabled", "budget_tokens": 8192}
    assert "thinking" not in _to_anthropic(reasoning_effort="low", max_tokens=1024)
    assert (
        _to_anthropic(reasoning_effort="low", max_tokens=1025)["thinking"]["budget_tokens"] == 1024
    )
    named = {"type": "function", "function": {"name": "look"}}
    tools = [{"type": "function", "function": {"name": "look", "parameters": {}}}]
    for choice in ("required", named):
        assert "thinking" not in _to_anthropic(
            reasoning_effort="high", tools=tools, tool_choice=choice
        )
    assert "thinking" in _to_anthropic(reasoning_effort="high", tools=tools, tool_choice="auto")
    sampled = _to_anthropic(reasoning_effort="low", temperature=0.2, top_p=0.9)
    assert "temperature" not in sampled and "top_p" not in sampled
    sampled = _to_anthropic(reasoning_effort="low", temperature=1, top_p=0.97)
    assert (sampled["temperature"], sampled["top_p"]) == (1, 0.97)
    plain = _to_anthropic(temperature=0.2, top_p=0.9)
    assert (plain["temperature"], plain["top_p"]) == (0.2, 0.9)
    # A Messages client's own budget goes out as it came (not its level's 8,192).
    own = {
        "model": "m",
        "max_tokens": 5000,
        "thinking": {"type": "enabled", "budget_tokens": 4096},
        "messages": [{"role": "user", "content": "hi"}],
    }
    again = messages.request_from_canonical(messages.request_to_canonical(own))
    assert (again["max_tokens"], again["thinking"]["budget_tokens"]) == (5000, 4096)


def test_anthropics_max_tokens_is_the_figure_the_hold_covers() -> None:
    """An OpenAI client that sets no cap is not cut at 4,096 tokens: Anthropic is asked for
    what the request's hold was computed with (``held_output_tokens``: the model's
    catalogue maximum, say), and the client's own cap still wins."""
    uncapped = chat.request_to_canonical({"model": "m", "messages": [{"role": "user"}]})
    uncapped.held_output_tokens = 64_000
    assert messages.request_from_canonical(uncapped)["max_tokens"] == 64_000
    capped = responses.request_to_canonical({"model": "m", "input": "hi", "max_output_tokens": 50})
    capped.held_output_tokens = 50
    assert messages.request_from_canonical(capped)["max_tokens"] == 50
    # A thinking budget now has the held room, not 4,096's.
    uncapped.reasoning_effort = "high"
    assert messages.request_from_canonical(uncapped)["thinking"]["budget_tokens"] == 24_576
    # Nothing sized a hold (a request built outside one): the old default.
    assert _to_anthropic()["max_tokens"] == messages.DEFAULT_MAX_TOKENS == 4096


def test_the_anthropic_adapter_sends_the_held_figure() -> None:
    adapter = AnthropicAdapter(AnthropicConfig(api_key="sk-ant-test"))
    request = chat.request_to_canonical({"model": "m", "messages": [{"role": "user"}]})
    request.held_output_tokens = 32_000
    built = asyncio.run(adapter.build(request, upstream_model="claude-x", stream=True))
    body = orjson.loads(built.content)
    assert (body["max_tokens"], body["stream"]) == (32_000, True)


def test_chat_to_responses_and_back() -> None:
    body = responses.request_from_canonical(chat.request_to_canonical(chat_request()))
    assert body["instructions"] == "be brief"
    assert body["input"][0]["content"][1] == {
        "type": "input_image",
        "image_url": IMAGE,
        "detail": "auto",
    }
    assert body["input"][1] == {
        "type": "function_call",
        "call_id": "call_1",
        "name": "look",
        "arguments": '{"q": 1}',
    }
    assert body["input"][2] == {
        "type": "function_call_output",
        "call_id": "call_1",
        "output": "a cat",
    }
    assert body["reasoning"] == {"effort": "high"}
    assert body["max_output_tokens"] == 50
    assert body["text"]["format"]["type"] == "json_schema"
    assert body["text"]["format"]["schema"] == SCHEMA
    back = chat.request_from_canonical(responses.request_to_canonical(body))
    assert back["messages"][0] == {"role": "system", "content": "be brief"}
    assert back["messages"][3] == {"role": "tool", "tool_call_id": "call_1", "content": "a cat"}
    assert back["response_format"]["json_schema"]["schema"] == SCHEMA


def test_responses_string_input_and_instructions_to_chat() -> None:
    body = {
        "model": "m",
        "input": "hello",
        "instructions": "sys",
        "max_output_tokens": 20,
        "text": {"format": {"type": "json_object"}},
    }
    out = chat.request_from_canonical(responses.request_to_canonical(body))
    assert out["messages"] == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "hello"},
    ]
    assert out["max_completion_tokens"] == 20
    assert out["response_format"] == {"type": "json_object"}


def test_messages_system_blocks_cache_control_and_thinking_to_chat() -> None:
    body = {
        "model": "m",
        "max_tokens": 10,
        "system": [{"type": "text", "text": "rules", "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": "hi"}],
        "thinking": {"type": "enabled", "budget_tokens": 5000},
        "tool_choice": {"type": "tool", "name": "f", "disable_parallel_tool_use": True},
        "tools": [{"name": "f", "description": "d", "input_schema": SCHEMA}],
        "metadata": {"user_id": "u1"},
    }
    canonical = messages.request_to_canonical(body)
    assert canonical.system[0].cache_control == {"type": "ephemeral"}
    out = chat.request_from_canonical(canonical)
    assert out["reasoning_effort"] == "medium"
    assert out["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    assert out["parallel_tool_calls"] is False
    assert out["tools"][0]["function"] == {"name": "f", "description": "d", "parameters": SCHEMA}
    assert out["user"] == "u1"
    # and cache_control survives a pass back into Anthropic's format
    assert messages.request_from_canonical(canonical)["system"][0]["cache_control"] == {
        "type": "ephemeral"
    }


def test_untranslatable_features_are_refused() -> None:
    with pytest.raises(c.TranslationError):
        responses.request_to_canonical(
            {"model": "m", "input": "x", "tools": [{"type": "web_search"}]}
        )
    with pytest.raises(c.TranslationError):
        responses.request_to_canonical({"model": "m", "input": [{"type": "file_search_call"}]})
    with pytest.raises(c.TranslationError):
        messages.request_to_canonical(
            {"model": "m", "messages": [{"role": "user", "content": [{"type": "document"}]}]}
        )


def test_a_call_id_carrying_googles_signature_reaches_other_providers_bare() -> None:
    """Gemini 3's signature rides in the call id the client gets back; a conversation the
    client then sends to another provider carries it, and only Google reads it (Bedrock
    takes ids of 64 characters at most)."""
    signed = google.call_id("call_7", base64.b64encode(b"\x01" * 300).decode())
    assert len(signed) > 300 and c.bare_call_id(signed) == "call_7"
    history = {
        "model": "m",
        "messages": [
            {"role": "user", "content": "Weather?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": signed, "type": "function", "function": {"name": "w", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "tool_call_id": signed, "content": "sunny"},
        ],
        "tools": [{"type": "function", "function": {"name": "w", "parameters": {}}}],
    }
    request = chat.request_to_canonical(history)
    out = chat.request_from_canonical(request)["messages"]
    assert out[1]["tool_calls"][0]["id"] == out[2]["tool_call_id"] == "call_7"
    items = responses.request_from_canonical(request)["input"]
    assert [i["call_id"] for i in items if "call_id" in i] == ["call_7", "call_7"]
    turns = messages.request_from_canonical(request)["messages"]
    assert turns[1]["content"][0]["id"] == turns[2]["content"][0]["tool_use_id"] == "call_7"
    converse = orjson.loads(bedrock.request_body(request))["messages"]
    ids = [b[k]["toolUseId"] for m in converse for b in m["content"] for k in b if k != "text"]
    assert ids == ["call_7", "call_7"]
    assert c.bare_call_id("call_8") == "call_8"
