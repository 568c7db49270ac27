"""Azure OpenAI's deployments as the simulator speaks them: ``api-key``, a known
``api-version`` and a known deployment; the answer itself is the simulator's chat one.

A version older than 2024-09-01-preview refuses the request fields it predates
(``stream_options``, ``max_completion_tokens``) as Azure does: as unrecognized arguments."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import orjson

from relay.simulator.native.common import header, query
from relay.simulator.options import OptionError, SimOptions

if TYPE_CHECKING:
    from relay.simulator.app import SimulatorApp
    from relay.simulator.exchange import SimExchange


# The first api-version (by date) with each field; older versions call it unrecognized.
NEWER_FIELDS = {"stream_options": "2024-09-01", "max_completion_tokens": "2024-09-01"}


async def error(exchange: SimExchange, status: int, code: str, message: str) -> None:
    await exchange.respond_json(status, {"error": {"code": code, "message": message}})


def unrecognized(version: str, raw: bytes) -> str | None:
    """The first field of the body that ``version`` predates; None if it takes them all."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(body, dict):
        return None
    return next((f for f, since in NEWER_FIELDS.items() if f in body and version < since), None)


async def handle(
    app: SimulatorApp,
    scope: Mapping[str, Any],
    exchange: SimExchange,
    options: SimOptions | OptionError,
    deployment: str,
) -> None:
    trust = app.native
    key = header(scope, "api-key")
    option_key = options.key if isinstance(options, SimOptions) else None
    if not trust.key_ok(trust.azure_keys, key, option_key):
        await exchange.read_body()
        await error(
            exchange,
            401,
            "401",
            "Access denied due to invalid subscription key or wrong API endpoint. Make sure "
            "to provide a valid key for an active subscription and use a correct regional "
            "API endpoint for your resource.",
        )
        return
    version = query(scope).get("api-version") or ""
    if version not in trust.azure_api_versions:
        await exchange.read_body()
        await error(exchange, 404, "404", "Resource not found")
        return
    if version[:10] < max(NEWER_FIELDS.values()):
        raw = await exchange.read_body()
        if (field := unrecognized(version[:10], raw)) is not None:
            refused = {
                "code": None,
                "message": f"Unrecognized request argument supplied: {field}",
                "param": None,
                "type": "invalid_request_error",
            }
            await exchange.respond_json(400, {"error": refused})
            return
    name = unquote(deployment)
    known = trust.azure_known()
    if known and name not in known:
        await exchange.read_body()
        await error(
            exchange,
            404,
            "DeploymentNotFound",
            f"The API deployment {name} for this resource does not exist.",
        )
        return
    # The chat simulator answers from here on; it expects the key as a bearer token.
    headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"authorization"]
    headers.append((b"authorization", b"Bearer " + key.encode("latin-1")))
    headers.append((b"x-sim-deployment", orjson.dumps(name)))
    # The request log shows the query string too, since Azure's api-version lives there.
    logged = scope["path"] + "?" + scope.get("query_string", b"").decode("latin-1")
    rewritten = {**scope, "headers": headers, "path": logged}
    await app._serve(rewritten, exchange, "", options, app._answers["chat"], counted=True)
