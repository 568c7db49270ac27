"""A leg that serves a Responses or Messages request from a chat completions channel:
the request translated to chat through the canonical form, the answer and its stream
translated back, with the channel's own usage metered."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import orjson

from relay import errors
from relay.dialects.base import Leg, StreamError, dump, stream_failure
from relay.dialects.chat import delta_texts
from relay.dialects.images import ImageGate
from relay.dialects.native import NativeCodec
from relay.metering import Usage, UsageRecord
from relay.snapshot import Route
from relay.translate import canonical, chat


class StreamEncoder(Protocol):
    def feed(self, event: canonical.Event) -> list[bytes]: ...

    def close(self) -> list[bytes]: ...


class TranslatedLeg(Leg):
    path = "/chat/completions"

    def __init__(
        self,
        record: UsageRecord,
        public: str,
        request: canonical.Request,
        to_client: Callable[[canonical.Response], dict[str, Any]],
        encoder: Callable[[], StreamEncoder],
        stream_error: Callable[[errors.RelayError], bytes],
    ) -> None:
        super().__init__(record, public)
        self.request = request
        self.body = chat.request_from_canonical(request)
        self.to_client = to_client
        self.decoder = chat.Decoder()
        self.images = ImageGate(request)
        self.make_encoder = encoder
        self.encoder = encoder()
        self.stream_error = stream_error
        self.finished = False  # the chat stream gave its finish_reason (``end_of_stream``)

    def native(self) -> NativeCodec:
        return NativeCodec(self.request, self.to_client, self.make_encoder, self.stream_error)

    def content(self, route: Route) -> bytes:
        self.route = route
        self.body["model"] = route.upstream_model
        return dump(self.body)

    def answer(self, parsed: Any) -> bytes | None:
        if not isinstance(parsed, dict) or "error" in parsed or "choices" not in parsed:
            return None
        # Translated first: an answer it cannot read leaves no usage behind to bill.
        answer = chat.response_to_canonical(parsed)
        self.record.usage = Usage.from_openai(parsed.get("usage"), parsed.get("service_tier"))
        if self.record.usage is None:
            self.record.completion_text = []
            for choice in parsed.get("choices") or ():
                message = choice.get("message") if isinstance(choice, dict) else None
                self.record.keep_text(delta_texts({"delta": message}))
        answer.model = self.public
        self.images.answer(answer)
        self.record.output_images = self.images.delivered
        return orjson.dumps(self.to_client(answer))

    def event(self, raw: bytes, data: bytes) -> tuple[bytes, bool]:
        if data == b"[DONE]":
            return b"".join(self.encoder.close()), True
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise ValueError("malformed stream chunk") from None
        if not isinstance(chunk, dict):
            raise ValueError("malformed stream chunk")
        if "error" in chunk:
            error = chunk["error"]
            failure = stream_failure(error, self.redact)
            raise StreamError.from_openai(self.stream_error(failure), error)
        if chunk.get("usage") is not None:
            self.record.usage = Usage.from_openai(chunk["usage"], chunk.get("service_tier"))
        for choice in chunk.get("choices") or ():
            self.record.keep_text(delta_texts(choice))
            if isinstance(choice, dict) and choice.get("finish_reason"):
                self.finished = True
        out = bytearray()
        for event in self.images.events(self.decoder.feed(chunk)):
            for frame in self.encoder.feed(event):
                out += frame
        self.record.output_images = self.images.delivered
        return bytes(out), False

    def end_of_stream(self) -> bytes | None:
        """Whole without ``[DONE]`` once the chat stream gave its ``finish_reason`` (see
        ``OpenAIStreamLeg.end_of_stream``): the client's own closing events then."""
        return b"".join(self.encoder.close()) if self.finished else None


def translate(
    convert: Callable[[dict[str, Any]], canonical.Request], payload: dict[str, Any]
) -> canonical.Request:
    """The canonical request, or the 400 that says what cannot be translated."""
    try:
        return convert(payload)
    except canonical.TranslationError as exc:
        raise errors.invalid_request(str(exc), param=exc.param) from None
