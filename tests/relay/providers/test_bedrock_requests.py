"""Converse requests Bedrock takes: a history with tool calls always comes with its tools
declared (or told in words when there are none), and Anthropic's extended thinking goes
only to Anthropic models, with a budget and sampling settings they accept. The simulator
refuses what Bedrock refuses, so each request here is checked by it as well."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from relay.providers.bedrock import request_body
from relay.simulator.native.bedrock import TOOL_CONFIG_MISSING, refusal
from relay.translate import canonical as c
from tests.relay.providers.conftest import (
    CHAT,
    WEATHER_TOOL,
    NativeSim,
    canonical,
    complete,
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
