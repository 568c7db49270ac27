"""The cloud providers' model listings, for the relay's model discovery, each behind the
credential check its provider applies to inference:

- Bedrock's control plane: ``GET /foundation-models`` (ListFoundationModels, one page) and
  ``GET /inference-profiles`` (ListInferenceProfiles, paginated by ``nextToken``), SigV4
  signatures recomputed with botocore as for Converse.
- Vertex AI: ``GET /v1beta1/publishers/google/models`` (ListPublisherModels, paginated by
  ``pageToken``), only for bearer tokens this simulator issued to a trusted account.
- Azure OpenAI: ``GET /openai/deployments`` (the data-plane list of ``api-version``
  2022-12-01, which Azure has retired for newer versions) and ``GET /openai/models``,
  with the ``api-key`` header.

Each catalog holds a few models that discovery must leave out (embeddings, images,
provisioned-only, models that need a profile), so its filters are exercised.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from relay.simulator.native import azure, bedrock, google
from relay.simulator.native.common import header, query, read_request
from relay.simulator.options import OptionError, SimOptions

if TYPE_CHECKING:
    from relay.simulator.app import SimulatorApp
    from relay.simulator.exchange import SimExchange

PAGE_SIZE = 2  # small, so the relay follows page tokens
AZURE_DEPLOYMENTS_API_VERSION = "2022-12-01"
CREATED = 1_735_689_600  # 2025-01-01

# (modelId, output modalities, inference types): what ListFoundationModels reports.
BEDROCK_MODELS: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("amazon.nova-micro-v1:0", ("TEXT",), ("ON_DEMAND",)),
    ("anthropic.claude-sim-v1:0", ("TEXT",), ("INFERENCE_PROFILE",)),  # through a profile only
    ("amazon.titan-embed-text-v2:0", ("EMBEDDING",), ("ON_DEMAND",)),
    ("amazon.nova-canvas-v1:0", ("IMAGE",), ("ON_DEMAND",)),
    ("meta.llama-sim-provisioned-v1:0", ("TEXT",), ("PROVISIONED",)),
)
# (inferenceProfileId, the foundation models it routes to, type): application profiles
# are an account's own, with opaque ids.
BEDROCK_PROFILES: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("us.amazon.nova-canvas-v1:0", ("amazon.nova-canvas-v1:0",), "SYSTEM_DEFINED"),
    ("us.amazon.nova-micro-v1:0", ("amazon.nova-micro-v1:0",), "SYSTEM_DEFINED"),
    ("us.anthropic.claude-sim-v1:0", ("anthropic.claude-sim-v1:0",), "SYSTEM_DEFINED"),
    ("simteamprofile1", ("amazon.nova-micro-v1:0",), "APPLICATION"),
)
AWS_ACCOUNT = "111122223333"
VERTEX_MODELS = (
    "gemini-2.5-flash",
    "gemini-2.5-pro",
    "gemini-embedding-001",
    "gemini-live-2.5-flash",
    "gemma-3-27b-it",
    "imagen-4.0-generate-001",
)
# Base models Azure says the resource can use, and whether they do chat completions.
AZURE_MODELS = {"gpt-4o": True, "gpt-4o-mini": True, "text-embedding-3-small": False}


def _page(items: list[Any], token: str | None, size: int) -> tuple[list[Any], str | None]:
    """One page. Tokens hold an offset among characters a query string must encode (as
    AWS's and Google's opaque tokens do), so a client that sends or signs them unencoded
    is caught."""
    digits = "".join(ch for ch in token or "" if ch.isdigit())
    start = int(digits) if digits else 0
    end = start + size
    return items[start:end], (f"p/{end}+=" if end < len(items) else None)


async def bedrock_listing(
    app: SimulatorApp,
    scope: Mapping[str, Any],
    exchange: SimExchange,
    options: SimOptions | OptionError,
    what: str,
) -> None:
    raw, _ = await read_request(app, scope, exchange)
    if isinstance(options, OptionError):
        await bedrock.error(exchange, 400, "ValidationException", str(options))
        return
    refused = bedrock.verify_signature(app, scope, raw)
    if refused is not None:
        await bedrock.error(exchange, *refused)
        return
    arn = "arn:aws:bedrock:{}::foundation-model/{}"
    region = app.native.aws_keys[_access_key(scope)][1]
    if what == "foundation-models":
        summaries = [
            {
                "modelArn": arn.format(region, model),
                "modelId": model,
                "providerName": model.split(".", 1)[0],
                "inputModalities": ["TEXT"],
                "outputModalities": list(outputs),
                "responseStreamingSupported": "TEXT" in outputs,
                "inferenceTypesSupported": list(kinds),
                "modelLifecycle": {"status": "ACTIVE"},
            }
            for model, outputs, kinds in BEDROCK_MODELS
        ]
        await exchange.respond_json(200, {"modelSummaries": summaries})
        return
    params = query(scope)
    size = min(int(params.get("maxResults") or PAGE_SIZE), PAGE_SIZE)
    chunk, token = _page(list(BEDROCK_PROFILES), params.get("nextToken"), size)
    profiles = [
        {
            "inferenceProfileId": profile,
            "inferenceProfileName": profile,
            "inferenceProfileArn": _profile_arn(region, profile, kind),
            "models": [{"modelArn": arn.format(region, model)} for model in models],
            "status": "ACTIVE",
            "type": kind,
        }
        for profile, models, kind in chunk
    ]
    body: dict[str, Any] = {"inferenceProfileSummaries": profiles}
    if token:
        body["nextToken"] = token
    await exchange.respond_json(200, body)


def _profile_arn(region: str, profile: str, kind: str) -> str:
    if kind == "APPLICATION":
        return f"arn:aws:bedrock:{region}:{AWS_ACCOUNT}:application-inference-profile/{profile}"
    return f"arn:aws:bedrock:{region}:{AWS_ACCOUNT}:inference-profile/{profile}"


def _access_key(scope: Mapping[str, Any]) -> str:
    credential = header(scope, "authorization").split("Credential=", 1)[1]
    return credential.split("/", 1)[0]


async def vertex_models(app: SimulatorApp, scope: Mapping[str, Any], exchange: SimExchange) -> None:
    await read_request(app, scope, exchange)
    scheme, _, token = header(scope, "authorization").partition(" ")
    account = app.native.token_account(token.strip()) if scheme.lower() == "bearer" else None
    if account is None:
        await google.error(
            exchange,
            401,
            "Request had invalid authentication credentials. Expected OAuth 2 access token, "
            "login cookie or other valid authentication credential.",
            reason="ACCESS_TOKEN_TYPE_UNSUPPORTED" if not token else "ACCESS_TOKEN_EXPIRED",
        )
        return
    params = query(scope)
    size = min(int(params.get("pageSize") or PAGE_SIZE), PAGE_SIZE)
    chunk, next_token = _page(list(VERTEX_MODELS), params.get("pageToken"), size)
    models = [
        {
            "name": f"publishers/google/models/{model}",
            "versionId": "001",
            "openSourceCategory": "GOOGLE_OWNED_OSS"
            if model.startswith("gemma")
            else "PROPRIETARY",
            "launchStage": "GA",
        }
        for model in chunk
    ]
    body: dict[str, Any] = {"publisherModels": models}
    if next_token:
        body["nextPageToken"] = next_token
    await exchange.respond_json(200, body)


async def azure_listing(
    app: SimulatorApp,
    scope: Mapping[str, Any],
    exchange: SimExchange,
    options: SimOptions | OptionError,
    what: str,
) -> None:
    await read_request(app, scope, exchange)
    trust = app.native
    option_key = options.key if isinstance(options, SimOptions) else None
    if not trust.key_ok(trust.azure_keys, header(scope, "api-key"), option_key):
        await azure.error(exchange, 401, "401", "Access denied due to invalid subscription key.")
        return
    version = query(scope).get("api-version")
    if what == "deployments":
        listed = trust.azure_lists_deployments and version == AZURE_DEPLOYMENTS_API_VERSION
        if not listed:
            await azure.error(exchange, 404, "404", "Resource not found")
            return
        names = sorted(trust.azure_deployments | set(trust.azure_deployment_models))
        data = [
            {
                "id": name,
                "model": trust.azure_deployment_models.get(name, name),
                "status": "succeeded",
                "object": "deployment",
                "owner": "organization-owner",
                "scale_settings": {"scale_type": "standard"},
                "created_at": CREATED,
                "updated_at": CREATED,
            }
            for name in names
        ]
        await exchange.respond_json(200, {"data": data, "object": "list"})
        return
    if version not in trust.azure_api_versions:
        await azure.error(exchange, 404, "404", "Resource not found")
        return
    models = [
        {
            "id": model,
            "status": "succeeded",
            "capabilities": {
                "chat_completion": chat,
                "completion": False,
                "embeddings": not chat,
                "fine_tune": False,
                "inference": True,
            },
            "lifecycle_status": "generally-available",
            "created_at": CREATED,
            "object": "model",
        }
        for model, chat in AZURE_MODELS.items()
    ]
    await exchange.respond_json(200, {"data": models, "object": "list"})
