"""Anthropic's native Messages API over loopback (the simulator's ``/v1/messages``):
requests built from the canonical form, streams, tools, thinking, prompt-cache reads and
writes, and error mapping."""

from __future__ import annotations

import pytest

from relay.providers.anthropic import AnthropicAdapter, AnthropicConfig
from relay.providers.base import FailureKind
from relay.translate import canonical as c
from tests.relay.providers.conftest import (
    ANTHROPIC_KEY,
    CHAT,
    CHAT_PROMPT_TOKENS,
    PIXEL,
    WEATHER_TOOL,
    NativeSim,
    complete,
    failure,
    follow_up,
    stream,
    summarise,
    tool_calls,
)

MODEL = "claude-sonnet-4-5"


def adapter(sim: NativeSim, options: str = "", key: str = ANTHROPIC_KEY) -> AnthropicAdapter:
    base = f"{sim.url}/sim/key={ANTHROPIC_KEY},{options}"
    return AnthropicAdapter(AnthropicConfig(api_key=key, base_url=base))


def test_answer_with_cache_reads_and_writes(native_sim: NativeSim) -> None:
    answer = complete(adapter(native_sim, "tokens=3,cached=6,cache_write=4"), CHAT, MODEL)
    assert c.text_of(answer.parts) == "tok0 tok1 tok2"
    assert answer.stop == "end"
    assert answer.usage == c.Usage(
        input_tokens=CHAT_PROMPT_TOKENS, output_tokens=3, cached_tokens=6, cache_write_tokens=4
    )
    sent = native_sim.requests()[-1]
    assert sent["headers"]["x-api-key"] == ANTHROPIC_KEY
    assert sent["headers"]["anthropic-version"] == "2023-06-01"
    assert "authorization" not in sent["headers"]
    assert sent["body"]["system"] == [{"type": "text", "text": "Answer briefly."}]
    assert sent["body"]["model"] == MODEL
    assert "stream" not in sent["body"]


def test_request_keeps_images_cache_control_and_tool_results(native_sim: NativeSim) -> None:
    asked = {
        "model": "m",
        "max_tokens": 50,
        "stop": "END",
        "user": "conversation-7",
        "tools": [WEATHER_TOOL],
        "tool_choice": "required",
        "messages": [
            {
                "role": "user",
                "content": [
                    {
                        "type": "text",
                        "text": "Long context",
                        "cache_control": {"type": "ephemeral"},
                    },
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}"}},
                ],
            }
        ],
    }
    answer = complete(adapter(native_sim), asked, MODEL)
    (call,) = tool_calls(answer)
    final = complete(adapter(native_sim), follow_up(asked, call, "sunny"), MODEL)
    assert c.text_of(final.parts).startswith("tok0")  # the simulator saw the tool result
    body = native_sim.requests()[-1]["body"]
    first, second, third = body["messages"]
    assert first["content"][1]["source"] == {
        "type": "base64",
        "media_type": "image/png",
        "data": PIXEL,
    }
    assert second["content"] == [
        {"type": "tool_use", "id": call.id, "name": "get_weather", "input": {}}
    ]
    assert third["content"][0]["type"] == "tool_result"
    assert third["content"][0]["tool_use_id"] == call.id
    assert body["stop_sequences"] == ["END"]
    assert body["tool_choice"] == {"type": "any"}
    assert body["metadata"] == {"user_id": "conversation-7"}
    assert body["max_tokens"] == 50


def test_stream_with_thinking_budget_and_usage(native_sim: NativeSim) -> None:
    options = "tokens=4,reasoning=5,cached=2,cache_write=1"
    events = stream(adapter(native_sim, options), {**CHAT, "reasoning_effort": "low"}, MODEL)
    streamed = summarise(events)
    assert (streamed.text, streamed.stop) == ("tok0 tok1 tok2 tok3", "end")
    assert streamed.usage == c.Usage(
        input_tokens=CHAT_PROMPT_TOKENS, output_tokens=4 + 5, cached_tokens=2, cache_write_tokens=1
    )
    sent = native_sim.requests()[-1]["body"]
    assert sent["thinking"]["type"] == "enabled" and sent["thinking"]["budget_tokens"] > 0
    assert sent["stream"] is True


def test_tool_use_plain_and_streamed(native_sim: NativeSim) -> None:
    asked = {**CHAT, "tools": [WEATHER_TOOL]}
    answer = complete(adapter(native_sim), asked, MODEL)
    assert answer.stop == "tool_use"
    assert [call.name for call in tool_calls(answer)] == ["get_weather"]
    streamed = summarise(stream(adapter(native_sim), asked, MODEL))
    ((call_id, name, arguments),) = streamed.calls.values()
    assert call_id.startswith("toolu_") and name == "get_weather"
    assert arguments in ("", "{}")
    assert streamed.stop == "tool_use"


@pytest.mark.parametrize(
    ("options", "key", "kind"),
    [
        ("", "sk-ant-wrong", FailureKind.CREDENTIALS),
        ("fail=529", ANTHROPIC_KEY, FailureKind.RETRYABLE),
        ("fail=429", ANTHROPIC_KEY, FailureKind.RETRYABLE),
        ("fail=500", ANTHROPIC_KEY, FailureKind.RETRYABLE),
        ("fail=400", ANTHROPIC_KEY, FailureKind.CLIENT),
    ],
)
def test_error_mapping(native_sim: NativeSim, options: str, key: str, kind: FailureKind) -> None:
    error = failure(lambda: complete(adapter(native_sim, options, key), CHAT, MODEL))
    assert error.failure.kind is kind
    assert key not in error.failure.message
