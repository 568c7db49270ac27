"""OpenAI's Responses API to and from the canonical form (streams: ``responses_stream``)."""

from __future__ import annotations

import time
import uuid
from typing import Any

from relay.translate import canonical as c


def new_id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:24]


def _parts(content: Any) -> list[c.Text | c.Image]:
    if isinstance(content, str):
        return [c.Text(content)] if content else []
    parts: list[c.Text | c.Image] = []
    for part in content if isinstance(content, list) else ():
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if kind in ("input_text", "output_text", "text") and isinstance(part.get("text"), str):
            parts.append(c.Text(part["text"]))
        elif kind == "input_image" and isinstance(part.get("image_url"), str):
            parts.append(c.Image(part["image_url"], part.get("detail")))
        elif kind == "refusal":
            parts.append(c.Text(str(part.get("refusal") or "")))
        else:
            raise c.TranslationError(
                f"Input content of type '{kind}' cannot be translated for this model.", "input"
            )
    return parts


def _append(turns: list[c.Turn], role: Any, parts: list[c.Part]) -> None:
    last = turns[-1] if turns else None
    merge = last is not None and last.role == role
    if merge and role == "user" and last is not None:  # only tool results gather in one turn
        merge = all(isinstance(p, c.ToolResult) for p in (*last.parts, *parts))
    if merge and last is not None:
        last.parts.extend(parts)
    else:
        turns.append(c.Turn(role, parts))


def request_to_canonical(body: dict[str, Any]) -> c.Request:
    request = c.Request(model=str(body.get("model") or ""), turns=[])
    if isinstance(body.get("instructions"), str) and body["instructions"]:
        request.system.append(c.Text(body["instructions"]))
    items = body.get("input")
    if isinstance(items, str):
        items = [{"type": "message", "role": "user", "content": items}]
    for item in items or ():
        if not isinstance(item, dict):
            continue
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role in ("system", "developer"):
                request.system.extend(
                    p for p in _parts(item.get("content")) if isinstance(p, c.Text)
                )
            elif role in ("user", "assistant"):
                _append(request.turns, role, list(_parts(item.get("content"))))
        elif kind == "function_call":
            call = c.ToolCall(
                str(item.get("call_id") or ""),
                str(item.get("name") or ""),
                str(item.get("arguments") or "{}"),
            )
            _append(request.turns, "assistant", [call])
        elif kind == "function_call_output":
            output = item.get("output")
            content: list[c.Text | c.Image] = (
                [c.Text(output)] if isinstance(output, str) else list(_parts(output))
            )
            _append(request.turns, "user", [c.ToolResult(str(item.get("call_id") or ""), content)])
        elif kind == "reasoning":
            continue  # another model's private reasoning: not carried across formats
        else:
            raise c.TranslationError(f"Input items of type '{kind}' cannot be translated.", "input")
    for tool in body.get("tools") or ():
        if tool.get("type") == "image_generation":
            # Asking for pictures is what translates; the tool's own settings (size,
            # quality, format) have no counterpart in the other formats and are dropped.
            request.image_output = True
            continue
        if tool.get("type") != "function":
            raise c.TranslationError(
                f"Tools of type '{tool.get('type')}' are not available for this model.", "tools"
            )
        request.tools.append(
            c.Tool(
                str(tool.get("name") or ""),
                tool.get("description"),
                tool.get("parameters"),
                tool.get("strict"),
            )
        )
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        if choice.get("type") != "function":
            raise c.TranslationError("Only function tool choices can be translated.", "tool_choice")
        request.tool_choice = str(choice.get("name") or "")
    elif isinstance(choice, str):
        request.tool_choice = choice
    request.parallel_tool_calls = body.get("parallel_tool_calls")
    request.max_output_tokens = body.get("max_output_tokens")
    request.temperature = body.get("temperature")
    request.top_p = body.get("top_p")
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict):
        request.reasoning_effort = reasoning.get("effort")
    text = body.get("text")
    fmt = text.get("format") if isinstance(text, dict) else None
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        request.output_format = c.OutputFormat(
            "json_schema", str(fmt.get("name") or "output"), fmt.get("schema"), fmt.get("strict")
        )
    elif isinstance(fmt, dict) and fmt.get("type") == "json_object":
        request.output_format = c.OutputFormat("json_object")
    request.user = body.get("user") or body.get("safety_identifier")
    request.stream = body.get("stream") is True
    return request


def _content_out(parts: list[Any], role: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for part in parts:
        if isinstance(part, c.Text):
            out.append(
                {"type": "output_text" if role == "assistant" else "input_text", "text": part.text}
            )
        elif isinstance(part, c.Image):
            image: dict[str, Any] = {
                "type": "input_image",
                "image_url": part.url,
                "detail": part.detail or "auto",
            }
            out.append(image)
    return out


def request_from_canonical(request: c.Request) -> dict[str, Any]:
    items: list[dict[str, Any]] = []
    for turn in request.turns:
        shown = [p for p in turn.parts if isinstance(p, (c.Text, c.Image))]
        if shown:
            items.append(
                {"type": "message", "role": turn.role, "content": _content_out(shown, turn.role)}
            )
        for part in turn.parts:
            if isinstance(part, c.ToolCall):
                items.append(
                    {
                        "type": "function_call",
                        "call_id": c.bare_call_id(part.id),
                        "name": part.name,
                        "arguments": part.arguments,
                    }
                )
            elif isinstance(part, c.ToolResult):
                items.append(
                    {
                        "type": "function_call_output",
                        "call_id": c.bare_call_id(part.call_id),
                        "output": c.text_of(part.content),
                    }
                )
    body: dict[str, Any] = {"model": request.model, "input": items}
    if request.system:
        body["instructions"] = c.text_of(request.system)
    tools: list[dict[str, Any]] = [
        {
            "type": "function",
            "name": t.name,
            "description": t.description,
            "parameters": t.parameters,
            "strict": t.strict,
        }
        for t in request.tools
    ]
    if request.image_output:
        tools.append({"type": "image_generation"})
    if tools:
        body["tools"] = tools
    if request.tool_choice in ("auto", "none", "required"):
        body["tool_choice"] = request.tool_choice
    elif request.tool_choice:
        body["tool_choice"] = {"type": "function", "name": request.tool_choice}
    for name, value in (
        ("parallel_tool_calls", request.parallel_tool_calls if request.tools else None),
        ("max_output_tokens", request.max_output_tokens),
        ("temperature", request.temperature),
        ("top_p", request.top_p),
        ("user", request.user),
    ):
        if value is not None:
            body[name] = value
    if request.reasoning_effort is not None:
        body["reasoning"] = {"effort": request.reasoning_effort}
    fmt = request.output_format
    if fmt is not None and fmt.kind == "json_schema":
        body["text"] = {
            "format": {
                "type": "json_schema",
                "name": fmt.name,
                "schema": fmt.schema or {},
                "strict": fmt.strict,
            }
        }
    elif fmt is not None:
        body["text"] = {"format": {"type": "json_object"}}
    if request.stream:
        body["stream"] = True
    return body


def usage_to_canonical(usage: Any, service_tier: Any = None) -> c.Usage | None:
    if not isinstance(usage, dict):
        return None
    details = usage.get("input_tokens_details") or {}
    output = usage.get("output_tokens_details") or {}
    return c.Usage(
        input_tokens=c.as_int(usage.get("input_tokens")),
        output_tokens=c.as_int(usage.get("output_tokens")),
        cached_tokens=c.as_int(details.get("cached_tokens")),
        cache_write_tokens=c.as_int(details.get("cache_write_tokens")),
        reasoning_tokens=c.as_int(output.get("reasoning_tokens")),
        audio_input_tokens=c.as_int(details.get("audio_tokens")),
        audio_output_tokens=c.as_int(output.get("audio_tokens")),
        image_input_tokens=c.as_int(details.get("image_tokens")),
        image_output_tokens=c.as_int(output.get("image_tokens")),
        service_tier=c.service_tier(service_tier),
    )


def usage_from_canonical(usage: c.Usage) -> dict[str, Any]:
    details = {
        "cached_tokens": usage.cached_tokens,
        "cache_write_tokens": usage.cache_write_tokens,
    }
    output = {"reasoning_tokens": usage.reasoning_tokens}
    for target, name, value in (
        (details, "audio_tokens", usage.audio_input_tokens),
        (details, "image_tokens", usage.image_input_tokens),
        (output, "audio_tokens", usage.audio_output_tokens),
        (output, "image_tokens", usage.image_output_tokens),
    ):
        if value:
            target[name] = value
    return {
        "input_tokens": usage.input_tokens,
        "input_tokens_details": details,
        "output_tokens": usage.output_tokens,
        "output_tokens_details": output,
        "total_tokens": usage.input_tokens + usage.output_tokens,
    }


# The image_generation tool's output formats and the picture types they hold.
IMAGE_FORMATS = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
IMAGE_MIME_FORMATS = {mime: name for name, mime in IMAGE_FORMATS.items()}


def generated_image(item: dict[str, Any]) -> c.GeneratedImage | None:
    """The picture of an ``image_generation_call`` item, unless it failed or is empty."""
    result = item.get("result")
    if item.get("status") == "failed" or not isinstance(result, str) or not result:
        return None
    mime = IMAGE_FORMATS.get(str(item.get("output_format") or "png"), "image/png")
    return c.GeneratedImage(mime, result)


def image_item(image: c.GeneratedImage, item_id: str, status: str = "completed") -> dict[str, Any]:
    """An ``image_generation_call`` output item; ``result`` is the bare base64 picture."""
    item: dict[str, Any] = {
        "id": item_id,
        "type": "image_generation_call",
        "status": status,
        "result": image.data if status == "completed" else None,
    }
    output_format = IMAGE_MIME_FORMATS.get(image.mime_type)
    if output_format is not None:
        item["output_format"] = output_format
    return item


def response_to_canonical(body: dict[str, Any]) -> c.Response:
    parts: list[c.AnswerPart] = []
    calls = False
    for item in body.get("output") or ():
        kind = item.get("type") if isinstance(item, dict) else None
        if kind == "message":
            parts.extend(p for p in _parts(item.get("content")) if isinstance(p, c.Text))
        elif kind == "function_call":
            calls = True
            parts.append(
                c.ToolCall(
                    str(item.get("call_id") or ""),
                    str(item.get("name") or ""),
                    str(item.get("arguments") or ""),
                )
            )
        elif kind == "reasoning":
            text = "".join(
                s.get("text", "") for s in item.get("summary") or () if isinstance(s, dict)
            )
            if text:
                parts.append(c.Reasoning(text))
        elif kind == "image_generation_call":
            image = generated_image(item)
            if image is not None:
                parts.append(image)
    stop: c.Stop = "tool_use" if calls else "end"
    details = body.get("incomplete_details")
    if body.get("status") == "incomplete" and isinstance(details, dict):
        stop = "content_filter" if details.get("reason") == "content_filter" else "length"
    return c.Response(
        id=str(body.get("id") or ""),
        model=str(body.get("model") or ""),
        parts=parts,
        stop=stop,
        usage=usage_to_canonical(body.get("usage"), body.get("service_tier")),
        created=c.as_int(body.get("created_at")),
    )


def output_items(response: c.Response, message_id: str) -> list[dict[str, Any]]:
    """The Responses ``output`` array for a canonical answer."""
    items: list[dict[str, Any]] = []
    reasoning = "".join(p.text for p in response.parts if isinstance(p, c.Reasoning))
    if reasoning:
        items.append(
            {
                "id": new_id("rs_"),
                "type": "reasoning",
                "summary": [{"type": "summary_text", "text": reasoning}],
            }
        )
    text = c.text_of(response.parts)
    if text or not any(isinstance(p, (c.ToolCall, c.GeneratedImage)) for p in response.parts):
        items.append(message_item(message_id, text, "completed"))
    for part in response.parts:
        if isinstance(part, c.ToolCall):
            items.append(call_item(part, "completed"))
        elif isinstance(part, c.GeneratedImage):
            items.append(image_item(part, new_id("ig_")))
    return items


def message_item(item_id: str, text: str | None, status: str) -> dict[str, Any]:
    content = [] if text is None else [output_text(text)]
    return {
        "id": item_id,
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": content,
    }


def output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def call_item(call: c.ToolCall, status: str, item_id: str | None = None) -> dict[str, Any]:
    return {
        "id": item_id or "fc_" + call.id,
        "type": "function_call",
        "status": status,
        "call_id": call.id,
        "name": call.name,
        "arguments": call.arguments,
    }


def response_object(
    request: dict[str, Any],
    response_id: str,
    model: str,
    status: str,
    output: list[dict[str, Any]],
    usage: c.Usage | None,
    stop: c.Stop | None = None,
    created: int | None = None,
) -> dict[str, Any]:
    """A Responses ``response`` object echoing the client's request, as OpenAI's does."""
    incomplete = None
    if stop == "length":
        status, incomplete = "incomplete", {"reason": "max_output_tokens"}
    elif stop == "content_filter":
        status, incomplete = "incomplete", {"reason": "content_filter"}
    asked = request.get("reasoning")
    reasoning: dict[str, Any] = asked if isinstance(asked, dict) else {}
    tools = [
        {"strict": True, "parameters": None, "description": None, **tool}
        for tool in request.get("tools") or ()
        if isinstance(tool, dict)
    ]
    body: dict[str, Any] = {
        "id": response_id,
        "object": "response",
        "created_at": created or int(time.time()),
        "status": status,
        "completed_at": int(time.time()) if status in ("completed", "incomplete") else None,
        "error": None,
        "incomplete_details": incomplete,
        "instructions": request.get("instructions"),
        "max_output_tokens": request.get("max_output_tokens"),
        "model": model,
        "output": output,
        "parallel_tool_calls": request.get("parallel_tool_calls", True),
        "previous_response_id": None,
        "reasoning": {"effort": reasoning.get("effort"), "summary": None},
        "store": False,  # a translated response is kept nowhere
        "temperature": request.get("temperature", 1.0),
        "text": request.get("text") or {"format": {"type": "text"}},
        "tool_choice": request.get("tool_choice", "auto"),
        "tools": tools,
        "top_p": request.get("top_p", 1.0),
        "truncation": "disabled",
        "metadata": request.get("metadata") or {},
    }
    if usage is not None:
        body["usage"] = usage_from_canonical(usage)
    return body


def response_from_canonical(
    response: c.Response, request: dict[str, Any] | None = None
) -> dict[str, Any]:
    response_id = response.id if response.id.startswith("resp_") else new_id("resp_")
    output = output_items(response, new_id("msg_"))
    return response_object(
        request or {},
        response_id,
        response.model,
        "completed",
        output,
        response.usage,
        response.stop,
        response.created or None,
    )
