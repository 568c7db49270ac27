"""The simulator's ASGI application: routing, behaviours, recorded requests and stats."""

from __future__ import annotations

import collections
import dataclasses
import logging
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

import orjson

from relay.simulator import anthropic, chat_stream, legacy, native, openai_responses
from relay.simulator.exchange import SimExchange, hide_simulated_resets
from relay.simulator.native import listing
from relay.simulator.options import (
    DEFAULT_MODELS,
    INVALID_BODY,
    MODEL_CREATED,
    REQUEST_LOG_SIZE,
    OptionError,
    SimOptions,
    parse_options,
)
from relay.simulator.responses import (
    RequestError,
    completion_body,
    error_envelope,
    plan_chat,
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

RESPONSES_PREFIX = "/v1/responses/"
SURFACES = {
    "/v1/chat/completions": "chat",
    "/v1/responses": "responses",
    "/v1/responses/input_tokens": "responses_input_tokens",
    "/v1/messages": "messages",
    "/v1/messages/count_tokens": "messages_count_tokens",
    "/v1/embeddings": "embeddings",
    "/v1/completions": "completions",
}
Answer = Callable[[SimExchange, Any, SimOptions, str], Awaitable[None]]


async def _responses_input_tokens(
    exchange: SimExchange, body: Any, options: SimOptions, echo: str
) -> None:
    await openai_responses.input_tokens(exchange, body)


async def _messages(exchange: SimExchange, body: Any, options: SimOptions, echo: str) -> None:
    await anthropic.create(exchange, body, options)


async def _messages_count_tokens(
    exchange: SimExchange, body: Any, options: SimOptions, echo: str
) -> None:
    await anthropic.count_tokens(exchange, body)


async def _embeddings(exchange: SimExchange, body: Any, options: SimOptions, echo: str) -> None:
    await legacy.embeddings(exchange, body, options)


async def _completions(exchange: SimExchange, body: Any, options: SimOptions, echo: str) -> None:
    await legacy.completions(exchange, body, options)


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
        # Credentials the native provider protocols accept (relay.simulator.native).
        self.native = native.NativeTrust()
        self.stored_responses = openai_responses.ResponseStore()
        self._answers: dict[str, Answer] = {
            "chat": self._answer_chat,
            "responses": self._responses,
            "responses_input_tokens": _responses_input_tokens,
            "messages": _messages,
            "messages_count_tokens": _messages_count_tokens,
            "embeddings": _embeddings,
            "completions": _completions,
        }

    async def _responses(
        self, exchange: SimExchange, body: Any, options: SimOptions, echo: str
    ) -> None:
        await openai_responses.create(exchange, body, options, self.stored_responses)

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
        if rest == "/v1/models" and method == "GET" and _header(scope, b"anthropic-version"):
            await listing.anthropic_models(self, scope, exchange, options)
            return
        if rest.startswith("/v1/models"):
            if rest != "/v1/models" and not rest.startswith("/v1/models/"):
                await exchange.respond_error(404, f"Invalid URL ({method} {path})")
            elif method != "GET":
                await exchange.respond_error(405, f"Method {method} not allowed on {path}.")
            elif isinstance(options, OptionError):
                await exchange.respond_error(400, str(options), code="unknown_option")
            elif await self._gate(scope, exchange, prefix, options, chat=False):
                await self._models(exchange, rest[len("/v1/models/") :])
            return
        if rest.startswith(RESPONSES_PREFIX) and not rest.endswith("/input_tokens"):
            answer = self._stored_response(method, rest[len(RESPONSES_PREFIX) :])
            await self._serve(scope, exchange, prefix, options, answer, counted=False)
            return
        surface = SURFACES.get(rest)
        if surface is None and await native.dispatch(self, scope, exchange, rest, options):
            return
        if surface is None:
            await exchange.respond_error(404, f"Invalid URL ({method} {path})")
        elif method != "POST":
            exchange.anthropic = surface.startswith("messages")
            await exchange.respond_error(405, f"Method {method} not allowed on {path}.")
        else:
            exchange.anthropic = surface.startswith("messages")
            await self._serve(
                scope, exchange, prefix, options, self._answers[surface], counted=True
            )

    def _stored_response(self, method: str, rest: str) -> Answer:
        async def answer(exchange: SimExchange, body: Any, options: SimOptions, echo: str) -> None:
            await openai_responses.stored(exchange, method, rest, self.stored_responses)

        return answer

    async def _gate(
        self, scope: Scope, exchange: SimExchange, prefix: str, options: SimOptions, *, chat: bool
    ) -> bool:
        """Apply latency, hang, auth and failures; True if the real answer should follow."""
        if not await exchange.pause(options.latency_ms / 1000):
            return False
        if options.hang:
            await exchange.pause(None)
            return False
        token = _credential(scope, exchange.anthropic)
        if not token:
            await exchange.respond_error(401, "You didn't provide an API key.")
            return False
        echo = f" (you sent {token} from {_header(scope, b'host')})" if options.echo_key else ""
        if options.key is not None and token != options.key:
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

    async def _serve(
        self,
        scope: Scope,
        exchange: SimExchange,
        prefix: str,
        options: SimOptions | OptionError,
        answer: Answer,
        *,
        counted: bool,
    ) -> None:
        raw = await exchange.read_body()
        try:
            body, parsed = (orjson.loads(raw), True) if raw or counted else (None, True)
        except orjson.JSONDecodeError:
            body, parsed = None, False
        headers = {
            name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]
        }
        self.requests.append(
            {
                "path": scope["path"],
                "method": scope["method"],
                "headers": headers,
                "body": body,
                "raw": raw,
            }
        )
        counters = self.by_prefix.get(prefix)
        if counters is None:
            counters = self.by_prefix[prefix] = _Counters()
        counters.enter()
        self.totals.enter()
        try:
            await self._answer(
                scope, exchange, prefix, options, body if parsed else INVALID_BODY, answer, counted
            )
        finally:
            counters.in_flight -= 1
            self.totals.in_flight -= 1
            if exchange.disconnected:
                counters.disconnects += 1
                self.totals.disconnects += 1

    async def _answer(
        self,
        scope: Scope,
        exchange: SimExchange,
        prefix: str,
        options: SimOptions | OptionError,
        body: Any,
        answer: Answer,
        counted: bool,
    ) -> None:
        if exchange.disconnected:
            return
        if isinstance(options, OptionError):
            await exchange.respond_error(400, str(options), code="unknown_option")
            return
        if not await self._gate(scope, exchange, prefix, options, chat=counted):
            return
        echo = ""
        if options.echo_key:
            echo = f" (you sent {_credential(scope, exchange.anthropic)})"
        if body is INVALID_BODY:
            await exchange.respond_error(400, "The request body is not valid JSON.")
            return
        try:
            await answer(exchange, body, options, echo)
        except RequestError as exc:
            await exchange.respond_error(400, str(exc), param=exc.param)

    async def _answer_chat(
        self, exchange: SimExchange, body: Any, options: SimOptions, echo: str
    ) -> None:
        plan = plan_chat(body, options)
        if options.huge:
            await chat_stream.huge(exchange, plan, options)
        elif plan.stream:
            await chat_stream.stream(exchange, plan, options, echo)
        else:
            await exchange.respond_json(200, completion_body(plan, options))

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


def _credential(scope: Scope, anthropic: bool) -> str:
    """The caller's key: a Bearer token, or Anthropic's ``x-api-key`` on its surface."""
    if anthropic:
        key = _header(scope, b"x-api-key").strip()
        if key:
            return key
    scheme, _, token = _header(scope, b"authorization").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


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
