"""Channels configured with native provider types reach the simulator through their
adapters, and their health checks speak each provider's own protocol."""

from __future__ import annotations

import json
from typing import Any

import pytest

from portal.models import Channel
from portal.services import channel_create
from relay import health
from relay.providers.registry import adapter_for
from relay.snapshot import load_snapshot
from relay.translate import canonical as c
from tests.relay.providers.conftest import (
    ANTHROPIC_KEY,
    AWS_ACCESS_KEY,
    AWS_REGION,
    AWS_SECRET,
    AZURE_KEY,
    CHAT,
    GEMINI_KEY,
    NativeSim,
    complete,
)

pytestmark = pytest.mark.django_db


def channels(sim: NativeSim, sa_info: dict[str, Any]) -> dict[str, tuple[str, dict[str, Any], str]]:
    """provider -> (base URL, settings, secret), all pointing at the simulator."""
    return {
        "anthropic": (f"{sim.url}/sim/key={ANTHROPIC_KEY}", {}, ANTHROPIC_KEY),
        "gemini": (sim.url, {}, GEMINI_KEY),
        "vertex": (sim.url, {"location": "us-central1"}, json.dumps(sa_info)),
        "bedrock": (
            sim.url,
            {"region": AWS_REGION},
            json.dumps({"access_key_id": AWS_ACCESS_KEY, "secret_access_key": AWS_SECRET}),
        ),
        "azure": (
            sim.url,
            {"api_version": "2024-10-21", "deployments": {"served-model": "prod-deployment"}},
            AZURE_KEY,
        ),
    }


def create(provider: str, spec: tuple[str, dict[str, Any], str], **extra: Any) -> Channel:
    base_url, settings, secret = spec
    return channel_create(
        name=f"{provider}-{extra.pop('suffix', 'ok')}",
        base_url=base_url,
        secret=secret,
        actor="test",
        models={"served-model": "served-model"},
        provider_type=provider,
        provider_settings=settings,
        **extra,
    )


@pytest.mark.parametrize("provider", ["anthropic", "gemini", "vertex", "bedrock", "azure"])
def test_a_stored_channel_makes_an_adapter_that_answers(
    provider: str, native_sim: NativeSim, sa_info: dict[str, Any]
) -> None:
    channel = Channel.objects.get(pk=create(provider, channels(native_sim, sa_info)[provider]).pk)
    adapter = adapter_for(
        channel.provider_type,
        base_url=channel.base_url,
        secret=channel.secret,
        settings=channel.provider_settings,
    )
    answer = complete(adapter, CHAT, "served-model")
    assert c.text_of(answer.parts).startswith("tok0")
    assert answer.usage is not None and answer.usage.input_tokens > 0
    result = health.channel_check(channel)
    assert result.ok, result.error
    channel.refresh_from_db()
    assert channel.last_check_ok is True


@pytest.mark.parametrize(
    ("provider", "wrong"),
    [
        ("anthropic", "sk-ant-refused-31"),
        ("gemini", "AIza-refused-31"),
        ("azure", "azure-refused-31"),
        (
            "bedrock",
            json.dumps({"access_key_id": AWS_ACCESS_KEY, "secret_access_key": "refused-31"}),
        ),
    ],
)
def test_health_check_fails_on_refused_credentials(
    provider: str, wrong: str, native_sim: NativeSim, sa_info: dict[str, Any]
) -> None:
    base_url, settings, _ = channels(native_sim, sa_info)[provider]
    channel = create(provider, (base_url, settings, wrong), suffix="wrong")
    result = health.channel_check(channel)
    assert not result.ok
    assert "refused-31" not in result.error
    channel.refresh_from_db()
    assert channel.last_check_ok is False


def test_azure_deployment_map_turns_the_public_name_into_the_url(
    native_sim: NativeSim, sa_info: dict[str, Any]
) -> None:
    channel = create("azure", channels(native_sim, sa_info)["azure"])
    assert health.channel_check(channel).ok
    sent = native_sim.requests()[-1]
    assert sent["path"] == (
        "/openai/deployments/prod-deployment/chat/completions?api-version=2024-10-21"
    )


@pytest.mark.django_db(transaction=True)
def test_native_channels_are_routed_through_their_adapters(
    native_sim: NativeSim, sa_info: dict[str, Any]
) -> None:
    create("anthropic", channels(native_sim, sa_info)["anthropic"])
    create("bedrock", channels(native_sim, sa_info)["bedrock"])
    channel_create(
        name="openai-ok",
        base_url=f"{native_sim.url}/v1",
        secret="k",
        actor="test",
        models=["served-model"],
    )
    # A channel whose stored secret no longer makes an adapter is skipped, not fatal.
    broken = create("gemini", channels(native_sim, sa_info)["gemini"])
    Channel.objects.filter(pk=broken.pk).update(provider_settings={"region": "x"})
    Channel.objects.filter(pk=broken.pk).update(provider_type="bedrock")
    routes = {r.channel_name: r for r in load_snapshot().models["served-model"].routes}
    assert set(routes) == {"anthropic-ok", "bedrock-ok", "openai-ok"}
    assert routes["openai-ok"].adapter is None
    assert routes["bedrock-ok"].adapter.provider_type == "bedrock"
    # Messages requests reach an Anthropic channel as they are, at its /v1/messages.
    anthropic_route = routes["anthropic-ok"]
    assert anthropic_route.native == frozenset({"messages"})
    assert str(anthropic_route.target_for("/messages")).endswith("/v1/messages")
