"""Azure OpenAI over loopback: the deployment map and api-version make the URL, the key
goes in ``api-key``, and Azure's errors are classified."""

from __future__ import annotations

from typing import Any

import pytest

from relay.providers.azure import AzureAdapter, AzureConfig
from relay.providers.base import FailureKind
from relay.translate import canonical as c
from tests.relay.providers.conftest import (
    AZURE_KEY,
    CHAT,
    NativeSim,
    complete,
    failure,
    stream,
    summarise,
)


def adapter(sim: NativeSim, key: str = AZURE_KEY, **config: Any) -> AzureAdapter:
    values = {
        "resource": sim.url,
        "deployments": {"gpt-4o": "prod-gpt4o-eu"},
        "api_version": "2024-10-21",
        **config,
    }
    return AzureAdapter(AzureConfig(api_key=key, **values))


def test_deployment_map_and_api_version_make_the_url(native_sim: NativeSim) -> None:
    native_sim.app.native.azure_deployments.update({"prod-gpt4o-eu", "gpt-4o-mini"})
    answer = complete(adapter(native_sim), CHAT, "gpt-4o")
    assert c.text_of(answer.parts).startswith("tok0")
    sent = native_sim.requests()[-1]
    assert sent["path"] == (
        "/openai/deployments/prod-gpt4o-eu/chat/completions?api-version=2024-10-21"
    )
    assert sent["headers"]["api-key"] == AZURE_KEY
    assert "authorization" not in {k.lower() for k in sent["headers"]} - {"authorization"}
    complete(adapter(native_sim), CHAT, "gpt-4o-mini")  # not in the map: the name itself
    assert native_sim.requests()[-1]["path"].startswith(
        "/openai/deployments/gpt-4o-mini/chat/completions?"
    )


def test_resource_name_makes_azure_endpoint() -> None:
    config = AzureConfig(
        api_key="k",
        resource="contoso-eu",
        deployments={"gpt-4o": "d1"},
        api_version="2025-04-01-preview",
    )
    assert config.url("gpt-4o") == (
        "https://contoso-eu.openai.azure.com/openai/deployments/d1/chat/completions"
        "?api-version=2025-04-01-preview"
    )
    with pytest.raises(ValueError):
        AzureConfig(api_key="k", resource="contoso", api_version="latest&x=1")
    with pytest.raises(ValueError):
        AzureConfig(api_key="k", resource="evil.example/x?")


def test_stream_carries_usage(native_sim: NativeSim) -> None:
    streamed = summarise(stream(adapter(native_sim), CHAT, "gpt-4o"))
    assert streamed.text.startswith("tok0") and streamed.stop == "end"
    assert streamed.usage is not None and streamed.usage.input_tokens > 0
    assert native_sim.requests()[-1]["body"]["stream_options"] == {"include_usage": True}


def test_errors(native_sim: NativeSim) -> None:
    wrong_key = failure(lambda: complete(adapter(native_sim, key="wrong"), CHAT, "gpt-4o"))
    assert wrong_key.failure.kind is FailureKind.CREDENTIALS
    native_sim.app.native.azure_deployments.add("only-this-one")
    missing = failure(lambda: complete(adapter(native_sim), CHAT, "gpt-4o"))
    assert missing.failure.kind is FailureKind.RETRYABLE  # the channel is set up wrong
    # A version the resource does not know (Azure answers 404 Resource not found).
    version = failure(
        lambda: complete(adapter(native_sim, api_version="2025-01-01-preview"), CHAT, "gpt-4o")
    )
    assert version.failure.kind is FailureKind.CLIENT
