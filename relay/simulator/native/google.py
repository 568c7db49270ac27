"""Google's side: the OAuth token endpoint of the service-account flow, and
``generateContent`` / ``streamGenerateContent`` for the Gemini API (API keys) and Vertex AI
(bearer tokens this simulator issued), with ``usageMetadata`` in full."""

from __future__ import annotations

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


def plan_generate(body: Any, options: SimOptions) -> NativePlan | str:
    if not isinstance(body, dict) or not isinstance(body.get("contents"), list):
        return "Invalid JSON payload received. Unknown name or missing 'contents'."
    texts, messages, images, last_response = _read(body)
    config = body.get("generationConfig") or {}
    limit = config.get("maxOutputTokens")
    tool = None
    for tools in body.get("tools") or ():
        for declaration in (tools or {}).get("functionDeclarations") or ():
            tool = tool or declaration.get("name")
    mode = ((body.get("toolConfig") or {}).get("functionCallingConfig") or {}).get("mode")
    if last_response or mode == "NONE":
        tool = None
    return plan(
        options,
        prompt_tokens=count_text(texts, messages, images),
        max_tokens=limit if isinstance(limit, int) else None,
        tool_name=tool,
        thinking="thinkingConfig" in config,
    )


def usage_metadata(p: NativePlan, images: int) -> dict[str, Any]:
    """Gemini's usage; the ``audio_in``/``audio_out``/``image_out`` options add tokens of
    those modalities on top of the text's."""
    produced = p.output_tokens - p.reasoning
    options = p.options
    prompt_details = [{"modality": "TEXT", "tokenCount": p.prompt_tokens - 258 * images}]
    if images:
        prompt_details.append({"modality": "IMAGE", "tokenCount": 258 * images})
    if options.audio_in:
        prompt_details.append({"modality": "AUDIO", "tokenCount": options.audio_in})
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
        "promptTokensDetails": prompt_details,
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


def _parts(p: NativePlan, pictures: list[dict[str, Any]]) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    if p.reasoning:
        parts.append({"text": "sim thought", "thought": True})
    if p.tool_name:
        parts.append({"functionCall": {"name": p.tool_name, "args": {}}})
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
    planned = plan_generate(None if body is INVALID_BODY else body, options)
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
    pictures = _pictures(body, planned.options)
    finish = "MAX_TOKENS" if planned.truncated and not planned.tool_name else "STOP"
    if method == "generateContent":
        answer = {
            "candidates": [
                {
                    "content": {"role": "model", "parts": _parts(planned, pictures)},
                    "finishReason": finish,
                    "index": 0,
                }
            ],
            "usageMetadata": usage_metadata(planned, images),
            "modelVersion": route["model"],
            "responseId": f"sim-{time.monotonic_ns()}",
        }
        await exchange.respond_json(200, answer)
        return
    alt = query(scope).get("alt")
    await _stream(exchange, planned, images, pictures, finish, route["model"], alt)


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
        pieces.append([{"functionCall": {"name": p.tool_name, "args": {}}}])
    else:
        pieces.extend([{"text": piece}] for piece in p.pieces)
    pieces.extend([inline] for inline in pictures)  # one chunk per picture
    for index, parts in enumerate(pieces):
        candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
        chunk: dict[str, Any] = {"candidates": [candidate], **base}
        if index == len(pieces) - 1:
            candidate["finishReason"] = finish
            chunk["usageMetadata"] = usage_metadata(p, images)
        # Google ends events with CRLF pairs.
        await exchange.chunk(b"data: " + orjson.dumps(chunk) + b"\r\n\r\n")
        if exchange.disconnected:
            return
    await exchange.end()
