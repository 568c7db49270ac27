"""Google's Gemini API: ``generateContent`` with the key in ``x-goog-api-key``.

The key goes in a header rather than the ``key`` query parameter, so it never appears in
a URL that a proxy or log might keep.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from urllib.parse import quote

from relay.providers import google
from relay.providers.base import ProviderFailure, UpstreamRequest
from relay.translate import canonical as c

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com"
API_VERSION = "v1beta"


@dataclasses.dataclass(frozen=True, slots=True)
class GeminiConfig:
    api_key: str
    base_url: str = DEFAULT_BASE_URL
    api_version: str = API_VERSION

    def url(self, model: str, *, stream: bool) -> str:
        method = "streamGenerateContent?alt=sse" if stream else "generateContent"
        root = self.base_url.rstrip("/")
        return f"{root}/{self.api_version}/models/{quote(model, safe='')}:{method}"

    def models_url(self) -> str:
        return f"{self.base_url.rstrip('/')}/{self.api_version}/models"


class GeminiAdapter:
    provider_type = "gemini"

    def __init__(self, config: GeminiConfig) -> None:
        self.config = config

    async def build(
        self, request: c.Request, *, upstream_model: str, stream: bool
    ) -> UpstreamRequest:
        headers = {
            "x-goog-api-key": self.config.api_key,
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
        return google.GoogleStream((self.config.api_key,))

    def failure(self, status: int, headers: Mapping[str, str], body: bytes) -> ProviderFailure:
        return google.parse_failure(status, body, (self.config.api_key,))
