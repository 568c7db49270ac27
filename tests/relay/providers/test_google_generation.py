"""How Google's generation is steered and how it ends: every ``FinishReason`` as a
canonical stop (nothing Google cut short passes for a finished answer), and every
``reasoning_effort`` as the thinking the model takes (a level on Gemini 3, a budget before),
an effort Google has no measure for refused with a 400."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from relay.providers import google
from relay.providers.gemini import GeminiAdapter, GeminiConfig
from relay.translate import canonical as c
from tests.relay.conftest import PUBLIC_MODEL, Gateway
from tests.relay.providers.conftest import (
    CHAT,
    GEMINI_KEY,
    NativeSim,
    canonical,
    complete,
    configure,
)

# Every value of Google's FinishReason (python-genai ``types.FinishReason``).
FINISH_REASONS: dict[str, c.Stop] = {
    "FINISH_REASON_UNSPECIFIED": "end",
    "STOP": "end",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "LANGUAGE": "content_filter",
    "OTHER": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "MALFORMED_FUNCTION_CALL": "content_filter",
    "IMAGE_SAFETY": "content_filter",
    "UNEXPECTED_TOOL_CALL": "content_filter",
    "TOO_MANY_TOOL_CALLS": "content_filter",
    "IMAGE_PROHIBITED_CONTENT": "content_filter",
    "NO_IMAGE": "end",
    "IMAGE_RECITATION": "content_filter",
    "IMAGE_OTHER": "content_filter",
}


def _answer(reason: str, parts: list[dict[str, Any]]) -> dict[str, Any]:
    candidate = {"content": {"role": "model", "parts": parts}, "finishReason": reason}
    return {"candidates": [candidate], "usageMetadata": {"promptTokenCount": 9}}


@pytest.mark.parametrize(("reason", "stop"), FINISH_REASONS.items())
def test_every_finish_reason_is_a_canonical_stop(reason: str, stop: c.Stop) -> None:
    answer = _answer(reason, [])  # what Google sends when it stops short: often nothing
    assert google.decode(orjson.dumps(answer)).stop == stop
    decoder = google.GoogleStream()
    events = decoder.feed(b"data: " + orjson.dumps(answer) + b"\r\n\r\n") + decoder.finish()
    assert [e.stop for e in events if isinstance(e, c.StreamFinish)] == [stop]


def test_a_botched_function_call_is_not_a_finished_answer() -> None:
    """Google bills the answer but it holds no usable call: the client must not take the
    empty answer for the model's last word."""
    for reason in ("MALFORMED_FUNCTION_CALL", "UNEXPECTED_TOOL_CALL", "TOO_MANY_TOOL_CALLS"):
        assert google.decode(orjson.dumps(_answer(reason, []))).stop == "content_filter"
    # A call Google did deliver, stopping as usual, is a call.
    call = [{"functionCall": {"name": "f", "args": {}}}]
    assert google.decode(orjson.dumps(_answer("STOP", call))).stop == "tool_use"
    assert google._stop("SOMETHING_NEW", False) == "end"


def _thinking(effort: str, model: str) -> Any:
    request = canonical({**CHAT, "reasoning_effort": effort})
    return orjson.loads(google.request_body(request, model))["generationConfig"]["thinkingConfig"]


THINKING = [
    # Gemini 3 takes levels; the least a model takes differs (Flash-Lite and early Flash
    # think minimally, Pro and later Flash no less than LOW).
    ("gemini-3.8-flash", "none", {"thinkingLevel": "LOW", "includeThoughts": True}),
    ("gemini-3.8-flash", "minimal", {"thinkingLevel": "LOW", "includeThoughts": True}),
    ("gemini-3.5-flash-lite", "none", {"thinkingLevel": "MINIMAL", "includeThoughts": True}),
    ("gemini-3-flash-preview", "minimal", {"thinkingLevel": "MINIMAL", "includeThoughts": True}),
    ("gemini-3.1-pro-preview", "none", {"thinkingLevel": "LOW", "includeThoughts": True}),
    ("gemini-3.8-flash", "low", {"thinkingLevel": "LOW", "includeThoughts": True}),
    ("gemini-3.8-flash", "medium", {"thinkingLevel": "MEDIUM", "includeThoughts": True}),
    ("gemini-3.8-flash", "high", {"thinkingLevel": "HIGH", "includeThoughts": True}),
    ("gemini-3.1-pro-preview", "xhigh", {"thinkingLevel": "HIGH", "includeThoughts": True}),
    ("gemini-3.8-flash", "max", {"thinkingLevel": "HIGH", "includeThoughts": True}),
    # Gemini 2.5 takes budgets: Flash can stop thinking, Pro thinks at least 128 tokens.
    ("gemini-2.5-flash", "none", {"thinkingBudget": 0}),
    ("gemini-2.5-flash-lite", "minimal", {"thinkingBudget": 0}),
    ("gemini-2.5-pro", "none", {"thinkingBudget": 128, "includeThoughts": True}),
    ("gemini-2.5-flash", "low", {"thinkingBudget": 1024, "includeThoughts": True}),
    ("gemini-2.5-flash", "medium", {"thinkingBudget": 8192, "includeThoughts": True}),
    ("gemini-2.5-flash", "high", {"thinkingBudget": 24576, "includeThoughts": True}),
    ("gemini-2.5-flash", "xhigh", {"thinkingBudget": 24576, "includeThoughts": True}),
    ("gemini-2.5-pro", "xhigh", {"thinkingBudget": 32768, "includeThoughts": True}),
]


@pytest.mark.parametrize(("model", "effort", "config"), THINKING)
def test_reasoning_effort_is_the_thinking_the_model_takes(
    native_sim: NativeSim, model: str, effort: str, config: dict[str, Any]
) -> None:
    assert _thinking(effort, model) == config
    # The simulator holds it to Google's rules (no level before Gemini 3, no level and
    # budget together, Pro always thinks).
    gemini = GeminiAdapter(GeminiConfig(api_key=GEMINI_KEY, base_url=native_sim.url))
    answer = complete(gemini, {**CHAT, "reasoning_effort": effort}, model)
    assert c.text_of(answer.parts).startswith("tok0")


def test_no_thinking_asked_is_no_thinking_paid_for(native_sim: NativeSim) -> None:
    """A model that thinks by default (``reasoning=5``) asked for none: no thoughts billed."""
    base_url = f"{native_sim.url}/sim/reasoning=5"
    gemini = GeminiAdapter(GeminiConfig(api_key=GEMINI_KEY, base_url=base_url))
    default = complete(gemini, CHAT, "gemini-2.5-flash")
    unthought = complete(gemini, {**CHAT, "reasoning_effort": "none"}, "gemini-2.5-flash")
    assert default.usage is not None and default.usage.reasoning_tokens == 5
    assert unthought.usage is not None and unthought.usage.reasoning_tokens == 0
    assert "thinkingConfig" not in native_sim.requests()[0]["body"].get("generationConfig", {})


@pytest.mark.parametrize("effort", ["turbo", "HIGH", "", "0"])
def test_an_effort_google_has_no_measure_for_is_refused(effort: str) -> None:
    with pytest.raises(c.TranslationError) as refused:
        google.request_body(canonical({**CHAT, "reasoning_effort": effort}), "gemini-3.8-flash")
    assert refused.value.param == "reasoning_effort"
    assert "none, minimal, low, medium, high, xhigh, max" in str(refused.value)


def test_a_client_asking_an_unknown_effort_hears_why(
    gateway: Gateway, native_sim: NativeSim
) -> None:
    channel = gateway.channel
    configure(channel, "gemini", native_sim, {})
    gateway.caught_up()
    body = {**CHAT, "model": PUBLIC_MODEL, "reasoning_effort": "turbo"}
    response = gateway.client.post("/v1/chat/completions", json=body)
    assert response.status_code == 400, response.text
    assert "reasoning_effort must be one of" in response.json()["error"]["message"]
    assert native_sim.requests() == []
