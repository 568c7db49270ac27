"""``POST /v1/embeddings`` and the legacy ``POST /v1/completions``: passed through to
every channel, like chat completions, with the model name mapped both ways."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeGuard

import orjson

from relay import errors
from relay.dialects.base import Call, Dialect, Leg, OpenAIStreamLeg, check_int, dump, load_json
from relay.dialects.chat import check_stream_options, force_usage
from relay.exchange import Exchange
from relay.metering import Usage, UsageRecord
from relay.snapshot import Route

# OpenAI's default cap for a legacy completion.
COMPLETION_DEFAULT_MAX_TOKENS = 16


def _is_tokens(value: Any) -> TypeGuard[list[int]]:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    )


def _inputs(payload: Mapping[str, Any], name: str) -> list[str | list[int]]:
    """A string, an array of strings, a token array or an array of token arrays."""
    value = payload.get(name)
    if isinstance(value, str) or _is_tokens(value):
        return [value]
    if (
        isinstance(value, list)
        and value
        and (all(isinstance(v, str) for v in value) or all(_is_tokens(v) for v in value))
    ):
        return list(value)
    raise errors.invalid_request(
        f"'{name}' must be a string, an array of strings, or an array of token arrays.",
        param=name,
    )


def _estimate(inputs: list[str | list[int]]) -> int:
    return sum(len(v) // 4 if isinstance(v, str) else len(v) for v in inputs)


def _as_messages(inputs: list[str | list[int]]) -> list[dict[str, Any]]:
    # Token arrays cannot be counted as text; their length is what they cost.
    return [
        {"role": "user", "content": v if isinstance(v, str) else " ".join(["x"] * len(v))}
        for v in inputs
    ]


class EmbeddingLeg(Leg):
    path = "/embeddings"

    def __init__(self, record: UsageRecord, public: str, payload: dict[str, Any]) -> None:
        super().__init__(record, public)
        self.payload = payload

    def content(self, route: Route) -> bytes:
        self.route = route
        self.payload["model"] = route.upstream_model
        return dump(self.payload)

    def answer(self, parsed: Any) -> bytes | None:
        if not self._metered(parsed):
            return None
        parsed["model"] = self.public
        return orjson.dumps(parsed)

    def answer_body(self, body: bytes, parsed: Any) -> bytes | None:
        """The upstream's bytes as they came when they already name the public model:
        the vectors are not written out again. An answer of 1,536 floats costs orjson
        ~60 us to parse and ~45 us more to dump; a batch of inputs, that many times over,
        on the event loop. Only when they name a model once, plainly: of a member given
        twice a parser keeps the last, and the first could name the upstream's model."""
        if (
            isinstance(parsed, dict)
            and parsed.get("model") == self.public
            and body.count(b'"model"') == 1
            and b"\\" not in body
        ):
            return body if self._metered(parsed) else None
        return self.answer(parsed)

    def _metered(self, parsed: Any) -> bool:
        """Whether ``parsed`` is an answer (not an error), its usage recorded if so."""
        if not isinstance(parsed, dict) or "error" in parsed or "data" not in parsed:
            return False
        usage = parsed.get("usage")
        if isinstance(usage, dict):
            prompt = usage.get("prompt_tokens")
            if isinstance(prompt, int) and not isinstance(prompt, bool) and prompt >= 0:
                self.record.usage = Usage(prompt_tokens=prompt)
        return True

    def event(self, raw: bytes, data: bytes) -> tuple[bytes, bool]:
        raise ValueError("embeddings are not streamed")


class EmbeddingCall(Call):
    def __init__(self, payload: dict[str, Any]) -> None:
        super().__init__(payload)
        self.stream = False
        self.inputs = _inputs(payload, "input")

    def output_cap(self) -> int | None:
        return 0

    def measure(self) -> tuple[int, int, int]:
        return _estimate(self.inputs), 0, 0  # text or tokens only: no pictures

    def count_material(self) -> tuple[Any, Any]:
        return _as_messages(self.inputs), None

    def leg(self, route: Route, record: UsageRecord, public: str) -> Leg:
        return EmbeddingLeg(record, public, self.payload)


class EmbeddingsDialect(Dialect):
    surface = "embeddings"
    path = "/embeddings"

    def parse(self, body: bytes) -> dict[str, Any]:
        payload = load_json(body)
        _inputs(payload, "input")
        check_int(payload, "dimensions", 1)
        encoding = payload.get("encoding_format")
        if encoding is not None and encoding not in ("float", "base64"):
            raise errors.invalid_request(
                "'encoding_format' must be 'float' or 'base64'.", param="encoding_format"
            )
        return payload

    def begin(self, payload: dict[str, Any], exchange: Exchange) -> Call:
        return EmbeddingCall(payload)


class CompletionLeg(OpenAIStreamLeg):
    path = "/completions"

    def texts(self, choice: Any) -> list[str]:
        text = choice.get("text") if isinstance(choice, Mapping) else None
        return [text] if isinstance(text, str) else []


class CompletionCall(Call):
    def __init__(self, payload: dict[str, Any]) -> None:
        super().__init__(payload)
        self.prompts = _inputs(payload, "prompt")
        self.client_wants_usage = force_usage(payload)

    def output_cap(self) -> int | None:
        limit = self.payload.get("max_tokens")
        return limit if isinstance(limit, int) else COMPLETION_DEFAULT_MAX_TOKENS

    def choices(self) -> int:
        # Every prompt gets n choices, and best_of candidates are generated (and billed).
        payload = self.payload
        asked_n, asked_best_of = payload.get("n"), payload.get("best_of")
        n = asked_n if isinstance(asked_n, int) else 1
        best_of = asked_best_of if isinstance(asked_best_of, int) else 1
        return max(n, best_of, 1) * len(self.prompts)

    def measure(self) -> tuple[int, int, int]:
        return _estimate(self.prompts), 0, 0  # text or tokens only: no pictures

    def count_material(self) -> tuple[Any, Any]:
        return _as_messages(self.prompts), None

    def leg(self, route: Route, record: UsageRecord, public: str) -> Leg:
        return CompletionLeg(record, public, self.payload, self.client_wants_usage)


class CompletionsDialect(Dialect):
    surface = "completions"
    path = "/completions"

    def parse(self, body: bytes) -> dict[str, Any]:
        payload = load_json(body)
        _inputs(payload, "prompt")
        check_stream_options(payload)
        check_int(payload, "n", 1, 128)
        check_int(payload, "best_of", 1, 20)
        check_int(payload, "max_tokens", 0)
        check_int(payload, "logprobs", 0, 5)
        return payload

    def begin(self, payload: dict[str, Any], exchange: Exchange) -> Call:
        return CompletionCall(payload)
