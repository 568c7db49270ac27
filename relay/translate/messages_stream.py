"""Anthropic Messages streams to and from canonical stream events.

The encoder writes ``message_start`` and a ``ping``, as Anthropic does, then one
``content_block_start`` / ``_delta`` / ``_stop`` run per thinking, text or tool-use block,
then, once the source stream has ended, ``message_delta`` with the stop reason and the
usage, and ``message_stop``. The prompt's counts are known only at the end (a chat
stream's usage comes last), so ``message_start`` says 0 and ``message_delta`` carries
them, cumulative, as Anthropic's own does: its SDKs take them into the final message.
Generated pictures have no block in this format: they are not written.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson

from relay.translate import canonical as c
from relay.translate import messages as m


def frame(event: dict[str, Any]) -> bytes:
    return b"event: " + event["type"].encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


# What Anthropic's ``message_delta`` counts (``MessageDeltaUsage``): the prompt's totals
# again, and the output's, but not the breakdown of cache writes nor the service tier.
DELTA_COUNTS = (
    "input_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "output_tokens",
    "output_tokens_details",
)


def delta_usage(usage: c.Usage | None) -> dict[str, Any]:
    """``message_delta``'s usage: every count the source gave; only the output's, none
    counted, when it gave no usage (the relay then counts the answer itself)."""
    if usage is None:
        return {"output_tokens": 0}
    whole = m.usage_from_canonical(usage)
    return {name: whole[name] for name in DELTA_COUNTS if name in whole}


class Encoder:
    """Canonical events as an Anthropic Messages stream. Reasoning becomes ``thinking``
    blocks only with ``thinking`` (the client asked for it: Anthropic sends none
    otherwise). Canonical stream events carry no signature, so no ``signature_delta`` is
    sent: the block keeps the empty one it starts with (``messages.thinking_block``)."""

    def __init__(self, model: str, message_id: str, *, thinking: bool = False) -> None:
        self.model = model
        self.id = message_id
        self.thinking = thinking
        self.started = False
        self.block = -1
        self.open: str | None = None  # "thinking", "text" or "tool_use"
        self.calls: dict[int, int] = {}  # canonical call index -> block index
        self.stop: c.Stop = "end"
        self.usage: c.Usage | None = None

    def _start(self) -> list[bytes]:
        if self.started:
            return []
        self.started = True
        message: dict[str, Any] = {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            # Not known yet: ``message_delta`` carries the counts.
            "usage": {
                "input_tokens": 0,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": 0,
            },
        }
        return [frame({"type": "message_start", "message": message}), frame({"type": "ping"})]

    def _close(self) -> list[bytes]:
        if self.open is None:
            return []
        self.open = None
        return [frame({"type": "content_block_stop", "index": self.block})]

    def _open(self, kind: str, block: dict[str, Any]) -> list[bytes]:
        frames = self._close()
        self.block += 1
        self.open = kind
        frames.append(
            frame({"type": "content_block_start", "index": self.block, "content_block": block})
        )
        return frames

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return frame({"type": "content_block_delta", "index": self.block, "delta": delta})

    def feed(self, event: c.Event) -> list[bytes]:
        frames = self._start()
        if isinstance(event, c.TextDelta):
            if self.open != "text":
                frames += self._open("text", {"type": "text", "text": ""})
            frames.append(self._delta({"type": "text_delta", "text": event.text}))
        elif isinstance(event, c.ReasoningDelta):
            if self.thinking and event.text:
                if self.open != "thinking":
                    block = m.thinking_block(c.Reasoning(""))
                    frames += self._open("thinking", block)
                frames.append(self._delta({"type": "thinking_delta", "thinking": event.text}))
        elif isinstance(event, c.ToolCallStart):
            frames += self._open(
                "tool_use", {"type": "tool_use", "id": event.id, "name": event.name, "input": {}}
            )
            self.calls[event.index] = self.block
        elif isinstance(event, c.ToolCallDelta):
            if self.calls.get(event.index) == self.block and self.open == "tool_use":
                frames.append(
                    self._delta({"type": "input_json_delta", "partial_json": event.arguments})
                )
        elif isinstance(event, c.StreamFinish):
            self.stop = event.stop
        elif isinstance(event, c.StreamUsage):
            self.usage = event.usage
        return frames

    def close(self) -> list[bytes]:
        frames = self._start() + self._close()
        frames.append(
            frame(
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": m.STOPS_OUT[self.stop], "stop_sequence": None},
                    "usage": delta_usage(self.usage),
                }
            )
        )
        frames.append(frame({"type": "message_stop"}))
        return frames

    @staticmethod
    def error(kind: str, message: str) -> bytes:
        return frame({"type": "error", "error": {"type": kind, "message": message}})


class Decoder:
    """Anthropic stream events (parsed JSON) to canonical events."""

    def __init__(self) -> None:
        self.blocks: dict[int, int] = {}  # block index -> canonical call index
        self.usage = c.Usage()
        # The prompt's counts as ``message_start`` gave them, before the output's.
        self.prompt: c.Usage | None = None

    def _merge(self, usage: Any) -> bool:
        """Take what ``usage`` counts; whether it counted anything."""
        return m.merge_usage(self.usage, usage)

    def feed(self, event: dict[str, Any]) -> list[c.Event]:
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message") or {}
            if self._merge(message.get("usage")):
                self.prompt = dataclasses.replace(self.usage)
            return [c.StreamStart(str(message.get("id") or ""), str(message.get("model") or ""))]
        if kind == "content_block_start":
            block = event.get("content_block") or {}
            if block.get("type") == "tool_use":
                index = self.blocks[c.as_int(event.get("index"))] = len(self.blocks)
                return [
                    c.ToolCallStart(index, str(block.get("id") or ""), str(block.get("name") or ""))
                ]
            if block.get("type") == "text" and block.get("text"):
                return [c.TextDelta(str(block["text"]))]
            return []
        if kind == "content_block_delta":
            delta = event.get("delta") or {}
            if delta.get("type") == "text_delta":
                return [c.TextDelta(str(delta.get("text") or ""))]
            if delta.get("type") == "thinking_delta":
                return [c.ReasoningDelta(str(delta.get("thinking") or ""))]
            if delta.get("type") == "input_json_delta":
                found = self.blocks.get(c.as_int(event.get("index")))
                if found is not None:
                    return [c.ToolCallDelta(found, str(delta.get("partial_json") or ""))]
            return []
        if kind == "message_delta":
            self._merge(event.get("usage"))
            stop = (event.get("delta") or {}).get("stop_reason")
            return [c.StreamFinish(m.STOPS_IN.get(str(stop), "end"))]
        if kind == "message_stop":
            return [c.StreamUsage(self.usage)]
        return []
