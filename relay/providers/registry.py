"""From a channel's provider type, base URL, secret and settings to its adapter.

Channels store what ``portal.models.provider_settings`` checks; this module turns it
into adapter configurations. A channel whose stored values no longer make an adapter
raises ``ValueError``, which callers treat as a broken channel, never a broken relay.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from relay.providers.anthropic import DEFAULT_BASE_URL as ANTHROPIC_URL
from relay.providers.anthropic import AnthropicAdapter, AnthropicConfig
from relay.providers.azure import DEFAULT_API_VERSION, AzureAdapter, AzureConfig
from relay.providers.base import Adapter
from relay.providers.bedrock import BedrockAdapter, BedrockConfig
from relay.providers.bedrock_auth import AwsCredentials
from relay.providers.gemini import DEFAULT_BASE_URL as GEMINI_URL
from relay.providers.gemini import GeminiAdapter, GeminiConfig
from relay.providers.openai import OpenAIAdapter, OpenAIConfig
from relay.providers.vertex import VertexAdapter, VertexConfig


def _json(secret: str) -> dict[str, Any]:
    try:
        parsed = json.loads(secret)
    except ValueError:
        raise ValueError("the channel's secret is not JSON") from None
    if not isinstance(parsed, dict):
        raise ValueError("the channel's secret is not a JSON object")
    return parsed


def adapter_for(
    provider_type: str, *, base_url: str, secret: str, settings: Mapping[str, Any]
) -> Adapter:
    """The adapter for one channel; raises ValueError if its configuration cannot work."""
    if provider_type == "openai":
        if not base_url:
            raise ValueError("an OpenAI-compatible channel needs a base URL")
        return OpenAIAdapter(OpenAIConfig(api_key=secret, base_url=base_url))
    if provider_type == "anthropic":
        return AnthropicAdapter(AnthropicConfig(api_key=secret, base_url=base_url or ANTHROPIC_URL))
    if provider_type == "gemini":
        return GeminiAdapter(GeminiConfig(api_key=secret, base_url=base_url or GEMINI_URL))
    if provider_type == "vertex":
        config = VertexConfig(
            service_account=_json(secret),
            location=str(settings.get("location") or "us-central1"),
            project=str(settings.get("project") or ""),
            base_url=base_url,
        )
        return VertexAdapter(config)
    if provider_type == "bedrock":
        keys = _json(secret)
        credentials = AwsCredentials(
            access_key_id=str(keys.get("access_key_id") or ""),
            secret_access_key=str(keys.get("secret_access_key") or ""),
            region=str(settings.get("region") or ""),
            session_token=keys.get("session_token") or None,
        )
        if not credentials.access_key_id or not credentials.region:
            raise ValueError("a Bedrock channel needs an access key and a region")
        return BedrockAdapter(BedrockConfig(credentials, base_url=base_url))
    if provider_type == "azure":
        deployments = settings.get("deployments") or {}
        return AzureAdapter(
            AzureConfig(
                api_key=secret,
                resource=base_url or str(settings.get("resource") or ""),
                deployments={str(k): str(v) for k, v in dict(deployments).items()},
                api_version=str(settings.get("api_version") or DEFAULT_API_VERSION),
            )
        )
    raise ValueError(f"unknown provider type {provider_type!r}")
