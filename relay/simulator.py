"""A fake OpenAI-compatible upstream for the demo, the tests and the benchmarks.

A raw ASGI application, deliberately free of Django so a benchmark can run it in a bare
interpreter. It answers ``POST /v1/chat/completions`` and ``GET /v1/models[/{id}]`` with
deterministic content, and misbehaves on demand when the path carries a behaviour prefix,
``/sim/<options>/v1/...`` (see ``parse_options``), so one process can stand in for many
channels. ``/_sim/requests`` and ``/_sim/stats`` show tests what a gateway really sent and
how many upstream requests it held open.

Run it with ``python -m relay.simulator --port 9100`` or ``manage.py simulate_upstream``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import logging
import math
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

import orjson

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

DEFAULT_MODELS = ("sim-small", "sim-large")
MODEL_CREATED = 1_700_000_000  # fixed, so model listings are reproducible
SYSTEM_FINGERPRINT = "fp_simulator"
REQUEST_LOG_SIZE = 200
MAX_CHOICES = 128  # OpenAI's own limit for ``n``
MAX_TOP_LOGPROBS = 20

_INVALID = object()  # stands for a body that is not JSON, since ``null`` is valid JSON

JSON_HEADERS = [(b"content-type", b"application/json")]
SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


class SimulatedReset(Exception):
    """Raised inside the app so the ASGI server drops the connection mid-stream."""


def _hide_simulated_resets(record: logging.LogRecord) -> bool:
    # uvicorn logs every exception escaping the app; a requested reset is not a fault and
    # would bury real errors in test and benchmark output.
    exc = record.exc_info[1] if record.exc_info else None
    return not isinstance(exc, SimulatedReset)


# --- behaviour options -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class SimOptions:
    """How one behaviour prefix answers; the defaults come from ``build_app``."""

    fail: int | None = None
    fail_first: int = 0
    latency_ms: float = 0.0
    tps: float = 0.0
    tokens: int = 16
    hang: bool = False
    hang_after: int | None = None
    reset_after: int | None = None
    nousage: bool = False
    cached: int = 0
    reasoning: int = 0
    key: str | None = None
    bad_json: bool = False
    error_body: bool = False


class OptionError(ValueError):
    """A behaviour prefix that cannot be understood; answered with a 400 envelope."""


def _count(value: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError(value)
    return number


def _status(value: str) -> int:
    number = int(value)
    if not 400 <= number <= 599:
        raise ValueError(value)
    return number


def _rate(value: str) -> float:
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise ValueError(value)
    return number


def _secret(value: str) -> str:
    if not value:
        raise ValueError(value)
    return value


_FLAGS = frozenset({"hang", "nousage", "bad_json", "error_body"})
_VALUED: dict[str, tuple[str, Callable[[str], Any]]] = {
    "fail": ("fail", _status),
    "fail_first": ("fail_first", _count),
    "latency": ("latency_ms", _rate),
    "tps": ("tps", _rate),
    "tokens": ("tokens", _count),
    "hang_after": ("hang_after", _count),
    "reset_after": ("reset_after", _count),
    "cached": ("cached", _count),
    "reasoning": ("reasoning", _count),
    "key": ("key", _secret),
}


def parse_options(text: str, defaults: SimOptions) -> SimOptions:
    """Parse the ``<options>`` of ``/sim/<options>/v1/...`` on top of ``defaults``.

    Grammar: a comma-separated list of ``name`` (flags: hang, nousage, bad_json, error_body)
    or ``name=value`` (fail=<400-599>, fail_first=<k>, latency=<ms>, tps=<n>, tokens=<n>,
    hang_after=<k>, reset_after=<k>, cached=<n>, reasoning=<n>, key=<secret>). Empty items
    are ignored and a repeated option keeps its last value. Raises ``OptionError``.
    """
    changes: dict[str, Any] = {}
    for item in text.split(","):
        if not item:
            continue
        name, has_value, value = item.partition("=")
        if name in _FLAGS:
            if has_value:
                raise OptionError(f"Simulator option '{name}' takes no value.")
            changes[name] = True
        elif name in _VALUED:
            field, convert = _VALUED[name]
            try:
                changes[field] = convert(value)
            except ValueError:
                raise OptionError(f"Bad value for simulator option '{name}': '{value}'.") from None
        else:
            raise OptionError(f"Unknown simulator option '{name}'.")
    return dataclasses.replace(defaults, **changes)


# --- token accounting --------------------------------------------------------------------


def count_prompt_tokens(messages: Sequence[Any]) -> int:
    """The simulator's deterministic prompt size, which tests can recompute.

    ``prompt_tokens = 3 + sum over messages of (4 + words)``, where ``words`` is the number
    of whitespace-separated words in the message's text: its ``content`` when that is a
    string, or the ``text`` of every ``{"type": "text"}`` part when it is a list. Names,
    tool calls and non-text parts count nothing.
    """
    total = 3
    for message in messages:
        total += 4
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            total += len(content.split())
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and part.get("type") == "text":
                    text = part.get("text")
                    if isinstance(text, str):
                        total += len(text.split())
    return total


def _piece(position: int) -> str:
    # One completion token per piece; joined they read "tok0 tok1 tok2 ...".
    return f"tok{position}" if position == 0 else f" tok{position}"


def _token_logprob(piece: str, top: int) -> dict[str, Any]:
    alternatives = [{"token": piece, "logprob": -0.25, "bytes": list(piece.encode())}]
    for rank in range(1, top):
        alt = f" alt{rank}"
        alternatives.append({"token": alt, "logprob": -1.0 - rank, "bytes": list(alt.encode())})
    return {
        "token": piece,
        "logprob": -0.25,
        "bytes": list(piece.encode()),
        "top_logprobs": alternatives[:top],
    }


@dataclasses.dataclass(slots=True)
class ChatPlan:
    """What one chat request will be answered with, decided before the first byte."""

    model: str
    n: int
    stream: bool
    include_usage: bool
    produced: int  # tokens in each text choice
    finish_reason: str  # of the text choices
    tool_name: str | None  # set when choice 0 answers with a tool call
    logprobs: bool
    top_logprobs: int
    prompt_tokens: int

    @property
    def completion_tokens(self) -> int:
        """Text choices count their pieces; a tool-call choice counts as one token."""
        if self.tool_name is None:
            return self.produced * self.n
        return 1 + self.produced * (self.n - 1)


class RequestError(ValueError):
    """A chat request the simulator rejects with 400, naming the offending ``param``."""

    def __init__(self, message: str, param: str | None) -> None:
        super().__init__(message)
        self.param = param


def _int_param(body: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise RequestError(f"'{name}' must be an integer from {low} to {high}.", name)
    return value


def _tool_name(body: dict[str, Any]) -> str | None:
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if not isinstance(tools, list) or not tools or choice == "none":
        return None
    if isinstance(choice, dict) and choice.get("type") == "function":
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if isinstance(name, str) and name:
            return name
    for tool in tools:
        if not isinstance(tool, dict) or tool.get("type") != "function":
            continue
        function = tool.get("function")
        if isinstance(function, dict):
            name = function.get("name")
            if isinstance(name, str) and name:
                return name
    return None


def plan_chat(body: Any, options: SimOptions) -> ChatPlan:
    """Validate a parsed chat request and decide the answer; raises ``RequestError``."""
    if not isinstance(body, dict):
        raise RequestError("The request body must be a JSON object.", None)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise RequestError("You must provide a model parameter.", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' must be a non-empty array.", "messages")
    if not all(isinstance(message, dict) for message in messages):
        raise RequestError("Each entry of 'messages' must be an object.", "messages")
    n = _int_param(body, "n", 1, 1, MAX_CHOICES)
    top_logprobs = _int_param(body, "top_logprobs", 0, 0, MAX_TOP_LOGPROBS)
    # The newer parameter wins, as in OpenAI's API, when a client sends both.
    limit_name = (
        "max_tokens" if body.get("max_completion_tokens") is None else "max_completion_tokens"
    )
    limit = _int_param(body, limit_name, options.tokens, 0, 2**31)
    stream_options = body.get("stream_options")
    include_usage = isinstance(stream_options, dict) and stream_options.get("include_usage") is True
    return ChatPlan(
        model=model,
        n=n,
        stream=body.get("stream") is True,
        include_usage=include_usage and not options.nousage,
        produced=min(options.tokens, limit),
        finish_reason="length" if limit < options.tokens else "stop",
        tool_name=_tool_name(body),
        logprobs=body.get("logprobs") is True,
        top_logprobs=top_logprobs,
        prompt_tokens=count_prompt_tokens(messages),
    )


def _usage(plan: ChatPlan, options: SimOptions) -> dict[str, Any]:
    completion = plan.completion_tokens + options.reasoning
    return {
        "prompt_tokens": plan.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": plan.prompt_tokens + completion,
        "prompt_tokens_details": {"cached_tokens": options.cached, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": options.reasoning,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _new_id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:24]


def completion_body(plan: ChatPlan, options: SimOptions) -> dict[str, Any]:
    """The non-streaming ``chat.completion`` object for ``plan``."""
    pieces = [_piece(position) for position in range(plan.produced)]
    choices = []
    for index in range(plan.n):
        if index == 0 and plan.tool_name is not None:
            call = {
                "id": _new_id("call_"),
                "type": "function",
                "function": {"name": plan.tool_name, "arguments": "{}"},
            }
            message = {"role": "assistant", "content": None, "refusal": None, "tool_calls": [call]}
            choices.append(
                {"index": 0, "message": message, "logprobs": None, "finish_reason": "tool_calls"}
            )
            continue
        logprobs = None
        if plan.logprobs:
            entries = [_token_logprob(piece, plan.top_logprobs) for piece in pieces]
            logprobs = {"content": entries, "refusal": None}
        message = {"role": "assistant", "content": "".join(pieces), "refusal": None}
        choices.append(
            {
                "index": index,
                "message": message,
                "logprobs": logprobs,
                "finish_reason": plan.finish_reason,
            }
        )
    body: dict[str, Any] = {
        "id": _new_id("chatcmpl-"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": plan.model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": choices,
    }
    if not options.nousage:
        body["usage"] = _usage(plan, options)
    return body


def _stream_steps(plan: ChatPlan, index: int) -> list[dict[str, Any]]:
    """The deltas after the role delta for one choice; each one is a "content chunk"."""
    if index == 0 and plan.tool_name is not None:
        first = {
            "index": 0,
            "id": _new_id("call_"),
            "type": "function",
            "function": {"name": plan.tool_name, "arguments": ""},
        }
        rest = {"index": 0, "function": {"arguments": "{}"}}
        return [{"tool_calls": [first]}, {"tool_calls": [rest]}]
    return [{"content": _piece(position)} for position in range(plan.produced)]


# --- errors ------------------------------------------------------------------------------


def error_envelope(
    status: int, message: str, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """OpenAI's error body; ``type`` follows the status the way OpenAI's API does."""
    if status == 401:
        kind, code = "invalid_request_error", code or "invalid_api_key"
    elif status == 429:
        kind, code = "requests", code or "rate_limit_exceeded"
    elif status >= 500:
        kind = "server_error"
    else:
        kind = "invalid_request_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


# --- one HTTP exchange -------------------------------------------------------------------


class _Exchange:
    """One request/response in progress, aware of the client going away."""

    __slots__ = ("_receive", "_send", "_waiter", "_watcher", "disconnected", "finished")

    def __init__(self, receive: Receive, send: Send) -> None:
        self._receive = receive
        self._send = send
        self._waiter: asyncio.Future[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self.disconnected = False
        self.finished = False

    async def read_body(self) -> bytes:
        chunks = []
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self.disconnected = True
                break
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    def watch(self) -> None:
        """Start noticing a disconnect; only long answers pay for the watcher task."""
        if self._watcher is None and not self.disconnected and not self.finished:
            self._watcher = asyncio.get_running_loop().create_task(self._wait_for_disconnect())

    async def _wait_for_disconnect(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        # uvicorn also reports a disconnect once the response is complete; that is no loss.
        if not self.finished:
            self.disconnected = True
            if self._waiter is not None and not self._waiter.done():
                self._waiter.set_result(None)

    async def pause(self, seconds: float | None) -> bool:
        """Wait ``seconds`` (``None``: until the client leaves); False if the client left.

        A bare future plus a timer keeps a paused request at no CPU and no extra task.
        """
        if seconds is not None and seconds <= 0:
            return not self.disconnected
        self.watch()
        if self.disconnected:
            return False
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiter = waiter
        timer = None
        if seconds is not None:
            timer = loop.call_later(seconds, _resolve, waiter)
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()
        return not self.disconnected

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        await self._send({"type": "http.response.start", "status": status, "headers": headers})

    async def chunk(self, body: bytes) -> None:
        await self._send({"type": "http.response.body", "body": body, "more_body": True})

    async def end(self, body: bytes = b"") -> None:
        self.finished = True
        await self._send({"type": "http.response.body", "body": body, "more_body": False})

    async def respond(
        self, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        head = list(headers or JSON_HEADERS)
        head.append((b"content-length", str(len(body)).encode()))
        head.append((b"x-request-id", _new_id("req_").encode()))
        await self.start(status, head)
        await self.end(body)

    async def respond_json(self, status: int, payload: Any) -> None:
        await self.respond(status, orjson.dumps(payload))

    async def respond_error(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None
    ) -> None:
        headers = list(JSON_HEADERS)
        if status == 429:
            headers.append((b"retry-after", b"1"))
        envelope = error_envelope(status, message, param=param, code=code)
        await self.respond(status, orjson.dumps(envelope), headers)

    def close(self) -> None:
        self.finished = True
        if self._watcher is not None:
            self._watcher.cancel()


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


# --- the application ---------------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class _Counters:
    in_flight: int = 0
    peak_in_flight: int = 0
    total: int = 0
    disconnects: int = 0

    def enter(self) -> None:
        self.in_flight += 1
        self.total += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)

    def reset(self) -> None:
        # Requests still running will leave later, so in_flight must survive a reset.
        self.total = self.disconnects = 0
        self.peak_in_flight = self.in_flight


class SimulatorApp:
    """The ASGI callable; all state is per instance and touched only on its event loop."""

    def __init__(self, *, models: Sequence[str], defaults: SimOptions) -> None:
        self.models = list(models)
        self.defaults = defaults
        self.requests: collections.deque[dict[str, Any]] = collections.deque(
            maxlen=REQUEST_LOG_SIZE
        )
        self.fail_first_seen: dict[str, int] = {}
        self.totals = _Counters()
        self.by_prefix: dict[str, _Counters] = {}
        self._options: dict[str, SimOptions | OptionError] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        exchange = _Exchange(receive, send)
        try:
            await self._dispatch(scope, exchange)
        finally:
            exchange.close()

    def _options_for(self, prefix: str) -> SimOptions | OptionError:
        options = self._options.get(prefix)
        if options is None:
            try:
                options = parse_options(prefix[len("/sim/") :], self.defaults)
            except OptionError as exc:
                options = exc
            if len(self._options) > 4096:  # prefixes come from clients: stay bounded
                self._options.clear()
            self._options[prefix] = options
        return options

    async def _dispatch(self, scope: Scope, exchange: _Exchange) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        if path.startswith("/_sim/"):
            await self._introspect(method, path, exchange)
            return
        prefix, rest = "", path
        if path.startswith("/sim/"):
            opts, slash, tail = path[len("/sim/") :].partition("/")
            prefix, rest = "/sim/" + opts, slash + tail
        options = self._options_for(prefix) if prefix else self.defaults
        if rest == "/v1/chat/completions":
            if method != "POST":
                await exchange.respond_error(405, f"Method {method} not allowed on {path}.")
                return
            await self._chat(scope, exchange, prefix, options)
        elif rest == "/v1/models" or rest.startswith("/v1/models/"):
            if method != "GET":
                await exchange.respond_error(405, f"Method {method} not allowed on {path}.")
            elif isinstance(options, OptionError):
                await exchange.respond_error(400, str(options), code="unknown_option")
            elif await self._gate(scope, exchange, prefix, options, chat=False):
                await self._models(exchange, rest[len("/v1/models/") :])
        else:
            await exchange.respond_error(404, f"Invalid URL ({method} {path})")

    async def _gate(
        self, scope: Scope, exchange: _Exchange, prefix: str, options: SimOptions, *, chat: bool
    ) -> bool:
        """Apply latency, hang, auth and failures; True if the real answer should follow."""
        if not await exchange.pause(options.latency_ms / 1000):
            return False
        if options.hang:
            await exchange.pause(None)
            return False
        authorization = _header(scope, b"authorization")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            await exchange.respond_error(401, "You didn't provide an API key.")
            return False
        if options.key is not None and token.strip() != options.key:
            await exchange.respond_error(401, "Incorrect API key provided.")
            return False
        status = options.fail
        if chat and options.fail_first:
            seen = self.fail_first_seen.get(prefix, 0)
            self.fail_first_seen[prefix] = seen + 1
            status = (status or 500) if seen < options.fail_first else None
        if status is not None:
            await exchange.respond_error(status, f"Simulated failure (HTTP {status}).")
            return False
        if options.bad_json:
            await exchange.respond(200, b'{"id": "chatcmpl-broken", "choices": [{"index": 0,')
            return False
        if options.error_body:
            envelope = error_envelope(500, "Simulated error envelope with HTTP 200.")
            await exchange.respond_json(200, envelope)
            return False
        return True

    async def _models(self, exchange: _Exchange, model_id: str) -> None:
        def card(name: str) -> dict[str, Any]:
            return {
                "id": name,
                "object": "model",
                "created": MODEL_CREATED,
                "owned_by": "simulator",
            }

        if not model_id:
            await exchange.respond_json(
                200, {"object": "list", "data": list(map(card, self.models))}
            )
        elif model_id in self.models:
            await exchange.respond_json(200, card(model_id))
        else:
            message = f"The model '{model_id}' does not exist"
            await exchange.respond_error(404, message, param="model", code="model_not_found")

    async def _chat(
        self, scope: Scope, exchange: _Exchange, prefix: str, options: SimOptions | OptionError
    ) -> None:
        raw = await exchange.read_body()
        try:
            body, parsed = orjson.loads(raw), True
        except orjson.JSONDecodeError:
            body, parsed = None, False
        headers = {
            name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]
        }
        self.requests.append({"path": scope["path"], "headers": headers, "body": body, "raw": raw})
        counters = self.by_prefix.get(prefix)
        if counters is None:
            counters = self.by_prefix[prefix] = _Counters()
        counters.enter()
        self.totals.enter()
        try:
            await self._answer_chat(scope, exchange, prefix, options, body if parsed else _INVALID)
        finally:
            counters.in_flight -= 1
            self.totals.in_flight -= 1
            if exchange.disconnected:
                counters.disconnects += 1
                self.totals.disconnects += 1

    async def _answer_chat(
        self,
        scope: Scope,
        exchange: _Exchange,
        prefix: str,
        options: SimOptions | OptionError,
        body: Any,
    ) -> None:
        if exchange.disconnected:
            return
        if isinstance(options, OptionError):
            await exchange.respond_error(400, str(options), code="unknown_option")
            return
        if not await self._gate(scope, exchange, prefix, options, chat=True):
            return
        if body is _INVALID:
            await exchange.respond_error(400, "The request body is not valid JSON.")
            return
        try:
            plan = plan_chat(body, options)
        except RequestError as exc:
            await exchange.respond_error(400, str(exc), param=exc.param)
            return
        if plan.stream:
            await self._stream(exchange, plan, options)
        else:
            await exchange.respond_json(200, completion_body(plan, options))

    async def _stream(self, exchange: _Exchange, plan: ChatPlan, options: SimOptions) -> None:
        base: dict[str, Any] = {
            "id": _new_id("chatcmpl-"),
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": plan.model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }
        if plan.include_usage:
            base["usage"] = None  # OpenAI marks every chunk but the last this way

        def event(index: int, delta: dict[str, Any], finish: str | None = None) -> bytes:
            logprobs = None
            if plan.logprobs and "content" in delta and delta["content"]:
                entry = _token_logprob(delta["content"], plan.top_logprobs)
                logprobs = {"content": [entry], "refusal": None}
            choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
            return b"data: " + orjson.dumps({**base, "choices": [choice]}) + b"\n\n"

        exchange.watch()
        await exchange.start(200, [*SSE_HEADERS, (b"x-request-id", _new_id("req_").encode())])
        steps = [_stream_steps(plan, index) for index in range(plan.n)]
        for index in range(plan.n):
            tool = index == 0 and plan.tool_name is not None
            await exchange.chunk(
                event(index, {"role": "assistant", "content": None if tool else ""})
            )
        total_steps = max(map(len, steps))
        # A stalled or reset stream must never look complete, so both stop before the
        # finish chunks at the latest, even when k exceeds the content available.
        hang_at = reset_at = -1
        if options.hang_after is not None:
            hang_at = min(options.hang_after, total_steps)
        if options.reset_after is not None:
            reset_at = min(options.reset_after, total_steps)
        for step in range(total_steps + 1):
            if step == hang_at:
                await exchange.pause(None)
                return
            if step == reset_at:
                raise SimulatedReset(f"simulated connection reset after {step} chunks")
            if step == total_steps:
                break
            if options.tps and not await exchange.pause(1 / options.tps):
                return
            for index, deltas in enumerate(steps):
                if step < len(deltas):
                    await exchange.chunk(event(index, deltas[step]))
            if exchange.disconnected:
                return
        for index in range(plan.n):
            finish = "tool_calls" if index == 0 and plan.tool_name else plan.finish_reason
            await exchange.chunk(event(index, {}, finish))
        if plan.include_usage:
            tail = {**base, "choices": [], "usage": _usage(plan, options)}
            await exchange.chunk(b"data: " + orjson.dumps(tail) + b"\n\n")
        await exchange.end(b"data: [DONE]\n\n")

    async def _introspect(self, method: str, path: str, exchange: _Exchange) -> None:
        if path == "/_sim/requests" and method == "GET":
            data = [
                {**entry, "raw": entry["raw"].decode("utf-8", "replace")} for entry in self.requests
            ]
            await exchange.respond_json(200, {"data": data})
        elif path == "/_sim/requests" and method == "DELETE":
            deleted = len(self.requests)
            self.requests.clear()
            self.fail_first_seen.clear()
            self.totals.reset()
            for prefix, counters in list(self.by_prefix.items()):
                counters.reset()
                if not counters.in_flight:
                    del self.by_prefix[prefix]
            await exchange.respond_json(200, {"deleted": deleted})
        elif path == "/_sim/stats" and method == "GET":
            stats: dict[str, Any] = dataclasses.asdict(self.totals)
            stats["by_prefix"] = {p: dataclasses.asdict(c) for p, c in self.by_prefix.items()}
            await exchange.respond_json(200, stats)
        else:
            await exchange.respond_error(404, f"Invalid URL ({method} {path})")


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return ""


async def _lifespan(receive: Receive, send: Send) -> None:
    # Only reached when a server runs with lifespan enabled; there is nothing to set up.
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def build_app(
    *,
    models: list[str] | None = None,
    latency_ms: float = 0,
    tokens_per_second: float = 0,
    completion_tokens: int = 16,
) -> SimulatorApp:
    """A new simulator; the arguments are the defaults that behaviour prefixes override."""
    if latency_ms < 0 or tokens_per_second < 0 or completion_tokens < 0:
        raise ValueError("latency_ms, tokens_per_second and completion_tokens must be >= 0")
    logging.getLogger("uvicorn.error").addFilter(_hide_simulated_resets)
    defaults = SimOptions(
        latency_ms=float(latency_ms), tps=float(tokens_per_second), tokens=completion_tokens
    )
    return SimulatorApp(models=list(models or DEFAULT_MODELS), defaults=defaults)


# --- command line ------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command-line options, shared with ``manage.py simulate_upstream``."""
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind")
    parser.add_argument("--port", type=int, default=9100, help="port to listen on")
    parser.add_argument("--latency-ms", type=float, default=0, help="delay before each answer")
    parser.add_argument("--tps", type=float, default=0, help="stream tokens/second (0: no delay)")
    parser.add_argument(
        "--models", default=",".join(DEFAULT_MODELS), help="comma-separated model ids to list"
    )
    parser.add_argument(
        "--completion-tokens", type=int, default=16, help="tokens in each completion"
    )


def serve(
    *,
    host: str,
    port: int,
    models: list[str] | None = None,
    latency_ms: float = 0,
    tokens_per_second: float = 0,
    completion_tokens: int = 16,
) -> None:
    """Serve a simulator with uvicorn until interrupted."""
    import uvicorn  # here, so importing the app alone stays light

    app = build_app(
        models=models,
        latency_ms=latency_ms,
        tokens_per_second=tokens_per_second,
        completion_tokens=completion_tokens,
    )
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off")
    print(
        f"Simulated upstream on http://{host}:{port}/v1 (behaviours: /sim/<options>/v1)",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.Server(config).run()


def serve_from_arguments(arguments: argparse.Namespace | dict[str, Any]) -> None:
    """Start ``serve`` from parsed ``add_arguments`` options."""
    values = vars(arguments) if isinstance(arguments, argparse.Namespace) else arguments
    models = [name.strip() for name in values["models"].split(",") if name.strip()]
    serve(
        host=values["host"],
        port=values["port"],
        models=models or None,
        latency_ms=values["latency_ms"],
        tokens_per_second=values["tps"],
        completion_tokens=values["completion_tokens"],
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m relay.simulator", description=__doc__)
    add_arguments(parser)
    arguments = parser.parse_args(argv)
    serve_from_arguments(arguments)
    return 0


if __name__ == "__main__":
    sys.exit(main())
