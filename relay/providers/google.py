"""Google's ``generateContent`` format, spoken by both the Gemini API and Vertex AI.

Requests, answers, streams (``streamGenerateContent?alt=sse``), ``usageMetadata`` and
Google's error envelope; the two providers differ only in URLs and authentication.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
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

# Thinking budgets (Gemini 2.x) by reasoning effort; the least and the most a model takes
# depend on the model (``_thinking``).
THINKING_BUDGETS = {"low": 1024, "medium": 8192, "high": 24576}
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
# Why Google stopped (``FinishReason``), as the canonical stop. Anything Google cut short
# that was neither the output cap nor a finished answer is "content_filter": it is the one
# stop every client format shows as an answer the provider ended early (chat's
# "content_filter", Responses' "incomplete", Messages' "refusal"), where "end" would pass
# an empty or partial answer off as complete. That includes a function call the model
# botched (MALFORMED_FUNCTION_CALL, UNEXPECTED_TOOL_CALL, TOO_MANY_TOOL_CALLS): the answer
# has no usable call, and Google bills it, so it is an answer that stopped short rather
# than the relay's error. NO_IMAGE is an answer without the picture asked for: what text
# came is whole.
FINISH_REASONS: dict[str, c.Stop] = {
    "STOP": "end",
    "NO_IMAGE": "end",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "LANGUAGE": "content_filter",
    "OTHER": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "MALFORMED_FUNCTION_CALL": "content_filter",
    "UNEXPECTED_TOOL_CALL": "content_filter",
    "TOO_MANY_TOOL_CALLS": "content_filter",
    "IMAGE_SAFETY": "content_filter",
    "IMAGE_PROHIBITED_CONTENT": "content_filter",
    "IMAGE_RECITATION": "content_filter",
    "IMAGE_OTHER": "content_filter",
}
# The image types Gemini reads (its documented image MIME types). Anything else sent as an
# image (a video, audio, a PDF) Google would bill by its own measure (seconds, pages) while
# the relay held and limited it as one picture.
IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/webp", "image/heic", "image/heif"})
_IMAGE_EXTENSIONS = {
    "png": "image/png",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
    "heic": "image/heic",
    "heif": "image/heif",
}
_IMAGE_FORMATS = "PNG, JPEG, WebP, HEIC or HEIF"
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


def _json_schema(schema: Any) -> Any:
    """A client's JSON Schema as Google's JSON Schema fields take it (``responseJsonSchema``,
    a function's ``parametersJsonSchema``). ``responseSchema`` and ``parameters`` take
    Google's OpenAPI subset instead, which refuses what JSON Schema clients send (a list of
    types for a nullable field, ``$ref``/``$defs``) and has no ``additionalProperties`` on
    the Gemini API. Only the root's ``$schema``, which names the dialect and constrains
    nothing, is left out: it is not among the keywords Google reads."""
    if not isinstance(schema, Mapping):
        return schema  # not a schema: Google says so, as the client's error
    return {name: value for name, value in schema.items() if name != "$schema"}


# Google reads a ``fileUri`` with the channel's own credentials when it names Google's
# storage: a ``gs://`` object (Vertex AI), a Gemini Files API upload, an object through
# storage.googleapis.com. A client's URL there would have the model read the operator's
# buckets and uploads for it, so only other http(s) URLs, fetched as anyone would fetch
# them, are sent by reference.
_GOOGLE_STORAGE = re.compile(r"(?:^|\.)(?:googleapis\.com|storage\.cloud\.google\.com)\.?$")


def _file_data(url: str) -> dict[str, Any]:
    """An image by URL as ``fileData``, its type named by the URL's file extension.

    Google wants the data's own MIME type here (not a wildcard such as ``image/*``), and
    it reads what the URL serves as that type. A URL that does not name an image file
    could serve a video or a PDF, which Google would bill by the second or the page while
    the relay counted one picture, so only URLs of image files are sent by reference.
    """
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
    _, dot, extension = parsed.path.rpartition(".")
    mime = _IMAGE_EXTENSIONS.get(extension.lower()) if dot and "/" not in extension else None
    if mime is None:
        raise c.TranslationError(
            f"An image sent to this model by URL must be a {_IMAGE_FORMATS} file whose "
            "URL ends in its extension (.png, .jpg, .webp, .heic, .heif); send other "
            "images as a data: URL.",
            param="messages",
        )
    return {"fileData": {"mimeType": mime, "fileUri": url}}


def _inline_data(url: str) -> dict[str, Any]:
    """An image in a ``data:`` URL as ``inlineData``, if its type is one Gemini reads."""
    mime, _, data = url[len("data:") :].partition(";base64,")
    mime = mime.partition(";")[0].strip().lower()
    if mime == "image/jpg":  # a common misspelling of JPEG's type: the same bytes
        mime = "image/jpeg"
    if mime not in IMAGE_TYPES:
        shown = mime[:40] or "none"
        raise c.TranslationError(
            f"An image sent to this model must be {_IMAGE_FORMATS}; this data: URL's "
            f"type is {shown!r}.",
            param="messages",
        )
    return {"inlineData": {"mimeType": mime, "data": data}}


def _media(part: c.Text | c.Image) -> dict[str, Any]:
    if isinstance(part, c.Text):
        return {"text": part.text}
    if part.url.startswith("data:") and ";base64," in part.url:
        return _inline_data(part.url)
    return _file_data(part.url)


# Gemini 3 signs each step's first function call (``thoughtSignature``) and refuses a
# history that replays the call without it. No client format has a field for it, but every
# client sends a tool call's id back (on the call and on its result), so the signature
# rides in the id the client gets: the id Google or the relay gave the call, this mark,
# and the signature's bytes in URL-safe base64 (the alphabet Anthropic and Bedrock allow in
# tool ids). Nothing is kept on the server. Signatures run to hundreds of characters, so
# such ids are long; that is the price of carrying them without server state.
_SIGNATURE_MARK = c.SIGNED_CALL_MARK
# Google's documented value for a replayed function call whose signature is lost (history
# from another model or client): the call is accepted without its reasoning context.
SKIP_SIGNATURE = "skip_thought_signature_validator"
_GEMINI_VERSION = re.compile(r"gemini-(\d+)(?:\.(\d+))?")


def call_id(base: str, signature: Any) -> str:
    """The id the client gets for a call Google signed with ``signature``."""
    if not isinstance(signature, str) or not signature:
        return base
    try:
        raw = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        return base  # not base64, as Google never sends: nothing to carry
    return base + _SIGNATURE_MARK + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def split_call_id(value: str) -> tuple[str, str | None]:
    """A call id as the client sent it back: the call's own id and its signature, as
    Google sent it (standard base64), if the id carries one."""
    base, mark, carried = value.partition(_SIGNATURE_MARK)
    if not mark:
        return value, None
    try:
        raw = base64.b64decode(carried + "=" * (-len(carried) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        return base, None
    return base, base64.b64encode(raw).decode() if raw else None


def _version(model: str) -> tuple[int, int] | None:
    """Gemini's version in a model name (``gemini-3.1-pro-preview``: (3, 1)), if it has one."""
    found = _GEMINI_VERSION.match(model.rpartition("/")[2].lower())
    return (int(found[1]), int(found[2] or 0)) if found else None


def _checks_signatures(model: str) -> bool:
    """Whether the model refuses function calls replayed without their signature: Gemini
    3 and later, and the unversioned aliases (``gemini-flash-latest``), which name the
    newest models."""
    version = _version(model)
    if version is not None:
        return version >= (3, 0)
    return model.rpartition("/")[2].lower().startswith("gemini-")


def _contents(request: c.Request, model: str) -> list[dict[str, Any]]:
    contents: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # a tool result names its call; Google wants the function
    for turn in request.turns:
        parts: list[dict[str, Any]] = []
        for part in turn.parts:
            if isinstance(part, (c.Text, c.Image)):
                if not isinstance(part, c.Text) or part.text:
                    parts.append(_media(part))
            elif isinstance(part, c.ToolCall):
                base, signature = split_call_id(part.id)
                names[base] = part.name
                try:
                    args = orjson.loads(part.arguments or "{}")
                except orjson.JSONDecodeError:
                    args = {}
                call: dict[str, Any] = {"functionCall": {"name": part.name, "args": args}}
                if signature is not None:
                    call["thoughtSignature"] = signature
                parts.append(call)
            elif isinstance(part, c.ToolResult):
                text = c.text_of(list(part.content))
                try:
                    result = orjson.loads(text)
                except orjson.JSONDecodeError:
                    result = text
                if not isinstance(result, dict):
                    result = {"error" if part.is_error else "result": result}
                name = names.get(split_call_id(part.call_id)[0], "")
                parts.append({"functionResponse": {"name": name, "response": result}})
        if not parts:
            continue
        role = "model" if turn.role == "assistant" else "user"
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})
    if _checks_signatures(model):
        for content in contents:
            if content["role"] == "model":
                _sign_first_call(content["parts"])
    return contents


def _sign_first_call(parts: list[dict[str, Any]]) -> None:
    """Google checks the first function call of each step (the model's turn): one whose
    signature the client's history lost gets the value that skips the check."""
    for part in parts:
        if "functionCall" in part:
            part.setdefault("thoughtSignature", SKIP_SIGNATURE)
            return


def _thinking(effort: str | None, model: str) -> dict[str, Any] | None:
    """``thinkingConfig`` for a reasoning effort. Gemini 3 takes a level, earlier models a
    budget of tokens. "none" and "minimal" ask for the least thinking the model allows,
    "xhigh" and "max" for the most: ignored, the model would think at its default and the
    client pay for thinking it asked to avoid. An effort Google has no measure for is
    refused rather than guessed."""
    if effort is None:
        return None
    if effort not in REASONING_EFFORTS:
        shown = str(effort)[:40]
        raise c.TranslationError(
            f"reasoning_effort must be one of {', '.join(REASONING_EFFORTS)}; got {shown!r}.",
            param="reasoning_effort",
        )
    name = model.rpartition("/")[2].lower()
    version = _version(name)
    if version is not None and version >= (3, 0):
        levels = {"low": "LOW", "medium": "MEDIUM", "high": "HIGH", "xhigh": "HIGH", "max": "HIGH"}
        level = levels.get(effort) or _least_level(name, version)
        return {"thinkingLevel": level, "includeThoughts": True}
    pro = "-pro" in name
    if effort in ("none", "minimal"):
        # 2.5 Pro cannot stop thinking; 128 tokens is the least it takes.
        budget = 128 if pro else 0
    elif effort in ("xhigh", "max"):
        budget = 32768 if pro else 24576
    else:
        budget = THINKING_BUDGETS[effort]
    if budget == 0:
        return {"thinkingBudget": 0}
    return {"thinkingBudget": budget, "includeThoughts": True}


def _least_level(name: str, version: tuple[int, int]) -> str:
    """The lowest thinking level a Gemini 3 model takes: MINIMAL on Flash-Lite and on
    Flash before 3.7; Pro and later Flash models start at LOW, as does any model this
    does not know (every Gemini 3 model takes LOW)."""
    if "flash-lite" in name or ("-flash" in name and version < (3, 7)):
        return "MINIMAL"
    return "LOW"


def _tool_config(choice: str | None) -> dict[str, Any] | None:
    if choice is None:
        return None
    modes = {"auto": "AUTO", "required": "ANY", "none": "NONE"}
    if choice in modes:
        return {"functionCallingConfig": {"mode": modes[choice]}}
    return {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [choice]}}


def request_body(request: c.Request, model: str = "") -> bytes:
    """The ``generateContent`` request for a canonical request. The model goes in the URL;
    its name (``model``, else the request's) decides what it is sent: thinking levels or
    budgets, and whether lost call signatures are stood in for."""
    model = model or request.model
    body: dict[str, Any] = {"contents": _contents(request, model)}
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
    thinking = _thinking(request.reasoning_effort, model)
    if thinking is not None:
        config["thinkingConfig"] = thinking
    fmt = request.output_format
    if fmt is not None:
        config["responseMimeType"] = "application/json"
        if fmt.kind == "json_schema" and fmt.schema:
            config["responseJsonSchema"] = _json_schema(fmt.schema)
    if config:
        body["generationConfig"] = config
    if request.tools:
        declarations = []
        for tool in request.tools:
            declaration: dict[str, Any] = {"name": tool.name}
            if tool.description:
                declaration["description"] = tool.description
            if tool.parameters:
                declaration["parametersJsonSchema"] = _json_schema(tool.parameters)
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
            base = str(call.get("id") or f"call_{uuid.uuid4().hex[:20]}_{index}")
            arguments = orjson.dumps(call.get("args") or {}).decode()
            identifier = call_id(base, part.get("thoughtSignature"))
            found.append(c.ToolCall(identifier, str(call.get("name") or ""), arguments))
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
    """``streamGenerateContent?alt=sse`` chunks in, canonical events out.

    ``usageMetadata`` holds running totals. The Gemini API sends it with every chunk (the
    prompt's counts from the first); the counts that came with or after the candidate's
    ``finishReason`` are the answer's whole usage. Earlier ones count the prompt and an
    output that has only begun: a stream that ends without later counts is billed for the
    prompt as Google counted it and for the text it delivered, counted by the relay
    (``prompt_usage``, ``UsageRecord.prompt_usage``).
    """

    def __init__(self, secrets: tuple[str, ...] = ()) -> None:
        super().__init__(secrets)
        self.started = False
        self.finish_reason: str | None = None
        self.calls = 0
        self.usage: c.Usage | None = None
        self.usage_final = False  # ``usage`` came with or after the finish reason

    def end(self) -> list[c.Event]:
        if self.finish_reason is None:
            raise StreamIncomplete("the stream ended before its last candidate")
        events: list[c.Event] = [c.StreamFinish(_stop(self.finish_reason, self.calls > 0))]
        if self.usage is not None and self.usage_final:
            events.append(c.StreamUsage(self.usage))
        return events

    def prompt_usage(self) -> c.Usage | None:
        """The latest counts with their output left out: Google's count of the prompt."""
        if self.usage is None:
            return None
        return dataclasses.replace(
            self.usage,
            output_tokens=0,
            reasoning_tokens=0,
            audio_output_tokens=0,
            image_output_tokens=0,
            output_images=0,
        )

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
        found = usage(answer.get("usageMetadata"))
        if found is not None:
            self.usage = found
            self.usage_final = self.finish_reason is not None
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
        body = request_body(request, upstream_model)  # refused before any token is fetched
        headers = {
            **await self.auth_headers(),
            "content-type": "application/json",
            "accept": "text/event-stream" if stream else "application/json",
        }
        return UpstreamRequest("POST", self.url(upstream_model, stream=stream), headers, body)

    def decode(self, body: bytes) -> c.Response:
        return decode(body)

    def stream_decoder(self) -> GoogleStream:
        return GoogleStream(self.secrets)

    def failure(self, status: int, headers: Mapping[str, str], body: bytes) -> ProviderFailure:
        return parse_failure(status, body, self.secrets)
