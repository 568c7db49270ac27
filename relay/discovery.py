"""Model discovery: ask a channel's provider which models it offers.

Where the provider lists its models: OpenAI-compatible endpoints (``GET {base}/models``),
Anthropic (``GET /v1/models``, paginated by ``after_id``) and the Gemini API
(``GET /v1beta/models``, paginated by ``pageToken``; only models that can
``generateContent``). Vertex AI, Bedrock and Azure OpenAI list models through their
management planes, with other credentials than a channel holds, so their channels name
their models (Azure: its deployment map). Called from the dashboard and the API, never on
the relay's hot path; errors come back redacted, never raised.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from portal import redaction
from portal.models import Channel
from relay.providers.anthropic import API_VERSION as ANTHROPIC_VERSION
from relay.providers.anthropic import DEFAULT_BASE_URL as ANTHROPIC_URL
from relay.providers.gemini import API_VERSION as GEMINI_VERSION
from relay.providers.gemini import DEFAULT_BASE_URL as GEMINI_URL

TIMEOUT_SECONDS = 20.0
MAX_PAGES = 20
MAX_MODELS = 2000
DISCOVERABLE = frozenset({"openai", "anthropic", "gemini"})


@dataclass(frozen=True, slots=True)
class Discovery:
    ok: bool
    models: list[str] = field(default_factory=list)  # upstream names, sorted
    error: str = ""
    latency_ms: int = 0


class _Refused(Exception):
    pass


def _get(client: httpx.Client, url: str, headers: dict[str, str], params: dict[str, str]) -> Any:
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


_LISTERS: dict[str, Callable[[httpx.Client, Channel], Iterator[str]]] = {
    "openai": _openai,
    "anthropic": _anthropic,
    "gemini": _gemini,
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
        error = redaction.redact(text, (channel.secret,))[:400]
        return Discovery(False, error=error, latency_ms=_ms(started))
    return Discovery(True, sorted(found), latency_ms=_ms(started))


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
