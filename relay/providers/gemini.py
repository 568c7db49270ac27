"""Google's Gemini API: ``generateContent`` with the key in ``x-goog-api-key``.

The key goes in a header rather than the ``key`` query parameter, so it never appears in
a URL that a proxy or log might keep.
"""

from __future__ import annotations

import dataclasses
from urllib.parse import quote

from relay.providers import google
from relay.providers.base import GOOGLE_PROJECT, Identity, host

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


class GeminiAdapter(google.GoogleAdapter):
    provider_type = "gemini"

    def __init__(self, config: GeminiConfig) -> None:
        self.config = config
        self.secrets = (config.api_key,)

    def url(self, model: str, *, stream: bool) -> str:
        return self.config.url(model, stream=stream)

    async def auth_headers(self) -> dict[str, str]:
        return {"x-goog-api-key": self.config.api_key}

    def identity(self, upstream_model: str) -> Identity:
        return Identity(
            secrets=self.secrets,
            names=(host(self.config.base_url),),
            patterns=(GOOGLE_PROJECT,),
        )
