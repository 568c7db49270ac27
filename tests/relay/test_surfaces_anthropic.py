"""The official anthropic Python SDK, unmodified, on the relay's Messages API: passed
through to a channel that speaks Messages, and translated to chat completions for an
OpenAI-compatible one."""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import httpx
import orjson
import pytest

from relay import errors, tokens
from tests.relay.conftest import PUBLIC_MODEL, Gateway, Simulator, prepaid, usage_events

IMAGE = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYGBgAAAABQABpfZFQAAAAABJRU5E"
    "rkJggg=="
)
TOOLS: list[anthropic.types.ToolParam] = [
    {
        "name": "get_weather",
        "description": "The weather in a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
]


@pytest.fixture(params=["native", "translated"])
def mode(request: pytest.FixtureRequest, gateway: Gateway) -> str:
    if request.param == "native":
        gateway.channel.native_surfaces = ["messages"]
        gateway.channel.save()
    return str(request.param)


@pytest.fixture
def client(gateway: Gateway) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(
        base_url=gateway.url, api_key=gateway.secret, max_retries=0
    ) as sdk:  # the SDK sends the key as x-api-key
        yield sdk


def test_messages_create_with_system_and_image(client: anthropic.Anthropic, mode: str) -> None:
    message = client.messages.create(
        model=PUBLIC_MODEL,
        max_tokens=100,
        system="You describe pictures.",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": IMAGE},
                    },
                ],
            }
        ],
    )
    assert message.type == "message" and message.model == PUBLIC_MODEL
    assert message.content[0].type == "text" and message.content[0].text.startswith("tok0")
    assert message.stop_reason == "end_turn"
    [event] = usage_events(1)
    assert event.surface == "messages" and not event.estimated
    assert event.completion_tokens == message.usage.output_tokens
    assert event.prompt_tokens == message.usage.input_tokens
    # The SDK reads the request id from Anthropic's header; it is the id the usage names.
    assert message._request_id == event.request_id and event.request_id.startswith("req_")


def test_messages_streamed(client: anthropic.Anthropic, mode: str) -> None:
    with client.messages.stream(
        model=PUBLIC_MODEL, max_tokens=5, messages=[{"role": "user", "content": "Hello"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "tok0 tok1 tok2 tok3 tok4"
    assert final.stop_reason == "max_tokens"
    assert final.usage.output_tokens == 5
    [event] = usage_events(1)
    assert event.surface == "messages" and event.stream and event.completed
    assert event.completion_tokens == 5 and not event.estimated
    assert final.usage.input_tokens == event.prompt_tokens > 0


def test_a_streams_prompt_and_cache_counts_reach_the_sdks_final_message(
    gateway: Gateway, mode: str
) -> None:
    """Translated, the prompt's counts are known only at the stream's end: they come in
    ``message_delta`` (cumulative, as Anthropic's current API repeats them), where the SDK
    takes them into its final message; ``ping`` follows ``message_start`` as Anthropic's."""
    gateway.channel.base_url = gateway.channel.base_url.replace("/sim/key=", "/sim/cached=2,key=")
    gateway.channel.save()
    gateway.caught_up()
    body = {
        "model": PUBLIC_MODEL,
        "max_tokens": 5,
        "stream": True,
        "messages": [{"role": "user", "content": "Hello there, how are you today?"}],
    }
    headers = {"x-api-key": gateway.secret, "anthropic-version": "2023-06-01"}
    with httpx.stream(
        "POST", gateway.url + "/v1/messages", headers=headers, json=body, timeout=30
    ) as response:
        names = [line[7:] for line in response.iter_lines() if line.startswith("event: ")]
    assert names[:2] == ["message_start", "ping"] and names[-1] == "message_stop"
    with (
        anthropic.Anthropic(base_url=gateway.url, api_key=gateway.secret, max_retries=0) as sdk,
        sdk.messages.stream(model=PUBLIC_MODEL, max_tokens=5, messages=body["messages"]) as stream,
    ):
        final = stream.get_final_message()
    first, second = usage_events(2)
    assert first.prompt_tokens == second.prompt_tokens and second.cached_tokens == 2
    usage = final.usage
    assert usage.cache_read_input_tokens == 2 and not usage.cache_creation_input_tokens
    assert usage.input_tokens == second.prompt_tokens - 2
    assert usage.output_tokens == second.completion_tokens == 5


def test_tool_use_round_trip(client: anthropic.Anthropic, mode: str) -> None:
    question: anthropic.types.MessageParam = {"role": "user", "content": "Weather in Oslo?"}
    first = client.messages.create(
        model=PUBLIC_MODEL, max_tokens=100, tools=TOOLS, messages=[question]
    )
    assert first.stop_reason == "tool_use"
    [use] = [block for block in first.content if block.type == "tool_use"]
    assert use.name == "get_weather"
    second = client.messages.create(
        model=PUBLIC_MODEL,
        max_tokens=100,
        tools=TOOLS,
        messages=[
            question,
            {"role": "assistant", "content": first.content},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}],
            },
        ],
    )
    assert second.stop_reason == "end_turn"
    assert second.content[0].type == "text"


def test_streamed_tool_use(client: anthropic.Anthropic, mode: str) -> None:
    with client.messages.stream(
        model=PUBLIC_MODEL,
        max_tokens=100,
        tools=TOOLS,
        messages=[{"role": "user", "content": "Weather?"}],
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert final.content[-1].type == "tool_use" and final.content[-1].input == {}


def test_count_tokens(client: anthropic.Anthropic, mode: str) -> None:
    counted = client.messages.count_tokens(
        model=PUBLIC_MODEL, system="rules", messages=[{"role": "user", "content": "one two"}]
    )
    assert counted.input_tokens > 0
    assert usage_events(0) == []


def test_the_sdks_beta_client_is_served_as_the_plain_one(
    client: anthropic.Anthropic, gateway: Gateway, sim: Simulator
) -> None:
    """Claude Code and others call through the SDK's beta client: ``?beta=true`` on the
    path and the beta names in ``anthropic-beta``; those known to be billed as tokens only
    reach a native channel, the others are dropped."""
    gateway.channel.native_surfaces = ["messages"]
    gateway.channel.save()
    gateway.caught_up()
    sim.client.delete("/_sim/requests")
    message = client.beta.messages.create(
        model=PUBLIC_MODEL,
        max_tokens=20,
        messages=[{"role": "user", "content": "hello"}],
        betas=["interleaved-thinking-2025-05-14", "made-up-beta-2031-01-01"],
    )
    counted = client.beta.messages.count_tokens(
        model=PUBLIC_MODEL,
        messages=[{"role": "user", "content": "one two"}],
        betas=["computer-use-2025-01-24", "made-up-beta-2031-01-01"],
    )
    assert message.type == "message" and message.model == PUBLIC_MODEL
    assert counted.input_tokens > 0
    [event] = usage_events(1)
    assert event.completion_tokens == message.usage.output_tokens
    sent = [r for r in sim.requests() if r["path"].endswith("/v1/messages")]
    assert len(sent) == 1
    assert sent[0]["headers"].get("anthropic-beta") == "interleaved-thinking-2025-05-14"
    # A count carries the betas its request would (the tools they enable), as filtered.
    [count] = [r for r in sim.requests() if r["path"].endswith("/count_tokens")]
    assert count["headers"].get("anthropic-beta") == (
        "computer-use-2025-01-24,token-counting-2024-11-01"  # the SDK adds the last
    )


def test_cache_reads_and_writes_are_metered(gateway: Gateway, sim: object) -> None:
    gateway.channel.native_surfaces = ["messages"]
    gateway.channel.base_url = gateway.channel.base_url.replace("/v1", "").rstrip("/")
    gateway.channel.base_url = (
        gateway.channel.base_url.replace("/sim/key=", "/sim/cached=2,cache_write=3,key=") + "/v1"
    )
    gateway.channel.save()
    answer = httpx.post(
        gateway.url + "/v1/messages",
        headers={"x-api-key": gateway.secret, "anthropic-version": "2023-06-01"},
        json={
            "model": PUBLIC_MODEL,
            "max_tokens": 10,
            "system": [
                {"type": "text", "text": "long rules", "cache_control": {"type": "ephemeral"}}
            ],
            "messages": [{"role": "user", "content": "hi"}],
        },
    ).json()
    assert answer["usage"]["cache_read_input_tokens"] == 2
    assert answer["usage"]["cache_creation_input_tokens"] == 3
    [event] = usage_events(1)
    assert event.cached_tokens == 2 and event.cache_write_tokens == 3
    assert event.prompt_tokens == answer["usage"]["input_tokens"] + 5


def test_a_cut_stream_is_billed_for_its_prompt_counts_and_the_text_it_delivered(
    gateway: Gateway, sim: object
) -> None:
    """A client that reads part of a passed-through stream and hangs up is billed for the
    provider's counts of the prompt (``message_start``'s, cache reads and writes included)
    and for the text it received, counted here: not for the single output token that
    ``message_start`` reports, which would make every cut stream's answer nearly free."""
    gateway.channel.native_surfaces = ["messages"]
    gateway.channel.base_url = gateway.channel.base_url.replace(
        "/sim/key=", "/sim/cached=2,cache_write=3,hang_after=6,key="
    )
    gateway.channel.save()
    body = {
        "model": PUBLIC_MODEL,
        "max_tokens": 64,
        "stream": True,
        "system": "long rules",
        "messages": [{"role": "user", "content": "tell me a long story"}],
    }
    headers = {"x-api-key": gateway.secret, "anthropic-version": "2023-06-01"}
    start: dict[str, int] = {}
    text, pieces = "", 0
    with httpx.stream(
        "POST", gateway.url + "/v1/messages", headers=headers, json=body, timeout=30
    ) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            event = orjson.loads(line[len("data: ") :])
            if event["type"] == "message_start":
                start = event["message"]["usage"]
            elif event["type"] == "content_block_delta":
                text += event["delta"]["text"]
                pieces += 1
                if pieces == 6:
                    break  # and hang up, the stream's end not yet sent
    assert start["output_tokens"] == 1
    [event] = usage_events(1)
    assert (event.completed, event.error_code) == (False, "client_disconnected")
    assert event.estimated
    assert (event.cached_tokens, event.cache_write_tokens) == (2, 3)
    assert event.prompt_tokens == start["input_tokens"] + 2 + 3
    assert event.completion_tokens == tokens.count_text(text) > 1


def test_errors_use_anthropic_envelope(gateway: Gateway) -> None:
    refused = httpx.post(
        gateway.url + "/v1/messages",
        headers={"x-api-key": "sk-wrong"},
        json={
            "model": PUBLIC_MODEL,
            "max_tokens": 5,
            "messages": [{"role": "user", "content": "x"}],
        },
    )
    assert refused.status_code == 401
    assert refused.json()["type"] == "error"
    assert refused.json()["error"]["type"] == "authentication_error"
    missing = httpx.post(
        gateway.url + "/v1/messages",
        headers={"x-api-key": gateway.secret},
        json={"model": PUBLIC_MODEL, "messages": [{"role": "user", "content": "x"}]},
    )
    assert missing.status_code == 400
    assert missing.json()["error"]["type"] == "invalid_request_error"
    # x-api-key counts only on Anthropic's API
    other = httpx.get(gateway.url + "/v1/models", headers={"x-api-key": gateway.secret})
    assert other.status_code == 401 and "error" in other.json()


def test_a_request_nobody_will_pay_for_is_anthropics_billing_error(
    gateway: Gateway, sim: Simulator
) -> None:
    """Not OpenAI's 429 ``insufficient_quota``: Anthropic's SDKs (and Claude Code) retry a
    429 as a rate limit, but not a 402."""
    prepaid(gateway, 0)
    sim.client.delete("/_sim/requests")
    sdk = anthropic.Anthropic(base_url=gateway.url, api_key=gateway.secret, max_retries=2)
    with sdk, pytest.raises(anthropic.APIStatusError) as caught:
        sdk.messages.create(
            model=PUBLIC_MODEL, max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    assert caught.value.status_code == 402
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["error"]["type"] == "billing_error"
    assert sim.requests() == []
    # OpenAI's clients still get OpenAI's answer; Anthropic's a timeout is its own type.
    refused = gateway.client.post(
        "/v1/chat/completions",
        json={"model": PUBLIC_MODEL, "messages": [{"role": "user", "content": "x"}]},
    )
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "insufficient_quota"
    timeout = errors.RelayError(504, "late", type="server_error").anthropic_payload()
    assert timeout["error"] == {"type": "timeout_error", "message": "late"}


def test_the_anthropic_sdk_sees_the_request_id_of_an_error_and_of_a_stream(
    client: anthropic.Anthropic, gateway: Gateway
) -> None:
    with pytest.raises(anthropic.NotFoundError) as caught:
        client.messages.create(
            model="no-such-model", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    error = caught.value
    assert error.request_id is not None and error.request_id.startswith("req_")
    assert isinstance(error.body, dict) and error.body["request_id"] == error.request_id
    assert error.response.headers["x-request-id"] == error.request_id

    with client.messages.stream(
        model=PUBLIC_MODEL, max_tokens=5, messages=[{"role": "user", "content": "x"}]
    ) as stream:
        stream.until_done()
        streamed_id = stream.response.headers.get("request-id")
    [event] = usage_events(1)
    assert streamed_id == event.request_id
    # OpenAI's clients are not sent Anthropic's header.
    plain = gateway.client.get("/v1/models")
    assert "request-id" not in plain.headers and plain.headers["x-request-id"]
