"""Bedrock over loopback: SigV4 by botocore, checked by the simulator with botocore;
Converse and ConverseStream (AWS event-stream framing), tools, usage and errors."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from relay.providers.base import FailureKind, StreamFailed
from relay.providers.bedrock import BedrockAdapter, BedrockConfig
from relay.providers.bedrock_auth import AwsCredentials, EventStreamDecoder
from relay.simulator.native.bedrock import SIGNATURE_MISMATCH, event, frame
from relay.translate import canonical as c
from tests.relay.providers.conftest import (
    AWS_ACCESS_KEY,
    AWS_REGION,
    AWS_SECRET,
    CHAT,
    CHAT_PROMPT_TOKENS,
    WEATHER_TOOL,
    NativeSim,
    canonical,
    complete,
    failure,
    follow_up,
    run,
    stream,
    summarise,
    tool_calls,
)

MODEL = "anthropic.claude-3-5-sonnet-20240620-v1:0"


def adapter(sim: NativeSim, options: str = "", **credentials: Any) -> BedrockAdapter:
    values = {
        "access_key_id": AWS_ACCESS_KEY,
        "secret_access_key": AWS_SECRET,
        "region": AWS_REGION,
        **credentials,
    }
    base = f"{sim.url}/sim/{options}" if options else sim.url
    return BedrockAdapter(BedrockConfig(AwsCredentials(**values), base_url=base))


def test_converse_answer_with_cache_usage(native_sim: NativeSim) -> None:
    answer = complete(adapter(native_sim, "tokens=3,cached=5,cache_write=7"), CHAT, MODEL)
    assert c.text_of(answer.parts) == "tok0 tok1 tok2"
    assert answer.stop == "end"
    assert answer.usage == c.Usage(
        input_tokens=CHAT_PROMPT_TOKENS, output_tokens=3, cached_tokens=5, cache_write_tokens=7
    )
    sent = native_sim.requests()[-1]
    # The colon of the model id travels percent-encoded, and was signed that way.
    assert sent["path"].endswith("/model/anthropic.claude-3-5-sonnet-20240620-v1:0/converse")
    assert sent["headers"]["authorization"].startswith(
        f"AWS4-HMAC-SHA256 Credential={AWS_ACCESS_KEY}/"
    )
    assert sent["body"]["system"] == [{"text": "Answer briefly."}]
    assert sent["body"]["messages"] == [
        {"role": "user", "content": [{"text": "What is a gateway?"}]}
    ]


def test_converse_stream_is_decoded_from_event_stream_frames(native_sim: NativeSim) -> None:
    options = "tokens=4,cached=2,cache_write=3,reasoning=6"
    streamed = summarise(stream(adapter(native_sim, options), CHAT, MODEL))
    assert streamed.text == "tok0 tok1 tok2 tok3"
    assert streamed.reasoning == "sim thought"
    assert streamed.stop == "end"
    assert streamed.usage == c.Usage(
        input_tokens=CHAT_PROMPT_TOKENS, output_tokens=4 + 6, cached_tokens=2, cache_write_tokens=3
    )


def test_tool_call_round_trip(native_sim: NativeSim) -> None:
    bedrock = adapter(native_sim)
    asked = {**CHAT, "tools": [WEATHER_TOOL]}
    answer = complete(bedrock, asked, MODEL)
    assert answer.stop == "tool_use"
    (call,) = tool_calls(answer)
    assert (call.name, call.arguments) == ("get_weather", "{}")
    spec = native_sim.requests()[-1]["body"]["toolConfig"]["tools"][0]["toolSpec"]
    assert spec["inputSchema"]["json"]["properties"] == {"city": {"type": "string"}}
    final = complete(bedrock, follow_up(asked, call, "sunny"), MODEL)
    assert c.text_of(final.parts).startswith("tok0")
    sent = native_sim.requests()[-1]["body"]["messages"]
    assert sent[1]["content"][0]["toolUse"]["toolUseId"] == call.id
    assert sent[2]["content"][0]["toolResult"]["toolUseId"] == call.id
    assert sent[2]["content"][0]["toolResult"]["content"] == [{"text": "sunny"}]


def test_streamed_tool_call(native_sim: NativeSim) -> None:
    streamed = summarise(stream(adapter(native_sim), {**CHAT, "tools": [WEATHER_TOOL]}, MODEL))
    ((call_id, name, arguments),) = streamed.calls.values()
    assert call_id.startswith("tooluse_") and name == "get_weather" and arguments == "{}"
    assert streamed.stop == "tool_use"


def test_wrong_secret_is_refused_by_the_signature_check(native_sim: NativeSim) -> None:
    bedrock = adapter(native_sim, secret_access_key="not-the-secret")
    error = failure(lambda: complete(bedrock, CHAT, MODEL))
    assert error.failure.kind is FailureKind.CREDENTIALS
    assert error.failure.retryable
    assert error.failure.message == SIGNATURE_MISMATCH


def test_simulator_refuses_wrong_signature_as_aws_does(native_sim: NativeSim) -> None:
    bedrock = adapter(native_sim, secret_access_key="not-the-secret")

    async def send(http: httpx.AsyncClient) -> httpx.Response:
        request = await bedrock.build(canonical(CHAT), upstream_model=MODEL, stream=False)
        return await http.send(request.to_httpx())

    response = run(send)
    assert response.status_code == 403
    assert response.headers["x-amzn-errortype"].startswith("InvalidSignatureException:")
    assert response.json() == {"message": SIGNATURE_MISMATCH}


def test_a_body_changed_after_signing_is_refused(native_sim: NativeSim) -> None:
    bedrock = adapter(native_sim)

    async def send(tamper: bool) -> int:
        async with httpx.AsyncClient(trust_env=False) as http:
            request = await bedrock.build(canonical(CHAT), upstream_model=MODEL, stream=False)
            content = request.content.replace(b"gateway", b"gatewax") if tamper else request.content
            response = await http.post(request.url, headers=request.headers, content=content)
            return response.status_code

    assert run(lambda _: send(False)) == 200
    assert run(lambda _: send(True)) == 403


def test_unknown_access_key_and_wrong_region_are_credential_failures(
    native_sim: NativeSim,
) -> None:
    unknown = adapter(native_sim, access_key_id="AKIAUNKNOWN")
    assert failure(lambda: complete(unknown, CHAT, MODEL)).failure.kind is FailureKind.CREDENTIALS
    region = adapter(native_sim, region="eu-west-3")
    assert failure(lambda: complete(region, CHAT, MODEL)).failure.kind is FailureKind.CREDENTIALS


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (429, FailureKind.RETRYABLE),
        (503, FailureKind.RETRYABLE),
        (500, FailureKind.RETRYABLE),
        (400, FailureKind.CLIENT),
        # ResourceNotFoundException: a model id the channel's account cannot call.
        (404, FailureKind.RETRYABLE),
        # ModelErrorException: the model failed while answering.
        (424, FailureKind.RETRYABLE),
    ],
)
def test_error_mapping(native_sim: NativeSim, status: int, kind: FailureKind) -> None:
    bedrock = adapter(native_sim, f"fail={status}")
    assert failure(lambda: complete(bedrock, CHAT, MODEL)).failure.kind is kind


def test_image_by_url_is_a_client_error(native_sim: NativeSim) -> None:
    image = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    body = {**CHAT, "messages": [{"role": "user", "content": [image]}]}
    error = failure(lambda: complete(adapter(native_sim), body, MODEL))
    assert error.failure.kind is FailureKind.CLIENT and error.failure.status == 400
    assert native_sim.requests() == []  # refused before anything was sent


def test_exception_inside_the_stream_is_a_stream_failure(native_sim: NativeSim) -> None:
    with pytest.raises(StreamFailed) as caught:
        stream(adapter(native_sim, "stream_error"), CHAT, MODEL)
    assert caught.value.failure.kind is FailureKind.RETRYABLE


def test_event_stream_frames_split_anywhere_decode_whole() -> None:
    data = event("contentBlockDelta", {"delta": {"text": "hi"}}) + frame(
        {":message-type": "event", ":event-type": "metadata"}, b"{}"
    )
    decoder = EventStreamDecoder()
    events = [e for i in range(len(data)) for e in decoder.feed(data[i : i + 1])]
    assert [e.event_type for e in events] == ["contentBlockDelta", "metadata"]
    assert events[0].payload == b'{"delta":{"text":"hi"}}'
    corrupt = bytearray(event("messageStop", {}))
    corrupt[-1] ^= 0xFF
    with pytest.raises(ValueError):
        EventStreamDecoder().feed(bytes(corrupt))
