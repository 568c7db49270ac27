"""Model discovery over loopback (issue 15): the simulator lists its models the way
OpenAI, Anthropic (paginated by after_id), the Gemini API and Vertex AI (paginated by
pageToken), Bedrock's control plane (profiles paginated by nextToken) and Azure OpenAI
do, and checks the channel's credentials as for inference (SigV4 recomputed with botocore,
tokens only for a trusted service account); a refused credential comes back as an error
without the secret."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from portal import services
from portal.models import Channel
from relay.discovery import bedrock_control_root, channel_models_discover
from relay.simulator import SimulatorApp, build_app
from tests.relay.providers.conftest import private_key_pem
from tests.servers import serve_in_thread

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


def test_an_unreachable_provider_is_an_error(simulator: str) -> None:
    down = channel_models_discover(_channel("openai", "http://127.0.0.1:9/v1"))
    assert not down.ok and "ConnectError" in down.error


AWS_KEY = "AKIADISCOVERY0001"
AWS_SECRET = "discovery/secret+key/0123456789abcdefghij"
AZURE_KEY = "azure-discovery-3c4d5e"
SA_EMAIL = "lister@sim-project.iam.gserviceaccount.com"


@pytest.fixture
def cloud() -> Iterator[tuple[SimulatorApp, str, str]]:
    """A simulator trusting one AWS key, one Azure key and one service account; yields the
    app, its URL and the service account's private key."""
    private, public = private_key_pem()
    app = build_app()
    app.native.trust_aws(AWS_KEY, AWS_SECRET, "us-east-1")
    app.native.azure_keys.add(AZURE_KEY)
    app.native.azure_deployment_models.update(
        {"prod-4o": "gpt-4o", "gpt-4o-mini": "gpt-4o-mini", "embed": "text-embedding-3-small"}
    )
    app.native.trust_service_account(SA_EMAIL, public, "sim-project")
    url, stop = serve_in_thread(app)
    yield app, url, private
    stop()


def _cloud_channel(provider_type: str, url: str, secret: str, settings: dict[str, Any]) -> Channel:
    return services.channel_create(
        name=f"{provider_type}-cloud-{len(secret)}",
        provider_type=provider_type,
        base_url=url,
        secret=secret,
        models=[],
        actor="test",
        provider_settings=settings,
    )


def _bedrock(url: str, secret: str = AWS_SECRET) -> Channel:
    keys = json.dumps({"access_key_id": AWS_KEY, "secret_access_key": secret})
    return _cloud_channel("bedrock", url, keys, {"region": "us-east-1"})


def _vertex(url: str, private_key: str) -> Channel:
    info = {
        "type": "service_account",
        "project_id": "sim-project",
        "private_key_id": "discovery-1",
        "private_key": private_key,
        "client_email": SA_EMAIL,
        "token_uri": f"{url}/oauth2/token",
    }
    return _cloud_channel("vertex", url, json.dumps(info), {"location": "us-central1"})


def _azure(url: str, key: str = AZURE_KEY) -> Channel:
    settings = {"api_version": "2024-10-21", "deployments": {"gpt-4o": "prod-4o"}}
    return _cloud_channel("azure", url, key, settings)


def _listed(app: SimulatorApp, path: str) -> list[str]:
    return [r["query"] for r in app.requests if r["path"] == path]


def test_bedrock_lists_on_demand_text_models_and_inference_profiles(
    cloud: tuple[SimulatorApp, str, str],
) -> None:
    app, url, _ = cloud
    found = channel_models_discover(_bedrock(url))
    assert found.ok, found.error
    # Not offered: embeddings, images (and the profile of one), provisioned-only models,
    # and a model that only a profile may call.
    assert found.models == [
        "amazon.nova-micro-v1:0",
        "arn:aws:bedrock:us-east-1:111122223333:application-inference-profile/simteamprofile1",
        "us.amazon.nova-micro-v1:0",
        "us.anthropic.claude-sim-v1:0",
    ]
    # Four profiles, two per page: the second request carries the (encoded) token and
    # its SigV4 signature still verified.
    assert _listed(app, "/inference-profiles") == [
        "maxResults=1000",
        "maxResults=1000&nextToken=p%2F2%2B%3D",
    ]


def test_bedrock_with_a_wrong_secret_key_is_refused_without_it(
    cloud: tuple[SimulatorApp, str, str],
) -> None:
    _, url, _ = cloud
    wrong = "wrong/secret+key/9876543210zyxwvutsrqp"
    found = channel_models_discover(_bedrock(url, wrong))
    assert not found.ok and found.models == []
    assert "HTTP 403" in found.error and "signature" in found.error
    assert wrong not in found.error and AWS_SECRET not in found.error


def test_vertex_lists_gemini_publisher_models_across_pages(
    cloud: tuple[SimulatorApp, str, str],
) -> None:
    app, url, private = cloud
    found = channel_models_discover(_vertex(url, private))
    assert found.ok, found.error
    # Embedding, live, Gemma and Imagen models do not answer generateContent: left out.
    assert found.models == ["gemini-2.5-flash", "gemini-2.5-pro"]
    pages = _listed(app, "/v1beta1/publishers/google/models")
    assert pages == [
        "pageSize=1000",
        "pageSize=1000&pageToken=p%2F2%2B%3D",
        "pageSize=1000&pageToken=p%2F4%2B%3D",
    ]


def test_vertex_with_an_untrusted_service_account_is_refused_without_its_key(
    cloud: tuple[SimulatorApp, str, str],
) -> None:
    app, url, _ = cloud
    stranger, _ = private_key_pem()  # signs, but the simulator does not trust its public key
    found = channel_models_discover(_vertex(url, stranger))
    assert not found.ok and "could not get a token" in found.error
    body = stranger.splitlines()[1]
    assert body not in found.error and "PRIVATE KEY" not in found.error
    assert _listed(app, "/v1beta1/publishers/google/models") == []


def test_azure_lists_deployments_by_the_names_the_channel_serves(
    cloud: tuple[SimulatorApp, str, str],
) -> None:
    _, url, _ = cloud
    found = channel_models_discover(_azure(url))
    assert found.ok, found.error
    # prod-4o by its public name from the deployment map; gpt-4o-mini by its own name;
    # the embedding deployment cannot chat.
    assert found.models == ["gpt-4o", "gpt-4o-mini"]


def test_azure_with_a_wrong_key_is_refused_without_it(
    cloud: tuple[SimulatorApp, str, str],
) -> None:
    _, url, _ = cloud
    wrong = "azure-wrong-key-7a8b9c0d"
    found = channel_models_discover(_azure(url, wrong))
    assert not found.ok and "HTTP 401" in found.error and wrong not in found.error


def test_azure_without_the_deployment_list_says_to_name_the_models(
    cloud: tuple[SimulatorApp, str, str],
) -> None:
    app, url, _ = cloud
    app.native.azure_lists_deployments = False
    found = channel_models_discover(_azure(url))
    assert not found.ok and "does not list its deployments" in found.error


def test_bedrock_control_plane_is_the_runtime_hosts_sibling() -> None:
    assert bedrock_control_root("", "eu-west-1") == "https://bedrock.eu-west-1.amazonaws.com"
    runtime = "https://bedrock-runtime.us-east-1.amazonaws.com/"
    assert bedrock_control_root(runtime, "us-east-1") == "https://bedrock.us-east-1.amazonaws.com"
    assert bedrock_control_root("http://proxy:8080", "us-east-1") == "http://proxy:8080"
