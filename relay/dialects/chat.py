"""``POST /v1/chat/completions``: passed through to every channel.

The request body reaches the upstream unchanged but for ``model`` (mapped to the
channel's name for it) and, on streams, ``stream_options.include_usage`` (forced on so
every stream can be metered). Responses are mapped back to the public model name, and a
usage chunk the client did not ask for is dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from relay import errors, tokens
from relay.dialects import fees, stored_files
from relay.dialects.base import (
    Call,
    Dialect,
    OpenAIStreamLeg,
    check_int,
    int_or_none,
    load_json,
    url_allowance,
)
from relay.dialects.images import image_limit
from relay.dialects.native import NativeCodec, chat_codec
from relay.exchange import Exchange
from relay.metering import UsageRecord
from relay.snapshot import Route


def parse_request(body: bytes) -> dict[str, Any]:
    """Parse and check the fields the relay itself relies on; the upstream checks the rest."""
    payload = load_json(body)
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        raise errors.invalid_request(
            "'messages' must be a non-empty array of message objects.", param="messages"
        )
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise errors.invalid_request(
                f"Invalid value for 'messages[{index}]': each message needs a string 'role'.",
                param=f"messages[{index}].role",
            )
    check_stream_options(payload)
    check_int(payload, "n", 1, 128)
    check_int(payload, "max_tokens", 1)
    check_int(payload, "max_completion_tokens", 1)
    fees.check_chat(payload)
    stored_files.check_chat(body, payload)
    return payload


def check_stream_options(payload: Mapping[str, Any]) -> None:
    options = payload.get("stream_options")
    if options is None:
        return
    if not payload.get("stream"):
        raise errors.invalid_request(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            param="stream_options",
        )
    if not isinstance(options, dict):
        raise errors.invalid_request("'stream_options' must be an object.", param="stream_options")


def force_usage(payload: dict[str, Any]) -> bool:
    """Ask a stream for its usage; True when the client asked for it itself."""
    if payload.get("stream") is not True:
        return False
    options = payload.get("stream_options") or {}
    payload["stream_options"] = {**options, "include_usage": True}
    return bool(options.get("include_usage"))


_DELTA_TEXTS = ("content", "reasoning_content", "refusal")


def delta_texts(choice: Any) -> list[str]:
    # ``dict``, not ``Mapping``: choices are parsed JSON, and on streams the ABC checks
    # cost more than the rest of this function.
    if not isinstance(choice, dict):
        return []
    delta = choice.get("delta")
    if not isinstance(delta, dict):
        return []
    if len(delta) == 1 and isinstance(content := delta.get("content"), str):
        return [content]  # nearly every chunk of a stream
    texts = [value for name in _DELTA_TEXTS if isinstance(value := delta.get(name), str)]
    for call in delta.get("tool_calls") or ():
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            texts.extend(
                v for v in (function.get("name"), function.get("arguments")) if isinstance(v, str)
            )
    return texts


def _images(holder: Any) -> int:
    """Pictures in a message or delta (``images``, where providers return image output)."""
    images = holder.get("images") if isinstance(holder, Mapping) else None
    return len(images) if isinstance(images, list) else 0


def asks_for_images(payload: Mapping[str, Any]) -> bool:
    """Whether a chat request asks for image output (``"image"`` in ``modalities``)."""
    modalities = payload.get("modalities")
    return isinstance(modalities, list) and "image" in modalities


class ChatLeg(OpenAIStreamLeg):
    def __init__(
        self,
        record: UsageRecord,
        public: str,
        payload: dict[str, Any],
        wants_usage: bool,
        images: int = 0,
    ) -> None:
        super().__init__(record, public, payload, wants_usage)
        # The most pictures billed: none when not asked for, never beyond the hold's count.
        self.images = images

    def texts(self, choice: Any) -> list[str]:
        # Every streamed choice passes here: count the pictures it delivers.
        if self.images and isinstance(choice, Mapping):
            found = self.record.output_images + _images(choice.get("delta"))
            self.record.output_images = min(found, self.images)
        return delta_texts(choice)

    def answer(self, parsed: Any) -> bytes | None:
        body = super().answer(parsed)
        if body is not None and self.images:
            found = sum(
                _images(choice.get("message"))
                for choice in parsed.get("choices") or ()
                if isinstance(choice, Mapping)
            )
            self.record.output_images = min(found, self.images)
        return body

    def native(self) -> NativeCodec:
        """The request for a provider spoken natively (Anthropic, Gemini, Bedrock): each
        answers with one choice, so ``n`` above 1 is refused rather than answered with one
        (another channel of the model may serve it)."""
        choices = self.payload.get("n")
        if isinstance(choices, int) and choices > 1:
            raise errors.invalid_request(
                "n must be 1: this provider answers with one choice.", param="n"
            )
        return chat_codec(self.payload, self.public, self.client_wants_usage)

    def body_texts(self, choice: Any) -> list[str]:
        message = choice.get("message") if isinstance(choice, Mapping) else None
        return delta_texts({"delta": message}) if isinstance(message, Mapping) else []


class ChatCall(Call):
    def __init__(self, payload: dict[str, Any]) -> None:
        super().__init__(payload)
        self.client_wants_usage = force_usage(payload)

    def output_cap(self) -> int | None:
        payload = self.payload
        return int_or_none(payload.get("max_completion_tokens") or payload.get("max_tokens"))

    def generates_images(self) -> bool:
        return asks_for_images(self.payload)

    def choices(self) -> int:
        choices = self.payload.get("n")
        return choices if isinstance(choices, int) and choices >= 1 else 1

    def measure(self) -> tuple[int, int, int]:
        estimate, images, by_url = tokens.measure_prompt(self.payload)
        return estimate, images, url_allowance(by_url, 0)

    def count_material(self) -> tuple[Any, Any]:
        return self.payload["messages"], self.payload.get("tools")

    def leg(self, route: Route, record: UsageRecord, public: str) -> ChatLeg:
        images = image_limit(self.output_cap(), self.choices()) if self.generates_images() else 0
        return ChatLeg(record, public, self.payload, self.client_wants_usage, images)


class ChatDialect(Dialect):
    surface = "chat"
    path = "/chat/completions"

    def parse(self, body: bytes) -> dict[str, Any]:
        return parse_request(body)

    def begin(self, payload: dict[str, Any], exchange: Exchange) -> ChatCall:
        return ChatCall(payload)
