"""The Anthropic Messages stream written for a Messages client whose request another
format's channel answered (``messages_stream.Encoder``), checked against the official
``anthropic`` SDK: its event types, and the final message its stream helper accumulates
from the encoder's bytes."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import pytest
from anthropic.types import (
    Message,
    MessageDeltaUsage,
    RawContentBlockStartEvent,
    RawMessageDeltaEvent,
    RawMessageStartEvent,
)

from relay.translate import canonical as c
from relay.translate import chat, messages, messages_stream
from tests.servers import asgi_body, running_server

BASE = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m"}


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {**BASE, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def chat_stream(usage: dict[str, Any] | None, reasoning: bool = False) -> list[dict[str, Any]]:
    """A chat completions stream: reasoning text first (as DeepSeek's and others'
    ``reasoning_content``) if asked, then "hi there", then its usage chunk."""
    chunks = [chunk({"role": "assistant", "content": ""})]
    if reasoning:
        chunks += [chunk({"reasoning_content": "let me"}), chunk({"reasoning_content": " see"})]
    chunks += [chunk({"content": "hi"}), chunk({"content": " there"}), chunk({}, "stop")]
    if usage is not None:
        chunks.append({**BASE, "choices": [], "usage": usage})
    return chunks


USAGE = {
    "prompt_tokens": 20,
    "completion_tokens": 9,
    "total_tokens": 29,
    "prompt_tokens_details": {"cached_tokens": 5, "cache_write_tokens": 3},
    "completion_tokens_details": {"reasoning_tokens": 4},
}


def encode(chunks: list[dict[str, Any]], *, thinking: bool = False) -> bytes:
    decoder = chat.Decoder()
    encoder = messages_stream.Encoder("m", "msg_1", thinking=thinking)
    out = b"".join(frame for ch in chunks for ev in decoder.feed(ch) for frame in encoder.feed(ev))
    return out + b"".join(encoder.close())


def events(raw: bytes) -> list[dict[str, Any]]:
    """Each event's data, after checking that its SSE name is its type."""
    found = []
    for block in raw.decode().split("\n\n"):
        if not block:
            continue
        name, data = block.split("\n")
        event = json.loads(data.removeprefix("data: "))
        assert name == "event: " + event["type"]
        found.append(event)
    return found


class Replay:
    """A loopback server answering every request with a stream of ``body``, for the
    official SDK to read as it reads Anthropic's."""

    def __init__(self) -> None:
        self.body = b""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await asgi_body(receive)
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})


@pytest.fixture(scope="module")
def sdk_final() -> Iterator[Callable[[bytes], Message]]:
    """The message the official SDK's stream helper accumulates from a stream of ``raw``."""
    replay = Replay()

    def final(raw: bytes) -> Message:
        replay.body = raw
        with (
            anthropic.Anthropic(api_key="sk-test", base_url=url, max_retries=0) as sdk,
            sdk.messages.stream(
                model="m", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
            ) as stream,
        ):
            return stream.get_final_message()

    with running_server(replay) as url:
        yield final


def test_the_stream_opens_with_message_start_then_ping_as_anthropics_does() -> None:
    found = events(encode(chat_stream(USAGE)))
    assert [e["type"] for e in found[:2]] == ["message_start", "ping"]
    assert found[1] == {"type": "ping"}
    RawMessageStartEvent.model_validate(found[0])
    assert [e["type"] for e in found[-2:]] == ["message_delta", "message_stop"]


def test_message_delta_carries_the_prompts_counts_and_the_sdk_takes_them(
    sdk_final: Callable[[bytes], Message],
) -> None:
    """The prompt's counts are known only at the end: ``message_delta`` repeats them
    (cumulative, in Anthropic's convention: ``input_tokens`` without cache reads and
    writes), in exactly the fields of the SDK's ``MessageDeltaUsage``."""
    raw = encode(chat_stream(USAGE))
    delta = events(raw)[-2]
    RawMessageDeltaEvent.model_validate(delta)
    assert delta["usage"] == {
        "input_tokens": 12,
        "cache_creation_input_tokens": 3,
        "cache_read_input_tokens": 5,
        "output_tokens": 9,
        "output_tokens_details": {"thinking_tokens": 4},
    }
    assert set(delta["usage"]) <= set(MessageDeltaUsage.model_fields)
    final = sdk_final(raw)
    assert final.content[0].type == "text" and final.content[0].text == "hi there"
    assert final.stop_reason == "end_turn"
    usage = final.usage
    assert (usage.input_tokens, usage.cache_read_input_tokens) == (12, 5)
    assert (usage.cache_creation_input_tokens, usage.output_tokens) == (3, 9)
    assert usage.output_tokens_details is not None
    assert usage.output_tokens_details.thinking_tokens == 4
    # message_start knew no breakdown of the cache writes: it claims none.
    assert usage.cache_creation is None


def test_a_source_without_usage_counts_nothing_it_does_not_know(
    sdk_final: Callable[[bytes], Message],
) -> None:
    raw = encode(chat_stream(None))
    delta = events(raw)[-2]
    assert delta["usage"] == {"output_tokens": 0}
    RawMessageDeltaEvent.model_validate(delta)
    assert sdk_final(raw).usage.input_tokens == 0


def test_reasoning_becomes_thinking_blocks_for_a_client_that_asked(
    sdk_final: Callable[[bytes], Message],
) -> None:
    """The upstream's reasoning text is a ``thinking`` block ahead of the text. It has no
    signature to give (only Claude signs its thinking): the block starts with an empty
    one, as the SDK's ``ThinkingBlock`` needs a string, and no ``signature_delta`` is sent."""
    raw = encode(chat_stream(USAGE, reasoning=True), thinking=True)
    found = events(raw)
    starts = [e for e in found if e["type"] == "content_block_start"]
    for start in starts:
        RawContentBlockStartEvent.model_validate(start)
    assert [s["content_block"]["type"] for s in starts] == ["thinking", "text"]
    assert [s["index"] for s in starts] == [0, 1]
    assert not any(e.get("delta", {}).get("type") == "signature_delta" for e in found)
    final = sdk_final(raw)
    thought, text = final.content
    assert thought.type == "thinking" and thought.thinking == "let me see"
    assert thought.signature == ""
    assert text.type == "text" and text.text == "hi there"
    # Sent back, the block reaches another format's channel as reasoning, unsigned.
    request = messages.request_to_canonical(
        {
            "model": "m",
            "max_tokens": 10,
            "messages": [{"role": "assistant", "content": [thought.to_dict(), text.to_dict()]}],
        }
    )
    assert request.turns[0].parts[0] == c.Reasoning("let me see", "")
    assert messages.request_from_canonical(request)["messages"][0]["content"] == [
        {"type": "text", "text": "hi there"}  # Anthropic refuses thinking it did not sign
    ]


def test_reasoning_is_left_out_for_a_client_that_did_not_ask(
    sdk_final: Callable[[bytes], Message],
) -> None:
    final = sdk_final(encode(chat_stream(USAGE, reasoning=True)))
    assert [block.type for block in final.content] == ["text"]


def test_whole_answers_carry_thinking_blocks_only_when_asked() -> None:
    answer = chat.response_to_canonical(
        {
            "id": "chatcmpl-1",
            "model": "m",
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": "hi there",
                        "reasoning_content": "let me see",
                    },
                    "finish_reason": "stop",
                }
            ],
            "usage": USAGE,
        }
    )
    shown = Message.model_validate(messages.response_from_canonical(answer, thinking=True))
    assert [block.type for block in shown.content] == ["thinking", "text"]
    assert shown.content[0].type == "thinking" and shown.content[0].thinking == "let me see"
    assert shown.usage.output_tokens_details is not None
    hidden = Message.model_validate(messages.response_from_canonical(answer))
    assert [block.type for block in hidden.content] == ["text"]
    # Claude's own thinking (Bedrock's, through the canonical form) keeps its signature.
    signed = c.Response("msg_1", "m", [c.Reasoning("hmm", "sig-1"), c.Text("ok")])
    out = messages.response_from_canonical(signed, thinking=True)
    assert out["content"][0] == {"type": "thinking", "thinking": "hmm", "signature": "sig-1"}


@pytest.mark.parametrize(
    ("thinking", "shown"),
    [
        ({"type": "enabled", "budget_tokens": 2048}, True),
        ({"type": "adaptive"}, True),
        ({"type": "enabled", "budget_tokens": 2048, "display": "omitted"}, False),
        ({"type": "disabled"}, False),
        (None, False),
    ],
)
def test_which_requests_see_thinking(thinking: Any, shown: bool) -> None:
    body = {"model": "m", "max_tokens": 10, "messages": [], "thinking": thinking}
    assert messages.shows_thinking(body) is shown
