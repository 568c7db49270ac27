"""Each dialect counts a request's input images in the walk that sizes it: wherever its
API lets a picture stand, and nothing that is not a picture."""

from __future__ import annotations

from typing import Any

from relay.dialects.chat import ChatCall
from relay.dialects.legacy import CompletionCall, EmbeddingCall
from relay.dialects.messages import MessagesCall
from relay.dialects.responses import ResponsesCall

IMAGE = {"type": "image", "source": {"type": "url", "url": "https://example.test/a.png"}}


def test_chat_counts_image_parts_of_every_message() -> None:
    payload: dict[str, Any] = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "text only"},
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "and"},
                    {"type": "image_url", "image_url": {"url": "y"}},
                    {"type": "input_audio", "input_audio": {"data": "", "format": "wav"}},
                ],
            },
        ],
    }
    call = ChatCall(payload)
    assert call.input_images() == 2
    assert call.prompt_estimate() > 0


def test_responses_counts_input_images_in_messages_and_tool_outputs() -> None:
    image = {"type": "input_image", "image_url": "data:image/png;base64,AA=="}
    payload: dict[str, Any] = {
        "model": "m",
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "look"}, image]},
            {"type": "function_call", "call_id": "c", "name": "shot", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c", "output": [image, image]},
            {"type": "input_file", "file_id": "file-1"},
        ],
    }
    assert ResponsesCall(payload).input_images() == 3
    assert ResponsesCall({"model": "m", "input": "just text"}).input_images() == 0


def test_messages_counts_image_blocks_in_tool_results() -> None:
    payload: dict[str, Any] = {
        "model": "m",
        "max_tokens": 5,
        "system": [{"type": "text", "text": "sys"}],
        "messages": [
            {"role": "user", "content": [IMAGE, {"type": "document", "source": {}}]},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "t", "content": [IMAGE]}],
            },
        ],
    }
    assert MessagesCall(payload, "2023-06-01", None).input_images() == 2


def test_text_apis_count_none() -> None:
    assert CompletionCall({"model": "m", "prompt": "hi"}).input_images() == 0
    assert EmbeddingCall({"model": "m", "input": ["a", "b"]}).input_images() == 0


def test_only_requests_that_ask_for_pictures_can_be_billed_generated_images() -> None:
    chat = {"model": "m", "messages": [{"role": "user", "content": "draw"}]}
    assert not ChatCall(dict(chat)).generates_images()
    assert ChatCall({**chat, "modalities": ["text", "image"]}).generates_images()
    assert not ChatCall({**chat, "modalities": ["text", "audio"]}).generates_images()
    responses: dict[str, Any] = {"model": "m", "input": "draw"}
    assert not ResponsesCall(dict(responses)).generates_images()
    tools = [{"type": "function", "name": "f"}, {"type": "image_generation"}]
    assert ResponsesCall({**responses, "tools": tools}).generates_images()
    messages = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
    assert not MessagesCall(messages, "2023-06-01", None).generates_images()
