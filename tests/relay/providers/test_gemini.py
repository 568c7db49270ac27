"""The Gemini API over loopback: key in a header, generateContent and SSE streams with
usageMetadata (cached, thoughts), images, tools and error mapping."""

from __future__ import annotations

import pytest

from relay.providers import google
from relay.providers.base import FailureKind
from relay.providers.gemini import GeminiAdapter, GeminiConfig
from relay.translate import canonical as c
from tests.relay.providers.conftest import (
    CHAT,
    CHAT_PROMPT_TOKENS,
    GEMINI_KEY,
    PIXEL,
    WEATHER_TOOL,
    NativeSim,
    complete,
    failure,
    follow_up,
    stream,
    summarise,
    tool_calls,
)

MODEL = "gemini-2.5-flash"


def adapter(sim: NativeSim, options: str = "", key: str = GEMINI_KEY) -> GeminiAdapter:
    base = f"{sim.url}/sim/{options}" if options else sim.url
    return GeminiAdapter(GeminiConfig(api_key=key, base_url=base))


def test_answer_usage_and_request(native_sim: NativeSim) -> None:
    image = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}"}}
    asked = {
        **CHAT,
        "max_tokens": 2,
        "messages": [*CHAT["messages"], {"role": "user", "content": [image]}],
    }
    answer = complete(adapter(native_sim, "tokens=5,cached=3,reasoning=4"), asked, MODEL)
    assert c.text_of(answer.parts) == "tok0 tok1"
    assert [p.text for p in answer.parts if isinstance(p, c.Reasoning)] == ["sim thought"]
    assert answer.stop == "length"
    # Both user messages form one turn; the image costs 258 prompt tokens.
    assert answer.usage == c.Usage(
        input_tokens=CHAT_PROMPT_TOKENS + 258,
        output_tokens=2 + 4,
        cached_tokens=3,
        reasoning_tokens=4,
        image_input_tokens=258,  # usageMetadata's modality breakdown
    )
    sent = native_sim.requests()[-1]
    assert sent["path"].endswith(f"/v1beta/models/{MODEL}:generateContent")
    assert sent["headers"]["x-goog-api-key"] == GEMINI_KEY
    assert "key=" not in sent["query"]
    assert sent["body"]["systemInstruction"] == {"parts": [{"text": "Answer briefly."}]}
    assert sent["body"]["contents"][0]["parts"][1] == {
        "inlineData": {"mimeType": "image/png", "data": PIXEL}
    }
    assert sent["body"]["generationConfig"] == {"maxOutputTokens": 2}


def test_usage_counts_thoughts_as_output_and_cached_as_input() -> None:
    metadata = {
        "promptTokenCount": 300,
        "candidatesTokenCount": 10,
        "thoughtsTokenCount": 7,
        "cachedContentTokenCount": 40,
        "promptTokensDetails": [{"modality": "IMAGE", "tokenCount": 258}],
    }
    assert google.usage(metadata) == c.Usage(
        input_tokens=300,
        output_tokens=17,
        cached_tokens=40,
        reasoning_tokens=7,
        image_input_tokens=258,
    )


def test_usage_breaks_down_modalities() -> None:
    metadata = {
        "promptTokenCount": 500,
        "candidatesTokenCount": 80,
        "promptTokensDetails": [
            {"modality": "TEXT", "tokenCount": 100},
            {"modality": "AUDIO", "tokenCount": 300},
            {"modality": "VIDEO", "tokenCount": 100},
        ],
        "candidatesTokensDetails": [
            {"modality": "TEXT", "tokenCount": 20},
            {"modality": "AUDIO", "tokenCount": 50},
            {"modality": "IMAGE", "tokenCount": 10},
        ],
    }
    usage = google.usage(metadata)
    assert usage is not None
    assert (usage.audio_input_tokens, usage.image_input_tokens) == (300, 100)
    assert (usage.audio_output_tokens, usage.image_output_tokens) == (50, 10)


def test_stream_over_sse(native_sim: NativeSim) -> None:
    streamed = summarise(stream(adapter(native_sim, "tokens=3,reasoning=2"), CHAT, MODEL))
    assert (streamed.text, streamed.reasoning, streamed.stop) == (
        "tok0 tok1 tok2",
        "sim thought",
        "end",
    )
    assert streamed.usage == c.Usage(
        input_tokens=CHAT_PROMPT_TOKENS, output_tokens=5, reasoning_tokens=2
    )
    sent = native_sim.requests()[-1]
    assert sent["path"].endswith(":streamGenerateContent") and sent["query"] == "alt=sse"


def test_function_call_round_trip(native_sim: NativeSim) -> None:
    gemini = adapter(native_sim)
    asked = {
        **CHAT,
        "tools": [WEATHER_TOOL],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    }
    answer = complete(gemini, asked, MODEL)
    (call,) = tool_calls(answer)
    assert answer.stop == "tool_use" and call.name == "get_weather"
    final = complete(gemini, follow_up(asked, call, '{"sky": "clear"}'), MODEL)
    assert c.text_of(final.parts).startswith("tok0")
    body = native_sim.requests()[-1]["body"]
    assert body["contents"][1] == {
        "role": "model",
        "parts": [{"functionCall": {"name": "get_weather", "args": {}}}],
    }
    assert body["contents"][2]["parts"][0] == {
        "functionResponse": {"name": "get_weather", "response": {"sky": "clear"}}
    }
    assert body["toolConfig"] == {
        "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}
    }


def test_streamed_function_call(native_sim: NativeSim) -> None:
    streamed = summarise(stream(adapter(native_sim), {**CHAT, "tools": [WEATHER_TOOL]}, MODEL))
    assert [call[1] for call in streamed.calls.values()] == ["get_weather"]
    assert streamed.stop == "tool_use"


@pytest.mark.parametrize(
    ("options", "key", "kind"),
    [
        ("", "AIza-wrong", FailureKind.CREDENTIALS),  # Google says 400 INVALID_ARGUMENT
        ("fail=429", GEMINI_KEY, FailureKind.RETRYABLE),
        ("fail=503", GEMINI_KEY, FailureKind.RETRYABLE),
        ("fail=400", GEMINI_KEY, FailureKind.CLIENT),
    ],
)
def test_error_mapping(native_sim: NativeSim, options: str, key: str, kind: FailureKind) -> None:
    error = failure(lambda: complete(adapter(native_sim, options, key), CHAT, MODEL))
    assert error.failure.kind is kind
    assert key not in error.failure.message
