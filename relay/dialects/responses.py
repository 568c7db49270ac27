"""``POST /v1/responses``: OpenAI's Responses API.

Channels that serve it (``"responses"`` in their native surfaces) get the request as
sent, but for the model name and a ``previous_response_id`` unsealed to the upstream's
own id; the response ids they return are sealed (``response_ids``) so later calls reach
the same channel, for the same tenant only. Other channels get it translated to chat
completions and the answer translated back; such a response is kept nowhere, so a
translated request with ``previous_response_id`` is refused with a 400 that says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from django.conf import settings

from relay import errors, tokens
from relay.dialects import fees, response_ids, stored_files
from relay.dialects.base import (
    Call,
    Dialect,
    Leg,
    StreamError,
    check_int,
    dump,
    int_or_none,
    load_json,
    url_allowance,
)
from relay.dialects.images import image_limit
from relay.dialects.translated import TranslatedLeg, translate
from relay.exchange import Exchange
from relay.metering import Usage, UsageRecord
from relay.snapshot import Route
from relay.translate import canonical, chat, responses, responses_stream

FINAL_EVENTS = frozenset({b"response.completed", b"response.incomplete", b"response.failed"})
_TEXT_EVENTS = {
    "response.output_text.delta": "delta",
    "response.function_call_arguments.delta": "delta",
    "response.refusal.delta": "delta",
}


def not_found(response_id: str, param: str | None = None) -> errors.RelayError:
    status = 400 if param else 404
    return errors.RelayError(status, f"Response with id '{response_id}' not found.", param=param)


def check_stored(body: bytes, payload: Mapping[str, Any]) -> None:
    """Refuse what names an object kept in the channel's account, which the relay offers
    no way to make: an id a client sends is someone else's, if anyone's."""
    for name in ("conversation", "prompt"):
        if payload.get(name):
            raise errors.invalid_request(
                f"'{name}' is not available here: it names an object kept with the "
                "provider, which this service does not offer.",
                param=name,
            )
    stored_files.check_responses(body, payload)


def _measure(value: Any) -> tuple[int, int, int]:
    """Characters of text, ``input_image`` parts, and the allowance for inputs fetched by
    URL (``url_allowance``), of input items (in messages and in tool outputs given as
    lists of parts)."""
    if isinstance(value, str):
        return len(value), 0, 0
    total = images = allowance = 0
    for part in value if isinstance(value, list) else ():
        if not isinstance(part, Mapping):
            continue
        kind = part.get("type")
        if kind == "input_image":  # a picture has no text to size
            images += 1
            if tokens.fetched(part.get("image_url")):
                allowance += url_allowance(1, 0)
            continue
        if kind == "input_file" and isinstance(part.get("file_url"), str):
            allowance += url_allowance(0, 1)
            continue
        for name in ("text", "arguments", "content", "output"):
            field = part.get(name)
            if isinstance(field, str):
                total += len(field)
            elif isinstance(field, list) and (name == "content" or name == "output"):
                size, pictures, fetched = _measure(field)  # a message's or tool output's parts
                total += size
                images += pictures
                allowance += fetched
    return total, images, allowance


def _generated_images(output: Any) -> int:
    """Pictures the image_generation tool made: its output items that did not fail."""
    if not isinstance(output, list):
        return 0
    return sum(
        1
        for item in output
        if isinstance(item, Mapping)
        and item.get("type") == "image_generation_call"
        and item.get("status") != "failed"
    )


class PassLeg(Leg):
    path = "/responses"
    passthrough = True

    def __init__(self, call: ResponsesCall, record: UsageRecord, public: str) -> None:
        super().__init__(record, public)
        self.call = call
        # The upstream id last sealed and its sealed form: a stream repeats its response's
        # id in its first events and its last, and a seal costs an HMAC (~5 us).
        self._sealed: tuple[str, str] | None = None

    def content(self, route: Route) -> bytes:
        self.route = route
        payload = dict(self.call.payload)
        payload["model"] = route.upstream_model
        if self.call.previous is not None:
            payload["previous_response_id"] = self.call.previous[1]
        return dump(payload)

    def _rewrite(self, response: dict[str, Any]) -> None:
        assert self.route is not None
        upstream_id = response.get("id")
        if isinstance(upstream_id, str):
            sealed = self._sealed
            if sealed is None or sealed[0] != upstream_id:
                public_id = response_ids.seal(
                    upstream_id, self.route.channel_id, self.record.tenant_id
                )
                sealed = self._sealed = (upstream_id, public_id)
            response["id"] = sealed[1]
        if response.get("previous_response_id"):
            response["previous_response_id"] = self.call.payload.get("previous_response_id")
        response["model"] = self.public
        usage = responses.usage_to_canonical(response.get("usage"), response.get("service_tier"))
        if usage is not None:
            self.record.usage = Usage.from_canonical(usage)
        # The whole response (an answer, or a stream's last event) lists the pictures made;
        # never more are billed than the hold counted.
        if self.call.generates_images():
            made = min(_generated_images(response.get("output")), self.call.image_limit())
            self.record.output_images = max(self.record.output_images, made)

    def answer(self, parsed: Any) -> bytes | None:
        if not isinstance(parsed, dict) or parsed.get("object") != "response":
            return None
        self._rewrite(parsed)
        if self.record.usage is None:
            self.record.completion_text = []
            self.record.keep_text(
                [canonical.text_of(responses.response_to_canonical(parsed).parts)]
            )
        return orjson.dumps(parsed)

    def event(self, raw: bytes, data: bytes) -> tuple[bytes, bool]:
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise ValueError("malformed stream event") from None
        if not isinstance(event, dict):
            raise ValueError("malformed stream event")
        kind = event.get("type")
        field = _TEXT_EVENTS.get(kind) if isinstance(kind, str) else None
        if field is not None:
            text = event.get(field)
            self.record.keep_text([text] if isinstance(text, str) else [])
            return raw + b"\n\n", False  # the hot events go out untouched
        failure: Any = None
        if isinstance(event.get("response"), dict):
            response = event["response"]
            self._rewrite(response)
            if failure := response.get("error"):  # response.failed: the provider's words
                response["error"] = self.redact_all(failure)
            elif kind == "response.failed":
                failure = {"code": None}  # failed all the same, saying nothing of why
        elif kind == "error":
            # Its code at the top, as OpenAI sends it, or in an ``error`` object.
            failure = event.get("error") if isinstance(event.get("error"), dict) else event
            event["message"] = str(event.get("message") or "upstream error")
            event = self.redact_all(event)
        else:
            return raw + b"\n\n", False
        name = str(kind).encode()
        frame = b"event: " + name + b"\ndata: " + orjson.dumps(event) + b"\n\n"
        if failure:
            raise StreamError.from_openai(frame, failure)
        return frame, name in FINAL_EVENTS


class ResponsesCall(Call):
    def __init__(self, payload: dict[str, Any]) -> None:
        super().__init__(payload)
        self.previous: tuple[int, str] | None = None
        self.loop = fees.responses_tools(payload)

    def output_cap(self) -> int | None:
        return int_or_none(self.payload.get("max_output_tokens"))

    def generates_images(self) -> bool:
        """Whether the request offers the image_generation tool."""
        tools = self.payload.get("tools")
        return isinstance(tools, list) and any(
            isinstance(tool, Mapping) and tool.get("type") == "image_generation" for tool in tools
        )

    def image_limit(self) -> int:
        return image_limit(self.output_cap())

    def measure(self) -> tuple[int, int, int]:
        """As every dialect's, with the conversation a ``previous_response_id`` names
        allowed ``RELAY_PREVIOUS_RESPONSE_TOKENS``: OpenAI bills it again as prompt."""
        payload = self.payload
        size, images, fetched = _measure(payload.get("input"))
        instructions, _, _ = _measure(payload.get("instructions"))
        if payload.get("previous_response_id") is not None:
            fetched += settings.RELAY_PREVIOUS_RESPONSE_TOKENS
        return 3 + (size + instructions) // 4, images, fetched

    def count_material(self) -> tuple[Any, Any]:
        try:
            body = chat.request_from_canonical(responses.request_to_canonical(self.payload))
        except canonical.TranslationError:
            return [{"role": "user", "content": str(self.payload.get("input"))}], None
        return body["messages"], body.get("tools")

    def restrict(self, routes: tuple[Route, ...], tenant_id: int) -> tuple[Route, ...]:
        previous = self.payload.get("previous_response_id")
        if previous is None:
            return routes
        if not any("responses" in route.native for route in routes):
            raise errors.invalid_request(
                "'previous_response_id' is not available for this model: its provider keeps "
                "no responses. Send the whole conversation in 'input' instead.",
                param="previous_response_id",
            )
        self.previous = response_ids.unseal(str(previous), tenant_id)
        if self.previous is None:
            raise not_found(str(previous), "previous_response_id")
        pinned = tuple(r for r in routes if r.channel_id == self.previous[0])
        if not pinned or "responses" not in pinned[0].native:
            raise errors.invalid_request(
                "'previous_response_id' needs the channel that made that response, which "
                "cannot serve this request; send the conversation in 'input' instead.",
                param="previous_response_id",
            )
        return pinned

    def leg(self, route: Route, record: UsageRecord, public: str) -> Leg:
        if "responses" in route.native:
            return PassLeg(self, record, public)
        payload = self.payload
        if payload.get("previous_response_id") is not None:
            raise errors.invalid_request(
                "'previous_response_id' is not available for this model: its provider keeps "
                "no responses. Send the whole conversation in 'input' instead.",
                param="previous_response_id",
            )
        request = translate(responses.request_to_canonical, payload)
        return TranslatedLeg(
            record,
            public,
            request,
            lambda answer: responses.response_from_canonical(answer, payload),
            lambda: responses_stream.Encoder(payload, public),
            ResponsesDialect.stream_error,
        )


class ResponsesDialect(Dialect):
    surface = "responses"
    path = "/responses"

    def parse(self, body: bytes) -> dict[str, Any]:
        payload = load_json(body)
        value = payload.get("input")
        if not isinstance(value, str) and not (isinstance(value, list) and value):
            raise errors.invalid_request(
                "'input' must be a string or a non-empty array of input items.", param="input"
            )
        check_int(payload, "max_output_tokens", 1)
        previous = payload.get("previous_response_id")
        if previous is not None and not isinstance(previous, str):
            raise errors.invalid_request(
                "'previous_response_id' must be a string.", param="previous_response_id"
            )
        if payload.get("background"):
            # OpenAI answers at once and generates afterwards, at the channel's expense;
            # the usage shows only on a later retrieve, which is not billed.
            raise errors.invalid_request(
                "'background' is not offered here: a background response is generated "
                "after the request ends, where its tokens cannot be metered.",
                param="background",
            )
        check_stored(body, payload)
        fees.check_tools(payload, fees.RESPONSES_TOOLS)
        return payload

    def begin(self, payload: dict[str, Any], exchange: Exchange) -> Call:
        return ResponsesCall(payload)

    @staticmethod
    def stream_error(error: errors.RelayError) -> bytes:
        event = {
            "type": "error",
            "code": error.code,
            "message": error.message,
            "param": error.param,
            "sequence_number": 0,
        }
        return b"event: error\ndata: " + orjson.dumps(event) + b"\n\n"
