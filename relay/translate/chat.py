"""OpenAI chat completions to and from the canonical form, streams included."""

from __future__ import annotations

import time
import uuid
from typing import Any

from relay.translate import canonical as c

STOPS_IN: dict[str, c.Stop] = {
    "stop": "end",
    "length": "length",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "content_filter",
}
STOPS_OUT: dict[str, str] = {
    "end": "stop",
    "stop_sequence": "stop",
    "length": "length",
    "tool_use": "tool_calls",
    "content_filter": "content_filter",
}


def _parts(content: Any) -> list[c.Text | c.Image]:
    if isinstance(content, str):
        return [c.Text(content)] if content else []
    parts: list[c.Text | c.Image] = []
    for part in content if isinstance(content, list) else ():
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if kind == "text" and isinstance(part.get("text"), str):
            parts.append(c.Text(part["text"], part.get("cache_control")))
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if isinstance(url, str):
                detail = image.get("detail") if isinstance(image, dict) else None
                parts.append(c.Image(url, detail))
        elif kind is not None:
            raise c.TranslationError(f"Content of type '{kind}' cannot be translated.")
    return parts


def _content_out(parts: list[Any]) -> str | list[dict[str, Any]]:
    if all(isinstance(part, c.Text) for part in parts):
        return c.text_of(parts)
    out: list[dict[str, Any]] = []
    for part in parts:
        if isinstance(part, c.Text):
            out.append({"type": "text", "text": part.text})
        elif isinstance(part, c.Image):
            image: dict[str, Any] = {"url": part.url}
            if part.detail:
                image["detail"] = part.detail
            out.append({"type": "image_url", "image_url": image})
    return out


def request_to_canonical(body: dict[str, Any]) -> c.Request:
    request = c.Request(model=str(body.get("model") or ""), turns=[])
    for message in body.get("messages") or ():
        role = message.get("role")
        if role in ("system", "developer"):
            request.system.extend(
                p for p in _parts(message.get("content")) if isinstance(p, c.Text)
            )
        elif role == "user":
            request.turns.append(c.Turn("user", list(_parts(message.get("content")))))
        elif role == "assistant":
            parts: list[c.Part] = []
            if isinstance(message.get("reasoning_content"), str):
                parts.append(c.Reasoning(message["reasoning_content"]))
            parts.extend(_parts(message.get("content")))
            for call in message.get("tool_calls") or ():
                function = call.get("function") or {}
                parts.append(
                    c.ToolCall(
                        str(call.get("id") or ""),
                        str(function.get("name") or ""),
                        str(function.get("arguments") or "{}"),
                    )
                )
            request.turns.append(c.Turn("assistant", parts))
        elif role == "tool":
            result = c.ToolResult(
                str(message.get("tool_call_id") or ""), list(_parts(message.get("content")))
            )
            previous = request.turns[-1] if request.turns else None
            if (
                previous is not None
                and previous.role == "user"
                and previous.parts
                and all(isinstance(p, c.ToolResult) for p in previous.parts)
            ):
                previous.parts.append(result)
            else:
                request.turns.append(c.Turn("user", [result]))
    for tool in body.get("tools") or ():
        if tool.get("type") != "function":
            raise c.TranslationError(f"Tools of type '{tool.get('type')}' cannot be translated.")
        function = tool.get("function") or {}
        request.tools.append(
            c.Tool(
                str(function.get("name") or ""),
                function.get("description"),
                function.get("parameters"),
                function.get("strict"),
            )
        )
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        request.tool_choice = str((choice.get("function") or {}).get("name") or "")
    elif isinstance(choice, str):
        request.tool_choice = choice
    request.parallel_tool_calls = body.get("parallel_tool_calls")
    limit = body.get("max_completion_tokens")
    request.max_output_tokens = limit if limit is not None else body.get("max_tokens")
    request.temperature = body.get("temperature")
    request.top_p = body.get("top_p")
    stop = body.get("stop")
    request.stop = [stop] if isinstance(stop, str) else list(stop or ())
    request.reasoning_effort = body.get("reasoning_effort")
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        schema = fmt.get("json_schema") or {}
        request.output_format = c.OutputFormat(
            "json_schema", schema.get("name", "output"), schema.get("schema"), schema.get("strict")
        )
    elif isinstance(fmt, dict) and fmt.get("type") == "json_object":
        request.output_format = c.OutputFormat("json_object")
    request.user = body.get("user")
    request.stream = body.get("stream") is True
    modalities = body.get("modalities")
    request.image_output = isinstance(modalities, list) and "image" in modalities
    return request


def request_from_canonical(request: c.Request) -> dict[str, Any]:
    messages: list[dict[str, Any]] = []
    if request.system:
        messages.append({"role": "system", "content": c.text_of(request.system)})
    for turn in request.turns:
        if turn.role == "assistant":
            message: dict[str, Any] = {"role": "assistant"}
            shown = [p for p in turn.parts if isinstance(p, (c.Text, c.Image))]
            message["content"] = _content_out(shown) if shown else None
            calls = [p for p in turn.parts if isinstance(p, c.ToolCall)]
            if calls:
                message["tool_calls"] = [
                    {
                        "id": c.bare_call_id(x.id),
                        "type": "function",
                        "function": {"name": x.name, "arguments": x.arguments},
                    }
                    for x in calls
                ]
            messages.append(message)
            continue
        rest: list[Any] = []
        for part in turn.parts:
            if isinstance(part, c.ToolResult):
                messages.append(
                    {
                        "role": "tool",
                        "tool_call_id": c.bare_call_id(part.call_id),
                        "content": _content_out(part.content),
                    }
                )
            elif isinstance(part, (c.Text, c.Image)):
                rest.append(part)
        if rest:
            messages.append({"role": "user", "content": _content_out(rest)})
    body: dict[str, Any] = {"model": request.model, "messages": messages}
    if request.tools:
        body["tools"] = []
        for tool in request.tools:
            function: dict[str, Any] = {"name": tool.name}
            if tool.description is not None:
                function["description"] = tool.description
            if tool.parameters is not None:
                function["parameters"] = tool.parameters
            if tool.strict is not None:
                function["strict"] = tool.strict
            body["tools"].append({"type": "function", "function": function})
    if request.tool_choice in ("auto", "none", "required"):
        body["tool_choice"] = request.tool_choice
    elif request.tool_choice:
        body["tool_choice"] = {"type": "function", "function": {"name": request.tool_choice}}
    if request.parallel_tool_calls is not None and request.tools:
        body["parallel_tool_calls"] = request.parallel_tool_calls
    for name, value in (
        ("max_completion_tokens", request.max_output_tokens),
        ("temperature", request.temperature),
        ("top_p", request.top_p),
        ("reasoning_effort", request.reasoning_effort),
        ("user", request.user),
    ):
        if value is not None:
            body[name] = value
    if request.stop:
        body["stop"] = request.stop
    if request.image_output:
        body["modalities"] = ["image", "text"]
    fmt = request.output_format
    if fmt is not None and fmt.kind == "json_schema":
        schema: dict[str, Any] = {"name": fmt.name, "schema": fmt.schema or {}}
        if fmt.strict is not None:
            schema["strict"] = fmt.strict
        body["response_format"] = {"type": "json_schema", "json_schema": schema}
    elif fmt is not None:
        body["response_format"] = {"type": "json_object"}
    if request.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def usage_to_canonical(usage: Any, service_tier: Any = None) -> c.Usage | None:
    if not isinstance(usage, dict):
        return None
    prompt = usage.get("prompt_tokens_details") or {}
    completion = usage.get("completion_tokens_details") or {}
    return c.Usage(
        input_tokens=c.as_int(usage.get("prompt_tokens")),
        output_tokens=c.as_int(usage.get("completion_tokens")),
        cached_tokens=c.as_int(prompt.get("cached_tokens")),
        cache_write_tokens=c.as_int(prompt.get("cache_write_tokens")),
        reasoning_tokens=c.as_int(completion.get("reasoning_tokens")),
        audio_input_tokens=c.as_int(prompt.get("audio_tokens")),
        audio_output_tokens=c.as_int(completion.get("audio_tokens")),
        image_input_tokens=c.as_int(prompt.get("image_tokens")),
        image_output_tokens=c.as_int(completion.get("image_tokens")),
        service_tier=c.service_tier(service_tier),
    )


def usage_from_canonical(usage: c.Usage) -> dict[str, Any]:
    prompt = {"cached_tokens": usage.cached_tokens, "audio_tokens": usage.audio_input_tokens}
    if usage.cache_write_tokens:
        prompt["cache_write_tokens"] = usage.cache_write_tokens
    if usage.image_input_tokens:
        prompt["image_tokens"] = usage.image_input_tokens
    completion = {
        "reasoning_tokens": usage.reasoning_tokens,
        "audio_tokens": usage.audio_output_tokens,
    }
    if usage.image_output_tokens:
        completion["image_tokens"] = usage.image_output_tokens
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
        "prompt_tokens_details": prompt,
        "completion_tokens_details": completion,
    }


def images_in(holder: dict[str, Any]) -> list[c.GeneratedImage]:
    """The generated pictures of a message or delta (``images``: ``image_url`` parts
    holding data URLs, as OpenRouter returns image output); others are not kept."""
    found = []
    for entry in holder.get("images") or ():
        image = entry.get("image_url") if isinstance(entry, dict) else None
        url = image.get("url") if isinstance(image, dict) else image
        picture = c.GeneratedImage.from_data_url(url)
        if picture is not None:
            found.append(picture)
    return found


def image_out(image: c.GeneratedImage) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": image.data_url()}}


def response_to_canonical(body: dict[str, Any]) -> c.Response:
    choices = body.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") or {}
    parts: list[c.AnswerPart] = []
    if isinstance(message.get("reasoning_content"), str) and message["reasoning_content"]:
        parts.append(c.Reasoning(message["reasoning_content"]))
    if isinstance(message.get("content"), str) and message["content"]:
        parts.append(c.Text(message["content"]))
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        parts.append(
            c.ToolCall(
                str(call.get("id") or ""),
                str(function.get("name") or ""),
                str(function.get("arguments") or ""),
            )
        )
    parts.extend(images_in(message))
    return c.Response(
        id=str(body.get("id") or ""),
        model=str(body.get("model") or ""),
        parts=parts,
        stop=STOPS_IN.get(str(choice.get("finish_reason")), "end"),
        usage=usage_to_canonical(body.get("usage"), body.get("service_tier")),
        created=c.as_int(body.get("created")),
    )


def response_from_canonical(response: c.Response) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": None, "refusal": None}
    text = c.text_of(response.parts)
    if text or not any(isinstance(p, c.ToolCall) for p in response.parts):
        message["content"] = text
    reasoning = "".join(p.text for p in response.parts if isinstance(p, c.Reasoning))
    if reasoning:
        message["reasoning_content"] = reasoning
    calls = [p for p in response.parts if isinstance(p, c.ToolCall)]
    if calls:
        message["tool_calls"] = [
            {"id": x.id, "type": "function", "function": {"name": x.name, "arguments": x.arguments}}
            for x in calls
        ]
    images = [image_out(p) for p in response.parts if isinstance(p, c.GeneratedImage)]
    if images:
        message["images"] = images
    body: dict[str, Any] = {
        "id": response.id or "chatcmpl-" + uuid.uuid4().hex[:24],
        "object": "chat.completion",
        "created": response.created or int(time.time()),
        "model": response.model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": STOPS_OUT[response.stop],
            }
        ],
    }
    if response.usage is not None:
        body["usage"] = usage_from_canonical(response.usage)
    return body


class Decoder:
    """Chat completion chunks (parsed JSON) to canonical stream events; choice 0 only."""

    def __init__(self) -> None:
        self.started = False

    def feed(self, chunk: dict[str, Any]) -> list[c.Event]:
        events: list[c.Event] = []
        if not self.started:
            self.started = True
            events.append(
                c.StreamStart(
                    str(chunk.get("id") or ""),
                    str(chunk.get("model") or ""),
                    c.as_int(chunk.get("created")),
                )
            )
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if isinstance(delta.get("reasoning_content"), str) and delta["reasoning_content"]:
                events.append(c.ReasoningDelta(delta["reasoning_content"]))
            if isinstance(delta.get("content"), str) and delta["content"]:
                events.append(c.TextDelta(delta["content"]))
            for call in delta.get("tool_calls") or ():
                index = call.get("index", 0)
                function = call.get("function") or {}
                if call.get("id") or function.get("name"):
                    events.append(
                        c.ToolCallStart(
                            index, str(call.get("id") or ""), str(function.get("name") or "")
                        )
                    )
                if function.get("arguments"):
                    events.append(c.ToolCallDelta(index, str(function["arguments"])))
            if "images" in delta:
                events.extend(c.ImageGenerated(image) for image in images_in(delta))
            if choice.get("finish_reason"):
                events.append(c.StreamFinish(STOPS_IN.get(choice["finish_reason"], "end")))
        usage = usage_to_canonical(chunk.get("usage"), chunk.get("service_tier"))
        if usage is not None:
            events.append(c.StreamUsage(usage))
        return events


class Encoder:
    """Canonical stream events to chat completion chunks (``data:`` payloads as dicts);
    the usage chunk comes last, after the finish chunk, as OpenAI sends it."""

    def __init__(self, model: str, include_usage: bool = True) -> None:
        self.base: dict[str, Any] = {
            "id": "chatcmpl-" + uuid.uuid4().hex[:24],
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
        }
        self.include_usage = include_usage

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {**self.base, "choices": [choice]}

    def feed(self, event: c.Event) -> list[dict[str, Any]]:
        if isinstance(event, c.StreamStart):
            if event.id:
                self.base["id"] = event.id
            return [self._chunk({"role": "assistant", "content": ""})]
        if isinstance(event, c.TextDelta):
            return [self._chunk({"content": event.text})]
        if isinstance(event, c.ReasoningDelta):
            return [self._chunk({"reasoning_content": event.text})]
        if isinstance(event, c.ToolCallStart):
            call = {
                "index": event.index,
                "id": event.id,
                "type": "function",
                "function": {"name": event.name, "arguments": ""},
            }
            return [self._chunk({"tool_calls": [call]})]
        if isinstance(event, c.ToolCallDelta):
            call = {"index": event.index, "function": {"arguments": event.arguments}}
            return [self._chunk({"tool_calls": [call]})]
        if isinstance(event, c.ImageGenerated):
            return [self._chunk({"images": [image_out(event.image)]})]
        if isinstance(event, c.StreamFinish):
            return [self._chunk({}, STOPS_OUT[event.stop])]
        if isinstance(event, c.StreamUsage) and self.include_usage:
            return [{**self.base, "choices": [], "usage": usage_from_canonical(event.usage)}]
        return []
