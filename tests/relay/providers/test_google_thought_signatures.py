"""Gemini 3's signed function calls through a client's round trip: the signature rides in
the tool call's id (no server state), comes back to Google on the replayed call, and a
history that lost it gets Google's documented stand-in; the simulator refuses a Gemini 3
history without them, as Google does."""

from __future__ import annotations

import re
from typing import Any

import httpx
import openai
import orjson
import pytest

from portal.models import ChannelModel
from relay.providers import google
from relay.providers.base import FailureKind
from relay.providers.gemini import GeminiAdapter, GeminiConfig
from relay.simulator.native.google import MISSING_SIGNATURE, SIGNATURE
from relay.translate import canonical as c
from tests.relay.conftest import PUBLIC_MODEL, Gateway
from tests.relay.providers.conftest import (
    CHAT,
    GEMINI_KEY,
    WEATHER_TOOL,
    NativeSim,
    canonical,
    complete,
    configure,
    failure,
    follow_up,
    stream,
    summarise,
    tool_calls,
)

GEMINI_3 = "gemini-3.8-flash"
# What Anthropic and Bedrock accept as a tool call's id: the id may travel on to them.
TOOL_ID = re.compile(r"[A-Za-z0-9_-]+")
ASKED = {
    **CHAT,
    "tools": [WEATHER_TOOL],
    "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
}


def adapter(sim: NativeSim) -> GeminiAdapter:
    return GeminiAdapter(GeminiConfig(api_key=GEMINI_KEY, base_url=sim.url))


def _answer(parts: list[dict[str, Any]]) -> bytes:
    content = {"role": "model", "parts": parts}
    return orjson.dumps({"candidates": [{"content": content, "finishReason": "STOP"}]})


def _replayed(calls: list[c.ToolCall], model: str = GEMINI_3) -> list[dict[str, Any]]:
    """The model turn Google is sent when a client replays ``calls``."""
    request = canonical(CHAT)
    request.turns += [
        c.Turn("assistant", list(calls)),
        c.Turn("user", [c.ToolResult(call.id, [c.Text("{}")]) for call in calls]),
    ]
    sent = orjson.loads(google.request_body(request, model))
    assert sent["contents"][-1]["parts"][0]["functionResponse"]["name"] == calls[0].name
    return list(sent["contents"][-2]["parts"])


@pytest.mark.parametrize("signature", ["c2lnbmF0dXJl", SIGNATURE, "+/+/AA=="])
def test_the_signature_rides_in_the_call_id_and_goes_back_as_google_sent_it(
    signature: str,
) -> None:
    answer = google.decode(
        _answer([{"functionCall": {"name": "f"}, "thoughtSignature": signature}])
    )
    [call] = tool_calls(answer)
    assert TOOL_ID.fullmatch(call.id)
    assert google.split_call_id(call.id)[1] == signature
    [part] = _replayed([call])
    assert part == {"functionCall": {"name": "f", "args": {}}, "thoughtSignature": signature}


def test_only_signed_calls_carry_a_signature() -> None:
    answer = google.decode(
        _answer(
            [
                {"functionCall": {"name": "f", "id": "fc-1"}, "thoughtSignature": "c2ln"},
                {"functionCall": {"name": "g", "id": "fc-2"}},  # parallel: unsigned
            ]
        )
    )
    first, second = tool_calls(answer)
    assert first.id.startswith("fc-1") and second.id == "fc-2"
    assert [p.get("thoughtSignature") for p in _replayed([first, second])] == ["c2ln", None]


def test_a_call_whose_signature_was_lost_gets_googles_stand_in_on_gemini_3_only() -> None:
    lost = [c.ToolCall("call_from_elsewhere", "f", "{}"), c.ToolCall("call_2", "g", "{}")]
    # Google checks each step's first call: that one gets the value that skips the check.
    parts = _replayed(lost)
    assert [p.get("thoughtSignature") for p in parts] == [google.SKIP_SIGNATURE, None]
    assert google.SKIP_SIGNATURE == "skip_thought_signature_validator"
    for model in ("gemini-3.1-pro-preview", "gemini-flash-latest", "models/gemini-4-argon"):
        assert _replayed(lost, model)[0]["thoughtSignature"] == google.SKIP_SIGNATURE
    for model in ("gemini-2.5-flash", "gemma-3-27b-it"):
        assert "thoughtSignature" not in _replayed(lost, model)[0]
    # An id that only looks like a carrier, with no base64 after the mark, carries nothing.
    bogus = [c.ToolCall("call_1__tsig_!!", "f", "{}")]
    assert _replayed(bogus)[0]["thoughtSignature"] == google.SKIP_SIGNATURE


def test_the_simulator_refuses_a_gemini_3_history_without_signatures(
    native_sim: NativeSim,
) -> None:
    """So that the round trips below are real: what Google answers a replayed call
    without its signature, and with one it did not issue."""
    gemini = adapter(native_sim)
    url = gemini.url(GEMINI_3, stream=False)
    contents: list[dict[str, Any]] = [
        {"role": "user", "parts": [{"text": "Weather in Paris?"}]},
        {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {}}}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {}}}]},
    ]
    headers = {"x-goog-api-key": GEMINI_KEY}
    refused = httpx.post(url, json={"contents": contents}, headers=headers, trust_env=False)
    assert refused.status_code == 400
    assert refused.json()["error"]["message"] == MISSING_SIGNATURE
    contents[1]["parts"][0]["thoughtSignature"] = "Zm9yZ2Vk"
    forged = httpx.post(url, json={"contents": contents}, headers=headers, trust_env=False)
    assert forged.status_code == 400
    # Gemini 2.5 does not check.
    older = gemini.url("gemini-2.5-flash", stream=False)
    contents[1]["parts"][0].pop("thoughtSignature")
    ok = httpx.post(older, json={"contents": contents}, headers=headers, trust_env=False)
    assert ok.status_code == 200


def test_a_gemini_3_function_call_round_trip(native_sim: NativeSim) -> None:
    gemini = adapter(native_sim)
    [call] = tool_calls(complete(gemini, ASKED, GEMINI_3))
    assert TOOL_ID.fullmatch(call.id)
    final = complete(gemini, follow_up(ASKED, call, '{"sky": "clear"}'), GEMINI_3)
    assert c.text_of(final.parts).startswith("tok0")
    replayed = native_sim.requests()[-1]["body"]["contents"][1]["parts"][0]
    assert replayed["thoughtSignature"] == SIGNATURE  # byte for byte, as it was issued


def test_a_streamed_gemini_3_function_call_round_trip(native_sim: NativeSim) -> None:
    gemini = adapter(native_sim)
    [(call_id, name, arguments)] = summarise(stream(gemini, ASKED, GEMINI_3)).calls.values()
    call = c.ToolCall(call_id, name, arguments)
    final = summarise(stream(gemini, follow_up(ASKED, call, '{"sky": "clear"}'), GEMINI_3))
    assert final.text.startswith("tok0")
    replayed = native_sim.requests()[-1]["body"]["contents"][1]["parts"][0]
    assert replayed["thoughtSignature"] == SIGNATURE


def test_a_history_that_lost_the_signature_is_still_answered(native_sim: NativeSim) -> None:
    gemini = adapter(native_sim)
    foreign = c.ToolCall("call_made_by_another_model", "get_weather", "{}")
    final = complete(gemini, follow_up(ASKED, foreign, '{"sky": "clear"}'), GEMINI_3)
    assert c.text_of(final.parts).startswith("tok0")
    # A signature Google did not issue is Google's to refuse: the request's fault.
    [call] = tool_calls(complete(gemini, ASKED, GEMINI_3))
    base, _ = google.split_call_id(call.id)
    forged = c.ToolCall(google.call_id(base, "Zm9yZ2Vk"), call.name, call.arguments)
    error = failure(lambda: complete(gemini, follow_up(ASKED, forged, "{}"), GEMINI_3))
    assert error.failure.kind is FailureKind.CLIENT


def test_an_openai_sdk_client_round_trips_a_gemini_3_call(
    gateway: Gateway, native_sim: NativeSim, sdk: openai.OpenAI
) -> None:
    """Through the relay with the OpenAI SDK: the id the client got and sent back, on the
    assistant message and on the tool message, is all it takes."""
    channel = gateway.channel
    configure(channel, "gemini", native_sim, {})
    ChannelModel.objects.filter(channel=channel).update(upstream_name=GEMINI_3)
    gateway.caught_up()
    messages: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
    tooled = sdk.chat.completions.create(
        model=PUBLIC_MODEL, messages=messages, tools=[WEATHER_TOOL]
    )
    call = tooled.choices[0].message.tool_calls[0]
    answered = sdk.chat.completions.create(
        model=PUBLIC_MODEL,
        tools=[WEATHER_TOOL],
        messages=[
            *messages,
            tooled.choices[0].message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
        ],
    )
    assert answered.choices[0].message.content == " ".join(f"tok{i}" for i in range(16))
    replayed = native_sim.requests()[-1]["body"]["contents"][1]["parts"][0]
    assert replayed["thoughtSignature"] == SIGNATURE
