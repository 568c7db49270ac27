"""Model listings in each provider's own shape, for the relay's model discovery:
Anthropic's ``GET /v1/models`` (``x-api-key``, paginated with ``after_id``) and Gemini's
``GET /v1beta/models`` (``x-goog-api-key``, paginated with ``pageToken``). OpenAI's
``GET /v1/models`` is the simulator's own (``relay.simulator.app``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from relay.simulator.exchange import anthropic_error
from relay.simulator.native.common import header, query
from relay.simulator.options import OptionError, SimOptions

if TYPE_CHECKING:
    from relay.simulator.app import SimulatorApp
    from relay.simulator.exchange import SimExchange

# Small pages, so the relay's pagination is exercised by the two default models.
PAGE_SIZE = 1
CREATED_AT = "2025-01-01T00:00:00Z"


def _option_key(options: SimOptions | OptionError) -> str | None:
    return options.key if isinstance(options, SimOptions) else None


def _page(names: list[str], after: str | None) -> tuple[list[str], bool]:
    start = names.index(after) + 1 if after in names else 0
    chunk = names[start : start + PAGE_SIZE]
    return chunk, start + PAGE_SIZE < len(names)


async def anthropic_models(
    app: SimulatorApp, scope: Mapping[str, Any], exchange: SimExchange, options: Any
) -> None:
    key = header(scope, "x-api-key")
    if not app.native.key_ok(set(), key, _option_key(options)):
        await exchange.respond_json(401, anthropic_error(401, "invalid x-api-key"))
        return
    chunk, more = _page(app.models, query(scope).get("after_id"))
    data = [
        {"type": "model", "id": name, "display_name": name, "created_at": CREATED_AT}
        for name in chunk
    ]
    await exchange.respond_json(
        200,
        {
            "data": data,
            "has_more": more,
            "first_id": chunk[0] if chunk else None,
            "last_id": chunk[-1] if chunk else None,
        },
    )


async def gemini_models(
    app: SimulatorApp, scope: Mapping[str, Any], exchange: SimExchange, options: Any
) -> None:
    key = header(scope, "x-goog-api-key")
    if not app.native.key_ok(app.native.gemini_keys, key, _option_key(options)):
        error = {"code": 400, "message": "API key not valid.", "status": "INVALID_ARGUMENT"}
        await exchange.respond_json(400, {"error": error})
        return
    token = query(scope).get("pageToken")
    chunk, more = _page(app.models, token)
    models = [
        {
            "name": f"models/{name}",
            "displayName": name,
            "supportedGenerationMethods": ["generateContent", "countTokens"],
        }
        for name in chunk
    ]
    # An embedding model, which discovery leaves out: it cannot generate content.
    if not more:
        models.append(
            {"name": "models/sim-embedding", "supportedGenerationMethods": ["embedContent"]}
        )
    body: dict[str, Any] = {"models": models}
    if more:
        body["nextPageToken"] = chunk[-1]
    await exchange.respond_json(200, body)
