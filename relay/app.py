"""The relay's ASGI application for ``/v1/*``: a lean path beside Django's full stack.

It uses the project's models, settings and caches, but none of Django's request
machinery: no middleware, URL resolver or template code runs for a relayed request.
"""

from __future__ import annotations

import logging
from urllib.parse import unquote

import orjson

from relay import errors, metrics, probes, serve, shared, side_calls, upstream
from relay.ahead import Ahead
from relay.cache import RelayCache
from relay.dialects import model_list
from relay.dialects.chat import ChatDialect
from relay.dialects.legacy import CompletionsDialect, EmbeddingsDialect
from relay.dialects.messages import MessagesDialect
from relay.dialects.responses import ResponsesDialect
from relay.exchange import ClientGone, Exchange, Receive, Scope, Send
from relay.leases import Leases
from relay.metering import usage_writer

logger = logging.getLogger(__name__)

MODELS_PREFIX = "/v1/models/"
# POST endpoints, each served by its dialect through the one core (``relay.serve``).
DIALECTS = {
    "/v1/chat/completions": ChatDialect(),
    "/v1/responses": ResponsesDialect(),
    "/v1/messages": MessagesDialect(),
    "/v1/embeddings": EmbeddingsDialect(),
    "/v1/completions": CompletionsDialect(),
}
COUNTING = {"/v1/responses/input_tokens": "responses", "/v1/messages/count_tokens": "messages"}
# Request headers beyond this are refused (431): some ASGI servers (httptools) set no limit
# of their own, and no OpenAI client needs more than a few kilobytes.
MAX_HEADER_BYTES = 32 * 1024


class RelayApp:
    def __init__(self) -> None:
        self.cache = RelayCache()
        self.ahead = Ahead()
        self.leases = Leases()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        exchange = Exchange(self, scope, receive, send)
        metrics.request_id.set(exchange.request_id)
        try:
            await self._dispatch(exchange)
        except errors.RelayError as error:
            if not exchange.response_started:
                await exchange.respond_error(error)
        except ClientGone:
            pass
        except Exception:
            logger.exception("relay request %s failed", exchange.request_id)
            if not exchange.response_started:
                await exchange.respond_error(
                    errors.RelayError(
                        500,
                        f"The server had an error processing your request ({exchange.request_id}).",
                        type="server_error",
                    )
                )

    async def _dispatch(self, exchange: Exchange) -> None:
        path: str = exchange.scope["path"]
        method: str = exchange.scope["method"]
        if sum(len(k) + len(v) + 4 for k, v in exchange.scope["headers"]) > MAX_HEADER_BYTES:
            raise errors.RelayError(
                431,
                f"The request headers are larger than the {MAX_HEADER_BYTES} bytes this "
                "gateway accepts.",
                code="request_headers_too_large",
            )
        if path == "/healthz":
            await exchange.respond_json(200, probes.LIVENESS_BODY)
        elif path == "/readyz":
            await exchange.respond_json(*await probes.readiness(self.cache))
        elif (dialect := DIALECTS.get(path)) is not None:
            exchange.anthropic = dialect.anthropic
            _require(method, "POST", path)
            await serve.handle(exchange, dialect)
        elif path in COUNTING:
            exchange.anthropic = COUNTING[path] == "messages"
            _require(method, "POST", path)
            await side_calls.count_tokens(exchange, COUNTING[path])
        elif path.startswith(side_calls.RESPONSES_PREFIX):
            await side_calls.stored_response(
                exchange, method, unquote(path[len(side_calls.RESPONSES_PREFIX) :])
            )
        elif path == "/metrics":
            _require(method, "GET", path)
            await metrics.respond(exchange)
        elif path == "/v1/models":
            exchange.anthropic = exchange.header(b"anthropic-version") is not None
            _require(method, "GET", path)
            await self._list_models(exchange)
        elif path.startswith(MODELS_PREFIX) and len(path) > len(MODELS_PREFIX):
            exchange.anthropic = exchange.header(b"anthropic-version") is not None
            _require(method, "GET", path)
            await self._retrieve_model(exchange, unquote(path[len(MODELS_PREFIX) :]))
        else:
            raise errors.RelayError(404, f"Invalid URL ({method} {path})", code="unknown_url")

    async def _list_models(self, exchange: Exchange) -> None:
        key = await exchange.authenticate()
        snapshot = await self.cache.snapshot()
        prices = await self.cache.prices(key.tenant_id)
        servable = snapshot.servable(key, prices)
        if exchange.anthropic:  # Anthropic's Models API, for its clients
            models = model_list.callable_models(servable, key)
            body = model_list.list_page(models, exchange.scope.get("query_string", b""))
        else:
            body = {"object": "list", "data": [model.as_openai() for model in servable]}
        await exchange.respond_json(200, orjson.dumps(body))

    async def _retrieve_model(self, exchange: Exchange, model_id: str) -> None:
        key = await exchange.authenticate()
        snapshot = await self.cache.snapshot()
        model = snapshot.models.get(model_id)
        if (
            model is None
            or not key.allows(model_id)
            or not any(key.allows_route(route) for route in model.routes)
            or (exchange.anthropic and not model_list.callable_model(model, key))
        ):
            raise errors.model_not_found(model_id)
        if model_id not in await self.cache.prices(key.tenant_id):
            raise errors.model_not_priced(model_id)
        shown = model_list.model_info(model) if exchange.anthropic else model.as_openai()
        await exchange.respond_json(200, orjson.dumps(shown))

    async def shutdown(self) -> None:
        metrics.flush()
        await self.cache.close()
        await upstream.close_client()
        await shared.close()
        usage_writer.flush(timeout=10.0, shared_queue=False)
        # Events queued in Redis are written by whichever relay drains next; when this is the
        # last relay standing, nothing would until traffic returned, so give the shared queue
        # a bounded chance to empty. Redis being down must not stop the shutdown.
        try:
            usage_writer.flush(timeout=5.0, shared_queue=True)
        except Exception:
            logger.warning("draining the shared usage queue at shutdown failed", exc_info=True)


def _require(method: str, expected: str, path: str) -> None:
    if method != expected:
        raise errors.RelayError(
            405,
            f"Method {method} is not allowed on {path}; use {expected}.",
            code="method_not_allowed",
        )
