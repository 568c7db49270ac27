"""AWS Bedrock's Converse API: SigV4-signed requests, ``ConverseStream`` in AWS's
event-stream framing, and AWS's error types. The conversion is all in this module."""

from __future__ import annotations

import dataclasses
import sys
import uuid
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote

import orjson

from relay.providers.base import (
    AWS_ACCOUNT_ID,
    AWS_ARN,
    FailureKind,
    Identity,
    ProviderFailure,
    StreamFailed,
    UpstreamRequest,
    by_status,
    clip,
    clip_code,
    host,
)
from relay.providers.bedrock_auth import AwsCredentials, EventStreamDecoder, sign
from relay.providers.streams import ProviderStream, StreamIncomplete
from relay.translate import canonical as c
from relay.translate.messages import thinking_budget as anthropic_thinking_budget

STOP_REASONS: dict[str, c.Stop] = {
    "end_turn": "end",
    "stop_sequence": "stop_sequence",
    "tool_use": "tool_use",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
}
# Stops that say the model's answer is broken (unparseable text, a tool call with invalid
# input): no canonical stop fits, and another try (another channel) may well succeed.
MALFORMED_STOPS = frozenset({"malformed_model_output", "malformed_tool_use"})
IMAGE_FORMATS = {"image/png": "png", "image/jpeg": "jpeg", "image/gif": "gif", "image/webp": "webp"}
# AWS's error types: the channel's credentials, worth another channel, or the request's fault.
CREDENTIAL_ERRORS = frozenset(
    {
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "IncompleteSignatureException",
        "MissingAuthenticationTokenException",
        "ExpiredTokenException",
        "AccessDeniedException",
        "SignatureDoesNotMatch",
    }
)
# Worth another channel, with the status the client gets when no channel answers.
RETRYABLE_ERRORS: dict[str, int] = {
    "ThrottlingException": 429,
    "ModelNotReadyException": 429,
    "ServiceUnavailableException": 503,
    "InternalServerException": 503,
    "ModelTimeoutException": 503,
    "ModelStreamErrorException": 503,
    # The model failed while answering (HTTP 424): its fault, not the request's.
    "ModelErrorException": 502,
    # The channel's set-up (HTTP 404): a model id the region does not have or the account
    # has not enabled, as Azure's DeploymentNotFound. Another channel may serve the model.
    "ResourceNotFoundException": 502,
}


class UnsupportedContent(ValueError):
    """A canonical request that Converse cannot carry (e.g. an image by URL)."""


@dataclasses.dataclass(frozen=True, slots=True)
class BedrockConfig:
    credentials: AwsCredentials
    base_url: str = ""  # blank: the region's bedrock-runtime endpoint

    def url(self, model: str, *, stream: bool) -> str:
        root = self.base_url.rstrip("/") or (
            f"https://bedrock-runtime.{self.credentials.region}.amazonaws.com"
        )
        action = "converse-stream" if stream else "converse"
        return f"{root}/model/{quote(model, safe='')}/{action}"


def _media(part: c.Text | c.Image) -> dict[str, Any]:
    if isinstance(part, c.Text):
        return {"text": part.text}
    mime, _, data = part.url[len("data:") :].partition(";base64,")
    if not part.url.startswith("data:") or not data or mime not in IMAGE_FORMATS:
        raise UnsupportedContent("Bedrock takes images inline as PNG, JPEG, GIF or WebP only.")
    return {"image": {"format": IMAGE_FORMATS[mime], "source": {"bytes": data}}}


def _tool_as_text(part: c.ToolCall | c.ToolResult) -> list[dict[str, Any]]:
    """A tool call or result told in words, for a history whose tools the request does not
    declare: Converse refuses toolUse and toolResult blocks without a ``toolConfig``, and
    there is no tool spec to put in one."""
    if isinstance(part, c.ToolCall):
        return [{"text": f"[call {part.id} of tool {part.name}: {part.arguments or '{}'}]"}]
    said = "error" if part.is_error else "result"
    texts = [p.text for p in part.content if isinstance(p, c.Text) and p.text]
    images = [_media(p) for p in part.content if isinstance(p, c.Image)]
    return [{"text": f"[{said} of call {part.call_id}: {' '.join(texts)}]"}, *images]


def _cache_point(cache_control: Any, *, hour: bool) -> dict[str, Any]:
    """A Converse cache point for a client's breakpoint: five minutes (``default``), or an
    hour when the client asked for one (Anthropic's ``ttl: "1h"``) and ``hour`` says the
    model may take it. What is billed follows the writes Bedrock reports by TTL."""
    point: dict[str, Any] = {"type": "default"}
    if hour and isinstance(cache_control, Mapping) and cache_control.get("ttl") == "1h":
        point["ttl"] = "1h"
    return {"cachePoint": point}


def _blocks(
    parts: list[Any], *, tools_as_text: bool = False, hour: bool = False
) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for part in parts:
        if isinstance(part, c.Text):
            if part.text:
                blocks.append(_media(part))
                # A cache breakpoint becomes a Converse cache point right after its block.
                if part.cache_control is not None:
                    blocks.append(_cache_point(part.cache_control, hour=hour))
        elif isinstance(part, c.Image):
            blocks.append(_media(part))
        elif isinstance(part, (c.ToolCall, c.ToolResult)) and tools_as_text:
            blocks.extend(_tool_as_text(part))
        elif isinstance(part, c.ToolCall):
            try:
                arguments = orjson.loads(part.arguments or "{}")
            except orjson.JSONDecodeError:
                arguments = {}
            use = {"toolUseId": c.bare_call_id(part.id), "name": part.name, "input": arguments}
            blocks.append({"toolUse": use})
        elif isinstance(part, c.ToolResult):
            content = [_media(p) for p in part.content if not isinstance(p, c.Text) or p.text]
            result = {
                "toolUseId": c.bare_call_id(part.call_id),
                "content": content or [{"text": ""}],
                "status": "error" if part.is_error else "success",
            }
            blocks.append({"toolResult": result})
        elif isinstance(part, c.Reasoning) and part.signature:
            text = {"text": part.text, "signature": part.signature}
            blocks.append({"reasoningContent": {"reasoningText": text}})
    return blocks


def _tool_choice(choice: str | None) -> dict[str, Any] | None:
    if choice is None or choice == "none":
        return None
    if choice == "auto":
        return {"auto": {}}
    if choice == "required":
        return {"any": {}}
    return {"tool": {"name": choice}}


def _tool_config(request: c.Request, *, history_has_tools: bool) -> dict[str, Any] | None:
    """The tools, unless the request forbids calling them and nothing in its history needs
    them declared. Converse has no "none" choice: a history with tool blocks is sent with
    the tools and no choice (the model's default), as Converse wants them defined then."""
    if not request.tools or (request.tool_choice == "none" and not history_has_tools):
        return None
    specs = [
        {
            "toolSpec": {
                "name": tool.name,
                "description": tool.description or tool.name,
                "inputSchema": {"json": tool.parameters or {"type": "object"}},
            }
        }
        for tool in request.tools
    ]
    config: dict[str, Any] = {"tools": specs}
    choice = _tool_choice(request.tool_choice)
    if choice is not None:
        config["toolChoice"] = choice
    return config


def thinking_budget(request: c.Request, model: str) -> int | None:
    """The extended-thinking budget, or None to send no thinking: Anthropic's rules, as for
    its own API (``messages.thinking_budget``: the client's budget or its effort's, at
    least 1,024 tokens, below ``max_tokens``, none beside a forced tool).

    ``thinking`` is Anthropic's field: other models on Bedrock (Nova, Llama...) refuse it
    as an unknown key, so only a model id or profile that names an Anthropic model gets it
    (an application profile's ARN names none). Without the client's limit no ``maxTokens``
    is sent, and Converse's default is the model's own maximum, above every budget."""
    if "anthropic." not in model:
        return None
    limit = request.max_output_tokens
    return anthropic_thinking_budget(request, sys.maxsize if limit is None else limit)


def hour_cache(model: str) -> bool:
    """Whether a one-hour cache point may be sent: Bedrock keeps extended TTLs for Anthropic
    models (Claude 4.5 and later), and other families (Nova...) have five minutes only. A
    model id or profile that names no Anthropic model (an application profile's ARN) gets
    five-minute points, and is billed for five-minute writes."""
    return "anthropic." in model


def _output_config(fmt: c.OutputFormat | None) -> dict[str, Any] | None:
    """Converse's structured output (``outputConfig.textFormat``) for the client's response
    format, or None if it asked for none. The schema travels as a JSON string, as the
    service model's ``JsonSchemaDefinition`` has it.

    Converse constrains answers to a JSON schema only: JSON mode (``json_object``) has no
    counterpart, and a schema loose enough to stand in for it (an object without
    properties) is one Anthropic's models refuse. So both are refused here, before anything
    is sent, rather than answered in free text billed as if it were what was asked for."""
    if fmt is None:
        return None
    if fmt.kind != "json_schema":
        raise UnsupportedContent(
            "Bedrock has no JSON mode (response_format json_object): ask for "
            "response_format json_schema with a schema instead."
        )
    if not isinstance(fmt.schema, dict) or not fmt.schema:
        raise UnsupportedContent("Bedrock's structured output needs a JSON schema.")
    definition = {"schema": orjson.dumps(fmt.schema).decode()}
    if fmt.name:
        definition["name"] = fmt.name
    return {"textFormat": {"type": "json_schema", "structure": {"jsonSchema": definition}}}


def request_body(request: c.Request, *, model: str = "") -> bytes:
    """The Converse request for a canonical request; ``model`` (the upstream id, which
    travels in the URL) decides what model-specific fields may be sent."""
    if request.image_output:
        # Converse answers in text: it has no way to return a generated picture.
        raise UnsupportedContent("This model cannot generate images through Bedrock.")
    history_has_tools = any(
        isinstance(part, (c.ToolCall, c.ToolResult))
        for turn in request.turns
        for part in turn.parts
    )
    output_config = _output_config(request.output_format)
    tool_config = _tool_config(request, history_has_tools=history_has_tools)
    tools_as_text = history_has_tools and tool_config is None
    hour = hour_cache(model)
    messages: list[dict[str, Any]] = []
    for turn in request.turns:
        blocks = _blocks(turn.parts, tools_as_text=tools_as_text, hour=hour)
        if not blocks:
            continue
        if messages and messages[-1]["role"] == turn.role:  # Converse wants turns to alternate
            messages[-1]["content"].extend(blocks)
        else:
            messages.append({"role": turn.role, "content": blocks})
    body: dict[str, Any] = {"messages": messages}
    if request.system:
        body["system"] = _blocks(list(request.system), hour=hour)
    budget = thinking_budget(request, model)
    thinking = budget is not None
    inference: dict[str, Any] = {}
    for name, value in (
        ("maxTokens", request.max_output_tokens),
        # Anthropic refuses a temperature or top_p of the client's beside thinking.
        ("temperature", None if thinking else request.temperature),
        ("topP", None if thinking else request.top_p),
    ):
        if value is not None:
            inference[name] = value
    if request.stop:
        inference["stopSequences"] = request.stop
    if inference:
        body["inferenceConfig"] = inference
    if tool_config is not None:
        body["toolConfig"] = tool_config
    if output_config is not None:
        body["outputConfig"] = output_config
    if budget is not None:
        enabled = {"type": "enabled", "budget_tokens": budget}
        body["additionalModelRequestFields"] = {"thinking": enabled}
    return orjson.dumps(body)


def usage(native: Any) -> c.Usage | None:
    """Bedrock's ``inputTokens`` leave out cache reads and writes; canonical input counts
    the whole prompt. ``cacheDetails`` breaks the writes down by TTL, so one-hour writes
    are billed as such and the rest (or all, without a breakdown) as five-minute ones."""
    if not isinstance(native, Mapping):
        return None
    read = c.as_int(native.get("cacheReadInputTokens"))
    write = c.as_int(native.get("cacheWriteInputTokens"))
    written = {"1h": 0, "5m": 0}
    details = native.get("cacheDetails")
    for detail in details if isinstance(details, list) else ():
        if isinstance(detail, Mapping) and detail.get("ttl") in written:
            written[detail["ttl"]] += c.as_int(detail.get("inputTokens"))
    write = max(write, written["1h"] + written["5m"])
    return c.Usage(
        input_tokens=c.as_int(native.get("inputTokens")) + read + write,
        output_tokens=c.as_int(native.get("outputTokens")),
        cached_tokens=read,
        cache_write_tokens=write,
        cache_write_1h_tokens=written["1h"],
    )


class MalformedAnswer(ValueError):
    """Converse stopped because the model's own answer is broken (``malformed_*``): no
    answer to give, and no fault of the request's. A ValueError, so the relay takes it for
    an invalid upstream answer and fails over."""


def _stop(reason: Any) -> c.Stop:
    if reason in MALFORMED_STOPS:
        raise MalformedAnswer(f"Bedrock stopped the answer: {reason}")
    return STOP_REASONS.get(str(reason), "end")


def malformed_failure(reason: str) -> ProviderFailure:
    """A malformed answer as the client is told of it: the upstream's failure."""
    return ProviderFailure(
        FailureKind.RETRYABLE,
        502,
        f"The model produced a malformed answer ({reason}).",
        type="server_error",
        code="upstream_error",
    )


def decode(body: bytes) -> c.Response:
    answer = orjson.loads(body)
    message = (answer.get("output") or {}).get("message") if isinstance(answer, dict) else None
    if not isinstance(message, Mapping):
        raise ValueError("not a Converse answer")
    stop = _stop(answer.get("stopReason"))
    parts: list[c.AnswerPart] = []
    for block in message.get("content") or ():
        if not isinstance(block, Mapping):
            continue
        if isinstance(block.get("text"), str):
            parts.append(c.Text(block["text"]))
        elif isinstance(block.get("toolUse"), Mapping):
            use = block["toolUse"]
            arguments = orjson.dumps(use.get("input") or {}).decode()
            parts.append(c.ToolCall(str(use.get("toolUseId")), str(use.get("name")), arguments))
        elif isinstance(block.get("reasoningContent"), Mapping):
            text = block["reasoningContent"].get("reasoningText") or {}
            if isinstance(text.get("text"), str):
                parts.append(c.Reasoning(text["text"], text.get("signature")))
    return c.Response(
        id=f"bedrock-{uuid.uuid4().hex[:24]}",
        model="",
        parts=parts,
        stop=stop,
        usage=usage(answer.get("usage")),
    )


class BedrockStream(ProviderStream):
    """``ConverseStream`` event-stream messages in, canonical events out."""

    def __init__(self, secrets: tuple[str, ...] = ()) -> None:
        super().__init__(secrets)
        self.decoder = EventStreamDecoder()
        self.calls: dict[Any, int] = {}  # content block index -> canonical call index
        self.ended = False

    def split(self, data: bytes) -> Iterable[Any]:
        return self.decoder.feed(data)

    def event(self, message: Any) -> list[c.Event]:
        if message.message_type != "event":
            # A validation failure is the request's (a prompt too long), as its 400 would be.
            kind = message.event_type or ""
            status = 400 if kind.lower() == "validationexception" else 502
            failure = failure_for(kind, message.payload, status, self.secrets)
            raise StreamFailed(failure)
        return self._event(message.event_type, orjson.loads(message.payload or b"{}"))

    def end(self) -> list[c.Event]:
        if not self.ended:
            raise StreamIncomplete("the stream ended before its metadata event")
        return []

    def _event(self, name: str, event: Any) -> list[c.Event]:
        if name == "messageStart":
            return [c.StreamStart(f"bedrock-{uuid.uuid4().hex[:24]}", "")]
        block = event.get("contentBlockIndex")
        if name == "contentBlockStart":
            use = (event.get("start") or {}).get("toolUse")
            if isinstance(use, Mapping):
                index = self.calls[block] = len(self.calls)
                return [c.ToolCallStart(index, str(use.get("toolUseId")), str(use.get("name")))]
            return []
        if name == "contentBlockDelta":
            delta = event.get("delta") or {}
            if isinstance(delta.get("text"), str):
                return [c.TextDelta(delta["text"])]
            if isinstance(delta.get("toolUse"), Mapping) and block in self.calls:
                return [
                    c.ToolCallDelta(self.calls[block], str(delta["toolUse"].get("input") or ""))
                ]
            reasoning = delta.get("reasoningContent")
            if isinstance(reasoning, Mapping) and isinstance(reasoning.get("text"), str):
                return [c.ReasoningDelta(reasoning["text"])]
            return []
        if name == "messageStop":
            reason = event.get("stopReason")
            if reason in MALFORMED_STOPS:
                raise StreamFailed(malformed_failure(str(reason)))
            return [c.StreamFinish(_stop(reason))]
        if name == "metadata":
            self.ended = True
            found = usage(event.get("usage"))
            return [c.StreamUsage(found)] if found else []
        return []


def error_type(headers: Mapping[str, str], body: Any) -> str:
    """AWS's error type, from ``x-amzn-ErrorType`` or the body's ``__type``."""
    raw = headers.get("x-amzn-errortype") or ""
    if not raw and isinstance(body, Mapping):
        raw = str(body.get("__type") or "")
    return raw.split(":", 1)[0].rsplit("#", 1)[-1]


def failure_for(kind: str, body: bytes, status: int, secrets: tuple[str, ...]) -> ProviderFailure:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = None
    message = parsed.get("message") or parsed.get("Message") if isinstance(parsed, dict) else None
    text = clip(str(message or f"Bedrock answered {kind or status}."), secrets)
    # Stream exceptions name the type in lowerCamelCase (throttlingException).
    kind = kind[:1].upper() + kind[1:]
    if kind in CREDENTIAL_ERRORS:
        return by_status(403, text)
    if kind in RETRYABLE_ERRORS:
        return ProviderFailure(
            FailureKind.RETRYABLE,
            RETRYABLE_ERRORS[kind],
            text,
            type="server_error",
            code="upstream_error",
        )
    return by_status(status, text, code=clip_code(kind, secrets))


class BedrockAdapter:
    provider_type = "bedrock"

    def __init__(self, config: BedrockConfig) -> None:
        self.config = config
        self.secrets = (config.credentials.secret_access_key,)

    async def build(
        self, request: c.Request, *, upstream_model: str, stream: bool
    ) -> UpstreamRequest:
        content = request_body(request, model=upstream_model)
        url = self.config.url(upstream_model, stream=stream)
        accept = "application/vnd.amazon.eventstream" if stream else "application/json"
        headers = {"content-type": "application/json", "accept": accept}
        signed = sign(
            self.config.credentials, method="POST", url=url, headers=headers, body=content
        )
        return UpstreamRequest("POST", url, signed, content)

    def decode(self, body: bytes) -> c.Response:
        return decode(body)

    def stream_decoder(self) -> BedrockStream:
        return BedrockStream(self.secrets)

    def identity(self, upstream_model: str) -> Identity:
        credentials = self.config.credentials
        return Identity(
            secrets=(credentials.secret_access_key, credentials.session_token or ""),
            names=(credentials.access_key_id, host(self.config.url("m", stream=False))),
            patterns=(AWS_ARN, AWS_ACCOUNT_ID),
        )

    def failure(self, status: int, headers: Mapping[str, str], body: bytes) -> ProviderFailure:
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            parsed = None
        lowered = {name.lower(): value for name, value in headers.items()}
        return failure_for(error_type(lowered, parsed), body, status, self.secrets)
