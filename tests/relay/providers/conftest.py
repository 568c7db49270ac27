"""Fixtures for adapter tests: one simulator that speaks every native protocol, over real
HTTP on loopback, and credentials it trusts (a service-account key pair made here)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import httpx
import openai
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from portal.models import Channel
from relay.providers import client
from relay.providers.base import Adapter
from relay.simulator import SimulatorApp, build_app
from relay.translate import canonical as c
from relay.translate import chat
from tests.relay.conftest import Gateway
from tests.servers import serve_in_thread

T = TypeVar("T")

ANTHROPIC_KEY = "sk-ant-sim-0c1d2e"  # the simulator checks it through /sim/key=...
GEMINI_KEY = "AIza-sim-7f8e9d"
AZURE_KEY = "azure-sim-4b5a69"
AWS_ACCESS_KEY = "AKIASIMULATOR0001"
AWS_SECRET = "sim/secret+key/0123456789abcdefghijklmn"
AWS_REGION = "us-east-1"
PROJECT = "sim-project"
SA_EMAIL = "relay@sim-project.iam.gserviceaccount.com"


@dataclasses.dataclass
class NativeSim:
    app: SimulatorApp
    url: str

    def requests(self) -> list[dict[str, Any]]:
        return list(self.app.requests)


def private_key_pem() -> tuple[str, str]:
    """A fresh RSA key pair as PEM (private, public): made per test run, never committed."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public


def service_account_info(url: str, private: str, *, email: str = SA_EMAIL) -> dict[str, Any]:
    return {
        "type": "service_account",
        "project_id": PROJECT,
        "private_key_id": "sim-key-1",
        "private_key": private,
        "client_email": email,
        "client_id": "1234567890",
        "token_uri": f"{url}/oauth2/token",
    }


@pytest.fixture(scope="session")
def key_pair() -> tuple[str, str]:
    return private_key_pem()


@pytest.fixture
def native_sim(key_pair: tuple[str, str]) -> Iterator[NativeSim]:
    app = build_app()
    trust = app.native
    trust.gemini_keys.add(GEMINI_KEY)
    trust.azure_keys.add(AZURE_KEY)
    trust.trust_aws(AWS_ACCESS_KEY, AWS_SECRET, AWS_REGION)
    trust.trust_service_account(SA_EMAIL, key_pair[1], PROJECT)
    url, stop = serve_in_thread(app)
    yield NativeSim(app, url)
    stop()


@pytest.fixture
def sa_info(native_sim: NativeSim, key_pair: tuple[str, str]) -> dict[str, Any]:
    return service_account_info(native_sim.url, key_pair[0])


def run(work: Callable[[httpx.AsyncClient], Awaitable[T]]) -> T:
    """Run ``work`` with a fresh HTTP client on a fresh event loop."""

    async def main() -> T:
        async with httpx.AsyncClient(timeout=10, trust_env=False) as http:
            return await work(http)

    return asyncio.run(main())


def canonical(body: dict[str, Any]) -> c.Request:
    """A chat completions request body in the canonical form."""
    return chat.request_to_canonical(body)


def complete(adapter: Adapter, body: dict[str, Any], model: str) -> c.Response:
    request = canonical(body)
    return run(lambda http: client.complete(adapter, http, request, upstream_model=model))


def stream(adapter: Adapter, body: dict[str, Any], model: str) -> list[c.Event]:
    request = canonical(body)

    async def work(http: httpx.AsyncClient) -> list[c.Event]:
        found: list[c.Event] = []
        async for events in client.stream(adapter, http, request, upstream_model=model):
            found.extend(events)
        return found

    return run(work)


def failure(call: Callable[[], Any]) -> client.ProviderError:
    with pytest.raises(client.ProviderError) as caught:
        call()
    return caught.value


@dataclasses.dataclass
class Streamed:
    text: str
    reasoning: str
    stop: str | None
    usage: c.Usage | None
    calls: dict[int, list[str]]  # call index -> [id, name, arguments]


def summarise(events: list[c.Event]) -> Streamed:
    """What a list of canonical stream events adds up to; checks they start properly."""
    assert isinstance(events[0], c.StreamStart)
    found = Streamed("", "", None, None, {})
    for event in events:
        if isinstance(event, c.TextDelta):
            found.text += event.text
        elif isinstance(event, c.ReasoningDelta):
            found.reasoning += event.text
        elif isinstance(event, c.ToolCallStart):
            found.calls[event.index] = [event.id, event.name, ""]
        elif isinstance(event, c.ToolCallDelta):
            found.calls[event.index][2] += event.arguments
        elif isinstance(event, c.StreamFinish):
            found.stop = event.stop
        elif isinstance(event, c.StreamUsage):
            found.usage = event.usage
    return found


def tool_calls(response: c.Response) -> list[c.ToolCall]:
    return [part for part in response.parts if isinstance(part, c.ToolCall)]


def follow_up(body: dict[str, Any], call: c.ToolCall, result: str) -> dict[str, Any]:
    """``body`` continued by the assistant's ``call`` and the tool's ``result``."""
    chat_call = {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments},
    }
    return {
        **body,
        "messages": [
            *body["messages"],
            {"role": "assistant", "content": None, "tool_calls": [chat_call]},
            {"role": "tool", "tool_call_id": call.id, "content": result},
        ],
    }


CHAT = {
    "model": "public-model",
    "messages": [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "What is a gateway?"},
    ],
}
# 3 + (4 + 2) + (4 + 4): the simulator's count for CHAT, on every native protocol.
CHAT_PROMPT_TOKENS = 17
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "additionalProperties": False,
        },
    },
}
PIXEL = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQ"
    "AAAABJRU5ErkJggg=="
)


def configure(
    channel: Channel, provider: str, sim: NativeSim, sa_info: dict[str, Any], options: str = ""
) -> None:
    """Make ``channel`` a channel of ``provider`` on the native simulator."""
    prefix = f"/sim/{options}" if options else ""
    base, settings, secret = {
        "anthropic": (f"{sim.url}/sim/key={ANTHROPIC_KEY},{options}", {}, ANTHROPIC_KEY),
        "gemini": (sim.url + prefix, {}, GEMINI_KEY),
        "vertex": (sim.url + prefix, {"location": "us-central1"}, json.dumps(sa_info)),
        "bedrock": (
            sim.url + prefix,
            {"region": AWS_REGION},
            json.dumps({"access_key_id": AWS_ACCESS_KEY, "secret_access_key": AWS_SECRET}),
        ),
        "azure": (sim.url + prefix, {"api_version": "2024-10-21"}, AZURE_KEY),
    }[provider]
    channel.provider_type = provider
    channel.base_url = base
    channel.provider_settings = settings
    channel.secret = secret
    channel.full_clean()
    channel.save()


@pytest.fixture
def sdk(gateway: Gateway) -> Iterator[openai.OpenAI]:
    """The OpenAI SDK against the gateway, without retries (a refusal shows at once)."""
    opened = openai.OpenAI(base_url=gateway.url + "/v1", api_key=gateway.secret, max_retries=0)
    yield opened
    opened.close()
