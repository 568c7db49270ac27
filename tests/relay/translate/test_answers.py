"""Answers and usage translate between the formats, plain and streamed, with stop
reasons, tool calls and cached, cache-write and reasoning tokens."""

from __future__ import annotations

import json
from typing import Any

import pytest

from relay.translate import canonical as c
from relay.translate import chat, messages, messages_stream, responses, responses_stream
from tests.openai_schema import responses_validator, validate, validate_responses_stream

CHAT_USAGE = {
    "prompt_tokens": 20,
    "completion_tokens": 9,
    "total_tokens": 29,
    "prompt_tokens_details": {"cached_tokens": 5},
    "completion_tokens_details": {"reasoning_tokens": 4},
}


def chat_answer(finish: str = "stop", **message: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "finish_reason": finish,
                "message": {"role": "assistant", "content": "hi there", **message},
            }
        ],
        "usage": CHAT_USAGE,
    }


def test_chat_answer_to_responses_validates_and_keeps_usage() -> None:
    out = responses.response_from_canonical(chat.response_to_canonical(chat_answer()))
    responses_validator("Response").validate(out)
    assert out["output"][0]["content"][0]["text"] == "hi there"
    assert out["usage"]["input_tokens_details"]["cached_tokens"] == 5
    assert out["usage"]["output_tokens_details"]["reasoning_tokens"] == 4
    assert out["usage"]["total_tokens"] == 29
    back = chat.response_from_canonical(responses.response_to_canonical(out))
    assert back["usage"]["prompt_tokens_details"]["cached_tokens"] == 5
    assert back["choices"][0]["message"]["content"] == "hi there"
    validate(back, "CreateChatCompletionResponse")


@pytest.mark.parametrize(
    ("finish", "status", "anthropic_stop"),
    [
        ("stop", "completed", "end_turn"),
        ("length", "incomplete", "max_tokens"),
        ("content_filter", "incomplete", "refusal"),
    ],
)
def test_stop_reasons(finish: str, status: str, anthropic_stop: str) -> None:
    canonical = chat.response_to_canonical(chat_answer(finish))
    assert responses.response_from_canonical(canonical)["status"] == status
    assert messages.response_from_canonical(canonical)["stop_reason"] == anthropic_stop
    assert (
        chat.response_from_canonical(
            messages.response_to_canonical(messages.response_from_canonical(canonical))
        )["choices"][0]["finish_reason"]
        == finish
    )


def test_tool_calls_both_ways() -> None:
    call = {"id": "call_9", "type": "function", "function": {"name": "f", "arguments": '{"x":2}'}}
    canonical = chat.response_to_canonical(
        chat_answer("tool_calls", content=None, tool_calls=[call])
    )
    anthropic = messages.response_from_canonical(canonical)
    assert anthropic["stop_reason"] == "tool_use"
    assert anthropic["content"] == [
        {"type": "tool_use", "id": "call_9", "name": "f", "input": {"x": 2}}
    ]
    out = responses.response_from_canonical(canonical)
    responses_validator("Response").validate(out)
    assert out["output"][0]["type"] == "function_call" and out["output"][0]["call_id"] == "call_9"
    back = chat.response_from_canonical(messages.response_to_canonical(anthropic))
    assert back["choices"][0]["finish_reason"] == "tool_calls"
    assert json.loads(back["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]) == {
        "x": 2
    }


def test_anthropic_usage_counts_cache_reads_and_writes_into_the_prompt() -> None:
    usage = {
        "input_tokens": 10,
        "cache_read_input_tokens": 3,
        "cache_creation_input_tokens": 7,
        "output_tokens": 5,
    }
    canonical = messages.usage_to_canonical(usage)
    assert canonical == c.Usage(
        input_tokens=20, output_tokens=5, cached_tokens=3, cache_write_tokens=7
    )
    assert messages.usage_from_canonical(canonical) == {
        **usage,
        "cache_creation": {"ephemeral_5m_input_tokens": 7, "ephemeral_1h_input_tokens": 0},
        "service_tier": "standard",
    }
    assert chat.usage_from_canonical(canonical)["prompt_tokens"] == 20


START_USAGE = {
    "input_tokens": 10,
    "cache_read_input_tokens": 3,
    "cache_creation_input_tokens": 7,
    "cache_creation": {"ephemeral_5m_input_tokens": 2, "ephemeral_1h_input_tokens": 5},
    "output_tokens": 1,
    "service_tier": "priority",
}


@pytest.mark.parametrize(
    ("delta", "expected"),
    [
        # Anthropic's message_delta: the prompt's totals again, no breakdown, no tier.
        (
            {
                "input_tokens": 10,
                "cache_read_input_tokens": 3,
                "cache_creation_input_tokens": 7,
                "output_tokens": 9,
            },
            c.Usage(20, 9, cached_tokens=3, cache_write_tokens=7, cache_write_1h_tokens=5),
        ),
        # An older delta with the output only; one whose prompt counts are null.
        ({"output_tokens": 9}, None),
        (
            {
                "input_tokens": None,
                "cache_read_input_tokens": None,
                "cache_creation_input_tokens": None,
                "output_tokens": 9,
            },
            None,
        ),
        # A delta with its own breakdown, and one with fewer writes than the hour's share.
        (
            {
                "cache_creation_input_tokens": 8,
                "cache_creation": {"ephemeral_5m_input_tokens": 7, "ephemeral_1h_input_tokens": 1},
                "output_tokens": 9,
            },
            c.Usage(21, 9, cached_tokens=3, cache_write_tokens=8, cache_write_1h_tokens=1),
        ),
        (
            {"cache_creation_input_tokens": 4, "output_tokens": 9},
            c.Usage(17, 9, cached_tokens=3, cache_write_tokens=4, cache_write_1h_tokens=4),
        ),
    ],
)
def test_a_streams_last_usage_keeps_what_it_leaves_out(
    delta: dict[str, Any], expected: c.Usage | None
) -> None:
    """``message_delta`` repeats the prompt's counts without their breakdown by time to
    live or the tier (and may send nulls): what it leaves out stays ``message_start``'s,
    on the pass-through leg and the provider adapter's decoder alike."""
    expected = expected or c.Usage(
        20, 9, cached_tokens=3, cache_write_tokens=7, cache_write_1h_tokens=5
    )
    expected.service_tier = "priority"
    merged = c.Usage()
    assert messages.merge_usage(merged, START_USAGE)
    assert messages.merge_usage(merged, delta)
    assert merged == expected
    decoder = messages_stream.Decoder()
    decoder.feed({"type": "message_start", "message": {"id": "m", "usage": START_USAGE}})
    decoder.feed({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": delta})
    assert decoder.usage == expected
    assert not messages.merge_usage(c.Usage(), {"output_tokens": None, "service_tier": "x"})


def test_anthropic_cache_writes_by_time_to_live_and_tier() -> None:
    usage = {
        "input_tokens": 10,
        "cache_read_input_tokens": 3,
        "cache_creation_input_tokens": 7,
        "cache_creation": {"ephemeral_5m_input_tokens": 2, "ephemeral_1h_input_tokens": 5},
        "output_tokens": 5,
        "service_tier": "priority",
    }
    canonical = messages.usage_to_canonical(usage)
    assert canonical is not None
    assert (canonical.cache_write_tokens, canonical.cache_write_1h_tokens) == (7, 5)
    assert canonical.service_tier == "priority"
    assert messages.usage_from_canonical(canonical) == usage
    # Through the Responses and chat shapes, the parts survive.
    assert responses.usage_to_canonical(responses.usage_from_canonical(canonical)) == (
        c.Usage(input_tokens=20, output_tokens=5, cached_tokens=3, cache_write_tokens=7)
    )


def test_chat_and_responses_usage_carry_audio_and_image_tokens() -> None:
    usage = {
        "prompt_tokens": 100,
        "completion_tokens": 50,
        "total_tokens": 150,
        "prompt_tokens_details": {"cached_tokens": 10, "audio_tokens": 30, "image_tokens": 5},
        "completion_tokens_details": {"reasoning_tokens": 4, "audio_tokens": 20},
    }
    canonical = chat.usage_to_canonical(usage, "flex")
    assert canonical == c.Usage(
        input_tokens=100,
        output_tokens=50,
        cached_tokens=10,
        reasoning_tokens=4,
        audio_input_tokens=30,
        image_input_tokens=5,
        audio_output_tokens=20,
        service_tier="flex",
    )
    again = responses.usage_to_canonical(responses.usage_from_canonical(canonical), "flex")
    assert again == canonical
    assert chat.usage_to_canonical(chat.usage_from_canonical(canonical), "flex") == canonical


def chat_stream(tool: bool = False) -> list[dict[str, Any]]:
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m"}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    chunks = [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "hi"}),
        chunk({"content": " there"}),
    ]
    if tool:
        chunks.append(
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "f", "arguments": ""},
                        }
                    ]
                }
            )
        )
        chunks.append(chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}))
    chunks.append(chunk({}, "tool_calls" if tool else "stop"))
    chunks.append({**base, "choices": [], "usage": CHAT_USAGE})
    return chunks


def run(decoder: Any, encoder: Any, chunks: list[dict[str, Any]]) -> bytes:
    out = b""
    for chunk in chunks:
        for event in decoder.feed(chunk):
            out += b"".join(encoder.feed(event))
    return out + b"".join(encoder.close())


@pytest.mark.parametrize("tool", [False, True])
def test_chat_stream_to_responses_stream(tool: bool) -> None:
    text = run(
        chat.Decoder(), responses_stream.Encoder({"model": "m"}, "m"), chat_stream(tool)
    ).decode()
    events = validate_responses_stream(text)
    final = events[-1]["response"]
    assert final["usage"]["input_tokens_details"]["cached_tokens"] == 5
    assert final["output"][0]["content"][0]["text"] == "hi there"
    if tool:
        assert (
            final["output"][1]["type"] == "function_call"
            and final["output"][1]["arguments"] == "{}"
        )
    # and back: the Responses stream decodes to the same canonical answer
    decoder = responses_stream.Decoder()
    encoder = chat.Encoder("m")
    chunks = [chunk for e in events for ev in decoder.feed(e) for chunk in encoder.feed(ev)]
    text_back = "".join(
        ch["choices"][0]["delta"].get("content") or "" for ch in chunks if ch["choices"]
    )
    assert text_back == "hi there"
    assert chunks[-1]["usage"]["prompt_tokens"] == 20
    for chunk in chunks:
        validate(chunk, "CreateChatCompletionStreamResponse")


def anthropic_events(raw: bytes) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in raw.decode().split("\n") if line.startswith("data: ")]


@pytest.mark.parametrize("tool", [False, True])
def test_chat_stream_to_messages_stream_and_back(tool: bool) -> None:
    raw = run(chat.Decoder(), messages_stream.Encoder("m", "msg_1"), chat_stream(tool))
    events = anthropic_events(raw)
    kinds = [e["type"] for e in events]
    assert kinds[:2] == ["message_start", "ping"]
    assert kinds[-2:] == ["message_delta", "message_stop"]
    assert kinds.count("content_block_start") == (2 if tool else 1)
    delta = events[-2]
    assert delta["delta"]["stop_reason"] == ("tool_use" if tool else "end_turn")
    # As Anthropic's message_delta: the prompt's totals (cumulative) beside the output's,
    # without the breakdown of cache writes or the tier (MessageDeltaUsage).
    assert delta["usage"] == {
        "input_tokens": 15,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 5,
        "output_tokens": 9,
        "output_tokens_details": {"thinking_tokens": 4},
    }
    decoder = messages_stream.Decoder()
    canonical = [ev for e in events for ev in decoder.feed(e)]
    assert (
        c.text_of([c.Text(e.text) for e in canonical if isinstance(e, c.TextDelta)]) == "hi there"
    )
    assert isinstance(canonical[-1], c.StreamUsage) and canonical[-1].usage.input_tokens == 20
    if tool:
        assert any(isinstance(e, c.ToolCallStart) and e.name == "f" for e in canonical)
