"""Anthropic's Messages API to and from the canonical form (streams: ``messages_stream``).

Anthropic reports ``input_tokens`` without cache reads and writes; the canonical form
counts the whole prompt, so reads and writes are added on the way in and taken off on
the way out. ``thinking.budget_tokens`` and ``reasoning_effort`` map by the thresholds
in ``EFFORT_BUDGETS``; a budget sent out stays within what Anthropic takes (at least
``MIN_THINKING_BUDGET``, below ``max_tokens``, with no forced tool and no sampling
settings thinking refuses), or no thinking is asked for.
"""

from __future__ import annotations

import base64
import uuid
from typing import Any

import orjson

from relay.translate import canonical as c

STOPS_IN: dict[str, c.Stop] = {
    "end_turn": "end",
    "max_tokens": "length",
    "tool_use": "tool_use",
    "stop_sequence": "stop_sequence",
    "refusal": "content_filter",
    "pause_turn": "end",
}
STOPS_OUT: dict[str, str] = {
    "end": "end_turn",
    "length": "max_tokens",
    "tool_use": "tool_use",
    "stop_sequence": "stop_sequence",
    "content_filter": "refusal",
}
EFFORT_BUDGETS = {"minimal": 1024, "low": 2048, "medium": 8192, "high": 24576}
MIN_THINKING_BUDGET = 1024
# ``max_tokens`` for a request that no hold sized (neither the client's cap nor the
# relay's held figure): RELAY_RESERVE_OUTPUT_TOKENS' default.
DEFAULT_MAX_TOKENS = 4096


def _effort(budget: int) -> str:
    if budget < 2048:
        return "minimal" if budget <= 1024 else "low"
    return "low" if budget < 4096 else "medium" if budget < 16384 else "high"


def _image(source: Any) -> c.Image:
    if isinstance(source, dict) and source.get("type") == "base64":
        return c.Image(f"data:{source.get('media_type')};base64,{source.get('data')}")
    if isinstance(source, dict) and source.get("type") == "url":
        return c.Image(str(source.get("url")))
    raise c.TranslationError("Only base64 and url image sources can be translated.", "messages")


def _blocks(content: Any) -> list[c.Part]:
    if isinstance(content, str):
        return [c.Text(content)] if content else []
    parts: list[c.Part] = []
    for block in content if isinstance(content, list) else ():
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text":
            parts.append(c.Text(str(block.get("text") or ""), block.get("cache_control")))
        elif kind == "image":
            parts.append(_image(block.get("source")))
        elif kind == "tool_use":
            arguments = orjson.dumps(block.get("input") or {}).decode()
            parts.append(
                c.ToolCall(str(block.get("id") or ""), str(block.get("name") or ""), arguments)
            )
        elif kind == "tool_result":
            inner = [p for p in _blocks(block.get("content")) if isinstance(p, (c.Text, c.Image))]
            parts.append(
                c.ToolResult(
                    str(block.get("tool_use_id") or ""), inner, block.get("is_error") is True
                )
            )
        elif kind in ("thinking", "redacted_thinking"):
            parts.append(c.Reasoning(str(block.get("thinking") or ""), block.get("signature")))
        else:
            raise c.TranslationError(
                f"Content blocks of type '{kind}' cannot be translated.", "messages"
            )
    return parts


def request_to_canonical(body: dict[str, Any]) -> c.Request:
    request = c.Request(model=str(body.get("model") or ""), turns=[])
    request.system = [p for p in _blocks(body.get("system")) if isinstance(p, c.Text)]
    for message in body.get("messages") or ():
        role = message.get("role")
        if role in ("user", "assistant"):
            request.turns.append(c.Turn(role, _blocks(message.get("content"))))
    for tool in body.get("tools") or ():
        if tool.get("type") not in (None, "custom"):
            raise c.TranslationError(
                f"Tools of type '{tool.get('type')}' cannot be translated.", "tools"
            )
        request.tools.append(
            c.Tool(str(tool.get("name") or ""), tool.get("description"), tool.get("input_schema"))
        )
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        kind = choice.get("type")
        request.tool_choice = {"auto": "auto", "any": "required", "none": "none"}.get(
            str(kind), str(choice.get("name") or "")
        )
        if choice.get("disable_parallel_tool_use") is True:
            request.parallel_tool_calls = False
    request.max_output_tokens = body.get("max_tokens")
    request.temperature = body.get("temperature")
    request.top_p = body.get("top_p")
    request.stop = list(body.get("stop_sequences") or ())
    thinking = body.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") == "enabled":
        budget = c.as_int(thinking.get("budget_tokens"))
        request.reasoning_effort = _effort(budget)
        request.thinking_budget = budget or None
    fmt = output_format(body)
    if fmt is not None and fmt.get("type") == "json_schema":
        request.output_format = c.OutputFormat("json_schema", "output", fmt.get("schema"), True)
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
        request.user = metadata["user_id"]
    request.stream = body.get("stream") is True
    return request


def output_format(body: dict[str, Any]) -> dict[str, Any] | None:
    """A Messages request's structured-output format: ``output_config.format``, the API's
    name for it, or ``output_format``, its name while it was a beta (still sent by older
    SDKs and by Bedrock's clients)."""
    config = body.get("output_config")
    fmt = config.get("format") if isinstance(config, dict) else None
    if fmt is None:
        fmt = body.get("output_format")
    return fmt if isinstance(fmt, dict) else None


def shows_thinking(body: dict[str, Any]) -> bool:
    """Whether a Messages request asks to see the model's thinking (``enabled`` or
    ``adaptive``, its ``display`` not ``omitted``): Anthropic answers with thinking blocks
    only then, so a translated answer carries the upstream's reasoning only then."""
    thinking = body.get("thinking")
    return (
        isinstance(thinking, dict)
        and thinking.get("type") in ("enabled", "adaptive")
        and thinking.get("display") != "omitted"
    )


def _image_out(image: c.Image) -> dict[str, Any]:
    if image.url.startswith("data:") and ";base64," in image.url:
        media, _, data = image.url[len("data:") :].partition(";base64,")
        return {"type": "image", "source": {"type": "base64", "media_type": media, "data": data}}
    return {"type": "image", "source": {"type": "url", "url": image.url}}


def _text_out(text: c.Text) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "text", "text": text.text}
    if text.cache_control is not None:
        block["cache_control"] = text.cache_control
    return block


def _blocks_out(parts: list[c.Part]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for part in parts:
        if isinstance(part, c.Text):
            if part.text:
                out.append(_text_out(part))
        elif isinstance(part, c.Image):
            out.append(_image_out(part))
        elif isinstance(part, c.ToolCall):
            try:
                arguments = orjson.loads(part.arguments or "{}")
            except orjson.JSONDecodeError:
                arguments = {}
            tool_id = c.bare_call_id(part.id)
            out.append({"type": "tool_use", "id": tool_id, "name": part.name, "input": arguments})
        elif isinstance(part, c.ToolResult):
            block: dict[str, Any] = {
                "type": "tool_result",
                "tool_use_id": c.bare_call_id(part.call_id),
                "content": _blocks_out(list(part.content)),
            }
            if part.is_error:
                block["is_error"] = True
            out.append(block)
        elif isinstance(part, c.Reasoning) and part.signature:
            out.append({"type": "thinking", "thinking": part.text, "signature": part.signature})
    return out


def request_from_canonical(request: c.Request) -> dict[str, Any]:
    if request.image_output:
        # Anthropic's models make no pictures: say so rather than answer text alone.
        raise c.TranslationError("This model cannot generate images.", "modalities")
    messages: list[dict[str, Any]] = []
    for turn in request.turns:
        blocks = _blocks_out(turn.parts)
        if messages and messages[-1]["role"] == turn.role:  # Anthropic wants turns to alternate
            messages[-1]["content"].extend(blocks)
        else:
            messages.append({"role": turn.role, "content": blocks})
    body: dict[str, Any] = {
        "model": request.model,
        "messages": messages,
        "max_tokens": max_tokens_for(request),
    }
    if request.system:
        body["system"] = [_text_out(t) for t in request.system]
    if request.tools:
        body["tools"] = [
            {
                "name": t.name,
                "input_schema": t.parameters or {"type": "object"},
                **({"description": t.description} if t.description else {}),
            }
            for t in request.tools
        ]
    if request.tool_choice:
        choice: dict[str, Any] = {
            "auto": {"type": "auto"},
            "required": {"type": "any"},
            "none": {"type": "none"},
        }.get(request.tool_choice) or {"type": "tool", "name": request.tool_choice}
        if request.parallel_tool_calls is False:
            choice["disable_parallel_tool_use"] = True
        body["tool_choice"] = choice
    budget = thinking_budget(request, body["max_tokens"])
    if budget is not None:
        body["thinking"] = {"type": "enabled", "budget_tokens": budget}
    for name, value in (("temperature", request.temperature), ("top_p", request.top_p)):
        if value is not None and (budget is None or _thinks_with(name, value)):
            body[name] = value
    if request.stop:
        body["stop_sequences"] = request.stop
    if request.output_format is not None and request.output_format.kind == "json_schema":
        schema = request.output_format.schema or {}
        body["output_config"] = {"format": {"type": "json_schema", "schema": schema}}
    if request.user:
        body["metadata"] = {"user_id": request.user}
    if request.stream:
        body["stream"] = True
    return body


def max_tokens_for(request: c.Request) -> int:
    """Anthropic's required cap: the client's own, else what the request's hold covers
    (``held_output_tokens``), so that the answer is neither cut short of what OpenAI's
    APIs would give nor longer than the relay held money for."""
    return request.max_output_tokens or request.held_output_tokens or DEFAULT_MAX_TOKENS


def thinking_budget(request: c.Request, max_tokens: int) -> int | None:
    """The thinking budget to ask an Anthropic model for: the client's own, else its
    effort's, kept below ``max_tokens`` (``max_tokens_for``: what the request's hold
    covers, not raised for it). None where Anthropic would refuse any: less room than
    its minimum, or a tool the client forces (thinking allows only auto or none)."""
    budget = request.thinking_budget or EFFORT_BUDGETS.get(request.reasoning_effort or "")
    if budget is None or request.tool_choice not in (None, "auto", "none"):
        return None
    budget = min(budget, max_tokens - 1)
    return budget if budget >= MIN_THINKING_BUDGET else None


def _thinks_with(name: str, value: Any) -> bool:
    """Whether Anthropic takes this sampling setting beside thinking: a temperature of 1
    and a ``top_p`` from 0.95 up; the client's other values are left out, not refused."""
    if not isinstance(value, (int, float)):
        return True  # not ours to judge: the provider answers it
    return value == 1 if name == "temperature" else value >= 0.95


def usage_to_canonical(usage: Any) -> c.Usage | None:
    if not isinstance(usage, dict):
        return None
    read = c.as_int(usage.get("cache_read_input_tokens"))
    write = c.as_int(usage.get("cache_creation_input_tokens"))
    creation = usage.get("cache_creation")
    hour = 0
    if isinstance(creation, dict):
        # The breakdown by time to live; it sums to cache_creation_input_tokens.
        hour = c.as_int(creation.get("ephemeral_1h_input_tokens"))
        write = max(write, hour + c.as_int(creation.get("ephemeral_5m_input_tokens")))
    return c.Usage(
        input_tokens=c.as_int(usage.get("input_tokens")) + read + write,
        output_tokens=c.as_int(usage.get("output_tokens")),
        cached_tokens=read,
        cache_write_tokens=write,
        cache_write_1h_tokens=hour,
        service_tier=c.service_tier(usage.get("service_tier")),
    )


def merge_usage(into: c.Usage, usage: Any) -> bool:
    """Fold a stream's counts into ``into``: ``message_start``'s (the prompt's), then
    ``message_delta``'s (cumulative). Only the counts given, and not null, change. The
    delta repeats the prompt's totals but not the breakdown of cache writes by time to
    live, so the one-hour share stays ``message_start``'s unless the delta breaks them
    down itself (and never exceeds the writes). Whether ``usage`` counted anything."""
    if not isinstance(usage, dict):
        return False
    written = into.cache_write_tokens
    read = into.cached_tokens
    fresh = into.input_tokens - read - written
    hour = into.cache_write_1h_tokens
    counted = False
    if usage.get("input_tokens") is not None:
        fresh, counted = c.as_int(usage["input_tokens"]), True
    if usage.get("cache_read_input_tokens") is not None:
        read, counted = c.as_int(usage["cache_read_input_tokens"]), True
    if usage.get("cache_creation_input_tokens") is not None:
        written, counted = c.as_int(usage["cache_creation_input_tokens"]), True
    creation = usage.get("cache_creation")
    if isinstance(creation, dict):
        # The breakdown by time to live; it sums to cache_creation_input_tokens.
        hour = c.as_int(creation.get("ephemeral_1h_input_tokens"))
        written = max(written, hour + c.as_int(creation.get("ephemeral_5m_input_tokens")))
        counted = True
    into.input_tokens = fresh + read + written
    into.cached_tokens = read
    into.cache_write_tokens = written
    into.cache_write_1h_tokens = min(hour, written)
    if usage.get("output_tokens") is not None:
        into.output_tokens, counted = c.as_int(usage["output_tokens"]), True
    if usage.get("service_tier") is not None:
        into.service_tier = c.service_tier(usage["service_tier"])
    return counted


def usage_from_canonical(usage: c.Usage) -> dict[str, Any]:
    written = usage.cache_write_tokens
    hour = min(usage.cache_write_1h_tokens, written)
    out: dict[str, Any] = {
        "input_tokens": max(usage.input_tokens - usage.cached_tokens - written, 0),
        "cache_creation_input_tokens": written,
        "cache_read_input_tokens": usage.cached_tokens,
        "cache_creation": {
            "ephemeral_5m_input_tokens": written - hour,
            "ephemeral_1h_input_tokens": hour,
        },
        "output_tokens": usage.output_tokens,
        "service_tier": "priority" if usage.service_tier == "priority" else "standard",
    }
    if usage.reasoning_tokens:  # the part of output_tokens spent reasoning
        out["output_tokens_details"] = {"thinking_tokens": usage.reasoning_tokens}
    return out


def response_to_canonical(body: dict[str, Any]) -> c.Response:
    parts: list[c.AnswerPart] = [
        p for p in _blocks(body.get("content")) if isinstance(p, (c.Text, c.ToolCall, c.Reasoning))
    ]
    return c.Response(
        id=str(body.get("id") or ""),
        model=str(body.get("model") or ""),
        parts=parts,
        stop=STOPS_IN.get(str(body.get("stop_reason")), "end"),
        usage=usage_to_canonical(body.get("usage")),
    )


def thinking_block(reasoning: c.Reasoning) -> dict[str, Any]:
    """Reasoning as an answer's ``thinking`` block. Only Claude signs its thinking; the
    reasoning of any other model gets an empty signature (the SDKs type the field as a
    string), which the relay leaves out when the client sends the block back."""
    return {"type": "thinking", "thinking": reasoning.text, "signature": reasoning.signature or ""}


def response_from_canonical(response: c.Response, *, thinking: bool = False) -> dict[str, Any]:
    """The Messages answer; its reasoning as ``thinking`` blocks only with ``thinking``
    (the client asked for it, as Anthropic answers with thinking only then)."""
    # A Messages answer has no block for a generated picture, and a Messages request has
    # no way to ask for one: pictures a provider volunteers are not delivered (nor billed).
    content: list[dict[str, Any]] = []
    for part in response.parts:
        if isinstance(part, c.Reasoning):
            if thinking and (part.text or part.signature):
                content.append(thinking_block(part))
        elif isinstance(part, (c.Text, c.ToolCall)):
            content += _blocks_out([part])
    return {
        "id": response.id if response.id.startswith("msg_") else "msg_" + uuid.uuid4().hex[:24],
        "type": "message",
        "role": "assistant",
        "model": response.model,
        "content": content,
        "stop_reason": STOPS_OUT[response.stop],
        "stop_sequence": None,
        "usage": usage_from_canonical(response.usage or c.Usage()),
    }


def data_url_bytes(url: str) -> bytes:
    """The bytes of a base64 ``data:`` URL (for tests and size checks)."""
    return base64.b64decode(url.partition(";base64,")[2])
