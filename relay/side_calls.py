"""Calls beside the billed ones: stored responses (``GET``/``DELETE /v1/responses/{id}``,
``POST .../cancel``, ``GET .../input_items``) and prompt counting
(``POST /v1/responses/input_tokens``, ``POST /v1/messages/count_tokens``).

A stored response is reached only on the channel that made it and only by its tenant
(``relay.dialects.response_ids``); anything else is a 404. Counting goes to a channel
that serves the surface itself, or is done here with the bundled tokenizer (in its child
process, off the event loop). None of these calls produce a usage event.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote

import orjson
from django.conf import settings

from relay import errors, tokens, upstream
from relay.dialects import betas, response_ids
from relay.dialects.base import dump, load_json
from relay.dialects.messages import anthropic_headers, parse_messages
from relay.dialects.responses import check_stored, not_found
from relay.exchange import Exchange
from relay.intake import intake_body, intake_release
from relay.routing import attempt_order
from relay.serve import resolve, surface_refused
from relay.snapshot import Route
from relay.translate import canonical, chat, messages, responses
from relay.upstream_errors import MAX_ERROR_BODY_BYTES, MAX_RESPONSE_BYTES, read_limited
from relay.upstream_errors import upstream_error as error_from

RESPONSES_PREFIX = "/v1/responses/"
# What a URL's query may hold unescaped (RFC 3986), and ``%`` so escapes stay as sent.
QUERY_SAFE = "!$&'()*+,;=:@/?%"


async def _send(
    route: Route,
    method: str,
    path: str,
    query: bytes,
    content: bytes,
    headers: upstream.Headers,
) -> Any:
    url = route.target_for(path)
    if query:
        # The client's query as it came, escapes kept; anything a query may not hold
        # raw (a space, ``#``, a line break) is escaped rather than passed on.
        raw = quote(query.decode("latin-1"), safe=QUERY_SAFE)
        url = upstream.url(f"{url}?{raw}", encoded=True)
    try:
        response = await upstream.send(method, url, headers, content, route.timeout)
    except upstream.UpstreamError:
        raise errors.upstream_failed(502, "The upstream provider could not be reached.") from None
    try:
        if response.status >= 400:
            body = await read_limited(response, MAX_ERROR_BODY_BYTES)
            raise error_from(response.status, body, route)
        body = await read_limited(response, MAX_RESPONSE_BYTES)
    except upstream.UpstreamError:
        raise errors.upstream_failed(502, "The upstream sent an invalid response.") from None
    finally:
        response.release()
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise errors.upstream_failed(502, "The upstream sent an invalid response.") from None


def _channel_route(snapshot: Any, channel_id: int) -> tuple[Route, dict[str, str]] | None:
    """A route of the channel, and its upstream model names mapped to public ids."""
    found, names = None, {}
    for model in snapshot.models.values():
        for route in model.routes:
            if route.channel_id == channel_id:
                found = route
                names[route.upstream_model] = model.public_id
    return (found, names) if found is not None else None


async def stored_response(exchange: Exchange, method: str, rest: str) -> None:
    key = await exchange.authenticate()
    if not key.allows_surface("responses"):
        raise surface_refused("responses")
    public_id, _, action = rest.partition("/")
    allowed = {"": ("GET", "DELETE"), "cancel": ("POST",), "input_items": ("GET",)}
    if action not in allowed:
        raise errors.RelayError(
            404, f"Invalid URL ({method} {exchange.scope['path']})", code="unknown_url"
        )
    if method not in allowed[action]:
        raise errors.RelayError(
            405, f"Method {method} is not allowed here.", code="method_not_allowed"
        )
    pin = response_ids.unseal(public_id, key.tenant_id)
    snapshot = await exchange.app.cache.snapshot()
    found = _channel_route(snapshot, pin[0]) if pin is not None else None
    if pin is None or found is None or not key.allows_route(found[0]):
        raise not_found(public_id)
    route, names = found
    path = f"/responses/{pin[1]}" + (f"/{action}" if action else "")
    answer = await _send(
        route, method, path, exchange.scope.get("query_string", b""), b"", route.headers[False]
    )
    if isinstance(answer, dict) and answer.get("id") == pin[1]:
        answer["id"] = public_id
    if isinstance(answer, dict) and isinstance(answer.get("previous_response_id"), str):
        answer["previous_response_id"] = response_ids.seal(
            answer["previous_response_id"], route.channel_id, key.tenant_id
        )
    if isinstance(answer, dict) and answer.get("model") in names:
        answer["model"] = names[answer["model"]]
    await exchange.respond_json(200, orjson.dumps(answer))


async def _count_locally(request: canonical.Request) -> int:
    body = chat.request_from_canonical(request)
    prompt, _ = await asyncio.to_thread(
        tokens.counter.count,
        body["messages"],
        body.get("tools"),
        "",
        idle_seconds=settings.RELAY_TOKEN_COUNTER_IDLE_SECONDS,
    )
    return prompt


async def count_tokens(exchange: Exchange, surface: str) -> None:
    """``/v1/responses/input_tokens`` or ``/v1/messages/count_tokens``."""
    exchange.anthropic = surface == "messages"
    key = await exchange.authenticate()
    if not key.allows_surface(surface):
        raise surface_refused(surface)
    taken = await intake_body(exchange, key, max_bytes=settings.RELAY_MAX_BODY_BYTES)
    try:
        body = taken.body
        if surface == "messages":
            payload = parse_messages(body)
        else:
            payload = load_json(body)
            check_stored(body, payload)
        public = payload["model"]
        _, _, routes = await resolve(exchange, key, surface, public)
        route = next(iter(attempt_order(routes)))
        if surface in route.native:
            payload["model"] = route.upstream_model
            if surface == "messages":
                version = exchange.header(b"anthropic-version") or b"2023-06-01"
                # The betas a request would carry (its tools may need them to be counted).
                beta = exchange.header(b"anthropic-beta")
                allowed = betas.forwarded(beta.decode("latin-1")) if beta else None
                headers = anthropic_headers(route, version.decode("latin-1"), allowed, False)
                answer = await _send(
                    route, "POST", "/messages/count_tokens", b"", dump(payload), headers
                )
            else:
                content = dump(payload)
                answer = await _send(
                    route, "POST", "/responses/input_tokens", b"", content, route.headers[False]
                )
            await exchange.respond_json(200, orjson.dumps(answer))
            return
        convert = (
            messages.request_to_canonical
            if surface == "messages"
            else responses.request_to_canonical
        )
        try:
            request = convert(payload)
        except canonical.TranslationError as exc:
            raise errors.invalid_request(str(exc), param=exc.param) from None
        counted = await _count_locally(request)
        if surface == "messages":
            out: dict[str, Any] = {"input_tokens": counted}
        else:
            out = {"object": "response.input_tokens", "input_tokens": counted}
        await exchange.respond_json(200, orjson.dumps(out))
    finally:
        # Nothing here is admitted: only a large body's pre-admission is to be freed.
        await intake_release(exchange, key, taken.pre)
