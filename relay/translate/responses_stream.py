"""Responses API streams to and from canonical stream events.

The encoder writes OpenAI's typed events: ``response.created`` and ``.in_progress``, one
output item per message, function call or generated picture (``output_item.added``, its
deltas or progress events, its ``.done`` events, ``output_item.done``), and
``response.completed`` (or ``response.incomplete``) carrying the whole response with its
usage, once the source stream has ended.
"""

from __future__ import annotations

from typing import Any

import orjson

from relay.translate import canonical as c
from relay.translate import responses as r


def frame(event: dict[str, Any]) -> bytes:
    return b"event: " + event["type"].encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


class Encoder:
    """Canonical events in, Responses SSE frames out; ``close()`` ends the stream."""

    def __init__(self, request: dict[str, Any], model: str) -> None:
        self.request = request
        self.model = model
        self.id = r.new_id("resp_")
        self.sequence = 0
        self.output: list[dict[str, Any]] = []
        self.open: dict[str, Any] | None = None  # the item being streamed
        self.text: list[str] = []
        self.calls: dict[int, dict[str, Any]] = {}
        self.reasoning: list[str] = []
        self.stop: c.Stop = "end"
        self.usage: c.Usage | None = None
        self.started = False

    def _event(self, kind: str, **fields: Any) -> bytes:
        event = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return frame(event)

    def _snapshot(self, status: str) -> dict[str, Any]:
        stop = self.stop if status != "in_progress" else None
        return r.response_object(
            self.request,
            self.id,
            self.model,
            status,
            list(self.output),
            self.usage if status != "in_progress" else None,
            stop,
        )

    def _start(self) -> list[bytes]:
        if self.started:
            return []
        self.started = True
        snapshot = self._snapshot("in_progress")
        return [
            self._event("response.created", response=snapshot),
            self._event("response.in_progress", response=snapshot),
        ]

    def _close_item(self) -> list[bytes]:
        item, self.open = self.open, None
        if item is None:
            return []
        index = len(self.output)
        where = {"item_id": item["id"], "output_index": index}
        frames = []
        if item["type"] == "message":
            text = "".join(self.text)
            self.text = []
            done = r.output_text(text)
            frames.append(
                self._event(
                    "response.output_text.done", **where, content_index=0, text=text, logprobs=[]
                )
            )
            frames.append(
                self._event("response.content_part.done", **where, content_index=0, part=done)
            )
            item = r.message_item(item["id"], text, "completed")
        else:
            frames.append(
                self._event(
                    "response.function_call_arguments.done",
                    **where,
                    name=item["name"],
                    arguments=item["arguments"],
                )
            )
            item = {**item, "status": "completed"}
        self.output.append(item)
        frames.append(self._event("response.output_item.done", output_index=index, item=item))
        return frames

    def feed(self, event: c.Event) -> list[bytes]:
        frames = self._start()
        index = len(self.output)
        if isinstance(event, c.TextDelta):
            if self.open is None or self.open["type"] != "message":
                frames += self._close_item()
                index = len(self.output)
                self.open = r.message_item(r.new_id("msg_"), None, "in_progress")
                frames.append(
                    self._event("response.output_item.added", output_index=index, item=self.open)
                )
                frames.append(
                    self._event(
                        "response.content_part.added",
                        item_id=self.open["id"],
                        output_index=index,
                        content_index=0,
                        part=r.output_text(""),
                    )
                )
            self.text.append(event.text)
            frames.append(
                self._event(
                    "response.output_text.delta",
                    item_id=self.open["id"],
                    output_index=index,
                    content_index=0,
                    delta=event.text,
                    logprobs=[],
                )
            )
        elif isinstance(event, c.ToolCallStart):
            frames += self._close_item()
            index = len(self.output)
            call = c.ToolCall(event.id, event.name, "")
            self.open = r.call_item(call, "in_progress")
            self.calls[event.index] = self.open
            frames.append(
                self._event("response.output_item.added", output_index=index, item=dict(self.open))
            )
        elif isinstance(event, c.ToolCallDelta):
            item = self.calls.get(event.index)
            if item is not None and item is self.open:
                item["arguments"] += event.arguments
                frames.append(
                    self._event(
                        "response.function_call_arguments.delta",
                        item_id=item["id"],
                        output_index=index,
                        delta=event.arguments,
                    )
                )
        elif isinstance(event, c.ImageGenerated):
            frames += self._image(event.image)
        elif isinstance(event, c.ReasoningDelta):
            self.reasoning.append(event.text)
        elif isinstance(event, c.StreamFinish):
            self.stop = event.stop
        elif isinstance(event, c.StreamUsage):
            self.usage = event.usage
        return frames

    def _image(self, image: c.GeneratedImage) -> list[bytes]:
        """A picture arrives whole: its item opens, runs and is done at once."""
        frames = self._close_item()
        index = len(self.output)
        item_id = r.new_id("ig_")
        where = {"item_id": item_id, "output_index": index}
        added = r.image_item(image, item_id, "in_progress")
        frames.append(self._event("response.output_item.added", output_index=index, item=added))
        frames.append(self._event("response.image_generation_call.in_progress", **where))
        frames.append(self._event("response.image_generation_call.completed", **where))
        done = r.image_item(image, item_id)
        self.output.append(done)
        frames.append(self._event("response.output_item.done", output_index=index, item=done))
        return frames

    def close(self) -> list[bytes]:
        """The closing events, once the source stream ended normally."""
        frames = self._start() + self._close_item()
        if not self.output:
            self.output.append(r.message_item(r.new_id("msg_"), "", "completed"))
        final = self._snapshot("completed")
        kind = "response.completed" if final["status"] == "completed" else "response.incomplete"
        frames.append(self._event(kind, response=final))
        return frames

    def error(self, code: str, message: str) -> bytes:
        """An ``error`` event for a stream that broke."""
        return self._event("error", code=code, message=message, param=None)


class Decoder:
    """Responses stream events (parsed JSON) to canonical events."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}

    def feed(self, event: dict[str, Any]) -> list[c.Event]:
        kind = event.get("type")
        if kind == "response.created":
            response = event.get("response") or {}
            return [
                c.StreamStart(
                    str(response.get("id") or ""),
                    str(response.get("model") or ""),
                    c.as_int(response.get("created_at")),
                )
            ]
        if kind == "response.output_text.delta":
            return [c.TextDelta(str(event.get("delta") or ""))]
        if kind == "response.reasoning_summary_text.delta":
            return [c.ReasoningDelta(str(event.get("delta") or ""))]
        if kind == "response.output_item.added":
            item = event.get("item") or {}
            if item.get("type") == "function_call":
                index = self.calls[str(item.get("id"))] = len(self.calls)
                return [
                    c.ToolCallStart(
                        index, str(item.get("call_id") or ""), str(item.get("name") or "")
                    )
                ]
        if kind == "response.output_item.done":
            item = event.get("item")
            if isinstance(item, dict) and item.get("type") == "image_generation_call":
                image = r.generated_image(item)
                return [c.ImageGenerated(image)] if image is not None else []
        if kind == "response.function_call_arguments.delta":
            found = self.calls.get(str(event.get("item_id")))
            if found is not None:
                return [c.ToolCallDelta(found, str(event.get("delta") or ""))]
        if kind in ("response.completed", "response.incomplete"):
            final = r.response_to_canonical(event.get("response") or {})
            events: list[c.Event] = [c.StreamFinish(final.stop)]
            if final.usage is not None:
                events.append(c.StreamUsage(final.usage))
            return events
        return []
