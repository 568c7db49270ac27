"""``POST /v1/messages``: Anthropic's Messages API, errors in Anthropic's envelope.

The key may come as ``x-api-key`` or as a Bearer token; ``anthropic-version`` is
accepted. Channels that speak Messages themselves (``"messages"`` in their native
surfaces) get the request as sent but for the model name, with the client's
``anthropic-version`` and those of its ``anthropic-beta`` names known to be billed as
tokens only (``relay.dialects.betas``); OpenAI-compatible channels get it
translated to chat completions, so Claude Code runs on any model an operator sells.
Cache reads and writes are metered from Anthropic's usage (``cache_read_input_tokens``,
``cache_creation_input_tokens``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from relay import errors, upstream
from relay.dialects import betas, fees, stored_files
from relay.dialects.base import (
    Call,
    Dialect,
    Leg,
    StreamError,
    check_int,
    dump,
    load_json,
    url_allowance,
)
from relay.dialects.translated import TranslatedLeg, translate
from relay.exchange import Exchange
from relay.metering import Usage, UsageRecord
from relay.snapshot import Route
from relay.translate import canonical, chat, messages, messages_stream

ANTHROPIC_VERSION = "2023-06-01"


def _by_url(block: Mapping[str, Any]) -> bool:
    source = block.get("source")
    return isinstance(source, Mapping) and source.get("type") == "url"


def _measure(content: Any) -> tuple[int, int, int]:
    """Characters of text, image blocks, and the allowance for images and documents the
    provider fetches by URL (``url_allowance``), of a message's content (tool results'
    too)."""
    if isinstance(content, str):
        return len(content), 0, 0
    total = images = allowance = 0
    for block in content if isinstance(content, list) else ():
        if not isinstance(block, Mapping):
            continue
        kind = block.get("type")
        if kind == "image":  # a picture has no text to size
            images += 1
            if _by_url(block):
                allowance += url_allowance(1, 0)
            continue
        if kind == "document" and _by_url(block):
            allowance += url_allowance(0, 1)
            continue
        text = block.get("text")
        if isinstance(text, str):
            total += len(text)
        inner = block.get("content")
        if isinstance(inner, str):
            total += len(inner)
        elif isinstance(inner, list):  # a tool result's blocks
            size, pictures, fetched = _measure(inner)
            total += size
            images += pictures
            allowance += fetched
    return total, images, allowance


def anthropic_headers(
    route: Route, version: str, beta: str | None, stream: bool
) -> upstream.Headers:
    headers = upstream.headers(route.secret, "text/event-stream" if stream else "application/json")
    del headers["authorization"]
    headers["x-api-key"] = route.secret
    headers["anthropic-version"] = version
    if beta:
        headers["anthropic-beta"] = beta
    return headers


class PassLeg(Leg):
    path = "/messages"
    passthrough = True

    def __init__(self, call: MessagesCall, record: UsageRecord, public: str) -> None:
        super().__init__(record, public)
        self.call = call
        self.usage = canonical.Usage()
        # The provider counted the searches itself: its count stands, blocks aside.
        self.searches_reported = False

    def content(self, route: Route) -> bytes:
        self.route = route
        self.call.payload["model"] = route.upstream_model
        return dump(self.call.payload)

    def headers(self, route: Route, stream: bool) -> upstream.Headers:
        price = self.record.price
        tiered = price is not None and price.retail.long_context is not None
        beta = betas.priced_for(self.call.beta, tiered)
        return anthropic_headers(route, self.call.version, beta, stream)

    def _searched(self, count: int) -> None:
        """Searches billed: never more than the request allowed (what its hold covers)."""
        self.record.web_search_calls = max(min(count, self.call.search_limit), 0)

    def _reported(self, usage: Any) -> bool:
        """Take the provider's own count of searches (``usage.server_tool_use``), which
        leaves out those that failed (Anthropic bills none of them); True if it gave one."""
        tools = usage.get("server_tool_use") if isinstance(usage, dict) else None
        count = tools.get("web_search_requests") if isinstance(tools, dict) else None
        if type(count) is not int:
            return False
        self.searches_reported = True
        self._searched(count)
        return True

    def answer(self, parsed: Any) -> bytes | None:
        if not isinstance(parsed, dict) or parsed.get("type") != "message":
            return None
        parsed["model"] = self.public
        if self.call.search_limit and not self._reported(parsed.get("usage")):
            blocks = parsed.get("content")
            self._searched(sum(map(_search_step, blocks)) if isinstance(blocks, list) else 0)
        self.record.usage = Usage.from_canonical(messages.usage_to_canonical(parsed.get("usage")))
        if self.record.usage is None:
            self.record.completion_text = []
            self.record.keep_text([canonical.text_of(messages.response_to_canonical(parsed).parts)])
        return orjson.dumps(parsed)

    def _merge(self, usage: Any, final: bool) -> None:
        """Take the counts of ``message_start`` (the prompt's, and an output count that has
        only begun) or of ``message_delta`` (``final``: the output's, cumulative). Only the
        final ones are the answer's usage: a stream cut before them is billed for the
        provider's prompt counts and the text it delivered, counted here
        (``UsageRecord.prompt_usage``), not for the one output token of its start."""
        if not messages.merge_usage(self.usage, usage):
            return
        if final:
            self.record.usage = Usage.from_canonical(self.usage)
        else:
            self.record.prompt_usage = Usage.from_canonical(self.usage)

    def event(self, raw: bytes, data: bytes) -> tuple[bytes, bool]:
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise ValueError("malformed stream event") from None
        if not isinstance(event, dict):
            raise ValueError("malformed stream event")
        kind = event.get("type")
        if kind == "content_block_delta":
            delta = event.get("delta") or {}
            text = delta.get("text") or delta.get("partial_json") or delta.get("thinking")
            self.record.keep_text([text] if isinstance(text, str) else [])
            return raw + b"\n\n", False
        if kind == "message_start" and isinstance(event.get("message"), dict):
            event["message"]["model"] = self.public
            self._merge(event["message"].get("usage"), final=False)
        elif kind == "message_delta":
            self._merge(event.get("usage"), final=True)
            if self.call.search_limit:
                self._reported(event.get("usage"))
            return raw + b"\n\n", False
        elif kind == "error":
            error = event.get("error")
            failure = error if isinstance(error, dict) else {}
            message = str(failure.get("message") or "upstream error")
            event["error"] = self.redact_all({**failure, "message": message})
            frame = b"event: error\ndata: " + orjson.dumps(event) + b"\n\n"
            raise StreamError.classify(frame, failure.get("type"), None)
        else:
            if kind == "content_block_start" and self.call.search_limit:
                # Counted as it goes: a stream cut before its usage still bills them.
                step = _search_step(event.get("content_block"))
                if step and not self.searches_reported:
                    self._searched(self.record.web_search_calls + step)
            return raw + b"\n\n", kind == "message_stop"
        return b"event: " + str(kind).encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n", False


def _search_step(block: Any) -> int:
    """What a block adds to the searches run, where the provider has not counted them:
    1 for its web search call, -1 for a search that failed (not billed), else 0."""
    if not isinstance(block, dict):
        return 0
    kind = block.get("type")
    if kind == "server_tool_use":
        return 1 if block.get("name") == "web_search" else 0
    if kind == "web_search_tool_result":
        content = block.get("content")
        failed = isinstance(content, dict) and content.get("type") == "web_search_tool_result_error"
        return -1 if failed else 0
    return 0


class MessagesCall(Call):
    def __init__(self, payload: dict[str, Any], version: str, beta: str | None) -> None:
        super().__init__(payload)
        self.version = version
        self.beta = beta
        self.search_limit, self.loop = fees.messages_tools(payload)

    def web_searches(self) -> int:
        return self.search_limit

    def output_cap(self) -> int | None:
        return int(self.payload["max_tokens"])

    def measure(self) -> tuple[int, int, int]:
        payload = self.payload
        size, images, allowance = _measure(payload.get("system"))
        for message in payload["messages"]:
            content = message.get("content")
            if isinstance(content, str):  # the common case, without the walk's tuple
                size += len(content)
                continue
            chars, pictures, fetched = _measure(content)
            size += chars
            images += pictures
            allowance += fetched
        return 3 + size // 4, images, allowance

    def count_material(self) -> tuple[Any, Any]:
        try:
            body = chat.request_from_canonical(messages.request_to_canonical(self.payload))
        except canonical.TranslationError:
            return self.payload["messages"], None
        return body["messages"], body.get("tools")

    def leg(self, route: Route, record: UsageRecord, public: str) -> Leg:
        if "messages" in route.native:
            return PassLeg(self, record, public)
        request = translate(messages.request_to_canonical, self.payload)
        message_id = "msg_" + record.request_id.removeprefix("req_")[:24]
        thinking = messages.shows_thinking(self.payload)
        return TranslatedLeg(
            record,
            public,
            request,
            lambda answer: messages.response_from_canonical(answer, thinking=thinking),
            lambda: messages_stream.Encoder(public, message_id, thinking=thinking),
            MessagesDialect.stream_error,
        )


class MessagesDialect(Dialect):
    surface = "messages"
    path = "/messages"
    anthropic = True

    def parse(self, body: bytes) -> dict[str, Any]:
        payload = parse_messages(body)
        if payload.get("max_tokens") is None:
            raise errors.invalid_request("max_tokens: Field required", param="max_tokens")
        fees.check_messages(payload)
        return payload

    def begin(self, payload: dict[str, Any], exchange: Exchange) -> Call:
        version = exchange.header(b"anthropic-version")
        beta = exchange.header(b"anthropic-beta")
        return MessagesCall(
            payload,
            version.decode("latin-1") if version else ANTHROPIC_VERSION,
            betas.forwarded(beta.decode("latin-1")) if beta else None,
        )

    @staticmethod
    def stream_error(error: errors.RelayError) -> bytes:
        return messages_stream.frame(error.anthropic_payload() | {"type": "error"})


def parse_messages(body: bytes) -> dict[str, Any]:
    payload = load_json(body)
    listed = payload.get("messages")
    if not isinstance(listed, list) or not listed:
        raise errors.invalid_request("messages: at least one message is required", param="messages")
    for index, message in enumerate(listed):
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            raise errors.invalid_request(
                f"messages.{index}.role: Input should be 'user' or 'assistant'",
                param=f"messages.{index}.role",
            )
    check_int(payload, "max_tokens", 1)
    stored_files.check_messages(body, payload)
    return payload
