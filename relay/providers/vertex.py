"""Vertex AI's Gemini models: ``generateContent`` under a project and location, with a
service account's OAuth bearer token (``relay.providers.vertex_auth``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from relay.providers import google
from relay.providers.base import (
    FailureKind,
    ProviderFailure,
    UpstreamRequest,
)
from relay.providers.vertex_auth import TokenFetchFailed, VertexTokenSource, token_source
from relay.translate import canonical as c


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


class VertexAdapter:
    provider_type = "vertex"

    def __init__(self, config: VertexConfig, tokens: VertexTokenSource | None = None) -> None:
        self.config = config
        self.tokens = tokens or token_source(config.service_account)

    async def build(
        self, request: c.Request, *, upstream_model: str, stream: bool
    ) -> UpstreamRequest:
        token = await self.tokens.token()  # raises TokenFetchFailed: see credentials_failure
        headers = {
            "authorization": f"Bearer {token}",
            "content-type": "application/json",
            "accept": "text/event-stream" if stream else "application/json",
        }
        return UpstreamRequest(
            "POST",
            self.config.url(upstream_model, stream=stream),
            headers,
            google.request_body(request),
        )

    def decode(self, body: bytes) -> c.Response:
        return google.decode(body)

    def stream_decoder(self) -> google.GoogleStream:
        return google.GoogleStream()

    def failure(self, status: int, headers: Mapping[str, str], body: bytes) -> ProviderFailure:
        return google.parse_failure(status, body, ())


def credentials_failure(exc: TokenFetchFailed) -> ProviderFailure:
    """A refused service account: the channel's credentials, not the client, are at fault."""
    return ProviderFailure(
        FailureKind.CREDENTIALS,
        502,
        f"The Vertex AI service account could not get a token: {exc}",
        type="server_error",
        code="upstream_auth_failed",
    )
