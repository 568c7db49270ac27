"""Bedrock failures that are not the client's: a model id the channel's account cannot
call (ResourceNotFoundException, 404) and a model that failed while answering
(ModelErrorException, 424) are retryable, not the client's nor the credentials' (the relay
fails over: tests/relay/providers/test_relay.py); an answer Converse stops as malformed
is the upstream's failure, not a finished answer."""

from __future__ import annotations

import orjson
import pytest
import respx

from relay.providers.base import FailureKind, StreamFailed
from relay.providers.bedrock import (
    BedrockAdapter,
    BedrockConfig,
    BedrockStream,
    MalformedAnswer,
    decode,
    failure_for,
)
from relay.providers.bedrock_auth import AwsCredentials
from relay.simulator.native.bedrock import event
from tests.relay.providers.conftest import (
    AWS_ACCESS_KEY,
    AWS_REGION,
    AWS_SECRET,
    CHAT,
    complete,
    failure,
)
from tests.relay.providers.test_bedrock import MODEL


@pytest.mark.parametrize(
    ("kind", "status", "client_status"),
    [("ResourceNotFoundException", 404, 502), ("ModelErrorException", 424, 502)],
)
def test_channel_side_errors_are_retryable(kind: str, status: int, client_status: int) -> None:
    found = failure_for(kind, b'{"message":"Model not found."}', status, ())
    assert (found.kind, found.status) == (FailureKind.RETRYABLE, client_status)
    assert (found.type, found.code) == ("server_error", "upstream_error")


def test_a_validation_error_stays_the_clients() -> None:
    found = failure_for("ValidationException", b'{"message":"Too long."}', 400, ())
    assert (found.kind, found.status) == (FailureKind.CLIENT, 400)


def converse_answer(stop: str) -> bytes:
    message = {"role": "assistant", "content": [{"text": "{ broken"}]}
    usage = {"inputTokens": 3, "outputTokens": 2}
    return orjson.dumps({"output": {"message": message}, "stopReason": stop, "usage": usage})


@pytest.mark.parametrize("stop", ["malformed_model_output", "malformed_tool_use"])
def test_a_malformed_answer_is_an_upstream_failure(stop: str) -> None:
    with pytest.raises(MalformedAnswer):
        decode(converse_answer(stop))
    assert decode(converse_answer("end_turn")).stop == "end"


@pytest.mark.parametrize("stop", ["malformed_model_output", "malformed_tool_use"])
def test_a_stream_stopped_as_malformed_ends_in_an_upstream_error(stop: str) -> None:
    data = (
        event("messageStart", {"role": "assistant"})
        + event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "{"}})
        + event("messageStop", {"stopReason": stop})
        + event("metadata", {"usage": {"inputTokens": 3, "outputTokens": 1}})
    )
    decoder = BedrockStream()
    assert decoder.feed(data)  # the text before the stop reaches the client
    with pytest.raises(StreamFailed) as failed:
        decoder.finish()
    assert failed.value.failure.kind is FailureKind.RETRYABLE
    assert failed.value.failure.status == 502 and stop in failed.value.failure.message


@respx.mock
def test_a_malformed_answer_fails_over_as_an_invalid_one() -> None:
    credentials = AwsCredentials(AWS_ACCESS_KEY, AWS_SECRET, AWS_REGION)
    bedrock = BedrockAdapter(BedrockConfig(credentials, base_url="https://bedrock.test"))
    respx.post(url__startswith="https://bedrock.test/model/").respond(
        200, content=converse_answer("malformed_tool_use")
    )
    error = failure(lambda: complete(bedrock, CHAT, MODEL))
    assert (error.failure.kind, error.failure.status) == (FailureKind.RETRYABLE, 502)
