"""Metering: one usage event per request, exact when the upstream reports, else estimated."""

from __future__ import annotations

import json

from relay import tokens
from tests.relay.conftest import (
    INPUT_PRICE,
    OUTPUT_PRICE,
    PUBLIC_MODEL,
    UPSTREAM_MODEL,
    Gateway,
    Simulator,
    chat_body,
    usage_events,
)


def _use_channel(gateway: Gateway, url: str) -> None:
    """Point the gateway's channel at ``url`` and wait until the relay routes there."""
    gateway.channel.base_url = url
    gateway.channel.save()
    gateway.caught_up()


def test_reported_usage_is_recorded_exactly(gateway: Gateway, sim: Simulator) -> None:
    _use_channel(gateway, sim.channel_url("cached=5", "reasoning=3", "tokens=7"))
    plain = gateway.client.post("/v1/chat/completions", json=chat_body())
    with gateway.client.stream(
        "POST", "/v1/chat/completions", json=chat_body(stream=True)
    ) as streamed:
        streamed.read()

    assert plain.status_code == streamed.status_code == 200
    reported = plain.json()["usage"]
    first, second = usage_events(2)
    for event, stream in ((first, False), (second, True)):
        assert event.stream is stream
        assert event.tenant_id == gateway.tenant.pk
        assert event.api_key_id == gateway.api_key.pk
        assert event.channel_id == gateway.channel.pk
        assert event.model == PUBLIC_MODEL
        assert event.upstream_model == UPSTREAM_MODEL
        assert event.status_code == 200
        assert event.completed
        assert not event.estimated
        assert event.prompt_tokens == reported["prompt_tokens"]
        assert event.completion_tokens == reported["completion_tokens"]
        assert event.cached_tokens == 5
        assert event.reasoning_tokens == 3
        assert event.total_latency_ms >= event.upstream_latency_ms >= 0
        assert event.attempts[-1]["channel"] == gateway.channel.pk
        # The prices in force, and the cost they give, travel with the event.
        assert event.currency == "USD"
        assert event.retail_input_per_mtok == INPUT_PRICE
        assert event.wholesale_output_per_mtok == OUTPUT_PRICE
        uncached = event.prompt_tokens - event.cached_tokens
        expected = (
            uncached * INPUT_PRICE
            + event.cached_tokens * INPUT_PRICE
            + event.completion_tokens * OUTPUT_PRICE
        )
        assert event.cost_retail_micros == (expected + 500_000) // 1_000_000  # half up
        assert event.cost_wholesale_micros == event.cost_retail_micros  # a direct tenant
    assert first.request_id == plain.headers["x-request-id"]
    assert second.request_id == streamed.headers["x-request-id"]


def test_missing_usage_is_counted_locally_and_marked_estimated(
    gateway: Gateway, sim: Simulator
) -> None:
    _use_channel(gateway, sim.channel_url("nousage", "tokens=5"))
    messages = [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "Count to five, please, in words."},
    ]
    plain = gateway.client.post("/v1/chat/completions", json=chat_body(messages=messages))
    body = chat_body(messages=messages, stream=True, stream_options={"include_usage": True})
    with gateway.client.stream("POST", "/v1/chat/completions", json=body) as streamed:
        streamed.read()

    assert "usage" not in plain.json() or plain.json()["usage"] is None
    text = plain.json()["choices"][0]["message"]["content"]
    expected_prompt = tokens.count_prompt(messages)
    expected_completion = tokens.count_text(text)
    # Sanity of the local counter itself: the chat framing plus a non-trivial text count.
    assert expected_prompt > 3 + 2 * 3
    assert expected_completion >= 5
    for event in usage_events(2):
        assert event.estimated
        assert event.prompt_tokens == expected_prompt
        assert event.completion_tokens == expected_completion


def test_a_stream_cut_by_the_upstream_records_what_was_delivered(
    gateway: Gateway, sim: Simulator
) -> None:
    _use_channel(gateway, sim.channel_url("reset_after=3", "tokens=20"))
    with gateway.client.stream(
        "POST", "/v1/chat/completions", json=chat_body(stream=True)
    ) as response:
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]

    assert response.status_code == 200
    assert '"error"' in lines[-1], "the client must learn that the stream broke"
    delivered = "".join(
        choice["delta"].get("content") or ""
        for line in lines[:-1]
        for choice in json.loads(line[len("data: ") :])["choices"]
    )
    assert delivered.startswith("tok0")
    (event,) = usage_events(1)
    assert not event.completed
    assert event.error_code == "upstream_stream_broken"
    assert event.estimated
    assert event.completion_tokens == tokens.count_text(delivered) > 0


def test_every_request_that_reaches_a_model_gets_exactly_one_event(
    gateway: Gateway, sim: Simulator
) -> None:
    ids = set()
    for index in range(12):
        response = gateway.client.post(
            "/v1/chat/completions", json=chat_body(stream=index % 2 == 0)
        )
        ids.add(response.headers["x-request-id"])
    failed = gateway.client.post("/v1/chat/completions", json=chat_body(model="no-such-model"))
    assert failed.status_code == 404

    events = usage_events(12)
    assert {e.request_id for e in events} == ids
    assert len(events) == 12
