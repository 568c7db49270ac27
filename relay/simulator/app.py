"""The simulator's ASGI application: routing, behaviours, recorded requests and stats."""

from __future__ import annotations

import collections
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

import orjson

from relay.simulator.exchange import SimExchange, SimulatedReset, hide_simulated_resets
from relay.simulator.options import (
    DEFAULT_MODELS,
    INVALID_BODY,
    MODEL_CREATED,
    REQUEST_LOG_SIZE,
    SSE_HEADERS,
    SYSTEM_FINGERPRINT,
    OptionError,
    SimOptions,
    parse_options,
)
from relay.simulator.responses import (
    ChatPlan,
    RequestError,
    completion_body,
    error_envelope,
    new_id,
    plan_chat,
    stream_steps,
    token_logprob,
    usage_for,
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

HUGE_PIECE_BYTES = 64 * 1024


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
        exchange = SimExchange(receive, send)
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

    async def _dispatch(self, scope: Scope, exchange: SimExchange) -> None:
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
        self, scope: Scope, exchange: SimExchange, prefix: str, options: SimOptions, *, chat: bool
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
        echo = (
            f" (you sent {token.strip()} from {_header(scope, b'host')})"
            if options.echo_key
            else ""
        )
        if options.key is not None and token.strip() != options.key:
            await exchange.respond_error(401, "Incorrect API key provided." + echo)
            return False
        status = options.fail
        if chat and options.fail_first:
            seen = self.fail_first_seen.get(prefix, 0)
            self.fail_first_seen[prefix] = seen + 1
            status = (status or 500) if seen < options.fail_first else None
        if status is not None:
            await exchange.respond_error(status, f"Simulated failure (HTTP {status}).{echo}")
            return False
        if options.bad_json:
            await exchange.respond(200, b'{"id": "chatcmpl-broken", "choices": [{"index": 0,')
            return False
        if options.error_body:
            envelope = error_envelope(500, "Simulated error envelope with HTTP 200.")
            await exchange.respond_json(200, envelope)
            return False
        exchange.trickle = options.trickle_ms / 1000
        return True

    async def _models(self, exchange: SimExchange, model_id: str) -> None:
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
        self, scope: Scope, exchange: SimExchange, prefix: str, options: SimOptions | OptionError
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
            await self._answer_chat(
                scope, exchange, prefix, options, body if parsed else INVALID_BODY
            )
        finally:
            counters.in_flight -= 1
            self.totals.in_flight -= 1
            if exchange.disconnected:
                counters.disconnects += 1
                self.totals.disconnects += 1

    async def _answer_chat(
        self,
        scope: Scope,
        exchange: SimExchange,
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
        echo = ""
        if options.echo_key:
            echo = f" (you sent {_header(scope, b'authorization').partition(' ')[2].strip()})"
        if body is INVALID_BODY:
            await exchange.respond_error(400, "The request body is not valid JSON.")
            return
        try:
            plan = plan_chat(body, options)
        except RequestError as exc:
            await exchange.respond_error(400, str(exc), param=exc.param)
            return
        if options.huge:
            await self._huge(exchange, plan, options)
        elif plan.stream:
            await self._stream(exchange, plan, options, echo)
        else:
            await exchange.respond_json(200, completion_body(plan, options))

    async def _stream(
        self, exchange: SimExchange, plan: ChatPlan, options: SimOptions, echo: str = ""
    ) -> None:
        base: dict[str, Any] = {
            "id": new_id("chatcmpl-"),
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
                entry = token_logprob(delta["content"], plan.top_logprobs)
                logprobs = {"content": [entry], "refusal": None}
            choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
            return b"data: " + orjson.dumps({**base, "choices": [choice]}) + b"\n\n"

        exchange.watch()
        await exchange.start(200, [*SSE_HEADERS, (b"x-request-id", new_id("req_").encode())])
        steps = [stream_steps(plan, index) for index in range(plan.n)]
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
            if options.stream_error and step == 0:
                failure = error_envelope(500, f"Simulated error in the stream.{echo}")
                await exchange.end(b"data: " + orjson.dumps(failure) + b"\n\n")
                return
            if options.bad_sse and step == 0:
                # Not JSON, and a line that is no SSE field at all: a broken proxy's output.
                await exchange.chunk(b'data: {"choices": [{"delta": {"content": "x\n\n')
                await exchange.chunk(b"<html>502 Bad Gateway</html>\n\n")
            if exchange.disconnected:
                return
        for index in range(plan.n):
            finish = "tool_calls" if index == 0 and plan.tool_name else plan.finish_reason
            await exchange.chunk(event(index, {}, finish))
        if plan.include_usage:
            tail = {**base, "choices": [], "usage": usage_for(plan, options)}
            await exchange.chunk(b"data: " + orjson.dumps(tail) + b"\n\n")
        await exchange.end(b"data: [DONE]\n\n")

    async def _huge(self, exchange: SimExchange, plan: ChatPlan, options: SimOptions) -> None:
        """An answer of ``options.huge`` content bytes, generated piece by piece so the
        simulator itself never holds it (non-streaming: one enormous JSON document)."""
        filler = ("lorem ipsum " * (HUGE_PIECE_BYTES // 12 + 1))[:HUGE_PIECE_BYTES]
        pieces, rest = divmod(options.huge, HUGE_PIECE_BYTES)
        contents = [filler] * pieces + ([filler[:rest]] if rest else [])
        completion = max(1, options.huge // 4)
        usage = {
            "prompt_tokens": plan.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": plan.prompt_tokens + completion,
        }
        exchange.watch()
        if plan.stream:
            await exchange.start(200, list(SSE_HEADERS))
            base = {
                "id": new_id("chatcmpl-"),
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": plan.model,
            }
            for content in contents:
                choice = {"index": 0, "delta": {"content": content}, "finish_reason": None}
                await exchange.chunk(
                    b"data: " + orjson.dumps({**base, "choices": [choice]}) + b"\n\n"
                )
                if exchange.disconnected:
                    return
            last = {"index": 0, "delta": {}, "finish_reason": "length"}
            await exchange.chunk(b"data: " + orjson.dumps({**base, "choices": [last]}) + b"\n\n")
            if plan.include_usage:
                tail = {**base, "choices": [], "usage": usage}
                await exchange.chunk(b"data: " + orjson.dumps(tail) + b"\n\n")
            await exchange.end(b"data: [DONE]\n\n")
            return
        await exchange.start(200, [(b"content-type", b"application/json")])
        head = {
            "id": new_id("chatcmpl-"),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": plan.model,
        }
        await exchange.chunk(
            orjson.dumps(head)[:-1] + b',"choices":[{"index":0,"finish_reason":"length",'
            b'"message":{"role":"assistant","content":"'
        )
        for content in contents:
            await exchange.chunk(content.encode())
            if exchange.disconnected:
                return
        await exchange.end(b'"}}],"usage":' + orjson.dumps(usage) + b"}")

    async def _introspect(self, method: str, path: str, exchange: SimExchange) -> None:
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
    logging.getLogger("uvicorn.error").addFilter(hide_simulated_resets)
    defaults = SimOptions(
        latency_ms=float(latency_ms), tps=float(tokens_per_second), tokens=completion_tokens
    )
    return SimulatorApp(models=list(models or DEFAULT_MODELS), defaults=defaults)
