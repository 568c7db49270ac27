"""Vertex AI's Gemini models: ``generateContent`` under a project and location, with a
service account's OAuth bearer token (``relay.providers.vertex_auth``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from relay.providers import google
from relay.providers.base import GOOGLE_PROJECT, FailureKind, Identity, ProviderFailure, host
from relay.providers.vertex_auth import (
    TokenEndpointUnavailable,
    TokenFetchFailed,
    VertexTokenSource,
    token_source,
)

# What a service account's key file says about the account, beside its private key.
ACCOUNT_NAMES = ("project_id", "private_key_id", "client_email", "client_id")


@dataclasses.dataclass(frozen=True, slots=True)
class VertexConfig:
    service_account: Mapping[str, Any]
    location: str = "us-central1"
    project: str = ""  # blank: the service account's own project
    base_url: str = ""  # blank: Google's endpoint for the location

    def project_id(self) -> str:
        return self.project or str(self.service_account.get("project_id") or "")

    def root(self) -> str:
        if self.base_url:
            return self.base_url.rstrip("/")
        if self.location == "global":
            return "https://aiplatform.googleapis.com"
        return f"https://{self.location}-aiplatform.googleapis.com"

    def url(self, model: str, *, stream: bool) -> str:
        method = "streamGenerateContent?alt=sse" if stream else "generateContent"
        return (
            f"{self.root()}/v1/projects/{quote(self.project_id(), safe='')}"
            f"/locations/{quote(self.location, safe='')}"
            f"/publishers/google/models/{quote(model, safe='')}:{method}"
        )


class VertexAdapter(google.GoogleAdapter):
    provider_type = "vertex"

    def __init__(self, config: VertexConfig, tokens: VertexTokenSource | None = None) -> None:
        self.config = config
        self.tokens = tokens or token_source(config.service_account)

    def url(self, model: str, *, stream: bool) -> str:
        return self.config.url(model, stream=stream)

    async def auth_headers(self) -> dict[str, str]:
        token = await self.tokens.token()  # raises TokenFetchFailed: see credentials_failure
        return {"authorization": f"Bearer {token}"}

    def identity(self, upstream_model: str) -> Identity:
        account = self.config.service_account
        return Identity(
            secrets=(str(account.get("private_key") or ""),),
            names=(
                self.config.project_id(),
                *(str(account.get(key) or "") for key in ACCOUNT_NAMES),
                host(self.config.root()),
            ),
            patterns=(GOOGLE_PROJECT,),
        )


def credentials_failure(exc: TokenFetchFailed) -> ProviderFailure:
    """What a failed token fetch says about the channel. A refused service account is its
    credentials. An unreachable or failing token endpoint is an outage, like a provider's
    own 5xx: fail over and count it against the breaker, but do not suspend the channel,
    whose account is fine and would stay suspended long after the endpoint recovered."""
    if isinstance(exc, TokenEndpointUnavailable):
        return ProviderFailure(
            FailureKind.RETRYABLE,
            503,
            f"The Vertex AI token endpoint could not give a token: {exc}",
            type="server_error",
            code="upstream_error",
        )
    return ProviderFailure(
        FailureKind.CREDENTIALS,
        502,
        f"The Vertex AI service account could not get a token: {exc}",
        type="server_error",
        code="upstream_auth_failed",
    )
