"""Native provider channels on the request path, over loopback with the official SDKs:
chat completions and Messages clients get answers, streams, tool calls and usage from
Anthropic, Gemini, Vertex AI, Bedrock and Azure channels; failover crosses provider
types; a Bedrock channel whose signature is refused is suspended."""

from __future__ import annotations

import json
import time
from typing import Any

import anthropic
import openai
import pytest

from portal.models import Channel
from relay import tokens
from relay.simulator.anthropic import count_input
from tests.relay.conftest import PUBLIC_MODEL, Gateway, Simulator, usage_events
from tests.relay.providers.conftest import (
    ANTHROPIC_KEY,
    AWS_ACCESS_KEY,
    WEATHER_TOOL,
    NativeSim,
    configure,
)

PROVIDERS = ["anthropic", "gemini", "vertex", "bedrock", "azure"]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_chat_clients_get_answers_streams_tools_and_usage(
    provider: str,
    gateway: Gateway,
    sdk: openai.OpenAI,
    native_sim: NativeSim,
    sa_info: dict[str, Any],
) -> None:
    configure(
        gateway.channel,
        provider,
        native_sim,
        sa_info,
        "tokens=3,cached=4,cache_write=2,reasoning=5",
    )
    messages: list[Any] = [{"role": "user", "content": "Say hello to the gateway"}]
    plain = sdk.chat.completions.create(model=PUBLIC_MODEL, messages=messages)
    assert plain.model == PUBLIC_MODEL
    assert plain.choices[0].message.content == "tok0 tok1 tok2"
    assert plain.usage is not None and plain.usage.completion_tokens == 3 + 5

    stream = sdk.chat.completions.create(
        model=PUBLIC_MODEL, messages=messages, stream=True, stream_options={"include_usage": True}
    )
    text, usage = "", None
    for chunk in stream:
        assert chunk.model == PUBLIC_MODEL
        for choice in chunk.choices:
            text += choice.delta.content or ""
        usage = chunk.usage or usage
    assert text == "tok0 tok1 tok2"
    assert usage is not None and usage.completion_tokens == 3 + 5

    tooled = sdk.chat.completions.create(
        model=PUBLIC_MODEL, messages=messages, tools=[WEATHER_TOOL]
    )
    assert tooled.choices[0].finish_reason == "tool_calls"
    call = tooled.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    answered = sdk.chat.completions.create(
        model=PUBLIC_MODEL,
        tools=[WEATHER_TOOL],
        messages=[
            *messages,
            tooled.choices[0].message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
        ],
    )
    assert answered.choices[0].message.content == "tok0 tok1 tok2"

    events = usage_events(4)
    assert len(events) == 4 and {e.channel_id for e in events} == {gateway.channel.pk}
    first = events[0]
    assert first.completion_tokens == 3 + 5
    if provider in ("anthropic", "bedrock"):  # they report cache writes
        assert (first.cached_tokens, first.cache_write_tokens) == (4, 2)
    else:
        assert first.cached_tokens == 4
    if provider in ("gemini", "vertex", "azure"):  # they report reasoning apart
        assert first.reasoning_tokens == 5


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_stream_arriving_in_many_reads_is_relayed_whole(
    provider: str,
    gateway: Gateway,
    sdk: openai.OpenAI,
    native_sim: NativeSim,
    sa_info: dict[str, Any],
) -> None:
    """The simulator's streams reach the relay in one read unless told otherwise: here
    its bytes come a few at a time, so each provider's decoder meets events split across
    reads and the relay relays them as they come."""
    configure(gateway.channel, provider, native_sim, sa_info, "tokens=4,trickle=1")
    stream = sdk.chat.completions.create(
        model=PUBLIC_MODEL,
        messages=[{"role": "user", "content": "Say hello"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.split() == ["tok0", "tok1", "tok2", "tok3"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 4
    (event,) = usage_events(1)
    assert event.completed and not event.estimated


def test_messages_clients_get_a_bedrock_answer(
    gateway: Gateway, native_sim: NativeSim, sa_info: dict[str, Any]
) -> None:
    configure(gateway.channel, "bedrock", native_sim, sa_info, "tokens=2")
    client = anthropic.Anthropic(base_url=gateway.url, api_key=gateway.secret, max_retries=0)
    message = client.messages.create(
        model=PUBLIC_MODEL, max_tokens=50, messages=[{"role": "user", "content": "Hi there"}]
    )
    assert message.content[0].text == "tok0 tok1"
    with client.messages.stream(
        model=PUBLIC_MODEL, max_tokens=50, messages=[{"role": "user", "content": "Hi there"}]
    ) as stream:
        assert "".join(stream.text_stream) == "tok0 tok1"
    client.close()


def test_messages_clients_see_thinking_from_another_provider_only_when_they_ask(
    gateway: Gateway, native_sim: NativeSim, sa_info: dict[str, Any]
) -> None:
    """Claude's reasoning through Bedrock reaches a Messages client as ``thinking`` blocks
    (signed, whole; streamed, as thinking deltas) when it asked for thinking, and not
    otherwise, as Anthropic's own API answers."""
    configure(gateway.channel, "bedrock", native_sim, sa_info, "tokens=2,reasoning=5")
    turn = [{"role": "user", "content": "Hi there"}]
    asked: Any = {"type": "enabled", "budget_tokens": 1024}
    with anthropic.Anthropic(base_url=gateway.url, api_key=gateway.secret, max_retries=0) as ant:
        shown = ant.messages.create(
            model=PUBLIC_MODEL, max_tokens=2000, messages=turn, thinking=asked
        )
        assert [(b.type, getattr(b, "thinking", None)) for b in shown.content] == [
            ("thinking", "sim thought"),
            ("text", None),
        ]
        assert shown.content[0].signature == "sig"
        with ant.messages.stream(
            model=PUBLIC_MODEL, max_tokens=2000, messages=turn, thinking=asked
        ) as stream:
            final = stream.get_final_message()
        assert [b.type for b in final.content] == ["thinking", "text"]
        assert final.content[0].thinking == "sim thought"
        hidden = ant.messages.create(model=PUBLIC_MODEL, max_tokens=50, messages=turn)
        assert [b.type for b in hidden.content] == ["text"]


def test_chat_clients_without_a_cap_get_the_models_whole_output_from_anthropic(
    gateway: Gateway, native_sim: NativeSim, sa_info: dict[str, Any]
) -> None:
    """Anthropic requires ``max_tokens``: a client that set none is sent the figure its
    request was held for, the model's output limit from the catalog, rather than a
    smaller one that would cut a long answer short; a client's own cap is sent as is."""
    configure(gateway.channel, "anthropic", native_sim, sa_info)
    gateway.model.max_output_tokens = 50_000
    gateway.model.save()
    gateway.caught_up()
    turn = [{"role": "user", "content": "Hi"}]
    for extra, sent in (({}, 50_000), ({"max_tokens": 77}, 77)):
        answer = gateway.client.post(
            "/v1/chat/completions", json={"model": PUBLIC_MODEL, "messages": turn, **extra}
        )
        assert answer.status_code == 200, answer.text
        assert native_sim.requests()[-1]["body"]["max_tokens"] == sent


def test_messages_to_an_anthropic_channel_pass_through_unchanged(
    gateway: Gateway, native_sim: NativeSim, sa_info: dict[str, Any]
) -> None:
    configure(gateway.channel, "anthropic", native_sim, sa_info)
    body = {
        "model": PUBLIC_MODEL,
        "max_tokens": 20,
        "system": [{"type": "text", "text": "Cached.", "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": "Hi there"}],
    }
    response = gateway.client.post("/v1/messages", json=body)
    assert response.status_code == 200, response.text
    sent = native_sim.requests()[-1]
    assert sent["path"].endswith("/v1/messages")
    assert sent["body"] == {**body, "model": "sim-upstream"}
    assert sent["headers"]["x-api-key"] == ANTHROPIC_KEY


@pytest.mark.parametrize(
    ("provider", "failure"),
    [
        ("anthropic", "fail=529"),
        # Bedrock's ResourceNotFound (a model the region or account lacks: the channel's
        # set-up) and ModelError (the model failed while answering): neither the client's.
        ("bedrock", "fail=404"),
        ("bedrock", "fail=424"),
    ],
)
def test_a_failing_native_channel_hands_over_to_an_openai_channel(
    gateway: Gateway,
    sim: Simulator,
    sdk: openai.OpenAI,
    native_sim: NativeSim,
    sa_info: dict[str, Any],
    provider: str,
    failure: str,
) -> None:
    configure(gateway.channel, provider, native_sim, sa_info, failure)
    gateway.channel.priority = 10
    gateway.channel.save()
    backup = gateway.add_channel(sim.channel_url(), name="openai-backup", priority=0)
    answer = sdk.chat.completions.create(
        model=PUBLIC_MODEL, messages=[{"role": "user", "content": "Say hello"}]
    )
    assert answer.choices[0].message.content.startswith("tok0")
    assert native_sim.requests()  # the failing channel was tried first
    (event,) = usage_events(1)
    assert event.channel_id == backup.pk
    assert [a["channel"] for a in event.attempts] == [gateway.channel.pk, backup.pk]


def test_content_one_provider_cannot_carry_goes_to_a_channel_that_can(
    gateway: Gateway,
    sim: Simulator,
    sdk: openai.OpenAI,
    native_sim: NativeSim,
    sa_info: dict[str, Any],
) -> None:
    """An image by URL, which Bedrock takes only inline: the Bedrock channel is passed
    over (nothing sent to it, nothing counted against it) and the next channel answers,
    rather than the client being refused for what another channel of the model serves."""
    configure(gateway.channel, "bedrock", native_sim, sa_info)
    gateway.channel.priority = 10
    gateway.channel.save()
    backup = gateway.add_channel(sim.channel_url(), name="openai-backup", priority=0)
    image = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    content: Any = [{"type": "text", "text": "What is this?"}, image]
    answer = sdk.chat.completions.create(
        model=PUBLIC_MODEL, messages=[{"role": "user", "content": content}]
    )
    assert answer.choices[0].message.content.startswith("tok0")
    assert native_sim.requests() == []
    (event,) = usage_events(1)
    assert event.channel_id == backup.pk
    assert [a["channel"] for a in event.attempts] == [backup.pk]
    # With no channel that can carry it, the client hears why.
    backup.delete()
    deadline = time.monotonic() + 10
    while True:  # until the relay's routes no longer hold the deleted channel
        refused = gateway.client.post(
            "/v1/chat/completions",
            json={"model": PUBLIC_MODEL, "messages": [{"role": "user", "content": content}]},
        )
        if refused.status_code != 200 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert refused.status_code == 400, refused.text
    assert "Bedrock takes images inline" in refused.json()["error"]["message"]
    assert native_sim.requests() == []


@pytest.mark.parametrize("provider", ["anthropic", "gemini", "vertex", "bedrock"])
def test_several_choices_go_to_a_channel_that_gives_them(
    gateway: Gateway,
    sim: Simulator,
    native_sim: NativeSim,
    sa_info: dict[str, Any],
    provider: str,
) -> None:
    """Chat's ``n``: a provider spoken natively answers with one choice, so a request for
    three is not sent to it (the client would get one, or pay for unseen ones); an
    OpenAI-compatible channel of the model serves it, and without one the client hears
    why."""
    configure(gateway.channel, provider, native_sim, sa_info)
    gateway.channel.priority = 10
    gateway.channel.save()
    backup = gateway.add_channel(sim.channel_url(), name="openai-backup", priority=0)
    body = {"model": PUBLIC_MODEL, "messages": [{"role": "user", "content": "Hi"}], "n": 3}
    served = gateway.client.post("/v1/chat/completions", json=body)
    assert served.status_code == 200, served.text
    assert [choice["index"] for choice in served.json()["choices"]] == [0, 1, 2]
    assert native_sim.requests() == []
    (event,) = usage_events(1)
    assert [a["channel"] for a in event.attempts] == [backup.pk]
    backup.delete()
    gateway.caught_up()
    for stream in (False, True):
        refused = gateway.client.post("/v1/chat/completions", json={**body, "stream": stream})
        assert refused.status_code == 400, refused.text
        assert "n must be 1" in refused.json()["error"]["message"]
    assert native_sim.requests() == []
    one = gateway.client.post("/v1/chat/completions", json={**body, "n": 1})
    assert one.status_code == 200, one.text
    assert [r for r in native_sim.requests() if r["path"] != "/oauth2/token"]  # Vertex's token


def test_a_cut_anthropic_stream_is_billed_for_its_prompt_counts_and_delivered_text(
    gateway: Gateway, native_sim: NativeSim, sa_info: dict[str, Any]
) -> None:
    """A chat client reading part of a stream from an Anthropic channel, then hanging up:
    billed for the provider's counts of the prompt (cache reads and writes as such, not
    as full-price input counted here) and for the text it received."""
    configure(
        gateway.channel, "anthropic", native_sim, sa_info, "cached=2,cache_write=3,hang_after=6"
    )
    body = {
        "model": PUBLIC_MODEL,
        "stream": True,
        "messages": [{"role": "user", "content": "Tell me a long story"}],
    }
    text, pieces = "", 0
    with gateway.client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            for choice in json.loads(line[len("data: ") :]).get("choices") or ():
                content = (choice.get("delta") or {}).get("content")
                if content:
                    text += content
                    pieces += 1
            if pieces == 6:
                break  # and hang up, the stream's end not yet sent
    (event,) = usage_events(1)
    assert (event.completed, event.error_code) == (False, "client_disconnected")
    assert event.estimated
    assert (event.cached_tokens, event.cache_write_tokens) == (2, 3)
    [sent] = native_sim.requests()
    assert sent["path"].endswith("/v1/messages")
    # The simulator's own count of the prompt it was sent, as message_start reported it.
    assert event.prompt_tokens == count_input(sent["body"]) > 2 + 3
    assert event.completion_tokens == tokens.count_text(text) > 1


def test_bedrock_wrong_secret_suspends_the_channel_and_fails_over(
    gateway: Gateway,
    sim: Simulator,
    sdk: openai.OpenAI,
    native_sim: NativeSim,
    sa_info: dict[str, Any],
) -> None:
    configure(gateway.channel, "bedrock", native_sim, sa_info)
    gateway.channel.secret = json.dumps(
        {"access_key_id": AWS_ACCESS_KEY, "secret_access_key": "not-the-secret"}
    )
    gateway.channel.priority = 10
    gateway.channel.save()
    backup = gateway.add_channel(sim.channel_url(), name="openai-backup", priority=0)
    answer = sdk.chat.completions.create(
        model=PUBLIC_MODEL, messages=[{"role": "user", "content": "Say hello"}]
    )
    assert answer.choices[0].message.content.startswith("tok0")
    (event,) = usage_events(1)
    assert event.channel_id == backup.pk
    deadline = time.monotonic() + 10
    while Channel.objects.get(pk=gateway.channel.pk).status != Channel.Status.SUSPENDED:
        assert time.monotonic() < deadline, "the Bedrock channel was not suspended"
        time.sleep(0.05)
    assert "credentials" in Channel.objects.get(pk=gateway.channel.pk).status_reason


@pytest.mark.parametrize("provider", PROVIDERS)
def test_responses_clients_get_answers_streams_and_tool_calls(
    provider: str,
    gateway: Gateway,
    sdk: openai.OpenAI,
    native_sim: NativeSim,
    sa_info: dict[str, Any],
) -> None:
    configure(gateway.channel, provider, native_sim, sa_info, "tokens=3,cached=4")
    plain = sdk.responses.create(model=PUBLIC_MODEL, input="Say hello", store=False)
    assert plain.output_text == "tok0 tok1 tok2"
    assert plain.usage is not None and plain.usage.input_tokens_details.cached_tokens == 4
    streamed = sdk.responses.create(model=PUBLIC_MODEL, input="Say hello", stream=True, store=False)
    kinds, text = [], ""
    for event in streamed:
        kinds.append(event.type)
        if event.type == "response.output_text.delta":
            text += event.delta
    assert text == "tok0 tok1 tok2" and kinds[-1] == "response.completed"
    tool = {
        "type": "function",
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
    called = sdk.responses.create(model=PUBLIC_MODEL, input="Weather?", tools=[tool], store=False)
    calls = [item for item in called.output if item.type == "function_call"]
    assert [call.name for call in calls] == ["get_weather"]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_messages_clients_get_answers_streams_and_tool_use(
    provider: str, gateway: Gateway, native_sim: NativeSim, sa_info: dict[str, Any]
) -> None:
    configure(gateway.channel, provider, native_sim, sa_info, "tokens=2,cached=3,cache_write=1")
    client = anthropic.Anthropic(base_url=gateway.url, api_key=gateway.secret, max_retries=0)
    asked: list[Any] = [{"role": "user", "content": "Hi there"}]
    message = client.messages.create(
        model=PUBLIC_MODEL, max_tokens=50, system="Be brief.", messages=asked
    )
    assert message.content[0].text == "tok0 tok1"
    assert message.usage.cache_read_input_tokens == 3
    with client.messages.stream(model=PUBLIC_MODEL, max_tokens=50, messages=asked) as stream:
        assert "".join(stream.text_stream) == "tok0 tok1"
        final = stream.get_final_message()
    assert final.usage.output_tokens == 2
    tool = {
        "name": "get_weather",
        "description": "Weather",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
    used = client.messages.create(model=PUBLIC_MODEL, max_tokens=50, messages=asked, tools=[tool])
    assert used.stop_reason == "tool_use"
    assert [b.name for b in used.content if b.type == "tool_use"] == ["get_weather"]
    client.close()


def test_apis_without_a_canonical_form_skip_native_channels(
    gateway: Gateway, sim: Simulator, native_sim: NativeSim, sa_info: dict[str, Any]
) -> None:
    configure(gateway.channel, "bedrock", native_sim, sa_info)
    gateway.channel.priority = 10
    gateway.channel.save()
    body = {"model": PUBLIC_MODEL, "prompt": "Once upon a time", "max_tokens": 5}
    refused = gateway.client.post("/v1/completions", json=body)
    assert refused.status_code == 400, refused.text
    assert native_sim.requests() == []  # nothing was sent to Bedrock
    backup = gateway.add_channel(sim.channel_url(), name="openai-backup", priority=0)
    deadline, sent = time.monotonic() + 10, 1
    while (answer := gateway.client.post("/v1/completions", json=body)).status_code != 200:
        assert time.monotonic() < deadline, answer.text
        sent += 1
    served = [e for e in usage_events(sent + 1) if e.status_code == 200]
    assert [e.channel_id for e in served] == [backup.pk]
    assert Channel.objects.get(pk=gateway.channel.pk).status == Channel.Status.ENABLED
