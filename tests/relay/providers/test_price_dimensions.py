"""Requests with cache writes, audio and image tokens and service tiers are charged at
those dimensions' prices, not at text prices, through the relay for every dialect and
provider that reports them (the simulator reports what the options ask for)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest

from billing.models import UsageEvent
from billing.pricing import Counts, charges, tenant_price_table
from tests.relay.conftest import (
    INPUT_PRICE,
    OUTPUT_PRICE,
    PUBLIC_MODEL,
    Gateway,
    Simulator,
    price_model,
    usage_events,
)
from tests.relay.providers.conftest import NativeSim, configure

# Every dimension at its own, distinct price (micro-units per million tokens / per image).
DIMENSION_PRICES = {
    "cached_input_per_mtok": 250_000,
    "cache_write_5m_per_mtok": 3_125_000,
    "cache_write_1h_per_mtok": 5_000_000,
    "audio_input_per_mtok": 40_000_000,
    "audio_output_per_mtok": 80_000_000,
    "image_input_per_mtok": 7_000_000,
    "image_output_per_mtok": 30_000_000,
    "priority_percent": 200,
    "flex_percent": 50,
}


@pytest.fixture
def priced(gateway: Gateway) -> Gateway:
    price_model(gateway, **DIMENSION_PRICES)
    return gateway


@pytest.fixture
def sdk(priced: Gateway) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(base_url=priced.url + "/v1", api_key=priced.secret, max_retries=0)
    yield client
    client.close()


def _check_charged(event: UsageEvent, gateway: Gateway, **expected: int) -> None:
    """The event's charges are its counts at the dimensions' prices, and its cost their sum."""
    pair = tenant_price_table(gateway.tenant.pk)[PUBLIC_MODEL]
    counts = Counts(**{f.name: getattr(event, f.name) for f in dataclasses.fields(Counts)})
    found, _ = charges(pair.retail, counts)
    assert event.charges == {d: [q, u, m, u, m] for d, (q, u, m) in found.items()}
    assert event.cost_retail_micros == sum(m for _, _, m in found.values())
    for dimension, quantity in expected.items():
        assert event.charges[dimension][0] == quantity, dimension
    # A dearer dimension made the request dearer than the same tokens at text prices.
    text = Counts(prompt_tokens=counts.prompt_tokens, completion_tokens=counts.completion_tokens)
    at_text = sum(m for _, _, m in charges(pair.retail, text)[0].values())
    assert event.cost_retail_micros != at_text


@pytest.mark.parametrize("stream", [False, True])
def test_chat_audio_image_and_cached_tokens(
    priced: Gateway, sim: Simulator, sdk: openai.OpenAI, stream: bool
) -> None:
    priced.channel.base_url = sim.channel_url("audio_in=40,audio_out=30,image_in=12,cached=2")
    priced.channel.save()
    messages: list[Any] = [{"role": "user", "content": "Say hello"}]
    if stream:
        for _ in sdk.chat.completions.create(model=PUBLIC_MODEL, messages=messages, stream=True):
            pass
    else:
        sdk.chat.completions.create(model=PUBLIC_MODEL, messages=messages)
    [event] = usage_events(1)
    assert (event.audio_input_tokens, event.audio_output_tokens) == (40, 30)
    assert event.image_input_tokens == 12 and event.cached_tokens == 2
    _check_charged(event, priced, audio_input=40, audio_output=30, image_input=12, cached_input=2)
    assert event.charges["audio_output"][1] == 80_000_000


def test_chat_priority_tier_doubles_token_prices(
    priced: Gateway, sim: Simulator, sdk: openai.OpenAI
) -> None:
    priced.channel.base_url = sim.channel_url("tier=priority")
    priced.channel.save()
    sdk.chat.completions.create(model=PUBLIC_MODEL, messages=[{"role": "user", "content": "Hi"}])
    [event] = usage_events(1)
    assert event.service_tier == "priority"
    assert event.charges["input"][1] == 2 * INPUT_PRICE
    assert event.charges["output"][1] == 2 * OUTPUT_PRICE
    _check_charged(event, priced)


@pytest.mark.parametrize("stream", [False, True])
def test_responses_cache_writes(
    priced: Gateway, sim: Simulator, sdk: openai.OpenAI, stream: bool
) -> None:
    priced.channel.base_url = sim.channel_url("cache_write=4,cached=1,audio_out=3")
    priced.channel.native_surfaces = ["responses"]
    priced.channel.save()
    if stream:
        for _ in sdk.responses.create(
            model=PUBLIC_MODEL, input="Say hello to the cache", stream=True
        ):
            pass
    else:
        sdk.responses.create(model=PUBLIC_MODEL, input="Say hello to the cache")
    [event] = usage_events(1)
    assert event.surface == "responses"
    assert (event.cache_write_tokens, event.cached_tokens, event.audio_output_tokens) == (4, 1, 3)
    _check_charged(event, priced, cache_write_5m=4, cached_input=1, audio_output=3)
    assert event.charges["cache_write_5m"][1] == 3_125_000


@pytest.mark.parametrize("stream", [False, True])
def test_messages_cache_writes_by_time_to_live(
    priced: Gateway, sim: Simulator, stream: bool
) -> None:
    priced.channel.base_url = sim.channel_url("cache_write=6,cache_write_1h=2,cached=3")
    priced.channel.native_surfaces = ["messages"]
    priced.channel.save()
    with anthropic.Anthropic(base_url=priced.url, api_key=priced.secret, max_retries=0) as client:
        messages: Any = [{"role": "user", "content": "Hello there, cache me please"}]
        if stream:
            with client.messages.stream(model=PUBLIC_MODEL, max_tokens=5, messages=messages) as s:
                s.get_final_message()
        else:
            client.messages.create(model=PUBLIC_MODEL, max_tokens=5, messages=messages)
    [event] = usage_events(1)
    assert event.surface == "messages"
    assert (event.cache_write_tokens, event.cache_write_1h_tokens) == (6, 2)
    _check_charged(event, priced, cache_write_5m=4, cache_write_1h=2, cached_input=3)


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_channel_cache_writes_reach_chat_clients(
    priced: Gateway,
    sdk: openai.OpenAI,
    native_sim: NativeSim,
    sa_info: dict[str, Any],
    stream: bool,
) -> None:
    """A stream's last usage (``message_delta``) repeats the prompt's totals without their
    breakdown by time to live: the one-hour writes are still billed as such."""
    configure(priced.channel, "anthropic", native_sim, sa_info, "cache_write=5,cache_write_1h=5")
    messages: Any = [{"role": "user", "content": "Hi"}]
    if stream:
        for _ in sdk.chat.completions.create(model=PUBLIC_MODEL, messages=messages, stream=True):
            pass
    else:
        sdk.chat.completions.create(model=PUBLIC_MODEL, messages=messages)
    [event] = usage_events(1)
    assert (event.cache_write_tokens, event.cache_write_1h_tokens) == (5, 5)
    _check_charged(event, priced, cache_write_1h=5)


@pytest.mark.parametrize("provider", ["gemini", "vertex"])
@pytest.mark.parametrize("stream", [False, True])
def test_gemini_modalities(
    provider: str,
    stream: bool,
    priced: Gateway,
    sdk: openai.OpenAI,
    native_sim: NativeSim,
    sa_info: dict[str, Any],
) -> None:
    configure(priced.channel, provider, native_sim, sa_info, "audio_in=11,audio_out=9,image_out=4")
    messages: list[Any] = [{"role": "user", "content": "Sing"}]
    if stream:
        for _ in sdk.chat.completions.create(model=PUBLIC_MODEL, messages=messages, stream=True):
            pass
    else:
        sdk.chat.completions.create(model=PUBLIC_MODEL, messages=messages)
    [event] = usage_events(1)
    assert (event.audio_input_tokens, event.audio_output_tokens) == (11, 9)
    assert event.image_output_tokens == 4
    _check_charged(event, priced, audio_input=11, audio_output=9, image_output=4)
