"""Vertex AI over loopback: service-account tokens from google-auth, fetched from the
simulator's OAuth endpoint (which verifies the signed JWT), refreshed before expiry with
one fetch however many requests wait, and generateContent with those tokens only. A token
endpoint that is down is an outage, not a refused service account."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest

from portal.models import Channel
from relay import health
from relay.providers import client
from relay.providers.base import FailureKind
from relay.providers.vertex import VertexAdapter, VertexConfig
from relay.providers.vertex_auth import (
    BACKOFF_MAX_SECONDS,
    BACKOFF_MIN_SECONDS,
    REFRESH_MARGIN_SECONDS,
    VertexTokenSource,
    token_source,
)
from relay.simulator.native.google import SIGNATURE
from relay.translate import canonical as c
from tests.relay.conftest import Gateway, Simulator, chat_body
from tests.relay.providers.conftest import (
    CHAT,
    CHAT_PROMPT_TOKENS,
    WEATHER_TOOL,
    NativeSim,
    canonical,
    complete,
    follow_up,
    private_key_pem,
    run,
    service_account_info,
    stream,
    summarise,
    tool_calls,
)

MODEL = "gemini-2.5-pro"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def vertex(
    sim: NativeSim, info: dict[str, Any], tokens: VertexTokenSource, options: str = ""
) -> VertexAdapter:
    base = f"{sim.url}/sim/{options}" if options else sim.url
    return VertexAdapter(VertexConfig(info, location="us-central1", base_url=base), tokens)


def many(adapter: VertexAdapter, count: int) -> list[c.Response]:
    request = canonical(CHAT)

    async def work(http: httpx.AsyncClient) -> list[c.Response]:
        calls = [
            client.complete(adapter, http, request, upstream_model=MODEL) for _ in range(count)
        ]
        return list(await asyncio.gather(*calls))

    return run(work)


def test_answer_with_usage_metadata(native_sim: NativeSim, sa_info: dict[str, Any]) -> None:
    adapter = vertex(
        native_sim, sa_info, VertexTokenSource(sa_info), "tokens=2,cached=4,reasoning=3"
    )
    answer = many(adapter, 1)[0]
    assert c.text_of(answer.parts) == "tok0 tok1"
    assert [p.text for p in answer.parts if isinstance(p, c.Reasoning)] == ["sim thought"]
    assert answer.usage == c.Usage(
        input_tokens=CHAT_PROMPT_TOKENS, output_tokens=2 + 3, cached_tokens=4, reasoning_tokens=3
    )
    sent = native_sim.requests()[-1]
    assert sent["path"].endswith(
        "/v1/projects/sim-project/locations/us-central1/publishers/google/models/"
        "gemini-2.5-pro:generateContent"
    )
    assert sent["headers"]["authorization"].startswith("Bearer ya29.sim-")


def test_one_token_fetch_for_many_concurrent_requests(
    native_sim: NativeSim, sa_info: dict[str, Any]
) -> None:
    tokens = VertexTokenSource(sa_info)
    answers = many(vertex(native_sim, sa_info, tokens), 40)
    assert all(c.text_of(a.parts).startswith("tok0") for a in answers)
    assert native_sim.app.native.token_fetches == 1
    assert tokens.fetches == 1
    bearers = {
        r["headers"]["authorization"] for r in native_sim.requests() if "projects" in r["path"]
    }
    assert len(bearers) == 1


def test_refreshed_before_expiry_with_one_fetch(
    native_sim: NativeSim, sa_info: dict[str, Any]
) -> None:
    clock = FakeClock()
    tokens = VertexTokenSource(sa_info, clock=clock)
    adapter = vertex(native_sim, sa_info, tokens)
    many(adapter, 5)
    lifetime = native_sim.app.native.token_lifetime
    clock.now += lifetime - REFRESH_MARGIN_SECONDS - 5  # not yet due
    many(adapter, 5)
    assert native_sim.app.native.token_fetches == 1
    clock.now += 10  # inside the margin: still valid at the provider, but due
    many(adapter, 30)
    assert native_sim.app.native.token_fetches == 2
    assert tokens.fetches == 2
    bearers = [
        r["headers"]["authorization"] for r in native_sim.requests() if "projects" in r["path"]
    ]
    assert len(set(bearers)) == 2
    assert bearers[-30:] == [bearers[-1]] * 30


def test_simulator_refuses_an_expired_token(native_sim: NativeSim, sa_info: dict[str, Any]) -> None:
    tokens = VertexTokenSource(sa_info, clock=FakeClock())  # never thinks it is due
    adapter = vertex(native_sim, sa_info, tokens)
    many(adapter, 1)
    sim_clock = FakeClock()
    sim_clock.now = native_sim.app.native.clock() + native_sim.app.native.token_lifetime + 1
    native_sim.app.native.clock = sim_clock
    with pytest.raises(client.ProviderError) as caught:
        many(adapter, 1)
    assert caught.value.failure.kind is FailureKind.CREDENTIALS


def test_untrusted_service_account_gets_no_token(native_sim: NativeSim) -> None:
    stranger = service_account_info(native_sim.url, private_key_pem()[0])  # same email, other key
    with pytest.raises(client.ProviderError) as caught:
        many(vertex(native_sim, stranger, VertexTokenSource(stranger)), 3)
    assert caught.value.failure.kind is FailureKind.CREDENTIALS
    assert "Invalid JWT Signature" in caught.value.failure.message
    assert native_sim.app.native.token_fetches == 0


def test_a_failed_token_fetch_backs_off(native_sim: NativeSim) -> None:
    stranger = service_account_info(native_sim.url, private_key_pem()[0])
    clock = FakeClock()
    tokens = VertexTokenSource(stranger, clock=clock)
    adapter = vertex(native_sim, stranger, tokens)

    def token_posts() -> int:
        return sum(1 for r in native_sim.requests() if r["path"].endswith("/oauth2/token"))

    def refused() -> str:
        with pytest.raises(client.ProviderError) as caught:
            many(adapter, 1)
        assert caught.value.failure.kind is FailureKind.CREDENTIALS
        return caught.value.failure.message

    refused()
    assert token_posts() == 1
    for _ in range(5):  # within the back-off: refused at once, the endpoint left alone
        assert "next token fetch in" in refused()
    assert (token_posts(), tokens.fetches) == (1, 1)
    waits = []
    for _ in range(8):
        wait = tokens._retry_at - clock.now
        waits.append(wait)
        clock.now += wait  # due again: one more fetch, and a longer wait after it
        refused()
    assert token_posts() == 9
    assert waits[0] == BACKOFF_MIN_SECONDS and waits[1] == 2 * BACKOFF_MIN_SECONDS
    assert waits == sorted(waits) and max(waits) == BACKOFF_MAX_SECONDS


def test_a_valid_token_outlives_a_failed_refresh(
    native_sim: NativeSim, sa_info: dict[str, Any]
) -> None:
    clock = FakeClock()
    tokens = VertexTokenSource(sa_info, clock=clock)
    adapter = vertex(native_sim, sa_info, tokens)
    many(adapter, 1)
    # Due for refresh, but the token endpoint is unreachable: the old token, still valid,
    # keeps serving through the back-off.
    clock.now += native_sim.app.native.token_lifetime - 10
    tokens._credentials._token_uri = "http://127.0.0.1:9/oauth2/token"
    answers = many(adapter, 3)
    assert all(c.text_of(a.parts) for a in answers)
    assert tokens.fetches == 2 and native_sim.app.native.token_fetches == 1


def test_token_for_another_project_is_refused(
    native_sim: NativeSim, sa_info: dict[str, Any]
) -> None:
    other = {**sa_info, "project_id": "someone-elses"}
    with pytest.raises(client.ProviderError) as caught:
        many(vertex(native_sim, other, VertexTokenSource(other)), 1)
    assert caught.value.failure.kind is FailureKind.CREDENTIALS


def test_stream_and_tool_call(native_sim: NativeSim, sa_info: dict[str, Any]) -> None:
    adapter = vertex(native_sim, sa_info, VertexTokenSource(sa_info), "tokens=3")
    streamed = summarise(stream(adapter, CHAT, MODEL))
    assert (streamed.text, streamed.stop) == ("tok0 tok1 tok2", "end")
    assert streamed.usage is not None and streamed.usage.input_tokens == CHAT_PROMPT_TOKENS
    answer = complete(adapter, {**CHAT, "tools": [WEATHER_TOOL]}, MODEL)
    assert answer.stop == "tool_use"
    assert [call.name for call in tool_calls(answer)] == ["get_weather"]
    declaration = native_sim.requests()[-1]["body"]["tools"][0]["functionDeclarations"][0]
    # JSON Schema as the client sent it: Vertex keeps ``additionalProperties``.
    assert declaration["parametersJsonSchema"] == {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "additionalProperties": False,
    }


def test_a_gemini_3_function_call_round_trip_on_vertex(
    native_sim: NativeSim, sa_info: dict[str, Any]
) -> None:
    """Vertex's Gemini 3 models sign their calls as the Gemini API's do: the signature
    rides in the call's id and goes back with the replayed call, thinking goes by level."""
    adapter = vertex(native_sim, sa_info, VertexTokenSource(sa_info))
    asked = {**CHAT, "tools": [WEATHER_TOOL], "reasoning_effort": "none"}
    [call] = tool_calls(complete(adapter, asked, "gemini-3.1-pro-preview"))
    final = complete(adapter, follow_up(asked, call, '{"sky": "clear"}'), "gemini-3.1-pro-preview")
    assert c.text_of(final.parts).startswith("tok0")
    sent = native_sim.requests()[-1]["body"]
    assert sent["contents"][1]["parts"][0]["thoughtSignature"] == SIGNATURE
    assert sent["generationConfig"]["thinkingConfig"]["thinkingLevel"] == "LOW"


def test_sources_are_shared_per_service_account(sa_info: dict[str, Any]) -> None:
    assert token_source(sa_info) is token_source(dict(sa_info))
    assert token_source(sa_info) is not token_source({**sa_info, "private_key_id": "other"})


UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nothing listens on loopback


@pytest.mark.parametrize("endpoint", ["unreachable", "fail=500", "fail=502"])
def test_a_token_endpoint_outage_is_retryable_not_the_credentials(
    native_sim: NativeSim, key_pair: tuple[str, str], endpoint: str
) -> None:
    root = UNREACHABLE if endpoint == "unreachable" else f"{native_sim.url}/sim/{endpoint}"
    info = service_account_info(root, key_pair[0])
    tokens = VertexTokenSource(info, clock=FakeClock())
    adapter = vertex(native_sim, info, tokens)
    for _ in range(2):  # the failed fetch, then the back-off that remembers what failed
        with pytest.raises(client.ProviderError) as caught:
            many(adapter, 1)
        assert caught.value.failure.kind is FailureKind.RETRYABLE
        assert "token endpoint could not give a token" in caught.value.failure.message
    assert tokens.fetches == 1
    assert native_sim.app.native.token_fetches == 0


def test_a_token_endpoint_outage_fails_over_without_suspending_the_channel(
    gateway: Gateway,
    sim: Simulator,
    native_sim: NativeSim,
    key_pair: tuple[str, str],
    relay_settings: Any,
) -> None:
    relay_settings.RELAY_BREAKER_FAILURES = 1
    channel = gateway.channel
    channel.provider_type = "vertex"
    channel.base_url = native_sim.url
    channel.provider_settings = {"location": "us-central1"}
    channel.secret = json.dumps(service_account_info(UNREACHABLE, key_pair[0]))
    channel.priority = 10
    channel.full_clean()
    channel.save()
    gateway.add_channel(sim.channel_url(), name="backup", priority=0)
    gateway.caught_up()

    answer = gateway.client.post("/v1/chat/completions", json=chat_body())

    assert answer.status_code == 200, answer.text  # the backup answered
    # Counted against the breaker, as any outage is...
    deadline = time.monotonic() + 5
    while (health.breaker_states() or {}).get(channel.pk) != "open":
        assert time.monotonic() < deadline, "the outage was not counted against the breaker"
        time.sleep(0.05)
    # ...but the service account was never refused: the channel stays enabled.
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        assert Channel.objects.get(pk=channel.pk).status == Channel.Status.ENABLED
        time.sleep(0.05)
