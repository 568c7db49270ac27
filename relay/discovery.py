"""Model discovery: ask a channel's provider which models it offers, with the channel's
own credentials.

- OpenAI-compatible: ``GET {base}/models``.
- Anthropic: ``GET /v1/models``, paginated by ``after_id``.
- Gemini API: ``GET /v1beta/models``, paginated by ``pageToken``; only models that can
  ``generateContent``.
- Bedrock: the control plane of the channel's region (``bedrock.{region}.amazonaws.com``),
  SigV4-signed with the channel's access key (IAM actions ``bedrock:ListFoundationModels``
  and ``bedrock:ListInferenceProfiles``). Offered: foundation models with text output that
  are invocable on demand, and active inference profiles (``us.anthropic...``: the way
  many models must be called; an account's application profiles by ARN) whose every
  model has text output. Embedding, image and
  provisioned-only models are left out.
- Vertex AI: ``GET /v1beta1/publishers/google/models`` (ListPublisherModels, paginated by
  ``pageToken``) with the service account's token. The listing does not say which methods
  a model answers, so only ``gemini-*`` models, which answer ``generateContent``, are
  offered, less embedding, live, speech and image ones. Other publishers (Anthropic on
  Vertex) are not listed: a Vertex channel calls Google's publisher only.
- Azure OpenAI: a channel calls deployments, so discovery lists the resource's
  deployments (``GET /openai/deployments``, ``api-version`` 2022-12-01, the last GA
  data-plane version with that list) and offers the name the channel serves each by: the public
  names the deployment map sends to it, else the deployment's own name. Deployments of
  models that cannot chat (by ``GET /openai/models``' capabilities) are left out. Azure
  has retired that list for many resources (it moved to the management plane, which an
  API key cannot call); then discovery says so and the channel names its models.

Called from the dashboard and the API, never on the relay's hot path; errors come back
redacted, never raised.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

import httpx
from asgiref.sync import async_to_sync

from portal import redaction
from portal.models import Channel
from relay.providers.anthropic import API_VERSION as ANTHROPIC_VERSION
from relay.providers.anthropic import DEFAULT_BASE_URL as ANTHROPIC_URL
from relay.providers.azure import AzureAdapter
from relay.providers.bedrock import BedrockAdapter
from relay.providers.bedrock_auth import sign
from relay.providers.gemini import API_VERSION as GEMINI_VERSION
from relay.providers.gemini import DEFAULT_BASE_URL as GEMINI_URL
from relay.providers.registry import adapter_for
from relay.providers.vertex import VertexAdapter
from relay.providers.vertex_auth import TokenFetchFailed

TIMEOUT_SECONDS = 20.0
MAX_PAGES = 20
MAX_MODELS = 2000
DISCOVERABLE = frozenset({"openai", "anthropic", "gemini", "bedrock", "vertex", "azure"})
SECRET_FIELDS = ("secret_access_key", "session_token", "private_key", "private_key_id")
# Vertex model ids with one of these words do not generate text with generateContent.
VERTEX_NOT_TEXT = frozenset({"embedding", "live", "tts", "image", "audio"})
# The last GA data-plane api-version that lists an Azure resource's deployments.
AZURE_DEPLOYMENTS_API_VERSION = "2022-12-01"


@dataclass(frozen=True, slots=True)
class Discovery:
    ok: bool
    # The names the channel sends them by (Azure: before its deployment map), sorted.
    models: list[str] = field(default_factory=list)
    error: str = ""
    latency_ms: int = 0


class _Refused(Exception):
    pass


def _get(
    client: httpx.Client, url: str, headers: dict[str, str], params: dict[str, str] | None
) -> Any:
    # params None keeps a query string already in ``url`` (a signed one must stay as it is).
    response = client.get(url, headers=headers, params=params)
    if response.status_code >= 400:
        raise _Refused(f"the provider answered HTTP {response.status_code}: {response.text[:300]}")
    return response.json()


def _openai(client: httpx.Client, channel: Channel) -> Iterator[str]:
    body = _get(
        client,
        channel.base_url.rstrip("/") + "/models",
        {"authorization": f"Bearer {channel.secret}"},
        {},
    )
    for item in body.get("data") or ():
        yield str(item["id"])


def _anthropic(client: httpx.Client, channel: Channel) -> Iterator[str]:
    url = (channel.base_url or ANTHROPIC_URL).rstrip("/") + "/v1/models"
    headers = {"x-api-key": channel.secret, "anthropic-version": ANTHROPIC_VERSION}
    params = {"limit": "1000"}
    for _ in range(MAX_PAGES):
        body = _get(client, url, headers, params)
        for item in body.get("data") or ():
            yield str(item["id"])
        if not body.get("has_more") or not body.get("last_id"):
            return
        params = {"limit": "1000", "after_id": str(body["last_id"])}


def _gemini(client: httpx.Client, channel: Channel) -> Iterator[str]:
    url = f"{(channel.base_url or GEMINI_URL).rstrip('/')}/{GEMINI_VERSION}/models"
    headers = {"x-goog-api-key": channel.secret}
    params = {"pageSize": "1000"}
    for _ in range(MAX_PAGES):
        body = _get(client, url, headers, params)
        for item in body.get("models") or ():
            if "generateContent" in (item.get("supportedGenerationMethods") or ()):
                yield str(item["name"]).removeprefix("models/")
        token = body.get("nextPageToken")
        if not token:
            return
        params = {"pageSize": "1000", "pageToken": str(token)}


def _adapter(channel: Channel) -> Any:
    return adapter_for(
        channel.provider_type,
        base_url=channel.base_url,
        secret=channel.secret,
        settings=channel.provider_settings,
    )


def _bedrock(client: httpx.Client, channel: Channel) -> Iterator[str]:
    adapter = _adapter(channel)
    assert isinstance(adapter, BedrockAdapter)
    credentials = adapter.config.credentials
    root = bedrock_control_root(adapter.config.base_url, credentials.region)

    def signed_get(path: str, params: dict[str, str]) -> Any:
        # Encoded the way SigV4's canonical query expects, so the signature covers it as sent.
        url = f"{root}{path}?{urlencode(sorted(params.items()), quote_via=quote, safe='')}"
        headers = sign(credentials, method="GET", url=url, headers={}, body=b"")
        return _get(client, url, headers, None)

    text_models: set[str] = set()
    for summary in signed_get("/foundation-models", {}).get("modelSummaries") or ():
        if "TEXT" not in (summary.get("outputModalities") or ()):
            continue
        text_models.add(str(summary["modelId"]))
        if "ON_DEMAND" in (summary.get("inferenceTypesSupported") or ()):
            yield str(summary["modelId"])
    params = {"maxResults": "1000"}
    for _ in range(MAX_PAGES):
        body = signed_get("/inference-profiles", params)
        for profile in body.get("inferenceProfileSummaries") or ():
            models = [str(m.get("modelArn", "")).rsplit("/", 1)[-1] for m in profile["models"]]
            if profile.get("status") == "ACTIVE" and models and set(models) <= text_models:
                # An account's own (application) profile has an opaque id: offer its ARN,
                # which Converse takes as it takes an id, and which says what it is.
                key = "inferenceProfileArn" if profile.get("type") == "APPLICATION" else ""
                yield str(profile[key or "inferenceProfileId"])
        if not body.get("nextToken"):
            return
        params = {"maxResults": "1000", "nextToken": str(body["nextToken"])}


def bedrock_control_root(base_url: str, region: str) -> str:
    """Bedrock's control plane for a channel whose base URL is its runtime's: the runtime's
    public host becomes the control plane's; any other base URL (a proxy, the simulator)
    is taken to serve both."""
    if not base_url:
        return f"https://bedrock.{region}.amazonaws.com"
    return base_url.rstrip("/").replace("://bedrock-runtime", "://bedrock", 1)


def _vertex(client: httpx.Client, channel: Channel) -> Iterator[str]:
    adapter = _adapter(channel)
    assert isinstance(adapter, VertexAdapter)
    try:
        token = async_to_sync(adapter.tokens.token)()
    except TokenFetchFailed as exc:
        raise _Refused(f"The service account could not get a token: {exc}") from None
    url = adapter.config.root() + "/v1beta1/publishers/google/models"
    headers = {"authorization": f"Bearer {token}"}
    params = {"pageSize": "1000"}
    for _ in range(MAX_PAGES):
        body = _get(client, url, headers, params)
        for item in body.get("publisherModels") or ():
            name = str(item["name"]).rsplit("/", 1)[-1]
            if name.startswith("gemini-") and not VERTEX_NOT_TEXT & set(name.split("-")):
                yield name
        page = body.get("nextPageToken")
        if not page:
            return
        params = {"pageSize": "1000", "pageToken": str(page)}


def _azure(client: httpx.Client, channel: Channel) -> Iterator[str]:
    adapter = _adapter(channel)
    assert isinstance(adapter, AzureAdapter)
    config = adapter.config
    headers = {"api-key": config.api_key}
    url = config.endpoint() + "/openai/deployments"
    response = client.get(
        url, headers=headers, params={"api-version": AZURE_DEPLOYMENTS_API_VERSION}
    )
    if response.status_code == 404:
        raise _Refused(
            "This Azure resource does not list its deployments to an API key (Azure moved "
            "that list to its management plane, which needs Microsoft Entra credentials). "
            "Name the models the channel serves, with the deployment map where a name "
            "differs from its deployment."
        )
    if response.status_code >= 400:
        raise _Refused(f"the provider answered HTTP {response.status_code}: {response.text[:300]}")
    deployments = [
        item
        for item in response.json().get("data") or ()
        if item.get("status", "succeeded") == "succeeded"
    ]
    listed = _get(
        client, config.endpoint() + "/openai/models", headers, {"api-version": config.api_version}
    )
    cannot_chat = {
        str(model["id"])
        for model in listed.get("data") or ()
        if not (model.get("capabilities") or {}).get("chat_completion")
    }
    served_as: dict[str, list[str]] = defaultdict(list)
    for public, deployment in config.deployments.items():
        served_as[deployment].append(public)
    for item in deployments:
        deployment = str(item["id"])
        if str(item.get("model", "")) in cannot_chat:
            continue
        if served_as.get(deployment):
            yield from served_as[deployment]
        elif config.deployment(deployment) == deployment:  # not mapped elsewhere
            yield deployment


_LISTERS: dict[str, Callable[[httpx.Client, Channel], Iterator[str]]] = {
    "openai": _openai,
    "anthropic": _anthropic,
    "gemini": _gemini,
    "bedrock": _bedrock,
    "vertex": _vertex,
    "azure": _azure,
}


def channel_models_discover(channel: Channel) -> Discovery:
    """The models ``channel``'s provider lists now, by the names it knows them by."""
    lister = _LISTERS.get(channel.provider_type)
    if lister is None:
        return Discovery(
            False,
            error=f"{channel.get_provider_type_display()} does not list its models to a "
            "channel's credentials; name the models the channel serves.",
        )
    problem = channel.configuration_problem()
    if problem:
        return Discovery(False, error=f"Not usable: {problem}")
    started = time.monotonic()
    found: set[str] = set()
    try:
        with httpx.Client(timeout=TIMEOUT_SECONDS, trust_env=False) as client:
            for name in lister(client, channel):
                found.add(name)
                if len(found) >= MAX_MODELS:
                    break
    except (_Refused, httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError) as exc:
        text = str(exc) if isinstance(exc, _Refused) else f"{type(exc).__name__}: {exc}"
        error = redaction.redact(text, _secrets(channel))[:400]
        return Discovery(False, error=error, latency_ms=_ms(started))
    return Discovery(True, sorted(found), latency_ms=_ms(started))


def _secrets(channel: Channel) -> tuple[str, ...]:
    """The channel's secret, and the secret fields of a JSON one (an AWS secret key, a
    private key), which an error could quote on their own."""
    secret = channel.secret
    try:
        parsed = json.loads(secret)
    except ValueError:
        return (secret,)
    if not isinstance(parsed, dict):
        return (secret,)
    return (secret, *(str(parsed[name]) for name in SECRET_FIELDS if parsed.get(name)))


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
