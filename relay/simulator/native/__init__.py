"""The simulator's native provider protocols: Gemini and Vertex AI ``generateContent``
(with Google's OAuth token endpoint), Bedrock Converse and ConverseStream, Azure OpenAI
deployments, and each provider's model listing (``listing``, ``cloud_listing``).
(Anthropic's Messages API is the simulator's ``/v1/messages`` surface, in
``relay.simulator.anthropic``.)

Each checks its credential for real: keys against the ones it was told to trust, SigV4
signatures recomputed with botocore, Vertex bearer tokens only if this simulator issued
them to a service account whose public key it trusts. Tests register credentials with
``app.native`` (a ``NativeTrust``); behaviour prefixes (``/sim/<options>/...``) apply as
they do to chat completions.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from relay.simulator.native.trust import NativeTrust

if TYPE_CHECKING:
    from relay.simulator.app import SimulatorApp
    from relay.simulator.exchange import SimExchange
    from relay.simulator.options import OptionError, SimOptions

__all__ = ["NativeTrust", "dispatch"]

_GEMINI = re.compile(r"^/v1beta/models/(?P<model>[^/:]+):(?P<method>\w+)$")
_VERTEX = re.compile(
    r"^/v1/projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)"
    r"/publishers/google/models/(?P<model>[^/:]+):(?P<method>\w+)$"
)
# Matched on the path as sent (still percent-encoded), as AWS routes it: an ARN's '/'
# travels as %2F, and a ':' sent bare instead of %3A fails the signature check.
_BEDROCK = re.compile(r"^/model/(?P<model>[^/]+)/(?P<action>converse|converse-stream)$")
_AZURE = re.compile(r"^/openai/deployments/(?P<deployment>[^/]+)/chat/completions$")
_BEDROCK_LISTINGS = ("/foundation-models", "/inference-profiles")
_AZURE_LISTINGS = ("/openai/deployments", "/openai/models")


def raw_rest(scope: Mapping[str, Any], path: str) -> str:
    """``path`` (the request's path after any ``/sim/<options>`` prefix, decoded) as it
    came on the wire, percent-escapes kept."""
    raw = scope.get("raw_path")
    if not raw:
        return path
    text = raw.decode("latin-1").split("?", 1)[0]
    if text.startswith("/sim/"):
        text = "/" + text[len("/sim/") :].partition("/")[2]
    return text


async def dispatch(
    app: SimulatorApp,
    scope: Mapping[str, Any],
    exchange: SimExchange,
    path: str,
    options: SimOptions | OptionError,
) -> bool:
    """Answer ``path`` if it is a native provider's; False if it is not one of them."""
    from relay.simulator.native import azure, bedrock, cloud_listing, google, listing

    listing_call = scope["method"] == "GET"
    if path == "/v1beta/models" and listing_call:
        await listing.gemini_models(app, scope, exchange, options)
    elif path in _BEDROCK_LISTINGS and listing_call:
        await cloud_listing.bedrock_listing(app, scope, exchange, options, path[1:])
    elif path == "/v1beta1/publishers/google/models" and listing_call:
        await cloud_listing.vertex_models(app, scope, exchange)
    elif path in _AZURE_LISTINGS and listing_call:
        await cloud_listing.azure_listing(app, scope, exchange, options, path.rsplit("/", 1)[1])
    elif path == "/oauth2/token":
        await google.token_endpoint(app, scope, exchange, options)
    elif match := _GEMINI.match(path):
        await google.handle(app, scope, exchange, options, match.groupdict(), vertex=False)
    elif match := _VERTEX.match(path):
        await google.handle(app, scope, exchange, options, match.groupdict(), vertex=True)
    elif match := _BEDROCK.match(raw_rest(scope, path)):
        await bedrock.handle(app, scope, exchange, options, match.groupdict())
    elif match := _AZURE.match(path):
        await azure.handle(app, scope, exchange, options, match["deployment"])
    else:
        return False
    return True
