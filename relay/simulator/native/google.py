"""Google's side: the OAuth token endpoint of the service-account flow, and
``generateContent`` / ``streamGenerateContent`` for the Gemini API (API keys) and Vertex AI
(bearer tokens this simulator issued), with ``usageMetadata`` in full (running counts on
every streamed chunk, as the Gemini API sends them), Gemini 3's rules: signed function
calls that a replayed history must carry, thinking levels rather than budgets, and Google's
schemas: its OpenAPI subset (``responseSchema``, ``parameters``) refuses what only JSON
Schema (``responseJsonSchema``, ``parametersJsonSchema``) takes."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import re
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import orjson

from relay.simulator.native.common import (
    NativePlan,
    count_text,
    gate,
    header,
    option_error,
    plan,
    query,
    read_request,
)
from relay.simulator.options import INVALID_BODY, OptionError, SimOptions
from relay.simulator.responses import picture

if TYPE_CHECKING:
    from relay.simulator.app import SimulatorApp
    from relay.simulator.exchange import SimExchange

GOOGLE_AUDIENCE = "https://oauth2.googleapis.com/token"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
STATUSES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


async def error(
    exchange: SimExchange, status: int, message: str, *, reason: str | None = None
) -> None:
    body: dict[str, Any] = {
        "code": status,
        "message": message,
        "status": STATUSES.get(status, "UNKNOWN"),
    }
    if reason:
        body["details"] = [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": reason,
                "domain": "googleapis.com",
            }
        ]
    await exchange.respond_json(status, {"error": body})


async def token_endpoint(
    app: SimulatorApp,
    scope: Mapping[str, Any],
    exchange: SimExchange,
    options: SimOptions | OptionError,
) -> None:
    """Exchange a service account's signed JWT for a short-lived access token. Behaviour
    prefixes apply (``/sim/fail=500/oauth2/token``: an outage of the endpoint)."""
    raw, _ = await read_request(app, scope, exchange)
    form = {k: v[-1] for k, v in parse_qs(raw.decode("latin-1")).items()}
    if isinstance(options, SimOptions):
        status = await gate(app, scope, exchange, options)
        if status is False:
            return
        if status:
            # Google's endpoint answers its own failures in the OAuth error shape.
            body = {"error": "internal_failure", "error_description": "Simulated failure."}
            await exchange.respond_json(int(status), body)
            return

    async def refuse(description: str) -> None:
        body = {"error": "invalid_grant", "error_description": description}
        await exchange.respond_json(400, body)

    if scope["method"] != "POST" or form.get("grant_type") != JWT_BEARER:
        await refuse("Invalid grant_type.")
        return
    from google.auth import exceptions, jwt  # the simulator stays light until it needs them

    assertion = form.get("assertion", "")
    try:
        claims = jwt.decode(assertion, verify=False)
    except (ValueError, exceptions.GoogleAuthError):
        await refuse("Invalid JWT.")
        return
    account = app.native.service_accounts.get(str(claims.get("iss")))
    if account is None:
        await refuse("Invalid JWT Signature.")  # what Google says for an unknown key too
        return
    # google-auth addresses the assertion to Google's token endpoint whatever token_uri
    # says, so that is the audience Google (and this simulator) insists on.
    here = f"{scope.get('scheme', 'http')}://{header(scope, 'host')}{scope['path']}"
    try:
        jwt.decode(assertion, certs=account.public_key_pem, audience=[GOOGLE_AUDIENCE, here])
    except (ValueError, exceptions.GoogleAuthError):
        await refuse("Invalid JWT Signature.")
        return
    if not claims.get("scope"):
        await refuse("Invalid OAuth scope or ID token audience provided.")
        return
    token, lifetime = app.native.issue_token(account.email)
    await exchange.respond_json(
        200, {"access_token": token, "expires_in": lifetime, "token_type": "Bearer"}
    )


# Files uploaded through the Gemini Files API are named by URIs of this shape.
_FILE_URI = re.compile(r"^https://[^/]+/v1beta/(files/[^/?#]+)$")


def _unreadable_file(body: Any) -> str | None:
    """The name of a Files API file the request refers to. The simulator holds no uploaded
    files, so every one is some other project's or expired, as Gemini then says."""
    for turn in body.get("contents") or () if isinstance(body, dict) else ():
        for part in (turn.get("parts") or ()) if isinstance(turn, dict) else ():
            data = part.get("fileData") if isinstance(part, dict) else None
            uri = data.get("fileUri") if isinstance(data, dict) else None
            if isinstance(uri, str) and (match := _FILE_URI.match(uri)):
                return match[1]
    return None


def _read(body: Any) -> tuple[list[str], int, int, bool]:
    """Texts, messages, images, and whether the last turn is a function response."""
    texts: list[str] = []
    images, messages, last_response = 0, 0, False
    system = body.get("systemInstruction")
    turns = list(body.get("contents") or [])
    if isinstance(system, dict):
        turns.insert(0, system)
    for turn in turns:
        if not isinstance(turn, dict):
            continue
        messages += 1
        last_response = False
        for part in turn.get("parts") or ():
            if not isinstance(part, dict):
                continue
            if isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif "inlineData" in part or "fileData" in part:
                images += 1
            elif "functionResponse" in part:
                last_response = True
    return texts, messages, images, last_response


# What the simulator signs a Gemini 3 function call with: long, as Google's are, and with
# the characters of base64 that URLs and tool ids do not take ("+", "/"), so a relay must
# carry it faithfully.
SIGNATURE_BYTES = b"sim-thought-signature:" + bytes(range(256))
SIGNATURE = base64.b64encode(SIGNATURE_BYTES).decode()
# Google's documented value that skips the check of a replayed call's signature.
SKIP_SIGNATURE = "skip_thought_signature_validator"
MISSING_SIGNATURE = "Function call is missing a thought_signature in functionCall parts."
_VERSION = re.compile(r"gemini-(\d+)")


def is_gemini_3(model: str) -> bool:
    """Gemini 3 and later: signed function calls, thinking levels."""
    found = _VERSION.match(model)
    return found is not None and int(found[1]) >= 3


def _signature_problem(body: Any) -> str | None:
    """What Gemini 3 says of a history whose current turn (since the last user message
    that is not only function responses) replays a step's first function call without
    its signature, or with one it did not issue."""
    contents = [t for t in body.get("contents") or () if isinstance(t, dict)]
    start = 0
    for index, turn in enumerate(contents):
        parts = [p for p in turn.get("parts") or () if isinstance(p, dict)]
        if turn.get("role") != "model" and any("functionResponse" not in p for p in parts):
            start = index
    for turn in contents[start:]:
        if turn.get("role") != "model":
            continue
        calls = [p for p in turn.get("parts") or () if isinstance(p, dict) and "functionCall" in p]
        if not calls:
            continue
        signature = calls[0].get("thoughtSignature")
        if signature is None:
            return MISSING_SIGNATURE
        if signature != SKIP_SIGNATURE and not _issued(signature):
            return "Corrupted thought signature."
    return None


def _issued(signature: Any) -> bool:
    try:
        return isinstance(signature, str) and base64.b64decode(signature) == SIGNATURE_BYTES
    except (binascii.Error, ValueError):
        return False


def _thinking_problem(config: Any, model: str) -> str | None:
    """Gemini's refusals of a ``thinkingConfig``: a level and a budget together, a level
    for a model before Gemini 3, no thinking for a model that always thinks (Pro)."""
    thinking = config.get("thinkingConfig") if isinstance(config, dict) else None
    if not isinstance(thinking, dict):
        return None
    if "thinkingLevel" in thinking and "thinkingBudget" in thinking:
        return "You can only set one of thinking budget and thinking level."
    if "thinkingLevel" in thinking and not is_gemini_3(model):
        return "Thinking level is not supported for this model."
    if thinking.get("thinkingBudget") == 0 and "-pro" in model:
        return "Budget 0 is invalid. This model only works in thinking mode."
    return None


def _thinking_off(config: Any) -> bool:
    """A budget of 0: the model answers without thinking, whatever ``reasoning`` says."""
    thinking = config.get("thinkingConfig") if isinstance(config, dict) else None
    return isinstance(thinking, dict) and thinking.get("thinkingBudget") == 0


# The fields of Google's ``Schema`` message, an OpenAPI 3.0 subset: what ``responseSchema``
# and a function's ``parameters`` take. Vertex AI's has ``additionalProperties``, ``ref``
# and ``defs`` too. JSON Schema goes in ``responseJsonSchema`` and ``parametersJsonSchema``,
# which take any JSON value.
SCHEMA_FIELDS = frozenset(
    {
        "type",
        "format",
        "title",
        "description",
        "nullable",
        "enum",
        "maxItems",
        "minItems",
        "properties",
        "required",
        "minProperties",
        "maxProperties",
        "minLength",
        "maxLength",
        "pattern",
        "example",
        "anyOf",
        "propertyOrdering",
        "default",
        "items",
        "minimum",
        "maximum",
    }
)
VERTEX_SCHEMA_FIELDS = SCHEMA_FIELDS | {"additionalProperties", "ref", "defs"}
SCHEMA_TYPES = frozenset(
    {"TYPE_UNSPECIFIED", "STRING", "NUMBER", "INTEGER", "BOOLEAN", "ARRAY", "OBJECT", "NULL"}
)


def _openapi_problems(schema: Any, path: str, fields: frozenset[str]) -> list[str]:
    """What Google's JSON parser says of a value sent as its ``Schema`` message, every
    violation as Google lists them: a field the message lacks (``$ref``,
    ``additionalProperties`` on the Gemini API), a list of types."""
    invalid = "Invalid JSON payload received."
    if not isinstance(schema, dict):
        return [f"{invalid} Expected an object at '{path}'."]
    problems: list[str] = []
    for name, value in schema.items():
        if name not in fields:
            problems.append(f"{invalid} Unknown name \"{name}\" at '{path}': Cannot find field.")
        elif name == "type" and isinstance(value, list):
            problems.append(
                f"{invalid} Unknown name \"type\" at '{path}': Proto field is not repeating, "
                "cannot start list."
            )
        elif name == "type" and (not isinstance(value, str) or value.upper() not in SCHEMA_TYPES):
            problems.append(f"Invalid value at '{path}.type', {orjson.dumps(value).decode()[:40]}.")
    nested: list[tuple[Any, str]] = []
    for key in ("properties", "defs"):
        members = schema.get(key) if key in fields else None
        if isinstance(members, dict):
            nested += [(s, f"{path}.{key}[{i}].value") for i, s in enumerate(members.values())]
    if "items" in schema:
        nested.append((schema["items"], f"{path}.items"))
    if isinstance(schema.get("anyOf"), list):
        nested += [(s, f"{path}.any_of[{i}]") for i, s in enumerate(schema["anyOf"])]
    for sub, where in nested:
        problems += _openapi_problems(sub, where, fields)
    return problems


def _schema_problem(body: dict[str, Any], *, vertex: bool) -> str | None:
    """Google's refusals of the schemas a request carries: one of its own ``Schema`` that
    is not (``_openapi_problems``), both kinds of schema at once, a JSON Schema for the
    answer without the JSON MIME type."""
    fields = VERTEX_SCHEMA_FIELDS if vertex else SCHEMA_FIELDS
    problems: list[str] = []
    config = body.get("generationConfig")
    if isinstance(config, dict):
        if "responseSchema" in config and "responseJsonSchema" in config:
            return "responseSchema and responseJsonSchema cannot both be set."
        if "responseJsonSchema" in config and config.get("responseMimeType") != "application/json":
            return "responseJsonSchema requires responseMimeType application/json."
        if "responseSchema" in config:
            where = "generation_config.response_schema"
            problems += _openapi_problems(config["responseSchema"], where, fields)
    for t, tool in enumerate(body.get("tools") or ()):
        declarations = tool.get("functionDeclarations") if isinstance(tool, dict) else None
        for d, declaration in enumerate(declarations or ()):
            if not isinstance(declaration, dict):
                continue
            if "parameters" in declaration and "parametersJsonSchema" in declaration:
                return "parameters and parametersJsonSchema cannot both be set."
            if "parameters" in declaration:
                where = f"tools[{t}].function_declarations[{d}].parameters"
                problems += _openapi_problems(declaration["parameters"], where, fields)
    return "\n".join(problems) or None


def plan_generate(
    body: Any, options: SimOptions, model: str = "", *, vertex: bool = False
) -> NativePlan | str:
    if not isinstance(body, dict) or not isinstance(body.get("contents"), list):
        return "Invalid JSON payload received. Unknown name or missing 'contents'."
    texts, messages, images, last_response = _read(body)
    config = body.get("generationConfig") or {}
    if (problem := _schema_problem(body, vertex=vertex)) is not None:
        return problem
    if (problem := _thinking_problem(config, model)) is not None:
        return problem
    if is_gemini_3(model) and (problem := _signature_problem(body)) is not None:
        return problem
    limit = config.get("maxOutputTokens")
    tool = None
    for tools in body.get("tools") or ():
        for declaration in (tools or {}).get("functionDeclarations") or ():
            tool = tool or declaration.get("name")
    mode = ((body.get("toolConfig") or {}).get("functionCallingConfig") or {}).get("mode")
    if last_response or mode == "NONE":
        tool = None
    planned = plan(
        options,
        prompt_tokens=count_text(texts, messages, images),
        max_tokens=limit if isinstance(limit, int) else None,
        tool_name=tool,
        thinking="thinkingConfig" in config,
    )
    return dataclasses.replace(planned, reasoning=0) if _thinking_off(config) else planned


def prompt_metadata(p: NativePlan, images: int) -> dict[str, Any]:
    """The prompt's counts, which the Gemini API sends with every streamed chunk before
    the last (whose counts are the whole answer's)."""
    prompt = p.prompt_tokens + p.options.audio_in
    metadata: dict[str, Any] = {
        "promptTokenCount": prompt,
        "totalTokenCount": prompt,
        "promptTokensDetails": _prompt_details(p, images),
    }
    if p.cache_read:
        metadata["cachedContentTokenCount"] = p.cache_read
        metadata["cacheTokensDetails"] = [{"modality": "TEXT", "tokenCount": p.cache_read}]
    return metadata


def _prompt_details(p: NativePlan, images: int) -> list[dict[str, Any]]:
    details = [{"modality": "TEXT", "tokenCount": p.prompt_tokens - 258 * images}]
    if images:
        details.append({"modality": "IMAGE", "tokenCount": 258 * images})
    if p.options.audio_in:
        details.append({"modality": "AUDIO", "tokenCount": p.options.audio_in})
    return details


def usage_metadata(p: NativePlan, images: int) -> dict[str, Any]:
    """Gemini's usage; the ``audio_in``/``audio_out``/``image_out`` options add tokens of
    those modalities on top of the text's."""
    produced = p.output_tokens - p.reasoning
    options = p.options
    output_details = [{"modality": "TEXT", "tokenCount": produced}]
    for modality, count in (("AUDIO", options.audio_out), ("IMAGE", options.image_out)):
        if count:
            output_details.append({"modality": modality, "tokenCount": count})
    prompt = p.prompt_tokens + options.audio_in
    candidates = produced + options.audio_out + options.image_out
    metadata: dict[str, Any] = {
        "promptTokenCount": prompt,
        "candidatesTokenCount": candidates,
        "totalTokenCount": prompt + candidates + p.reasoning,
        "promptTokensDetails": _prompt_details(p, images),
        "candidatesTokensDetails": output_details,
    }
    if p.cache_read:
        metadata["cachedContentTokenCount"] = p.cache_read
        metadata["cacheTokensDetails"] = [{"modality": "TEXT", "tokenCount": p.cache_read}]
    if p.reasoning:
        metadata["thoughtsTokenCount"] = p.reasoning
    return metadata


def _pictures(body: Any, options: SimOptions) -> list[dict[str, Any]]:
    """The ``images`` pictures as ``inlineData`` parts, made only when the request asks
    for them (``responseModalities`` with "IMAGE"), as Gemini's image models do."""
    config = body.get("generationConfig") if isinstance(body, dict) else None
    modalities = config.get("responseModalities") if isinstance(config, dict) else None
    if not isinstance(modalities, list) or "IMAGE" not in modalities:
        return []
    inline = {"inlineData": {"mimeType": "image/png", "data": picture(options)}}
    return [inline] * options.images


def _call(p: NativePlan, model: str) -> dict[str, Any]:
    """The function call part; Gemini 3 signs it."""
    call: dict[str, Any] = {"functionCall": {"name": p.tool_name, "args": {}}}
    if is_gemini_3(model):
        call["thoughtSignature"] = SIGNATURE
    return call


def _parts(p: NativePlan, pictures: list[dict[str, Any]], model: str) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    if p.reasoning:
        parts.append({"text": "sim thought", "thought": True})
    if p.tool_name:
        parts.append(_call(p, model))
    else:
        parts.append({"text": p.text})
    return parts + pictures


async def handle(
    app: SimulatorApp,
    scope: Mapping[str, Any],
    exchange: SimExchange,
    options: SimOptions | OptionError,
    route: dict[str, str],
    *,
    vertex: bool,
) -> None:
    _, body = await read_request(app, scope, exchange)
    if (problem := option_error(options)) is not None:
        await error(exchange, 400, problem)
        return
    assert isinstance(options, SimOptions)
    if not await _authorised(app, scope, exchange, options, route, vertex=vertex):
        return
    method = route["method"]
    if method not in ("generateContent", "streamGenerateContent") or scope["method"] != "POST":
        await error(exchange, 404, f"Method {method} is not found for this model.")
        return
    status = await gate(app, scope, exchange, options)
    if status is False:
        return
    if status:
        await error(exchange, int(status), f"Simulated failure (HTTP {status}).")
        return
    planned = plan_generate(
        None if body is INVALID_BODY else body, options, route["model"], vertex=vertex
    )
    if isinstance(planned, str):
        await error(exchange, 400, planned)
        return
    if not vertex and (name := _unreadable_file(body)) is not None:
        await error(
            exchange,
            403,
            f"You do not have permission to access the File {name.removeprefix('files/')} "
            "or it may not exist.",
        )
        return
    if options.blocked:
        await _blocked(exchange, scope, planned, route["model"], stream=method != "generateContent")
        return
    images = _read(body)[2]
    model = route["model"]
    pictures = _pictures(body, planned.options)
    finish = "MAX_TOKENS" if planned.truncated and not planned.tool_name else "STOP"
    if method == "generateContent":
        answer: dict[str, Any] = {
            "candidates": [
                {
                    "content": {"role": "model", "parts": _parts(planned, pictures, model)},
                    "finishReason": finish,
                    "index": 0,
                }
            ],
            "modelVersion": model,
            "responseId": f"sim-{time.monotonic_ns()}",
        }
        if not options.nousage:
            answer["usageMetadata"] = usage_metadata(planned, images)
        await exchange.respond_json(200, answer)
        return
    alt = query(scope).get("alt")
    await _stream(exchange, planned, images, pictures, finish, model, alt)


async def _blocked(
    exchange: SimExchange,
    scope: Mapping[str, Any],
    p: NativePlan,
    model: str,
    *,
    stream: bool,
) -> None:
    """Gemini's refusal of the prompt: HTTP 200, no candidates, ``promptFeedback`` saying
    why (with the safety ratings behind a SAFETY block). Streamed, it is the only chunk."""
    reason = p.options.blocked
    feedback: dict[str, Any] = {"blockReason": reason}
    if reason == "SAFETY":
        feedback["safetyRatings"] = [
            {"category": "HARM_CATEGORY_HARASSMENT", "probability": "HIGH", "blocked": True}
        ]
    answer = {
        "promptFeedback": feedback,
        "usageMetadata": {"promptTokenCount": p.prompt_tokens, "totalTokenCount": p.prompt_tokens},
        "modelVersion": model,
        "responseId": f"sim-{time.monotonic_ns()}",
    }
    if not stream:
        await exchange.respond_json(200, answer)
        return
    if query(scope).get("alt") != "sse":
        await error(exchange, 400, "The simulator streams only with alt=sse.")
        return
    await exchange.start(200, [(b"content-type", b"text/event-stream")])
    await exchange.chunk(b"data: " + orjson.dumps(answer) + b"\r\n\r\n")
    await exchange.end()


async def _authorised(
    app: SimulatorApp,
    scope: Mapping[str, Any],
    exchange: SimExchange,
    options: SimOptions,
    route: dict[str, str],
    *,
    vertex: bool,
) -> bool:
    trust = app.native
    if vertex:
        scheme, _, token = header(scope, "authorization").partition(" ")
        account = trust.token_account(token.strip()) if scheme.lower() == "bearer" else None
        if account is None:
            await error(
                exchange,
                401,
                "Request had invalid authentication credentials. Expected OAuth 2 access "
                "token, login cookie or other valid authentication credential.",
                reason="ACCESS_TOKEN_TYPE_UNSUPPORTED" if not token else "ACCESS_TOKEN_EXPIRED",
            )
            return False
        if account.project != route["project"]:
            await error(
                exchange,
                403,
                f"Permission denied on resource project {route['project']}.",
                reason="IAM_PERMISSION_DENIED",
            )
            return False
        return True
    key = header(scope, "x-goog-api-key") or query(scope).get("key", "")
    if not key:
        await error(exchange, 403, "Method doesn't allow unregistered callers.")
        return False
    if not trust.key_ok(trust.gemini_keys, key, options.key):
        await error(
            exchange,
            400,
            "API key not valid. Please pass a valid API key.",
            reason="API_KEY_INVALID",
        )
        return False
    return True


async def _stream(
    exchange: SimExchange,
    p: NativePlan,
    images: int,
    pictures: list[dict[str, Any]],
    finish: str,
    model: str,
    alt: str | None,
) -> None:
    if alt != "sse":
        # Without alt=sse Google streams one JSON array; the relay always asks for SSE.
        await error(exchange, 400, "The simulator streams only with alt=sse.")
        return
    exchange.watch()
    await exchange.start(200, [(b"content-type", b"text/event-stream")])
    base = {"modelVersion": model, "responseId": f"sim-{time.monotonic_ns()}"}
    pieces: list[list[dict[str, Any]]] = []
    if p.reasoning:
        pieces.append([{"text": "sim thought", "thought": True}])
    if p.tool_name:
        pieces.append([_call(p, model)])
    else:
        pieces.extend([{"text": piece}] for piece in p.pieces)
    pieces.extend([inline] for inline in pictures)  # one chunk per picture
    hang_at = p.options.hang_after
    for index, parts in enumerate(pieces):
        if index == hang_at:  # cut short: the finish reason and the last counts never come
            await exchange.pause(None)
            return
        candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
        chunk: dict[str, Any] = {"candidates": [candidate], **base}
        if index < len(pieces) - 1:
            chunk["usageMetadata"] = prompt_metadata(p, images)
        else:
            candidate["finishReason"] = finish
            if not p.options.nousage:  # ``nousage``: the running counts only
                chunk["usageMetadata"] = usage_metadata(p, images)
        # Google ends events with CRLF pairs.
        await exchange.chunk(b"data: " + orjson.dumps(chunk) + b"\r\n\r\n")
        if exchange.disconnected:
            return
    await exchange.end()
