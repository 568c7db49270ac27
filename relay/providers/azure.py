"""Azure OpenAI: deployments, ``api-version`` and the ``api-key`` header.

A public model name becomes a deployment through the channel's deployment map (a name
missing from the map is used as the deployment name, Azure's usual convention), and the
deployment becomes ``{endpoint}/openai/deployments/{deployment}/chat/completions
?api-version=...``: a URL with a query string, which a base URL cannot carry.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from urllib.parse import quote

from portal.models.provider_settings import (
    AZURE_DEFAULT_API_VERSION,
    azure_api_version_problem,
)
from relay.providers import openai
from relay.providers.base import Identity, ProviderFailure, UpstreamRequest, host
from relay.translate import canonical as c

DEFAULT_API_VERSION = AZURE_DEFAULT_API_VERSION
RESOURCE_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


@dataclasses.dataclass(frozen=True, slots=True)
class AzureConfig:
    api_key: str
    resource: str  # a resource name (myres) or a full endpoint URL
    deployments: Mapping[str, str] = dataclasses.field(default_factory=dict)
    api_version: str = DEFAULT_API_VERSION

    def __post_init__(self) -> None:
        if (problem := azure_api_version_problem(self.api_version)) is not None:
            raise ValueError(problem)
        if "://" not in self.resource and not RESOURCE_NAME.match(self.resource):
            raise ValueError("resource is an Azure resource name or an https:// endpoint.")

    def endpoint(self) -> str:
        if "://" in self.resource:
            return self.resource.rstrip("/")
        return f"https://{self.resource}.openai.azure.com"

    def deployment(self, model: str) -> str:
        return self.deployments.get(model) or model

    def url(self, model: str) -> str:
        deployment = quote(self.deployment(model), safe="")
        return (
            f"{self.endpoint()}/openai/deployments/{deployment}/chat/completions"
            f"?api-version={quote(self.api_version, safe='')}"
        )


class AzureAdapter:
    provider_type = "azure"

    def __init__(self, config: AzureConfig) -> None:
        self.config = config

    async def build(
        self, request: c.Request, *, upstream_model: str, stream: bool
    ) -> UpstreamRequest:
        headers = {
            "api-key": self.config.api_key,
            "content-type": "application/json",
            "accept": "text/event-stream" if stream else "application/json",
        }
        content = openai.request_body(request, upstream_model=upstream_model, stream=stream)
        return UpstreamRequest("POST", self.config.url(upstream_model), headers, content)

    def decode(self, body: bytes) -> c.Response:
        return openai.decode(body)

    def stream_decoder(self) -> openai.OpenAIStream:
        return openai.OpenAIStream((self.config.api_key,))

    def failure(self, status: int, headers: Mapping[str, str], body: bytes) -> ProviderFailure:
        return openai.parse_failure(status, body, (self.config.api_key,))

    def identity(self, upstream_model: str) -> Identity:
        resource = self.config.resource
        return Identity(
            secrets=(self.config.api_key,),
            names=("" if "://" in resource else resource, host(self.config.endpoint())),
            aliases=(self.config.deployment(upstream_model),),
        )
