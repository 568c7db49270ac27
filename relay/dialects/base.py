"""What a dialect is, and the parts the OpenAI-style dialects share.

A *dialect* is one client API (``/v1/chat/completions``, ``/v1/responses`` ...). It parses
and checks the fields the relay relies on, sizes the request for limits and the money
reservation, and, per channel tried, makes a *leg*: how the request goes to that channel
and how its answer comes back (passed through with the model name mapped, or translated
through ``relay.translate``). The core (``relay.serve``, ``relay.forward``) knows no
format: it authenticates, admits, routes with failover, settles and records through
these two small interfaces.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import orjson
from django.conf import settings

from relay import errors, upstream
from relay.dialects.fees import ToolLoop
from relay.dialects.native import NativeCodec
from relay.exchange import Exchange
from relay.metering import Usage, UsageRecord
from relay.providers.base import REQUEST_FAULTS, request_at_fault
from relay.snapshot import Route
from relay.upstream_errors import redact


def load_json(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object, integers kept exact; raises a 400."""
    try:
        # The stdlib keeps integers exact, where orjson would turn one beyond 64 bits into a
        # float and so alter the request; orjson then refuses such integers on the way out.
        payload = json.loads(
            body.decode("utf-8"), parse_constant=_reject_constant, parse_float=_finite_float
        )
    except (ValueError, RecursionError):
        raise errors.invalid_request(
            "We could not parse the JSON body of your request. (HINT: This likely means you "
            "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload.)"
        ) from None
    if not isinstance(payload, dict):
        raise errors.invalid_request("The request body must be a JSON object.")
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise errors.invalid_request("You must provide a model parameter.", param="model")
    # JSON's \\ud800 escapes can make strings no UTF-8 can carry: neither the upstream nor
    # the usage event could take them, and an error echoing them could not be sent.
    if not errors.is_valid_unicode(model):
        raise _not_unicode("model")
    if (b"\\ud" in body or b"\\uD" in body) and not _all_valid_unicode(payload):
        raise _not_unicode(None)
    stream = payload.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise errors.invalid_request("'stream' must be a boolean.", param="stream")
    return payload


def _not_unicode(param: str | None) -> errors.RelayError:
    where = f"'{param}'" if param else "The request"
    return errors.invalid_request(
        f"{where} contains a string that is not valid Unicode (an unpaired surrogate).",
        param=param,
    )


def _all_valid_unicode(payload: dict[str, Any]) -> bool:
    try:
        orjson.dumps(payload)
    except orjson.JSONEncodeError as exc:
        return "surrogates" not in str(exc)
    return True


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400: orjson would send it on as null
        raise ValueError(f"{text} is out of range")
    return value


def check_int(payload: Mapping[str, Any], name: str, low: int, high: int | None = None) -> None:
    value = payload.get(name)
    if value is None:
        return
    if (
        not isinstance(value, int)
        or isinstance(value, bool)
        or value < low
        or (high is not None and value > high)
    ):
        bound = f" and at most {high}" if high else ""
        raise errors.invalid_request(
            f"'{name}' must be an integer of at least {low}{bound}.", param=name
        )


def dump(payload: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(payload)
    except orjson.JSONEncodeError:
        raise errors.invalid_request(
            "The request contains a number or string that cannot be sent on: integers "
            "must fit in 64 bits and strings must be valid Unicode."
        ) from None


def int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class StreamError(Exception):
    """An upstream's error event inside a stream, raised by ``Leg.event``: the stream ends
    with ``frame`` (the event as the client sees it, redacted) and is recorded as failed
    with ``code``. ``channel`` says whether the channel is to blame, which its breaker
    counts; a request at fault never counts: one tenant's bad requests would otherwise
    open a channel for everyone."""

    def __init__(self, frame: bytes, code: str, channel: bool) -> None:
        super().__init__(code)
        self.frame = frame
        self.code = code
        self.channel = channel

    @classmethod
    def classify(cls, frame: bytes, kind: Any, code: Any) -> StreamError:
        """The error whose type is ``kind`` and whose code is ``code`` (the provider's,
        either may be missing), recorded under a code of the relay's own or, when the
        request is at fault, under the provider's code if it is a known one."""
        if request_at_fault(kind, code):
            known = code if isinstance(code, str) and code in REQUEST_FAULTS else None
            return cls(frame, known or "upstream_request_refused", channel=False)
        return cls(frame, "upstream_stream_error", channel=True)

    @classmethod
    def from_openai(cls, frame: bytes, error: Any) -> StreamError:
        """For an OpenAI-style ``error`` object (its ``type`` and ``code``)."""
        if not isinstance(error, dict):
            return cls.classify(frame, None, None)
        return cls.classify(frame, error.get("type"), error.get("code"))


def stream_failure(error: Any, redact: Callable[[str], str]) -> errors.RelayError:
    """An OpenAI-style ``error`` inside a stream, as the client's error event says it: the
    provider's words, redacted; an error that blames the request keeps its type and code
    (the 400 it would have been), any other is the upstream's failure."""
    if not isinstance(error, dict):
        return errors.upstream_failed(502, redact(str(error or "upstream error")))
    text = redact(str(error.get("message") or "upstream error"))
    kind, code, param = error.get("type"), error.get("code"), error.get("param")
    if request_at_fault(kind, code):
        return errors.RelayError(
            400,
            text,
            type="invalid_request_error",
            param=redact(param) if isinstance(param, str) else None,
            code=redact(code) if isinstance(code, str) else None,
        )
    return errors.upstream_failed(502, text)


class Leg:
    """One channel's side of a request: what is sent, and how the answer is relayed."""

    path: str = "/chat/completions"
    method: str = "POST"
    # True for legs that send the client's own body to a channel that speaks its API.
    passthrough: bool = False

    def __init__(self, record: UsageRecord, public: str) -> None:
        self.record = record
        self.public = public
        self.route: Route | None = None

    def content(self, route: Route) -> bytes:
        """The request body for ``route`` (remembered, so errors can be redacted)."""
        raise NotImplementedError

    def redact(self, text: str) -> str:
        return redact(text, self.route) if self.route is not None else text

    def redact_all(self, value: Any) -> Any:
        """``value`` (an error event's fields) with every string in it redacted: a provider
        may echo the key in ``type``, ``param`` or ``code`` as well as ``message``."""
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, dict):
            return {key: self.redact_all(item) for key, item in value.items()}
        if isinstance(value, list):
            return [self.redact_all(item) for item in value]
        return value

    def target(self, route: Route) -> upstream.URL:
        return route.target_for(self.path)

    def headers(self, route: Route, stream: bool) -> upstream.Headers:
        return route.headers[stream]

    def answer(self, parsed: Any) -> bytes | None:
        """The client's body for a complete upstream answer (recording its usage), or
        None when the upstream answered with something other than an answer."""
        raise NotImplementedError

    def answer_body(self, body: bytes, parsed: Any) -> bytes | None:
        """``answer``, given the upstream's own bytes (``parsed`` is them parsed) as well:
        a leg with nothing to change in them may send them on as they came."""
        return self.answer(parsed)

    def event(self, raw: bytes, data: bytes) -> tuple[bytes, bool]:
        """What to send the client for one upstream stream event, and whether it ends
        the answer (the request is settled before it goes out). Raises ValueError on a
        malformed event, and ``StreamError`` on the provider's error event: the stream
        ends with it."""
        raise NotImplementedError

    def end_of_stream(self) -> bytes | None:
        """The upstream's stream ended without the event that ends its answer: the
        client's closing bytes if the answer is whole all the same, or None if it was cut
        short (then the stream ends with an error, so a truncated answer never passes for
        a complete one)."""
        return None

    def native(self) -> NativeCodec | None:
        """The request in the canonical form, for a channel with a provider adapter; None
        when this API has no canonical form (embeddings, legacy completions)."""
        return None


def url_allowance(images: int, files: int) -> int:
    """The tokens a hold allows for ``images`` pictures and ``files`` documents or files
    the provider fetches by URL (``RELAY_URL_IMAGE_TOKENS``, ``RELAY_URL_FILE_TOKENS``)."""
    if not images and not files:
        return 0
    return images * settings.RELAY_URL_IMAGE_TOKENS + files * settings.RELAY_URL_FILE_TOKENS


class Call:
    """One request in a dialect, from its parsed payload to the legs that serve it."""

    def __init__(self, payload: dict[str, Any]) -> None:
        self.payload = payload
        self.stream = payload.get("stream") is True
        self._measured: tuple[int, int, int] | None = None
        # The provider's own tool loop, where the request offers tools it runs (Messages
        # and Responses set it; ``fees.ToolLoop``), and the output the request is held for.
        self.loop: ToolLoop | None = None
        self._held_output: int | None = None

    def output_cap(self) -> int | None:
        """The client's own cap on output tokens per choice, if it set one."""
        return None

    def choices(self) -> int:
        return 1

    def output_limit(self, model_max: int | None) -> int:
        """The most output one choice is held for: its own cap, else the model's, else
        ``RELAY_RESERVE_OUTPUT_TOKENS``. A provider that needs a cap is sent this one
        where the client gave none (``canonical.Request.held_output_tokens``)."""
        limit = self.output_cap()
        return limit if limit is not None else model_max or settings.RELAY_RESERVE_OUTPUT_TOKENS

    def output_tokens(self, model_max: int | None) -> int:
        """The most output the request can be billed for: ``output_limit`` on every choice."""
        self._held_output = self.output_limit(model_max) * self.choices()
        return self._held_output

    def limit_tokens(self) -> int:
        """What the request counts against tokens-per-minute limits until it settles."""
        limit = self.output_cap()
        if limit is None:
            limit = settings.RELAY_DEFAULT_RESERVED_OUTPUT_TOKENS
        return self.prompt_estimate() + limit

    def prompt_estimate(self) -> int:
        """A quick prompt size (about 4 characters a token), without the tokenizer."""
        return self.measured()[0]

    def generates_images(self) -> bool:
        """Whether the request asks for pictures: only then are generated images billed
        (and held for)."""
        return False

    def input_images(self) -> int:
        """The pictures in the request: what a price per input image bills, and reserves."""
        return self.measured()[1]

    def web_searches(self) -> int:
        """The most searches the provider may run and bill for the request (a price per
        search reserves them; a model without one refuses them)."""
        return 0

    def fetched_tokens(self) -> int:
        """What the hold allows for the inputs the provider fetches itself by URL (pictures,
        documents): their tokens are not among the request's bytes, which bound the rest
        of its prompt (``url_allowance``); and, where the provider runs tools itself, what
        its loop may add and read again (``fees.ToolLoop``), every pass re-reading the
        request, which its bytes bound, and the output so far."""
        fetched = self.measured()[2]
        if self.loop is None:
            return fetched
        output = self._held_output if self._held_output is not None else self.output_tokens(None)
        return fetched + self.loop.prompt_tokens(len(dump(self.payload)) + fetched, output)

    def measured(self) -> tuple[int, int, int]:
        """``measure``'s figures, from its one walk of the request."""
        if self._measured is None:
            self._measured = self.measure()
        return self._measured

    def measure(self) -> tuple[int, int, int]:
        """The prompt estimate, the input images and the fetched inputs' allowance, found
        in one walk of the request."""
        raise NotImplementedError

    def count_material(self) -> tuple[Any, Any]:
        """Chat-shaped messages and tools to count locally when no usage came back."""
        raise NotImplementedError

    def restrict(self, routes: tuple[Route, ...], tenant_id: int) -> tuple[Route, ...]:
        """The routes that may serve this request (all, unless it is pinned to one)."""
        return routes

    def leg(self, route: Route, record: UsageRecord, public: str) -> Leg:
        raise NotImplementedError


class Dialect:
    """One client API; see the module docstring."""

    surface: ClassVar[str]
    path: ClassVar[str]
    anthropic: ClassVar[bool] = False

    def parse(self, body: bytes) -> dict[str, Any]:
        raise NotImplementedError

    def begin(self, payload: dict[str, Any], exchange: Exchange) -> Call:
        raise NotImplementedError

    def stream_error(self, error: errors.RelayError) -> bytes:
        return b"data: " + error.body() + b"\n\n"


class OpenAIStreamLeg(Leg):
    """Pass-through of an OpenAI-style answer (chat, completions): the body unchanged but
    for ``model``; stream chunks as ``data:`` lines ending in ``[DONE]``, the usage chunk
    the relay asked for dropped when the client did not."""

    answer_key = "choices"

    def __init__(
        self, record: UsageRecord, public: str, payload: dict[str, Any], wants_usage: bool
    ) -> None:
        super().__init__(record, public)
        self.payload = payload
        self.client_wants_usage = wants_usage
        # The choices the stream began and those it finished (``end_of_stream``).
        self.begun: set[Any] = set()
        self.finished: set[Any] = set()

    def content(self, route: Route) -> bytes:
        self.route = route
        self.payload["model"] = route.upstream_model
        return dump(self.payload)

    def texts(self, choice: Any) -> list[str]:
        raise NotImplementedError

    def answer(self, parsed: Any) -> bytes | None:
        if not isinstance(parsed, dict) or "error" in parsed or self.answer_key not in parsed:
            return None
        parsed["model"] = self.public
        self.record.usage = Usage.from_openai(parsed.get("usage"), parsed.get("service_tier"))
        if self.record.usage is None:
            self.record.completion_text = []
            for choice in parsed.get(self.answer_key) or ():
                self.record.keep_text(self.body_texts(choice))
        return orjson.dumps(parsed)

    def body_texts(self, choice: Any) -> list[str]:
        return self.texts(choice)

    def event(self, raw: bytes, data: bytes) -> tuple[bytes, bool]:
        if data == b"[DONE]":
            return b"data: [DONE]\n\n", True
        chunk = self.rewrite(data)
        return (b"".join((b"data: ", chunk, b"\n\n")) if chunk is not None else b""), False

    def end_of_stream(self) -> bytes | None:
        """Whole without ``[DONE]`` when every choice it began has its ``finish_reason``:
        servers such as llama.cpp's and TGI's sent none for a long time, and what the
        client lacks then is the marker, not the answer (a usage chunk that did not come
        is counted locally, as on any stream without one)."""
        if self.finished and self.begun <= self.finished:
            return b"data: [DONE]\n\n"
        return None

    def rewrite(self, data: bytes) -> bytes | None:
        """The chunk as the client should see it, or None to drop it; raises
        ``StreamError`` for an error chunk."""
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise ValueError("malformed stream chunk") from None
        if not isinstance(chunk, dict):
            raise ValueError("malformed stream chunk")
        if "error" in chunk:
            error = chunk["error"]
            frame = orjson.dumps(stream_failure(error, self.redact).payload())
            raise StreamError.from_openai(b"data: " + frame + b"\n\n", error)
        choices = chunk.get("choices")
        if isinstance(choices, list):
            for choice in choices:
                if texts := self.texts(choice):
                    self.record.keep_text(texts)
                if isinstance(choice, dict):
                    index = choice.get("index")
                    self.begun.add(index)
                    if choice.get("finish_reason"):
                        self.finished.add(index)
        usage = chunk.get("usage")
        if usage is not None:
            self.record.usage = Usage.from_openai(usage, chunk.get("service_tier"))
        rename = chunk.get("model") != self.public
        drop_usage = not self.client_wants_usage and "usage" in chunk
        if not rename and not drop_usage:
            return data
        if drop_usage and usage is not None and not choices:
            return None  # the usage chunk the relay asked for, not the client
        if rename:
            chunk["model"] = self.public
        if drop_usage:
            del chunk["usage"]
        return orjson.dumps(chunk)


def json_headers(secret: str, accept: str, extra: dict[str, str]) -> upstream.Headers:
    headers = upstream.headers(secret, accept)
    headers.update(extra)
    return headers
