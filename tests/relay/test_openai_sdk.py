"""The official openai SDK, pointed at the relay, works as it does against OpenAI."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from tests.openai_schema import validate
from tests.relay.conftest import PUBLIC_MODEL, Gateway

MESSAGES = [{"role": "user", "content": "Hello from the SDK"}]


@pytest.fixture
def sdk(gateway: Gateway) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=gateway.secret, max_retries=0)
    yield client
    client.close()


def test_plain_completion(sdk: openai.OpenAI) -> None:
    completion = sdk.chat.completions.create(model=PUBLIC_MODEL, messages=MESSAGES)
    validate(completion.model_dump(mode="json", exclude_unset=True), "CreateChatCompletionResponse")
    assert completion.model == PUBLIC_MODEL
    assert completion.choices[0].message.content.startswith("tok0")
    assert completion.usage.completion_tokens > 0


def test_streaming_without_and_with_usage(sdk: openai.OpenAI) -> None:
    chunks = list(sdk.chat.completions.create(model=PUBLIC_MODEL, messages=MESSAGES, stream=True))
    assert all(chunk.usage is None for chunk in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("tok0 tok1")

    chunks = list(
        sdk.chat.completions.create(
            model=PUBLIC_MODEL,
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].choices == []
    assert chunks[-1].usage.total_tokens == (
        chunks[-1].usage.prompt_tokens + chunks[-1].usage.completion_tokens
    )


def test_tool_calls(sdk: openai.OpenAI) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    completion = sdk.chat.completions.create(model=PUBLIC_MODEL, messages=MESSAGES, tools=tools)
    call = completion.choices[0].message.tool_calls[0]
    assert completion.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather"


def test_n_choices(sdk: openai.OpenAI) -> None:
    completion = sdk.chat.completions.create(model=PUBLIC_MODEL, messages=MESSAGES, n=2)
    assert [choice.index for choice in completion.choices] == [0, 1]


def test_models_list_and_retrieve(sdk: openai.OpenAI) -> None:
    assert [model.id for model in sdk.models.list()] == [PUBLIC_MODEL]
    assert sdk.models.retrieve(PUBLIC_MODEL).id == PUBLIC_MODEL
    with pytest.raises(openai.NotFoundError):
        sdk.models.retrieve("missing-model")


def test_sdk_errors_are_typed(gateway: Gateway) -> None:
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="sk-tg-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        client.chat.completions.create(model=PUBLIC_MODEL, messages=MESSAGES)
    assert caught.value.code == "invalid_api_key"
    client.close()
