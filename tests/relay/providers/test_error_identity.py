"""A provider's errors name the operator's account, and none of that reaches a client.

Providers echo what they were sent: the host, the project in the URL, an inference
profile's ARN (with the AWS account in it), an Azure deployment, the service account, the
provider's own name for the model. A client gets the provider's message with those removed
and the model named as it asked for it, on every provider type, answered or in a stream.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote

import orjson
import pytest

from portal import redaction
from portal.models import ChannelModel
from relay.providers import azure, bedrock, vertex
from relay.providers.base import AWS_ARN, GOOGLE_PROJECT
from tests.relay.conftest import PUBLIC_MODEL, Gateway, chat_body
from tests.relay.providers.conftest import (
    AWS_ACCESS_KEY,
    AWS_SECRET,
    PROJECT,
    SA_EMAIL,
    NativeSim,
)
from tests.servers import asgi_body, running_server

ACCOUNT = "210987654321"  # an AWS account, and a Google project number
PROFILE_ARN = f"arn:aws:bedrock:us-east-1:{ACCOUNT}:application-inference-profile/p4x9"
ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/tollgate-relay"
RESOURCE = "contoso-llm-east"
DEPLOYMENT = "contoso-gpt4o-prod"
UPSTREAM = {
    "anthropic": "claude-private-alias",
    "gemini": "gemini-private-tune",
    "vertex": "gemini-vertex-tune",
    "bedrock": PROFILE_ARN,
    "azure": "gpt-4o-contoso",
    "openai": "gpt-private-ft",
}


def _provider(path: str) -> str:
    if path.endswith("/v1/messages"):
        return "anthropic"
    if "/model/" in path:
        return "bedrock"
    if "/openai/deployments/" in path:
        return "azure"
    if path.endswith("/chat/completions"):
        return "openai"
    return "vertex" if "/projects/" in path else "gemini"


# What each provider's errors echo beyond the URL and the model: the account behind it.
EXTRAS = {
    "anthropic": "",
    "gemini": f"Enable the API at https://console.example.com/apis?project={ACCOUNT}.",
    "vertex": f"{SA_EMAIL} (key id sim-key-1) of project {ACCOUNT} lacks access.",
    "bedrock": f"Caller {ROLE_ARN} ({AWS_ACCESS_KEY}) lacks access.",
    "azure": "",
    "openai": "",
}


def _echo(scope: dict[str, Any], host: str, body: bytes) -> str:
    """What a careless provider says: everything it was sent that names the account."""
    path = unquote(scope["path"])
    model = orjson.loads(body).get("model", "")
    return f"Cannot serve {path} ({model}) at {host}. {EXTRAS[_provider(path)]}"


def _failure(scope: dict[str, Any], message: str) -> tuple[int, dict[str, str], bytes]:
    path = scope["path"]
    if path.endswith("/v1/messages"):
        body = {"type": "error", "error": {"type": "invalid_request_error", "message": message}}
        return 400, {}, orjson.dumps(body)
    if "/model/" in path:  # Bedrock's Converse
        return 400, {"x-amzn-errortype": "ValidationException"}, orjson.dumps({"message": message})
    if path.endswith("/chat/completions"):  # Azure, and an OpenAI-compatible channel
        return 400, {}, orjson.dumps({"error": {"message": message, "code": "BadRequest"}})
    error = {"code": 400, "message": message, "status": "INVALID_ARGUMENT"}
    return 400, {}, orjson.dumps({"error": error})


async def _stream_then_fail(send: Any, model: str, message: str) -> None:
    """An Anthropic stream that starts, then fails with an error event echoing the account."""
    start = {
        "type": "message_start",
        "message": {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "usage": {"input_tokens": 5, "output_tokens": 1},
        },
    }
    error = {"type": "error", "error": {"type": "overloaded_error", "message": message}}
    events = b"event: message_start\ndata: " + orjson.dumps(start) + b"\n\n"
    events += b"event: error\ndata: " + orjson.dumps(error) + b"\n\n"
    head = [(b"content-type", b"text/event-stream")]
    await send({"type": "http.response.start", "status": 200, "headers": head})
    await send({"type": "http.response.body", "body": events})


def echoing_provider(hostname: str) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        sent = await asgi_body(receive)
        message = _echo(scope, hostname, sent)
        if orjson.loads(sent).get("stream") and _provider(scope["path"]) == "anthropic":
            await _stream_then_fail(send, orjson.loads(sent)["model"], message)
            return
        status, headers, body = _failure(scope, message)
        head = [(b"content-type", b"application/json")]
        head += [(k.encode(), v.encode()) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": status, "headers": head})
        await send({"type": "http.response.body", "body": body})

    return app


@pytest.fixture
def echo_url() -> Iterator[str]:
    holder: dict[str, str] = {}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await echoing_provider(holder["host"])(scope, receive, send)

    with running_server(app) as url:
        holder["host"] = url.removeprefix("http://")
        yield url


def configure(
    gateway: Gateway, provider: str, url: str, sim: NativeSim, sa_info: dict[str, Any]
) -> None:
    """``gateway``'s channel as ``provider`` at the echoing upstream (Vertex takes its
    tokens from the simulator), serving the public model under a private name."""
    channel = gateway.channel
    channel.provider_type = provider
    channel.base_url = url
    channel.secret = {
        "anthropic": "sk-ant-private-0001",
        "gemini": "AIza-private-0001",
        "vertex": json.dumps(sa_info),
        "bedrock": json.dumps({"access_key_id": AWS_ACCESS_KEY, "secret_access_key": AWS_SECRET}),
        "azure": "azure-private-0001",
        "openai": "sk-private-0001",
    }[provider]
    channel.provider_settings = {
        "vertex": {"location": "us-central1", "project": PROJECT},
        "bedrock": {"region": "us-east-1"},
        "azure": {"api_version": "2024-10-21", "deployments": {UPSTREAM["azure"]: DEPLOYMENT}},
    }.get(provider, {})
    if provider == "openai":
        channel.base_url = f"{url}/v1"
    channel.full_clean()
    channel.save()
    ChannelModel.objects.filter(channel=channel).update(upstream_name=UPSTREAM[provider])


def private_strings(url: str, provider: str) -> list[str]:
    """What the error echoed that names ``provider``'s account, and must not reach a client."""
    named = {
        "gemini": [ACCOUNT],
        "vertex": [PROJECT, SA_EMAIL, "sim-key-1", ACCOUNT],
        "bedrock": [AWS_ACCESS_KEY, ACCOUNT, "tollgate-relay"],
        "azure": [DEPLOYMENT],
    }
    return [url.removeprefix("http://"), UPSTREAM[provider], *named.get(provider, [])]


def _first_error(gateway: Gateway, body: dict[str, Any]) -> dict[str, Any]:
    """The client's error, once the relay has taken in the channel's new configuration."""
    deadline = time.monotonic() + 10
    while True:
        response = gateway.client.post("/v1/chat/completions", json=body)
        if response.status_code == 400 or time.monotonic() > deadline:
            assert response.status_code == 400, response.text
            return dict(response.json()["error"])
        time.sleep(0.05)


@pytest.mark.parametrize(
    "provider", ["openai", "anthropic", "gemini", "vertex", "bedrock", "azure"]
)
def test_an_answered_error_names_nothing_of_the_account(
    provider: str,
    gateway: Gateway,
    echo_url: str,
    native_sim: NativeSim,
    sa_info: dict[str, Any],
) -> None:
    configure(gateway, provider, echo_url, native_sim, sa_info)
    error = _first_error(gateway, chat_body())
    message = error["message"]
    for private in private_strings(echo_url, provider):
        assert private not in message, (private, message)
    assert message.startswith("Cannot serve")  # the provider's own words are kept
    assert PUBLIC_MODEL in message  # the model as the client named it
    assert "[redacted]" in message


def test_an_error_inside_a_stream_names_nothing_of_the_account(
    gateway: Gateway, echo_url: str, native_sim: NativeSim, sa_info: dict[str, Any]
) -> None:
    configure(gateway, "anthropic", echo_url, native_sim, sa_info)
    _first_error(gateway, chat_body())  # the relay has the channel's configuration
    with gateway.client.stream("POST", "/v1/chat/completions", json=chat_body(stream=True)) as r:
        text = r.read().decode()
    assert r.status_code == 200
    for private in private_strings(echo_url, "anthropic"):
        assert private not in text, (private, text)
    assert f"Cannot serve /v1/messages ({PUBLIC_MODEL}) at [redacted]" in text


def test_an_azure_resource_name_is_removed_with_its_host() -> None:
    config = azure.AzureConfig(
        api_key="azure-private-0001", resource=RESOURCE, deployments={"gpt-4o-x": DEPLOYMENT}
    )
    adapter = azure.AzureAdapter(config)
    identity = adapter.identity("gpt-4o-x")
    scrub = redaction.Scrubber(
        identity.secrets,
        identity.names,
        dict.fromkeys(("gpt-4o-x", *identity.aliases), PUBLIC_MODEL),
        identity.patterns,
    )
    said = (
        f"The API deployment {DEPLOYMENT} for resource {RESOURCE} "
        f"(https://{RESOURCE}.openai.azure.com) does not exist; key azure-private-0001."
    )
    text = scrub(said)
    assert RESOURCE not in text and DEPLOYMENT not in text and "azure-private" not in text
    assert text.startswith(f"The API deployment {PUBLIC_MODEL} for resource [redacted]")


def test_a_bedrock_stream_error_names_nothing_of_the_account() -> None:
    credentials = bedrock.AwsCredentials(AWS_ACCESS_KEY, AWS_SECRET, "us-east-1")
    adapter = bedrock.BedrockAdapter(bedrock.BedrockConfig(credentials))
    identity = adapter.identity(PROFILE_ARN)
    assert "bedrock-runtime.us-east-1.amazonaws.com" in identity.names
    assert AWS_SECRET in identity.secrets


def test_vertex_identity_names_the_service_account(sa_info: dict[str, Any]) -> None:
    config = vertex.VertexConfig(service_account=sa_info, location="europe-west4")
    identity = vertex.VertexAdapter(config).identity("gemini-x")
    assert {PROJECT, SA_EMAIL, "sim-key-1", "europe-west4-aiplatform.googleapis.com"} <= set(
        identity.names
    )
    assert identity.secrets == (sa_info["private_key"],)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # A name is removed where it stands whole, not inside another word.
        ("project prod is in production", "project [redacted] is in production"),
        ("host api.prod.internal.", "host [redacted]."),
        ("see prod.example.com", "see prod.example.com"),
        # The provider's model name becomes the client's, only where it is the name.
        ("model m-1 and m-10", f"model {PUBLIC_MODEL} and m-10"),
        ("models/m-1:generateContent", f"models/{PUBLIC_MODEL}:generateContent"),
    ],
)
def test_a_scrubber_removes_whole_names_only(text: str, expected: str) -> None:
    scrub = redaction.Scrubber(names=("prod", "api.prod.internal"), renames={"m-1": PUBLIC_MODEL})
    assert scrub(text) == expected


def test_patterns_find_accounts_not_given_beforehand() -> None:
    scrub = redaction.Scrubber(patterns=(AWS_ARN, GOOGLE_PROJECT))
    said = (
        f"User {ROLE_ARN}, denied on projects/other-proj-77/locations/x; "
        "project 998877665544 has no quota."
    )
    text = scrub(said)
    assert re.findall(r"\[redacted\]", text) == ["[redacted]"] * 3, text
    assert "other-proj-77" not in text and "998877665544" not in text and ACCOUNT not in text
