"""Google's ``generateContent`` format, spoken by both the Gemini API and Vertex AI.

Requests, answers, streams (``streamGenerateContent?alt=sse``), ``usageMetadata`` and
Google's error envelope; the two providers differ only in URLs and authentication.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import orjson

from relay.providers.base import (
    AnswerRefusesRequest,
    FailureKind,
    ProviderFailure,
    StreamFailed,
    UpstreamRequest,
    by_status,
    clip,
)
from relay.providers.streams import SseStream, StreamIncomplete
from relay.translate import canonical as c

THINKING_BUDGETS = {"minimal": 512, "low": 1024, "medium": 8192, "high": 24576}
FINISH_REASONS: dict[str, c.Stop] = {
    "STOP": "end",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
}
# JSON Schema keywords Google's function declarations refuse.
_UNSUPPORTED_SCHEMA_KEYS = frozenset({"$schema", "additionalProperties", "strict", "$id"})
# ErrorInfo reasons by which Google says the caller itself (its key, token, project or
# service account) is refused, whatever the request asked for. Google's front end attaches
# them; a refusal of something the request names (an uploaded File another project owns, a
# file that expired) comes from the model's backend with no such reason.
CREDENTIAL_REASONS = frozenset(
    {
        "API_KEY_INVALID",
        "API_KEY_EXPIRED",
        "API_KEY_SERVICE_BLOCKED",
        "API_KEY_HTTP_REFERRER_BLOCKED",
        "API_KEY_IP_ADDRESS_BLOCKED",
        "API_KEY_ANDROID_APP_BLOCKED",
        "API_KEY_IOS_APP_BLOCKED",
        "ACCESS_TOKEN_EXPIRED",
        "ACCESS_TOKEN_TYPE_UNSUPPORTED",
        "ACCESS_TOKEN_SCOPE_INSUFFICIENT",
        "SERVICE_DISABLED",
        "BILLING_DISABLED",
        "CONSUMER_INVALID",
        "CONSUMER_SUSPENDED",
        "USER_PROJECT_DENIED",
        "IAM_PERMISSION_DENIED",
    }
)
RETRYABLE_STATUSES = frozenset({"RESOURCE_EXHAUSTED", "UNAVAILABLE", "INTERNAL", "ABORTED"})
_BLOCK_REASON = re.compile(r"[A-Z][A-Z_]{0,63}")


def _schema(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _schema(v) for k, v in value.items() if k not in _UNSUPPORTED_SCHEMA_KEYS}
    if isinstance(value, list):
        return [_schema(v) for v in value]
    return value


# Google reads a ``fileUri`` with the channel's own credentials when it names Google's
# storage: a ``gs://`` object (Vertex AI), a Gemini Files API upload, an object through
# storage.googleapis.com. A client's URL there would have the model read the operator's
# buckets and uploads for it, so only other http(s) URLs, fetched as anyone would fetch
# them, are sent by reference.
_GOOGLE_STORAGE = re.compile(r"(?:^|\.)(?:googleapis\.com|storage\.cloud\.google\.com)\.?$")


def _file_uri(url: str) -> str:
    try:
        parsed = urlsplit(url)
        hostname = parsed.hostname or ""
    except ValueError:
        parsed, hostname = None, ""
    if parsed is None or parsed.scheme.lower() not in ("http", "https") or not hostname:
        raise c.TranslationError(
            "An image is sent to this model as an https URL or a data: URL.",
            param="messages",
        )
    if _GOOGLE_STORAGE.search(hostname.lower()):
        raise c.TranslationError(
            "An image on Google's storage cannot be sent by URL to this model; "
            "send it as a data: URL or from another public URL.",
            param="messages",
        )
    return url


def _media(part: c.Text | c.Image) -> dict[str, Any]:
    if isinstance(part, c.Text):
        return {"text": part.text}
    if part.url.startswith("data:") and ";base64," in part.url:
        mime, _, data = part.url[len("data:") :].partition(";base64,")
        return {"inlineData": {"mimeType": mime, "data": data}}
    return {"fileData": {"mimeType": "image/*", "fileUri": _file_uri(part.url)}}


def _contents(request: c.Request) -> list[dict[str, Any]]:
    contents: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # a tool result names its call; Google wants the function
    for turn in request.turns:
        parts: list[dict[str, Any]] = []
        for part in turn.parts:
            if isinstance(part, (c.Text, c.Image)):
                if not isinstance(part, c.Text) or part.text:
                    parts.append(_media(part))
            elif isinstance(part, c.ToolCall):
                names[part.id] = part.name
                try:
                    args = orjson.loads(part.arguments or "{}")
                except orjson.JSONDecodeError:
                    args = {}
                parts.append({"functionCall": {"name": part.name, "args": args}})
            elif isinstance(part, c.ToolResult):
                text = c.text_of(list(part.content))
                try:
                    result = orjson.loads(text)
                except orjson.JSONDecodeError:
                    result = text
                if not isinstance(result, dict):
                    result = {"error" if part.is_error else "result": result}
                response = {"name": names.get(part.call_id, ""), "response": result}
                parts.append({"functionResponse": response})
        if not parts:
            continue
        role = "model" if turn.role == "assistant" else "user"
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})
    return contents


def _tool_config(choice: str | None) -> dict[str, Any] | None:
    if choice is None:
        return None
    modes = {"auto": "AUTO", "required": "ANY", "none": "NONE"}
    if choice in modes:
        return {"functionCallingConfig": {"mode": modes[choice]}}
    return {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [choice]}}


def request_body(request: c.Request) -> bytes:
    """The ``generateContent`` request for a canonical request (the model is in the URL)."""
    body: dict[str, Any] = {"contents": _contents(request)}
    if request.system:
        body["systemInstruction"] = {"parts": [{"text": t.text} for t in request.system]}
    config: dict[str, Any] = {}
    for name, value in (
        ("maxOutputTokens", request.max_output_tokens),
        ("temperature", request.temperature),
        ("topP", request.top_p),
    ):
        if value is not None:
            config[name] = value
    if request.stop:
        config["stopSequences"] = request.stop
    if request.image_output:
        config["responseModalities"] = ["TEXT", "IMAGE"]
    budget = THINKING_BUDGETS.get(str(request.reasoning_effort))
    if budget is not None:
        config["thinkingConfig"] = {"thinkingBudget": budget, "includeThoughts": True}
    fmt = request.output_format
    if fmt is not None:
        config["responseMimeType"] = "application/json"
        if fmt.kind == "json_schema" and fmt.schema:
            config["responseSchema"] = _schema(fmt.schema)
    if config:
        body["generationConfig"] = config
    if request.tools:
        declarations = []
        for tool in request.tools:
            declaration: dict[str, Any] = {"name": tool.name}
            if tool.description:
                declaration["description"] = tool.description
            if tool.parameters:
                declaration["parameters"] = _schema(tool.parameters)
            declarations.append(declaration)
        body["tools"] = [{"functionDeclarations": declarations}]
        tool_config = _tool_config(request.tool_choice)
        if tool_config is not None:
            body["toolConfig"] = tool_config
    return orjson.dumps(body)


def usage(metadata: Any) -> c.Usage | None:
    """``promptTokenCount`` already includes cached tokens; thoughts are counted apart from
    ``candidatesTokenCount``, so output is their sum (the canonical convention). The
    modality breakdowns (``promptTokensDetails``, ``candidatesTokensDetails``) give the
    audio and image parts (video is priced as images)."""
    if not isinstance(metadata, Mapping):
        return None
    thoughts = c.as_int(metadata.get("thoughtsTokenCount"))
    prompt = _by_modality(metadata.get("promptTokensDetails"))
    prompt_tool = _by_modality(metadata.get("toolUsePromptTokensDetails"))
    output = _by_modality(metadata.get("candidatesTokensDetails"))
    return c.Usage(
        input_tokens=c.as_int(metadata.get("promptTokenCount"))
        + c.as_int(metadata.get("toolUsePromptTokenCount")),
        output_tokens=c.as_int(metadata.get("candidatesTokenCount")) + thoughts,
        cached_tokens=c.as_int(metadata.get("cachedContentTokenCount")),
        reasoning_tokens=thoughts,
        audio_input_tokens=prompt["AUDIO"] + prompt_tool["AUDIO"],
        image_input_tokens=prompt["IMAGE"] + prompt["VIDEO"] + prompt_tool["IMAGE"],
        audio_output_tokens=output["AUDIO"],
        image_output_tokens=output["IMAGE"],
    )


def _by_modality(details: Any) -> dict[str, int]:
    """Gemini's ``[{"modality": "AUDIO", "tokenCount": 12}, ...]`` summed by modality."""
    found = dict.fromkeys(("TEXT", "AUDIO", "IMAGE", "VIDEO", "DOCUMENT"), 0)
    for entry in details if isinstance(details, list) else ():
        if isinstance(entry, Mapping) and entry.get("modality") in found:
            found[entry["modality"]] += c.as_int(entry.get("tokenCount"))
    return found


def _picture(part: Mapping[str, Any]) -> c.GeneratedImage | None:
    """A generated picture (``inlineData`` of an image type). A "thought" picture is a
    draft the model shows while it thinks, not part of the answer: it is not kept."""
    inline = part.get("inlineData")
    if not isinstance(inline, Mapping) or part.get("thought"):
        return None
    mime, data = inline.get("mimeType"), inline.get("data")
    if not isinstance(mime, str) or not mime.startswith("image/") or not isinstance(data, str):
        return None
    if not data or any(ch in mime for ch in ",; "):
        return None
    return c.GeneratedImage(mime, data)


def _read_parts(candidate: Any, first_call: int) -> list[c.AnswerPart]:
    found: list[c.AnswerPart] = []
    content = candidate.get("content") if isinstance(candidate, Mapping) else None
    for part in (content or {}).get("parts") or ():
        if not isinstance(part, Mapping):
            continue
        if isinstance(part.get("functionCall"), Mapping):
            call = part["functionCall"]
            index = first_call + sum(isinstance(p, c.ToolCall) for p in found)
            call_id = str(call.get("id") or f"call_{uuid.uuid4().hex[:20]}_{index}")
            arguments = orjson.dumps(call.get("args") or {}).decode()
            found.append(c.ToolCall(call_id, str(call.get("name") or ""), arguments))
        elif isinstance(part.get("text"), str) and part["text"]:
            kind = c.Reasoning if part.get("thought") else c.Text
            found.append(kind(part["text"]))
        elif (picture := _picture(part)) is not None:
            found.append(picture)
    return found


def _stop(reason: Any, has_calls: bool) -> c.Stop:
    if has_calls and reason in (None, "STOP"):
        return "tool_use"
    return FINISH_REASONS.get(reason, "end") if isinstance(reason, str) else "end"


class PromptBlocked(AnswerRefusesRequest):
    """Google refused the prompt itself in an HTTP 200 (``promptFeedback.blockReason``)."""


def blocked(answer: Mapping[str, Any]) -> ProviderFailure | None:
    """The client's error for an answer that blocks its prompt, else None.

    Google answers a prompt it will not take (safety, blocklist, prohibited content) with
    HTTP 200, no ``candidates`` and ``promptFeedback.blockReason``. Any channel would refuse
    the same prompt, so it is the request's fault: reported as an answer that failed, it
    would fail over and count against the channel's breaker, and one tenant's prompts could
    open it for every tenant. Only the reason, when it looks like Google's enum name, is
    passed on; the rest of the feedback (safety ratings) stays out of the message.
    """
    if answer.get("candidates"):
        return None
    feedback = answer.get("promptFeedback")
    reason = feedback.get("blockReason") if isinstance(feedback, Mapping) else None
    if not isinstance(reason, str) or not reason:
        return None
    if not _BLOCK_REASON.fullmatch(reason):
        reason = "BLOCKED_REASON_UNSPECIFIED"
    return ProviderFailure(
        FailureKind.CLIENT,
        400,
        f"The provider blocked the prompt (block reason: {reason}).",
        code="content_filter",
    )


def decode(body: bytes) -> c.Response:
    answer = orjson.loads(body)
    if isinstance(answer, dict) and (refusal := blocked(answer)) is not None:
        raise PromptBlocked(refusal)
    if not isinstance(answer, dict) or not isinstance(answer.get("candidates"), list):
        raise ValueError("not a generateContent answer")
    candidate = (answer["candidates"] or [{}])[0]
    parts = _read_parts(candidate, 0)
    has_calls = any(isinstance(p, c.ToolCall) for p in parts)
    return c.Response(
        id=str(answer.get("responseId") or ""),
        model=str(answer.get("modelVersion") or ""),
        parts=parts,
        stop=_stop(candidate.get("finishReason"), has_calls),
        usage=usage(answer.get("usageMetadata")),
    )


class GoogleStream(SseStream):
    """``streamGenerateContent?alt=sse`` chunks in, canonical events out."""

    def __init__(self, secrets: tuple[str, ...] = ()) -> None:
        super().__init__(secrets)
        self.started = False
        self.finish_reason: str | None = None
        self.calls = 0
        self.usage: c.Usage | None = None

    def end(self) -> list[c.Event]:
        if self.finish_reason is None:
            raise StreamIncomplete("the stream ended before its last candidate")
        events: list[c.Event] = [c.StreamFinish(_stop(self.finish_reason, self.calls > 0))]
        if self.usage is not None:
            events.append(c.StreamUsage(self.usage))
        return events

    def event(self, payload: bytes) -> list[c.Event]:
        answer = orjson.loads(payload)
        if isinstance(answer, list) and answer:
            answer = answer[0]
        if not isinstance(answer, dict):
            raise ValueError("malformed stream chunk")
        if "error" in answer:
            # The error's own HTTP code when it names the request's fault (400 for an
            # INVALID_ARGUMENT), else a broken stream.
            error = answer["error"]
            code = error.get("code") if isinstance(error, dict) else None
            status = code if isinstance(code, int) and 400 <= code < 500 else 502
            raise StreamFailed(failure_from(status, answer, self.secrets))
        # A blocked prompt comes as the stream's only chunk: the client's error, not a
        # broken stream.
        if (refusal := blocked(answer)) is not None:
            raise StreamFailed(refusal)
        events: list[c.Event] = []
        if not self.started:
            self.started = True
            model = str(answer.get("modelVersion") or "")
            events.append(c.StreamStart(str(answer.get("responseId") or ""), model))
        found = usage(answer.get("usageMetadata"))
        if found is not None:
            self.usage = found  # each chunk's counts are running totals
        for candidate in (answer.get("candidates") or [])[:1]:
            for part in _read_parts(candidate, self.calls):
                if isinstance(part, c.Reasoning):
                    events.append(c.ReasoningDelta(part.text))
                elif isinstance(part, c.Text):
                    events.append(c.TextDelta(part.text))
                elif isinstance(part, c.GeneratedImage):
                    events.append(c.ImageGenerated(part))
                else:
                    events.append(c.ToolCallStart(self.calls, part.id, part.name))
                    events.append(c.ToolCallDelta(self.calls, part.arguments))
                    self.calls += 1
            if isinstance(candidate, Mapping) and candidate.get("finishReason"):
                self.finish_reason = str(candidate["finishReason"])
        return events


def failure_from(status: int, body: Any, secrets: tuple[str, ...]) -> ProviderFailure:
    error = body.get("error") if isinstance(body, Mapping) else None
    if not isinstance(error, Mapping):
        return by_status(status, f"The provider answered HTTP {status}.")
    text = clip(str(error.get("message") or f"The provider answered HTTP {status}."), secrets)
    reasons = {
        detail.get("reason") for detail in error.get("details") or () if isinstance(detail, Mapping)
    }
    state = error.get("status")
    # An invalid Gemini key is a 400 INVALID_ARGUMENT; only its reason tells it apart.
    # UNAUTHENTICATED is always about the caller: nothing in a request produces it.
    if reasons & CREDENTIAL_REASONS or state == "UNAUTHENTICATED":
        return by_status(401, text)
    if state == "PERMISSION_DENIED":
        # Without a caller reason, the refusal is of something the request named, such as
        # a ``fileData.fileUri`` this channel's key cannot read ("You do not have
        # permission to access the File ... or it may not exist"). Suspending the channel
        # for that would let one tenant's request take it from every tenant, and another
        # channel would refuse the same file: it is the client's error.
        return ProviderFailure(FailureKind.CLIENT, 400, text, code="permission_denied")
    if state in RETRYABLE_STATUSES:
        return ProviderFailure(
            FailureKind.RETRYABLE,
            429 if state == "RESOURCE_EXHAUSTED" else 503,
            text,
            type="server_error",
            code="upstream_error",
        )
    return by_status(status, text)


def parse_failure(status: int, body: bytes, secrets: tuple[str, ...]) -> ProviderFailure:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = None
    # Some Google front ends answer a list holding the envelope.
    if isinstance(parsed, list) and parsed:
        parsed = parsed[0]
    return failure_from(status, parsed, secrets)


class GoogleAdapter:
    """What the Gemini API and Vertex AI share: the request body, answers, streams and
    errors. A subclass gives the URL and the authentication header."""

    provider_type = ""
    secrets: tuple[str, ...] = ()

    def url(self, model: str, *, stream: bool) -> str:
        raise NotImplementedError

    async def auth_headers(self) -> dict[str, str]:
        raise NotImplementedError

    async def build(
        self, request: c.Request, *, upstream_model: str, stream: bool
    ) -> UpstreamRequest:
        headers = {
            **await self.auth_headers(),
            "content-type": "application/json",
            "accept": "text/event-stream" if stream else "application/json",
        }
        return UpstreamRequest(
            "POST", self.url(upstream_model, stream=stream), headers, request_body(request)
        )

    def decode(self, body: bytes) -> c.Response:
        return decode(body)

    def stream_decoder(self) -> GoogleStream:
        return GoogleStream(self.secrets)

    def failure(self, status: int, headers: Mapping[str, str], body: bytes) -> ProviderFailure:
        return parse_failure(status, body, self.secrets)
