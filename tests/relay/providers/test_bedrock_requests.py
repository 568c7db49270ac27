"""Converse requests Bedrock takes: a history with tool calls always comes with its tools
declared (or told in words when there are none), Anthropic's extended thinking goes
only to Anthropic models, with a budget and sampling settings they accept, and a cache
breakpoint asking for an hour gets a one-hour cache point where Bedrock keeps one, its
writes billed by the TTL Bedrock reports. The simulator refuses what Bedrock refuses
(and checks every request against botocore's service model), so each request here is
checked by it as well."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from portal.models import ChannelModel
from relay.providers import client
from relay.providers.bedrock import request_body, usage
from relay.simulator.native.bedrock import TOOL_CONFIG_MISSING, refusal, shape_problem
from relay.translate import canonical as c
from relay.translate import messages
from tests.relay.conftest import PUBLIC_MODEL, Gateway, price_model, usage_events
from tests.relay.providers.conftest import (
    CHAT,
    WEATHER_TOOL,
    NativeSim,
    canonical,
    complete,
    configure,
    run,
    summarise,
)
from tests.relay.providers.test_bedrock import MODEL, adapter

NOVA = "amazon.nova-pro-v1:0"
PROFILE = "us.anthropic.claude-3-7-sonnet-20250219-v1:0"
CALL = {
    "id": "tooluse_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
}
# A conversation that used a tool, then moved on.
TOOL_HISTORY: list[dict[str, Any]] = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "tooluse_1", "content": "sunny"},
    {"role": "user", "content": "Summarise that in one word."},
]


def sent(sim: NativeSim) -> dict[str, Any]:
    body: dict[str, Any] = sim.requests()[-1]["body"]
    return body


def blocks(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [block for message in body["messages"] for block in message["content"]]


def test_tool_choice_none_with_a_tool_history_declares_the_tools(native_sim: NativeSim) -> None:
    asked = {"model": "m", "messages": TOOL_HISTORY, "tools": [WEATHER_TOOL], "tool_choice": "none"}
    complete(adapter(native_sim), asked, MODEL)
    body = sent(native_sim)
    assert [t["toolSpec"]["name"] for t in body["toolConfig"]["tools"]] == ["get_weather"]
    assert "toolChoice" not in body["toolConfig"]  # Converse has no "none"
    assert any("toolUse" in block for block in blocks(body))


def test_tool_choice_none_without_tool_history_sends_no_tools(native_sim: NativeSim) -> None:
    asked = {**CHAT, "tools": [WEATHER_TOOL], "tool_choice": "none"}
    answer = complete(adapter(native_sim), asked, MODEL)
    assert "toolConfig" not in sent(native_sim)
    assert answer.stop == "end"


def test_a_tool_history_without_tools_is_told_in_words(native_sim: NativeSim) -> None:
    answer = complete(
        adapter(native_sim, "tokens=2"), {"model": "m", "messages": TOOL_HISTORY}, MODEL
    )
    assert c.text_of(answer.parts) == "tok0 tok1"
    body = sent(native_sim)
    assert "toolConfig" not in body
    found = blocks(body)
    assert all(set(block) == {"text"} for block in found)
    said = " ".join(block["text"] for block in found)
    assert "get_weather" in said and '{"city": "Paris"}' in said and "sunny" in said
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]


def test_the_simulator_refuses_tool_blocks_without_a_tool_config() -> None:
    history = canonical({"model": "m", "messages": TOOL_HISTORY})
    body = orjson.loads(request_body(history))
    assert refusal(body, MODEL) is None
    body["messages"][1]["content"] = [{"toolUse": {"toolUseId": "t", "name": "x", "input": {}}}]
    assert refusal(body, MODEL) == TOOL_CONFIG_MISSING


def thinking(body: dict[str, Any]) -> Any:
    return (body.get("additionalModelRequestFields") or {}).get("thinking")


@pytest.mark.parametrize("model", [MODEL, PROFILE])
def test_thinking_budget_stays_below_max_tokens_without_sampling(
    native_sim: NativeSim, model: str
) -> None:
    asked = {
        **CHAT,
        "reasoning_effort": "high",
        "max_completion_tokens": 2000,
        "temperature": 0.2,
        "top_p": 0.5,
    }
    complete(adapter(native_sim), asked, model)
    body = sent(native_sim)
    assert thinking(body) == {"type": "enabled", "budget_tokens": 1999}
    assert body["inferenceConfig"] == {"maxTokens": 2000}


def test_thinking_keeps_its_budget_under_a_roomy_limit(native_sim: NativeSim) -> None:
    asked = {**CHAT, "reasoning_effort": "medium", "max_completion_tokens": 20000}
    complete(adapter(native_sim), asked, MODEL)
    assert thinking(sent(native_sim)) == {"type": "enabled", "budget_tokens": 8192}


def test_a_forced_tool_sends_no_thinking(native_sim: NativeSim) -> None:
    asked = {**CHAT, "reasoning_effort": "medium", "max_completion_tokens": 20000}
    asked["tools"] = [WEATHER_TOOL]
    for choice in ("required", {"type": "function", "function": {"name": "get_weather"}}):
        complete(adapter(native_sim), {**asked, "tool_choice": choice}, MODEL)
        body = sent(native_sim)
        assert thinking(body) is None and "toolChoice" in body["toolConfig"]
    complete(adapter(native_sim), {**asked, "tool_choice": "auto"}, MODEL)
    assert thinking(sent(native_sim)) == {"type": "enabled", "budget_tokens": 8192}


def test_no_room_for_thinking_sends_none_and_keeps_sampling(native_sim: NativeSim) -> None:
    asked = {**CHAT, "reasoning_effort": "low", "max_completion_tokens": 1024, "temperature": 0.2}
    complete(adapter(native_sim), asked, MODEL)
    body = sent(native_sim)
    assert thinking(body) is None
    assert body["inferenceConfig"] == {"maxTokens": 1024, "temperature": 0.2}


@pytest.mark.parametrize(
    "model", [NOVA, "meta.llama3-70b-instruct-v1:0", "arn:aws:bedrock:us-east-1:1:x/y"]
)
def test_models_other_than_anthropic_get_no_thinking_field(
    native_sim: NativeSim, model: str
) -> None:
    asked = {**CHAT, "reasoning_effort": "high", "temperature": 0.2}
    complete(adapter(native_sim), asked, model)
    body = sent(native_sim)
    assert "additionalModelRequestFields" not in body
    assert body["inferenceConfig"] == {"temperature": 0.2}


@pytest.mark.parametrize(
    ("model", "fields", "problem"),
    [
        (NOVA, {}, "extraneous key [thinking]"),
        (MODEL, {"maxTokens": 1000}, "`max_tokens` must be greater"),
        (MODEL, {"maxTokens": 20000, "temperature": 0.2}, "`temperature`"),
    ],
)
def test_the_simulator_refuses_thinking_as_bedrock_does(
    model: str, fields: dict[str, Any], problem: str
) -> None:
    body = {
        "messages": [{"role": "user", "content": [{"text": "hi"}]}],
        "inferenceConfig": fields,
        "additionalModelRequestFields": {"thinking": {"type": "enabled", "budget_tokens": 1024}},
    }
    said = refusal(body, model)
    assert said is not None and problem in said


# Anthropic's cache breakpoints: five minutes by default, or an hour when asked.
SONNET_45 = "anthropic.claude-sonnet-4-5-20250929-v1:0"


def cached_messages(ttl: str | None) -> c.Request:
    """A Messages request with a cache breakpoint on its system prompt and first turn."""
    control: dict[str, Any] = {"type": "ephemeral", **({"ttl": ttl} if ttl else {})}
    body = {
        "model": "m",
        "max_tokens": 100,
        "system": [{"type": "text", "text": "A long preamble.", "cache_control": control}],
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": "A long document.", "cache_control": control}],
            }
        ],
    }
    return messages.request_to_canonical(body)


def cache_points(body: dict[str, Any]) -> list[dict[str, Any]]:
    found = [*body.get("system", ()), *blocks(body)]
    return [block["cachePoint"] for block in found if "cachePoint" in block]


def converse(sim: NativeSim, request: c.Request, model: str, options: str) -> c.Usage | None:
    bedrock = adapter(sim, options)
    answer = run(lambda http: client.complete(bedrock, http, request, upstream_model=model))
    return answer.usage


def test_a_one_hour_breakpoint_is_sent_and_billed_as_one(native_sim: NativeSim) -> None:
    found = converse(native_sim, cached_messages("1h"), SONNET_45, "cache_write=9,cache_write_1h=9")
    assert cache_points(sent(native_sim)) == [{"type": "default", "ttl": "1h"}] * 2
    assert found is not None
    assert (found.cache_write_tokens, found.cache_write_1h_tokens) == (9, 9)


def test_a_one_hour_breakpoint_streamed_is_billed_as_one(native_sim: NativeSim) -> None:
    bedrock = adapter(native_sim, "cache_write=9,cache_write_1h=6")
    request = cached_messages("1h")

    async def work(http: Any) -> list[c.Event]:
        found: list[c.Event] = []
        async for events in client.stream(bedrock, http, request, upstream_model=SONNET_45):
            found.extend(events)
        return found

    usage = summarise(run(work)).usage
    assert usage is not None
    assert (usage.cache_write_tokens, usage.cache_write_1h_tokens) == (9, 6)


@pytest.mark.parametrize(
    ("ttl", "model"), [(None, SONNET_45), ("5m", SONNET_45), ("1h", NOVA), ("1h", "arn:aws:x/y")]
)
def test_other_breakpoints_are_five_minutes_and_billed_so(
    native_sim: NativeSim, ttl: str | None, model: str
) -> None:
    """Five minutes unless asked, and for models Bedrock keeps no hour for (Nova) or whose
    id names no model (an application profile): the writes Bedrock then reports as five
    minutes are billed as five minutes, whatever the client asked."""
    found = converse(native_sim, cached_messages(ttl), model, "cache_write=9,cache_write_1h=9")
    assert cache_points(sent(native_sim)) == [{"type": "default"}] * 2
    assert found is not None
    assert (found.cache_write_tokens, found.cache_write_1h_tokens) == (9, 0)


def test_usage_reads_the_writes_by_ttl() -> None:
    reported = {
        "inputTokens": 3,
        "outputTokens": 2,
        "totalTokens": 20,
        "cacheReadInputTokens": 5,
        "cacheWriteInputTokens": 10,
        "cacheDetails": [{"ttl": "1h", "inputTokens": 4}, {"ttl": "5m", "inputTokens": 6}],
    }
    assert usage(reported) == c.Usage(
        input_tokens=18,
        output_tokens=2,
        cached_tokens=5,
        cache_write_tokens=10,
        cache_write_1h_tokens=4,
    )
    # Without a breakdown every write is a five-minute one.
    plain = usage({**reported, "cacheDetails": []})
    assert plain is not None and plain.cache_write_1h_tokens == 0


def test_the_simulator_refuses_a_ttl_outside_the_service_model() -> None:
    body = orjson.loads(request_body(cached_messages("1h"), model=SONNET_45))
    assert shape_problem(body, SONNET_45) is None
    body["system"][1]["cachePoint"]["ttl"] = "2h"
    said = shape_problem(body, SONNET_45)
    assert said is not None and "system.2.cachePoint.ttl" in said


def test_one_hour_writes_are_billed_at_their_price(
    gateway: Gateway, native_sim: NativeSim, sa_info: dict[str, Any]
) -> None:
    """Through the relay: a chat client's one-hour breakpoint on a Claude model served by
    Bedrock is written for an hour there and charged at the one-hour write price."""
    price_model(gateway, cache_write_5m_per_mtok=3_125_000, cache_write_1h_per_mtok=5_000_000)
    ChannelModel.objects.filter(channel=gateway.channel).update(upstream_name=SONNET_45)
    configure(gateway.channel, "bedrock", native_sim, sa_info, "cache_write=8,cache_write_1h=8")
    control = {"type": "ephemeral", "ttl": "1h"}
    text = {"type": "text", "text": "A long document.", "cache_control": control}
    response = gateway.client.post(
        "/v1/chat/completions",
        json={"model": PUBLIC_MODEL, "messages": [{"role": "user", "content": [text]}]},
    )
    assert response.status_code == 200, response.text
    assert cache_points(sent(native_sim)) == [{"type": "default", "ttl": "1h"}]
    [event] = usage_events(1)
    assert (event.cache_write_tokens, event.cache_write_1h_tokens) == (8, 8)
    assert event.charges["cache_write_1h"][:2] == [8, 5_000_000]
    assert "cache_write_5m" not in event.charges
