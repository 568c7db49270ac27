"""The Gemini API over loopback: key in a header, generateContent and SSE streams with
usageMetadata (cached, thoughts), images, tools and error mapping; a blocked prompt or an
unreadable file is the client's error, never the channel's."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import orjson
import pytest

from portal.models import Channel
from relay import health, tokens
from relay.providers import google
from relay.providers.base import FailureKind, StreamFailed
from relay.providers.gemini import GeminiAdapter, GeminiConfig
from relay.providers.streams import StreamIncomplete
from relay.simulator.native.google import plan_generate, prompt_metadata
from relay.simulator.options import SimOptions
from relay.translate import canonical as c
from tests.relay.conftest import PUBLIC_MODEL, Gateway, Simulator, chat_body, usage_events
from tests.relay.providers.conftest import (
    CHAT,
    CHAT_PROMPT_TOKENS,
    GEMINI_KEY,
    PIXEL,
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


def _prompt_blocked(failure: Any, reason: str) -> None:
    assert failure.kind is FailureKind.CLIENT
    assert (failure.status, failure.type) == (400, "invalid_request_error")
    assert failure.message == f"The provider blocked the prompt (block reason: {reason})."


def test_a_blocked_prompt_is_the_clients_error(native_sim: NativeSim) -> None:
    gemini = adapter(native_sim, "blocked=SAFETY")
    url = gemini.url(MODEL, stream=False)
    key = {"x-goog-api-key": GEMINI_KEY}
    sent = httpx.post(url, json={"contents": []}, headers=key, trust_env=False)
    assert sent.status_code == 200 and "candidates" not in sent.json()
    with pytest.raises(google.PromptBlocked) as caught:
        gemini.decode(sent.content)
    # Only the reason is passed on, not the safety ratings beside it.
    _prompt_blocked(caught.value.failure, "SAFETY")
    # Sent through the adapter (a channel's health check), it is the same refusal, not an
    # invalid answer.
    _prompt_blocked(failure(lambda: complete(gemini, CHAT, MODEL)).failure, "SAFETY")

    with pytest.raises(StreamFailed) as streamed:
        stream(adapter(native_sim, "blocked=PROHIBITED_CONTENT"), CHAT, MODEL)
    _prompt_blocked(streamed.value.failure, "PROHIBITED_CONTENT")


@pytest.mark.parametrize(
    ("details", "kind"),
    [
        ([], FailureKind.CLIENT),  # a File the key cannot read: the request's fault
        ([{"reason": "SERVICE_DISABLED"}], FailureKind.CREDENTIALS),
        ([{"reason": "API_KEY_SERVICE_BLOCKED"}], FailureKind.CREDENTIALS),
        ([{"reason": "CONSUMER_SUSPENDED"}], FailureKind.CREDENTIALS),
    ],
)
def test_permission_denied_is_the_channels_only_with_a_caller_reason(
    details: list[dict[str, str]], kind: FailureKind
) -> None:
    body = {
        "error": {"code": 403, "status": "PERMISSION_DENIED", "message": "No.", "details": details}
    }
    assert google.failure_from(403, body, ()).kind is kind


def _with_image(url: str) -> dict[str, Any]:
    content = [{"type": "image_url", "image_url": {"url": url}}]
    return {**CHAT, "messages": [{"role": "user", "content": content}]}


# A file the provider will not read for this channel: the simulator refuses every Files
# API path, as Gemini refuses a file another project uploaded. (Named as an image file:
# only those are sent by URL.)
UNREADABLE = "https://files.example.com/v1beta/files/abc123.png"


def test_an_unreadable_file_is_the_clients_error(native_sim: NativeSim) -> None:
    error = failure(lambda: complete(adapter(native_sim), _with_image(UNREADABLE), MODEL))
    assert error.failure.kind is FailureKind.CLIENT
    assert error.failure.status == 400
    assert "permission to access the File abc123" in error.failure.message
    assert native_sim.requests()[-1]["body"]["contents"][0]["parts"][0]["fileData"] == {
        "mimeType": "image/png",
        "fileUri": UNREADABLE,
    }


# Google reads these with the channel's own credentials: the operator's buckets and uploads.
ON_GOOGLES_STORAGE = [
    "gs://operator-bucket/private.png",
    "https://generativelanguage.googleapis.com/v1beta/files/abc123",
    "https://storage.googleapis.com/operator-bucket/private.png",
    "https://operator-bucket.storage.googleapis.com/private.png",
    "HTTPS://Storage.GoogleApis.COM./operator-bucket/private.png",
    "https://someone@storage.cloud.google.com/operator-bucket/private.png",
    "file:///etc/passwd",
    "ftp://example.com/cat.png",
]


@pytest.mark.parametrize("url", ON_GOOGLES_STORAGE)
def test_an_image_on_googles_storage_is_never_sent(native_sim: NativeSim, url: str) -> None:
    error = failure(lambda: complete(adapter(native_sim), _with_image(url), MODEL))
    assert (error.failure.kind, error.failure.status) == (FailureKind.CLIENT, 400)
    assert native_sim.requests() == []


@pytest.mark.parametrize(
    ("url", "mime"),
    [
        ("https://images.example.com/storage.googleapis.com/cat.png", "image/png"),
        ("https://images.example.com/cat.JPG?size=large", "image/jpeg"),
        ("https://images.example.com/a.b/cat.webp#top", "image/webp"),
        ("https://images.example.com/cat.heic", "image/heic"),
    ],
)
def test_a_public_image_url_is_sent_by_reference_as_its_type(
    native_sim: NativeSim, url: str, mime: str
) -> None:
    """Google wants the data's own MIME type (not ``image/*``): the URL's extension."""
    complete(adapter(native_sim), _with_image(url), MODEL)
    [part] = native_sim.requests()[-1]["body"]["contents"][0]["parts"]
    assert part == {"fileData": {"mimeType": mime, "fileUri": url}}


# What a client may send as an "image" that Google would bill as something else (by the
# second, by the page) while the relay held and limited one picture for it.
NOT_IMAGES = [
    "data:video/mp4;base64,AAAAIGZ0eXBpc29t",
    "data:audio/mpeg;base64,SUQzBAAAAAAA",
    "data:application/pdf;base64,JVBERi0xLjQK",
    "data:image/gif;base64,R0lGODlhAQABAAAAACw=",  # no image type Gemini reads
    "data:;base64,AAAA",
    "https://videos.example.com/talk.mp4",
    "https://docs.example.com/report.pdf",
    "https://images.example.com/photo?id=7",  # no extension: it could serve anything
    "https://images.example.com/cat.png/",
]


@pytest.mark.parametrize("url", NOT_IMAGES)
def test_only_image_types_gemini_reads_are_sent_as_images(native_sim: NativeSim, url: str) -> None:
    with pytest.raises(c.TranslationError) as refused:
        google.request_body(canonical(_with_image(url)))
    assert refused.value.param == "messages"
    assert "PNG, JPEG, WebP, HEIC or HEIF" in str(refused.value)
    error = failure(lambda: complete(adapter(native_sim), _with_image(url), MODEL))
    assert (error.failure.kind, error.failure.status) == (FailureKind.CLIENT, 400)
    assert native_sim.requests() == []


def test_image_types_are_read_as_gemini_names_them() -> None:
    for url, mime in [
        (f"data:image/png;base64,{PIXEL}", "image/png"),
        (f"data:IMAGE/JPEG;base64,{PIXEL}", "image/jpeg"),
        (f"data:image/jpg;base64,{PIXEL}", "image/jpeg"),  # a common misspelling of JPEG's
    ]:
        sent = orjson.loads(google.request_body(canonical(_with_image(url))))
        assert sent["contents"][0]["parts"][0] == {"inlineData": {"mimeType": mime, "data": PIXEL}}


def test_a_video_sent_as_an_image_is_refused_with_the_reason(
    gateway: Gateway, sim: Simulator, native_sim: NativeSim
) -> None:
    """A model served only by Gemini: the client hears why its "image" was not sent."""
    channel = gateway.channel
    configure(channel, "gemini", native_sim, {})
    gateway.caught_up()
    body = {**_with_image("data:video/mp4;base64,AAAAIGZ0eXBpc29t"), "model": PUBLIC_MODEL}
    response = gateway.client.post("/v1/chat/completions", json=body)
    assert response.status_code == 400, response.text
    message = response.json()["error"]["message"]
    assert "must be PNG, JPEG, WebP, HEIC or HEIF" in message and "'video/mp4'" in message
    assert native_sim.requests() == []


def _gemini_first(gateway: Gateway, sim: Simulator, native_sim: NativeSim, options: str) -> Channel:
    """The gateway's channel made a Gemini channel (``options`` on the native simulator)
    tried before a working chat completions channel."""
    channel = gateway.channel
    channel.provider_type = "gemini"
    channel.base_url = f"{native_sim.url}/sim/{options}" if options else native_sim.url
    channel.provider_settings = {}
    channel.secret = GEMINI_KEY
    channel.priority = 10
    channel.full_clean()
    channel.save()
    gateway.add_channel(sim.channel_url(), name="backup", priority=0)
    gateway.caught_up()
    sim.client.delete("/_sim/requests")
    return channel


def _stays_healthy(channel: Channel) -> None:
    """Neither suspended nor behind an open breaker, a while after the request: both are
    done off the client's path, so a moment is given for them to happen."""
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        assert channel.pk not in (health.breaker_states() or {})
        assert Channel.objects.get(pk=channel.pk).status == Channel.Status.ENABLED
        time.sleep(0.05)


def test_a_file_request_cannot_suspend_the_channel(
    gateway: Gateway, sim: Simulator, native_sim: NativeSim, relay_settings: Any
) -> None:
    relay_settings.RELAY_BREAKER_FAILURES = 1
    channel = _gemini_first(gateway, sim, native_sim, "")
    response = gateway.client.post(
        "/v1/chat/completions", json={**_with_image(UNREADABLE), "model": PUBLIC_MODEL}
    )
    assert response.status_code == 400, response.text
    assert "permission to access the File abc123" in response.json()["error"]["message"]
    assert sim.requests() == []  # no failover: any channel would refuse the same file
    _stays_healthy(channel)


def test_a_storage_uri_goes_to_no_google_channel_and_blames_none(
    gateway: Gateway, sim: Simulator, native_sim: NativeSim, relay_settings: Any
) -> None:
    relay_settings.RELAY_BREAKER_FAILURES = 1
    channel = _gemini_first(gateway, sim, native_sim, "")
    body = {**_with_image("gs://operator-bucket/private.png"), "model": PUBLIC_MODEL}
    response = gateway.client.post("/v1/chat/completions", json=body)
    # The Gemini channel is passed over; the chat completions channel gets the URL as it
    # came, to fetch (or refuse) as anyone's URL.
    assert response.status_code == 200, response.text
    assert native_sim.requests() == []
    assert len(sim.requests()) == 1
    _stays_healthy(channel)


def test_a_blocked_streamed_prompt_ends_the_stream_without_blaming_the_channel(
    gateway: Gateway, sim: Simulator, native_sim: NativeSim, relay_settings: Any
) -> None:
    relay_settings.RELAY_BREAKER_FAILURES = 1
    channel = _gemini_first(gateway, sim, native_sim, "blocked=SAFETY")
    response = gateway.client.post("/v1/chat/completions", json=chat_body(stream=True))
    assert response.status_code == 200  # the block came after the head
    assert "The provider blocked the prompt (block reason: SAFETY)." in response.text
    assert "HARASSMENT" not in response.text
    [event] = usage_events(1)
    assert (event.completed, event.error_code) == (False, "content_filter")
    _stays_healthy(channel)


def test_a_blocked_prompt_is_answered_without_failover_or_blame(
    gateway: Gateway, sim: Simulator, native_sim: NativeSim, relay_settings: Any
) -> None:
    relay_settings.RELAY_BREAKER_FAILURES = 1
    channel = _gemini_first(gateway, sim, native_sim, "blocked=OTHER")
    response = gateway.client.post("/v1/chat/completions", json=chat_body())
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["message"] == "The provider blocked the prompt (block reason: OTHER)."
    assert error["type"] == "invalid_request_error"
    assert sim.requests() == []
    _stays_healthy(channel)


def _gemini_only(gateway: Gateway, native_sim: NativeSim, options: str) -> None:
    """The gateway's one channel made a Gemini channel (``options`` on the simulator)."""
    channel = gateway.channel
    channel.provider_type = "gemini"
    channel.base_url = f"{native_sim.url}/sim/{options}" if options else native_sim.url
    channel.provider_settings = {}
    channel.secret = GEMINI_KEY
    channel.full_clean()
    channel.save()
    gateway.caught_up()


def _sim_prompt_count(sent: dict[str, Any]) -> int:
    """The simulator's promptTokenCount for the request it was sent."""
    planned = plan_generate(sent["body"], SimOptions(), MODEL)
    assert not isinstance(planned, str)
    return int(prompt_metadata(planned, 0)["promptTokenCount"])


STORY: dict[str, Any] = {
    "model": PUBLIC_MODEL,
    "stream": True,
    "messages": [
        {
            "role": "user",
            "content": "Tell me a long story about gateways, their tollbooths and their keepers",
        }
    ],
}


def test_a_cut_stream_is_billed_for_googles_prompt_counts_and_the_delivered_text(
    gateway: Gateway, native_sim: NativeSim
) -> None:
    """A client hanging up before the last chunk: the Gemini API already sent the prompt's
    counts (running usageMetadata on every chunk), so those are billed, cached tokens as
    such, and only the output is counted by the relay (estimated)."""
    _gemini_only(gateway, native_sim, "cached=2,hang_after=3")
    text = ""
    with gateway.client.stream("POST", "/v1/chat/completions", json=STORY) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            for choice in json.loads(line[len("data: ") :]).get("choices") or ():
                text += (choice.get("delta") or {}).get("content") or ""
            if len(text.split()) == 3:
                break  # and hang up: the last chunk, with the answer's counts, never came
    (event,) = usage_events(1)
    assert (event.completed, event.error_code) == (False, "client_disconnected")
    assert event.estimated
    [sent] = native_sim.requests()
    assert event.prompt_tokens == _sim_prompt_count(sent) != tokens.count_prompt(STORY["messages"])
    assert event.cached_tokens == 2
    assert event.completion_tokens == tokens.count_text(text) > 1


def test_a_stream_whose_last_chunk_has_no_counts_counts_its_output(
    gateway: Gateway, native_sim: NativeSim
) -> None:
    """Running counts on the early chunks, none with the finish reason: the prompt's
    counts are Google's, the output is counted by the relay and the event says so, rather
    than the prompt-only counts passing for the whole answer's with no output."""
    _gemini_only(gateway, native_sim, "tokens=4,nousage")
    response = gateway.client.post("/v1/chat/completions", json=STORY)
    assert response.status_code == 200, response.text
    (event,) = usage_events(1)
    assert event.completed and event.estimated
    [sent] = native_sim.requests()
    assert event.prompt_tokens == _sim_prompt_count(sent)
    assert event.completion_tokens == tokens.count_text("tok0 tok1 tok2 tok3") > 0


def _chunk(parts: list[dict[str, Any]], metadata: dict[str, Any] | None, finish: str = "") -> bytes:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}}
    if finish:
        candidate["finishReason"] = finish
    chunk: dict[str, Any] = {"candidates": [candidate]}
    if metadata is not None:
        chunk["usageMetadata"] = metadata
    return b"data: " + orjson.dumps(chunk) + b"\r\n\r\n"


PROMPT_ONLY = {
    "promptTokenCount": 250000,
    "totalTokenCount": 250000,
    "cachedContentTokenCount": 1000,
    "promptTokensDetails": [
        {"modality": "VIDEO", "tokenCount": 249990},
        {"modality": "TEXT", "tokenCount": 10},
    ],
}


def test_a_streams_prompt_counts_are_googles_running_counts() -> None:
    decoder = google.GoogleStream()
    assert decoder.prompt_usage() is None
    decoder.feed(_chunk([{"text": "Hel"}], PROMPT_ONLY))
    opening = c.Usage(input_tokens=250000, cached_tokens=1000, image_input_tokens=249990)
    assert decoder.prompt_usage() == opening
    # The output of later running counts is left out: the relay counts what it delivered.
    running = {**PROMPT_ONLY, "candidatesTokenCount": 7, "thoughtsTokenCount": 5}
    decoder.feed(_chunk([{"text": "lo"}], running))
    assert decoder.prompt_usage() == opening
    with pytest.raises(StreamIncomplete):
        decoder.finish()


def test_only_the_counts_that_come_with_the_finish_are_the_answers() -> None:
    cut_short = google.GoogleStream()
    cut_short.feed(_chunk([{"text": "a" * 10}], PROMPT_ONLY))
    events = cut_short.feed(_chunk([{"text": "b" * 400}], None, "STOP")) + cut_short.finish()
    assert [e for e in events if isinstance(e, c.StreamUsage)] == []
    assert cut_short.prompt_usage() is not None

    whole = google.GoogleStream()
    final = {**PROMPT_ONLY, "candidatesTokenCount": 120}
    whole.feed(_chunk([{"text": "a" * 10}], PROMPT_ONLY))
    events = whole.feed(_chunk([{"text": "b" * 400}], final, "STOP")) + whole.finish()
    [counted] = [e for e in events if isinstance(e, c.StreamUsage)]
    assert (counted.usage.input_tokens, counted.usage.output_tokens) == (250000, 120)

    # Counts in a chunk of their own after the finish reason are the answer's too.
    after = google.GoogleStream()
    after.feed(_chunk([{"text": "a"}], PROMPT_ONLY, "STOP"))
    events = after.feed(b"data: " + orjson.dumps({"usageMetadata": final}) + b"\r\n\r\n")
    [counted] = [e for e in events + after.finish() if isinstance(e, c.StreamUsage)]
    assert counted.usage.output_tokens == 120
