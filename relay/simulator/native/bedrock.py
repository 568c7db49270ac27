"""AWS Bedrock's Converse and ConverseStream as the simulator speaks them.

Every request's SigV4 signature is recomputed with botocore from the request as it
arrived (method, raw path, query, signed headers, body) and the secret registered for its
access key; a mismatch is refused the way AWS refuses it. Every body is checked against
botocore's service model for ``bedrock-runtime`` (the shape AWS validates before any
model sees it). Streams use AWS's event-stream framing (prelude, headers, payload,
CRC32s).
"""

from __future__ import annotations

import binascii
import calendar
import dataclasses
import functools
import hmac
import struct
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import orjson

from relay.simulator.native.common import (
    NativePlan,
    count_text,
    gate,
    header,
    option_error,
    plan,
    read_request,
)
from relay.simulator.options import INVALID_BODY, OptionError, SimOptions
from relay.simulator.wire import json_text

if TYPE_CHECKING:
    from relay.simulator.app import SimulatorApp
    from relay.simulator.exchange import SimExchange

MAX_CLOCK_SKEW_SECONDS = 300
SIGNATURE_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your AWS Secret Access Key and signing method. Consult the service "
    "documentation for details."
)
ERROR_TYPES = {
    400: "ValidationException",
    403: "AccessDeniedException",
    404: "ResourceNotFoundException",
    408: "ModelTimeoutException",
    424: "ModelErrorException",
    429: "ThrottlingException",
    500: "InternalServerException",
    503: "ServiceUnavailableException",
}


async def error(exchange: SimExchange, status: int, kind: str, message: str) -> None:
    headers = [
        (b"content-type", b"application/json"),
        (
            b"x-amzn-errortype",
            f"{kind}:http://internal.amazon.com/coral/com.amazon.bedrock/".encode(),
        ),
        (b"x-amzn-requestid", f"sim-{time.monotonic_ns()}".encode()),
    ]
    await exchange.respond(status, orjson.dumps({"message": message}), headers)


def frame(headers: dict[str, str], payload: bytes) -> bytes:
    """One AWS event-stream message; every header value is a string (type 7)."""
    encoded = b"".join(
        bytes([len(name)])
        + name.encode()
        + b"\x07"
        + struct.pack(">H", len(value))
        + value.encode()
        for name, value in headers.items()
    )
    total = 12 + len(encoded) + len(payload) + 4
    prelude = struct.pack(">II", total, len(encoded))
    prelude += struct.pack(">I", binascii.crc32(prelude) & 0xFFFFFFFF)
    message = prelude + encoded + payload
    return message + struct.pack(">I", binascii.crc32(message) & 0xFFFFFFFF)


def event(name: str, data: dict[str, Any]) -> bytes:
    headers = {":event-type": name, ":content-type": "application/json", ":message-type": "event"}
    return frame(headers, orjson.dumps(data))


def exception(kind: str, message: str) -> bytes:
    headers = {
        ":exception-type": kind,
        ":content-type": "application/json",
        ":message-type": "exception",
    }
    return frame(headers, orjson.dumps({"message": message}))


def _authorization(value: str) -> dict[str, str]:
    scheme, _, rest = value.partition(" ")
    if scheme != "AWS4-HMAC-SHA256":
        return {}
    fields = {}
    for item in rest.split(","):
        name, _, field = item.strip().partition("=")
        fields[name] = field
    return fields


def verify_signature(
    app: SimulatorApp, scope: Mapping[str, Any], raw: bytes
) -> tuple[int, str, str] | None:
    """None if the request is signed by a trusted key; else (status, AWS type, message)."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    fields = _authorization(header(scope, "authorization"))
    credential = fields.get("Credential", "").split("/")
    if len(credential) != 5 or not fields.get("Signature") or not fields.get("SignedHeaders"):
        return 403, "MissingAuthenticationTokenException", "Missing Authentication Token"
    access_key, day, region, service, terminator = credential
    trusted = app.native.aws_keys.get(access_key)
    if trusted is None:
        return (
            403,
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        )
    secret, trusted_region = trusted
    stamp = header(scope, "x-amz-date")
    try:
        signed_at = calendar.timegm(time.strptime(stamp, "%Y%m%dT%H%M%SZ"))
    except ValueError:
        return (
            403,
            "IncompleteSignatureException",
            "Authorization header requires existence of X-Amz-Date.",
        )
    if abs(app.native.clock() - signed_at) > MAX_CLOCK_SKEW_SECONDS:
        return 403, "InvalidSignatureException", "Signature expired: " + stamp
    if service != "bedrock" or terminator != "aws4_request" or day != stamp[:8]:
        return (
            403,
            "InvalidSignatureException",
            "Credential should be scoped to correct service: 'bedrock'.",
        )
    if region != trusted_region:
        return (
            403,
            "InvalidSignatureException",
            f"Credential should be scoped to a valid region, not '{region}'.",
        )
    names = fields["SignedHeaders"].split(";")
    if "host" not in names:
        return 403, "InvalidSignatureException", "'Host' or ':authority' must be a 'SignedHeader'."
    headers = {name: header(scope, name) for name in names}
    path = scope.get("raw_path") or scope["path"].encode()
    url = f"http://{header(scope, 'host')}{path.decode('latin-1')}"
    if scope.get("query_string"):
        url += "?" + scope["query_string"].decode("latin-1")
    request = AWSRequest(method=scope["method"], url=url, data=raw, headers=headers)
    request.context["timestamp"] = stamp
    signer = SigV4Auth(Credentials(access_key, secret), "bedrock", region)
    expected = signer.signature(
        signer.string_to_sign(request, signer.canonical_request(request)), request
    )
    if not hmac.compare_digest(expected, fields["Signature"]):
        return 403, "InvalidSignatureException", SIGNATURE_MISMATCH
    return None


def _read(body: dict[str, Any]) -> tuple[list[str], int, int, bool]:
    texts: list[str] = []
    images, last_result = 0, False
    for block in body.get("system") or ():
        if isinstance(block, dict) and isinstance(block.get("text"), str):
            texts.append(block["text"])
    for message in body.get("messages") or ():
        last_result = False
        for block in (message or {}).get("content") or ():
            if not isinstance(block, dict):
                continue
            if isinstance(block.get("text"), str):
                texts.append(block["text"])
            elif "image" in block:
                images += 1
            elif "toolResult" in block:
                last_result = True
                for inner in block["toolResult"].get("content") or ():
                    if isinstance(inner, dict) and isinstance(inner.get("text"), str):
                        texts.append(inner["text"])
    messages = len(body.get("messages") or ()) + (1 if body.get("system") else 0)
    return texts, messages, images, last_result


TOOL_CONFIG_MISSING = (
    "The toolConfig field must be defined when using toolUse and toolResult content blocks."
)


def _model_errors(problem: str) -> str:
    return f"The model returned the following errors: {problem}"


@functools.cache
def _input_shape(action: str) -> Any:
    """The request shape of Converse or ConverseStream in botocore's service model."""
    from botocore.session import get_session

    service = get_session().get_service_model("bedrock-runtime")
    operation = "ConverseStream" if action == "converse-stream" else "Converse"
    return service.operation_model(operation).input_shape


def _enum_problems(value: Any, shape: Any, path: str) -> list[str]:
    """Values outside their shape's enum (botocore's validator leaves enums to AWS)."""
    kind = shape.type_name
    if kind == "string" and shape.enum and isinstance(value, str) and value not in shape.enum:
        return [
            f"Value '{value}' at '{path}' failed to satisfy constraint: Member must "
            f"satisfy enum value set: [{', '.join(shape.enum)}]"
        ]
    if kind == "structure" and isinstance(value, dict):
        members = shape.members
        return [
            problem
            for name, item in value.items()
            if name in members
            for problem in _enum_problems(item, members[name], f"{path}.{name}".lstrip("."))
        ]
    if kind == "list" and isinstance(value, list):
        return [
            problem
            for index, item in enumerate(value)
            for problem in _enum_problems(item, shape.member, f"{path}.{index + 1}")
        ]
    return []


def shape_problem(body: dict[str, Any], model: str, action: str = "converse") -> str | None:
    """What in ``body`` the service model refuses (types, required and unknown members,
    unions with one member, lengths, enums), as AWS's ValidationException says it; None if
    the shape is right. ``modelId`` travels in the URL, and is checked from there."""
    from botocore.validate import ParamValidator

    shape = _input_shape(action)
    report = ParamValidator().validate({**body, "modelId": model}, shape)
    problems = report.generate_report().splitlines() if report.has_errors() else []
    problems += _enum_problems(body, shape, "")
    if not problems:
        return None
    count = len(problems)
    return f"{count} validation error{'s' if count > 1 else ''} detected: " + "; ".join(problems)


def _text_format(body: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON schema definition of the request's structured output, if it asks for one."""
    structure = ((body.get("outputConfig") or {}).get("textFormat") or {}).get("structure")
    definition = (structure or {}).get("jsonSchema")
    return definition if isinstance(definition, dict) else None


def schema_problem(body: dict[str, Any]) -> str | None:
    """A structured output whose schema is no JSON schema (the string must hold one)."""
    definition = _text_format(body)
    if definition is None:
        return None
    try:
        schema = orjson.loads(definition.get("schema") or "")
    except orjson.JSONDecodeError:
        schema = None
    if not isinstance(schema, dict):
        return "The JSON schema in outputConfig.textFormat is not a valid JSON object."
    return None


def refusal(body: dict[str, Any], model: str) -> str | None:
    """What Converse, or the model behind it, refuses in ``body`` (a ValidationException's
    message); None if it takes it. Only the rules the relay's requests could break."""
    used = any(
        isinstance(block, dict) and ("toolUse" in block or "toolResult" in block)
        for message in body.get("messages") or ()
        for block in (message or {}).get("content") or ()
    )
    if used and not (body.get("toolConfig") or {}).get("tools"):
        return TOOL_CONFIG_MISSING
    thinking = (body.get("additionalModelRequestFields") or {}).get("thinking")
    if not isinstance(thinking, dict):
        return None
    if "anthropic." not in model:
        # Nova, Llama and the rest take no field of Anthropic's.
        return _model_errors("Malformed input request: extraneous key [thinking] is not permitted")
    inference = body.get("inferenceConfig") or {}
    budget, limit = thinking.get("budget_tokens"), inference.get("maxTokens")
    if not isinstance(budget, int) or budget < 1024:
        return _model_errors("thinking.enabled.budget_tokens: Input should be >= 1024")
    if isinstance(limit, int) and budget >= limit:
        return _model_errors("`max_tokens` must be greater than `thinking.budget_tokens`")
    if inference.get("temperature", 1) != 1:
        return _model_errors("`temperature` may only be set to 1 when thinking is enabled")
    if inference.get("topP", 1) < 0.95:
        return _model_errors("`top_p` must be >= 0.95 or unset when thinking is enabled")
    return None


def plan_converse(body: Any, options: SimOptions) -> NativePlan | str:
    if (
        not isinstance(body, dict)
        or not isinstance(body.get("messages"), list)
        or not body["messages"]
    ):
        return "1 validation error detected: Value null at 'messages' failed to satisfy constraint"
    texts, messages, images, last_result = _read(body)
    limit = (body.get("inferenceConfig") or {}).get("maxTokens")
    tools = (body.get("toolConfig") or {}).get("tools") or []
    tool = None
    if tools and not last_result:
        tool = ((tools[0] or {}).get("toolSpec") or {}).get("name")
    thinking = "thinking" in (body.get("additionalModelRequestFields") or {})
    planned = plan(
        options,
        prompt_tokens=count_text(texts, messages, images),
        max_tokens=limit if isinstance(limit, int) else None,
        tool_name=tool,
        thinking=thinking,
    )
    if _text_format(body) is not None and planned.pieces:
        # Structured output: the same tokens, as the one string of a JSON object.
        pieces = list(planned.pieces)
        whole = json_text(len(pieces))
        opening = whole[: whole.index(pieces[0])]
        pieces[0] = opening + pieces[0]
        pieces[-1] += whole[len("".join(pieces)) :]
        planned = dataclasses.replace(planned, pieces=pieces)
    return planned


def _hour_writes(body: dict[str, Any], p: NativePlan) -> int:
    """The writes made for an hour: none unless a cache point asks for ``ttl: 1h``."""
    blocks = [*(body.get("system") or ())]
    for message in body.get("messages") or ():
        blocks.extend((message or {}).get("content") or ())
    hour = any(
        isinstance(block, dict) and (block.get("cachePoint") or {}).get("ttl") == "1h"
        for block in blocks
    )
    return min(p.options.cache_write_1h, p.cache_write) if hour else 0


def _usage(p: NativePlan, hour: int = 0) -> dict[str, Any]:
    found: dict[str, Any] = {
        "inputTokens": p.uncached_prompt,
        "outputTokens": p.output_tokens,
        "totalTokens": p.prompt_tokens + p.output_tokens,
        "cacheReadInputTokens": p.cache_read,
        "cacheWriteInputTokens": p.cache_write,
    }
    if p.cache_write:
        # The writes by TTL, the longer first, as Bedrock breaks them down.
        details = [("1h", hour), ("5m", p.cache_write - hour)]
        found["cacheDetails"] = [{"ttl": ttl, "inputTokens": n} for ttl, n in details if n]
    return found


def _stop(p: NativePlan) -> str:
    return "tool_use" if p.tool_name else "max_tokens" if p.truncated else "end_turn"


async def handle(
    app: SimulatorApp,
    scope: Mapping[str, Any],
    exchange: SimExchange,
    options: SimOptions | OptionError,
    route: dict[str, str],
) -> None:
    raw, body = await read_request(app, scope, exchange)
    if (problem := option_error(options)) is not None:
        await error(exchange, 400, "ValidationException", problem)
        return
    assert isinstance(options, SimOptions)
    refused = verify_signature(app, scope, raw)
    if refused is not None:
        await error(exchange, *refused)
        return
    status = await gate(app, scope, exchange, options)
    if status is False:
        return
    if status:
        kind = ERROR_TYPES.get(int(status), "InternalServerException")
        await error(exchange, int(status), kind, f"Simulated failure (HTTP {status}).")
        return
    model = unquote(route["model"])
    planned = plan_converse(None if body is INVALID_BODY else body, options)
    if isinstance(planned, str):
        await error(exchange, 400, "ValidationException", planned)
        return
    invalid = (
        shape_problem(body, model, route["action"]) or schema_problem(body) or refusal(body, model)
    )
    if invalid is not None:
        await error(exchange, 400, "ValidationException", invalid)
        return
    usage = _usage(planned, _hour_writes(body, planned))
    content: list[dict[str, Any]] = []
    if planned.reasoning:
        content.append(
            {"reasoningContent": {"reasoningText": {"text": "sim thought", "signature": "sig"}}}
        )
    if planned.tool_name:
        content.append(
            {
                "toolUse": {
                    "toolUseId": f"tooluse_{time.monotonic_ns()}",
                    "name": planned.tool_name,
                    "input": {},
                }
            }
        )
    else:
        content.append({"text": planned.text})
    if route["action"] == "converse":
        answer = {
            "output": {"message": {"role": "assistant", "content": content}},
            "stopReason": _stop(planned),
            "usage": usage,
            "metrics": {"latencyMs": 1},
        }
        await exchange.respond(
            200,
            orjson.dumps(answer),
            [(b"content-type", b"application/json"), (b"x-sim-model", model.encode())],
        )
        return
    exchange.watch()
    await exchange.start(200, [(b"content-type", b"application/vnd.amazon.eventstream")])
    await exchange.chunk(event("messageStart", {"role": "assistant"}))
    for index, block in enumerate(content):
        if "toolUse" in block:
            use = block["toolUse"]
            start = {"toolUse": {"toolUseId": use["toolUseId"], "name": use["name"]}}
            await exchange.chunk(
                event("contentBlockStart", {"contentBlockIndex": index, "start": start})
            )
            await exchange.chunk(
                event(
                    "contentBlockDelta",
                    {"contentBlockIndex": index, "delta": {"toolUse": {"input": "{}"}}},
                )
            )
        elif "reasoningContent" in block:
            delta = {"reasoningContent": {"text": "sim thought"}}
            await exchange.chunk(
                event("contentBlockDelta", {"contentBlockIndex": index, "delta": delta})
            )
        else:
            for piece in planned.pieces:
                await exchange.chunk(
                    event(
                        "contentBlockDelta", {"contentBlockIndex": index, "delta": {"text": piece}}
                    )
                )
                if exchange.disconnected:
                    return
            if options.stream_error:
                await exchange.end(
                    exception("modelStreamErrorException", "Simulated stream error.")
                )
                return
        await exchange.chunk(event("contentBlockStop", {"contentBlockIndex": index}))
    await exchange.chunk(event("messageStop", {"stopReason": _stop(planned)}))
    await exchange.end(event("metadata", {"usage": usage, "metrics": {"latencyMs": 1}}))
