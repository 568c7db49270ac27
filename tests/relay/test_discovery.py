"""Model discovery over loopback (issue 15): the simulator lists its models the way
OpenAI, Anthropic (paginated by after_id) and the Gemini API (paginated by pageToken)
do, and checks the channel's key; a refused key comes back as an error without it."""

from __future__ import annotations

import pytest

from portal import services
from portal.models import Channel
from relay.discovery import channel_models_discover

pytestmark = pytest.mark.django_db

KEY = "sk-discovery-5e6f7a8b"


def _channel(provider_type: str, base_url: str, secret: str = KEY, **settings: str) -> Channel:
    return services.channel_create(
        name=f"{provider_type}-{len(base_url)}-{secret[-4:]}",
        provider_type=provider_type,
        base_url=base_url,
        secret=secret,
        models=[],
        actor="test",
        provider_settings=settings or None,
    )


@pytest.mark.parametrize(
    ("provider_type", "path"),
    [
        ("openai", "/sim/key={key}/v1"),
        ("anthropic", "/sim/key={key}"),
        ("gemini", "/sim/key={key}"),
    ],
)
def test_the_provider_lists_its_models(simulator: str, provider_type: str, path: str) -> None:
    channel = _channel(provider_type, simulator + path.format(key=KEY))
    found = channel_models_discover(channel)
    assert found.ok, found.error
    # Gemini's listing also has an embedding model, which cannot serve chat: left out.
    assert found.models == ["sim-large", "sim-small"]


@pytest.mark.parametrize(
    ("provider_type", "path"),
    [
        ("openai", "/sim/key=other/v1"),
        ("anthropic", "/sim/key=other"),
        ("gemini", "/sim/key=other"),
    ],
)
def test_a_refused_key_is_an_error_without_the_key(
    simulator: str, provider_type: str, path: str
) -> None:
    found = channel_models_discover(_channel(provider_type, simulator + path))
    assert not found.ok and found.models == []
    assert "HTTP 40" in found.error and KEY not in found.error


def test_unreachable_and_unlisted_providers(simulator: str) -> None:
    down = channel_models_discover(_channel("openai", "http://127.0.0.1:9/v1"))
    assert not down.ok and "ConnectError" in down.error
    bedrock = services.channel_create(
        name="bedrock",
        provider_type="bedrock",
        secret='{"access_key_id": "AKID", "secret_access_key": "s"}',
        provider_settings={"region": "us-east-1"},
        models=[],
        actor="test",
    )
    found = channel_models_discover(bedrock)
    assert not found.ok and "name the models" in found.error
