"""A passed-through stream chunk as the client gets it: the public model name, the usage
chunk only when the client asked for it, nothing else changed; and the text kept for
local counting and the usage read, whatever the chunk's shape (checked on many chunks
built at random, with escapes, unicode, spacing and the member names inside text)."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from relay.dialects.chat import ChatLeg, delta_texts
from relay.metering import Usage, UsageRecord

PUBLIC = "gpt-public"
UPSTREAM = "gpt-upstream-2026"
USAGE = {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}
# Texts that look like the members the relay edits, or need escaping.
TEXTS = [
    "",
    "plain",
    ' "model":"gpt-upstream-2026"',
    '\\"model\\":\\"x\\"',
    ',"usage":null',
    '"usage":null,',
    "line\nbreak\ttab\r",
    'quote " and backslash \\',
    "unicode: é 中文 🚀",
    "\u2028\u2029",
    "model",
    "\u0000 control",
]


def _record() -> UsageRecord:
    record = UsageRecord(
        request_id="req_chunks",
        created_at=datetime(2026, 11, 30, tzinfo=UTC),
        tenant_id=1,
        api_key_id=1,
        model=PUBLIC,
        stream=True,
        status_code=200,
        total_latency_ms=0,
    )
    record.completion_text = []
    return record


def _leg(wants_usage: bool) -> ChatLeg:
    return ChatLeg(_record(), PUBLIC, {"model": PUBLIC, "messages": []}, wants_usage)


def _delta(rng: random.Random) -> dict[str, Any]:
    shape = rng.randrange(5)
    if shape == 0:
        return {"content": rng.choice(TEXTS)}
    if shape == 1:
        return {"role": "assistant", "content": rng.choice(TEXTS)}
    if shape == 2:
        return {"reasoning_content": rng.choice(TEXTS), "content": rng.choice(TEXTS)}
    if shape == 3:
        return {
            "tool_calls": [
                {
                    "index": 0,
                    "function": {"name": rng.choice(TEXTS), "arguments": rng.choice(TEXTS)},
                }
            ]
        }
    return {}


def _chunk(rng: random.Random) -> dict[str, Any]:
    chunk: dict[str, Any] = {
        "id": "chatcmpl-" + rng.choice(TEXTS),
        "object": "chat.completion.chunk",
    }
    model = rng.choice([UPSTREAM, PUBLIC, "é-model", None])
    if model is not None:
        chunk["model"] = model
    choices = [
        {"index": i, "delta": _delta(rng), "finish_reason": None}
        for i in range(rng.choice([0, 1, 1, 2]))
    ]
    usage = rng.choice(["absent", "null", "value"])
    members = [("choices", choices)]
    if usage != "absent":
        members.append(("usage", USAGE if usage == "value" else None))
    if rng.random() < 0.2:  # a nested "model" and "usage", as an extension might send
        members.append(("x_meta", {"model": UPSTREAM, "usage": None}))
    rng.shuffle(members)
    chunk.update(members)
    return chunk


def _texts(delta: dict[str, Any]) -> list[str]:
    """The text a delta delivers, in the order the relay keeps it."""
    texts = [delta[name] for name in ("content", "reasoning_content", "refusal") if name in delta]
    for call in delta.get("tool_calls", ()):
        texts += [call["function"]["name"], call["function"]["arguments"]]
    return texts


def _encode(chunk: dict[str, Any], rng: random.Random) -> bytes:
    """The chunk as some upstream writes it: compact, spaced, or ASCII-escaped."""
    style = rng.randrange(3)
    if style == 0:
        return orjson.dumps(chunk)
    if style == 1:
        return json.dumps(chunk).encode()  # spaces after separators, \\u escapes
    return json.dumps(chunk, ensure_ascii=False, indent=1).encode()


@pytest.mark.parametrize("wants_usage", [True, False])
def test_random_chunks_keep_their_meaning(wants_usage: bool) -> None:
    rng = random.Random(18 + wants_usage)
    for _ in range(3000):
        chunk = _chunk(rng)
        data = _encode(chunk, rng)
        leg = _leg(wants_usage)
        out = leg.rewrite(data)

        choices = chunk["choices"]
        assert leg.record.completion_text == [t for c in choices for t in _texts(c["delta"])]
        assert leg.record.usage == (Usage.from_openai(USAGE) if chunk.get("usage") else None)
        if not wants_usage and chunk.get("usage") is not None and not choices:
            assert out is None  # the usage chunk the client did not ask for
            continue
        assert out is not None
        expected = {**chunk, "model": PUBLIC}
        if not wants_usage:
            expected.pop("usage", None)
        assert orjson.loads(out) == expected, data
        if chunk.get("model") == PUBLIC and (wants_usage or "usage" not in chunk):
            assert out is data  # nothing to change: the upstream's bytes go out as they came


def test_a_nested_usage_member_is_left_alone() -> None:
    """Only the top-level ``usage`` is the relay's to drop, wherever the others are."""
    data = (
        b'{"id":"c","model":"gpt-public","choices":[{"index":0,"delta":{"content":"a"},'
        b'"x":{"n":1,"usage":null}}],"usage":null}'
    )
    out = _leg(wants_usage=False).rewrite(data)
    assert out is not None
    assert orjson.loads(out) == {
        "id": "c",
        "model": "gpt-public",
        "choices": [{"index": 0, "delta": {"content": "a"}, "x": {"n": 1, "usage": None}}],
    }


def test_one_key_deltas_give_what_the_general_walk_gives() -> None:
    """``delta_texts`` takes a short cut for a delta holding only ``content``."""
    for value in [*TEXTS, None, 5, ["a"], {"text": "a"}]:
        alone = delta_texts({"delta": {"content": value}})
        with_role = delta_texts({"delta": {"role": "assistant", "content": value}})
        assert alone == with_role == ([value] if isinstance(value, str) else [])
