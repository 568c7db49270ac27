"""Generated pictures cross the canonical form: chat ``message.images`` / ``delta.images``,
Responses ``image_generation_call`` items and their stream events, and Gemini
``inlineData`` parts, both ways where the format has them; Messages has no place for them.
Asking for pictures translates too (chat ``modalities``, the Responses image_generation
tool, Gemini ``responseModalities``). Outputs are checked against OpenAI's schemas."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from relay.dialects import images as gate_module
from relay.dialects.images import ImageGate
from relay.providers import bedrock, google
from relay.simulator.responses import PIXEL_PNG as PNG
from relay.translate import canonical as c
from relay.translate import chat, messages, messages_stream, responses, responses_stream
from tests.openai_schema import responses_validator, validate, validate_responses_stream

JPEG = "/9j/4AAQSkZJRgABAQ=="


def chat_image(data: str, mime: str = "image/png") -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{data}"}}


def chat_answer(images: list[dict[str, Any]]) -> dict[str, Any]:
    message = {"role": "assistant", "content": "Here you are.", "images": images}
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "finish_reason": "stop", "message": message}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
    }


def test_asking_for_pictures_translates_between_chat_responses_and_gemini() -> None:
    asked = chat.request_to_canonical(
        {
            "model": "m",
            "messages": [{"role": "user", "content": "a cat"}],
            "modalities": ["text", "image"],
        }
    )
    assert asked.image_output
    body = responses.request_from_canonical(asked)
    assert body["tools"] == [{"type": "image_generation"}]
    back = responses.request_to_canonical(
        {
            "model": "m",
            "input": "a cat",
            "tools": [{"type": "image_generation", "size": "1024x1024"}],
        }
    )
    assert back.image_output and back.tools == []
    assert chat.request_from_canonical(back)["modalities"] == ["image", "text"]
    gemini = orjson.loads(google.request_body(back))
    assert gemini["generationConfig"]["responseModalities"] == ["TEXT", "IMAGE"]

    plain = chat.request_to_canonical(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    )
    assert not plain.image_output
    assert "modalities" not in chat.request_from_canonical(plain)
    assert "responseModalities" not in orjson.loads(google.request_body(plain)).get(
        "generationConfig", {}
    )
    assert "tools" not in responses.request_from_canonical(plain)


def test_a_model_that_makes_no_pictures_refuses_a_request_for_them() -> None:
    request = c.Request(model="m", turns=[c.Turn("user", [c.Text("a cat")])], image_output=True)
    with pytest.raises(c.TranslationError, match="cannot generate images"):
        messages.request_from_canonical(request)
    with pytest.raises(bedrock.UnsupportedContent, match="cannot generate images"):
        bedrock.request_body(request)


def test_chat_answer_pictures_become_responses_items_and_back() -> None:
    answer = chat.response_to_canonical(
        chat_answer(
            [
                chat_image(PNG),
                chat_image(JPEG, "image/jpeg"),
                {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
            ]
        )
    )
    pictures = [p for p in answer.parts if isinstance(p, c.GeneratedImage)]
    # A bare URL has no base64 to hand on: only inline pictures are kept.
    assert pictures == [c.GeneratedImage("image/png", PNG), c.GeneratedImage("image/jpeg", JPEG)]

    out = responses.response_from_canonical(answer, {"model": "m"})
    responses_validator("Response").validate(out)
    items = [i for i in out["output"] if i["type"] == "image_generation_call"]
    assert [(i["result"], i["output_format"], i["status"]) for i in items] == [
        (PNG, "png", "completed"),
        (JPEG, "jpeg", "completed"),
    ]
    assert out["output"][0]["content"][0]["text"] == "Here you are."

    again = responses.response_to_canonical(out)
    assert [p for p in again.parts if isinstance(p, c.GeneratedImage)] == pictures
    chat_again = chat.response_from_canonical(again)
    validate(chat_again, "CreateChatCompletionResponse")
    assert chat_again["choices"][0]["message"]["images"] == [
        chat_image(PNG),
        chat_image(JPEG, "image/jpeg"),
    ]


def test_failed_and_empty_image_calls_carry_no_picture() -> None:
    body = {
        "id": "resp_1",
        "output": [
            {"type": "image_generation_call", "id": "ig_1", "status": "failed", "result": PNG},
            {"type": "image_generation_call", "id": "ig_2", "status": "completed", "result": None},
            {"type": "image_generation_call", "id": "ig_3", "status": "completed", "result": PNG},
        ],
    }
    parts = responses.response_to_canonical(body).parts
    assert parts == [c.GeneratedImage("image/png", PNG)]


def test_messages_answers_have_no_place_for_pictures() -> None:
    answer = chat.response_to_canonical(chat_answer([chat_image(PNG)]))
    out = messages.response_from_canonical(answer)
    assert out["content"] == [{"type": "text", "text": "Here you are."}]
    encoder = messages_stream.Encoder("m", "msg_1")
    frames = encoder.feed(c.StreamStart("x", "m")) + encoder.feed(
        c.ImageGenerated(c.GeneratedImage("image/png", PNG))
    )
    assert PNG.encode() not in b"".join(frames + encoder.close())


def chat_stream(pictures: int) -> list[dict[str, Any]]:
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m"}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    chunks = [chunk({"role": "assistant", "content": ""}), chunk({"content": "Here"})]
    chunks += [chunk({"images": [chat_image(PNG)]}) for _ in range(pictures)]
    chunks.append(chunk({}, "stop"))
    usage = {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}
    chunks.append({**base, "choices": [], "usage": usage})
    return chunks


def test_chat_stream_pictures_become_responses_stream_events_and_back() -> None:
    decoder = chat.Decoder()
    encoder = responses_stream.Encoder({"model": "m", "tools": [{"type": "image_generation"}]}, "m")
    raw = b""
    for chunk in chat_stream(2):
        for event in decoder.feed(chunk):
            raw += b"".join(encoder.feed(event))
    raw += b"".join(encoder.close())
    events = validate_responses_stream(raw.decode())
    kinds = [e["type"] for e in events]
    assert kinds.count("response.image_generation_call.completed") == 2
    done = [
        e["item"]
        for e in events
        if e["type"] == "response.output_item.done" and e["item"]["type"] == "image_generation_call"
    ]
    assert [i["result"] for i in done] == [PNG, PNG]
    final = events[-1]["response"]
    assert [i["type"] for i in final["output"]] == [
        "message",
        "image_generation_call",
        "image_generation_call",
    ]
    assert [i["output_index"] for i in events if i["type"] == "response.output_item.added"] == [
        0,
        1,
        2,
    ]

    back_decoder, back = responses_stream.Decoder(), chat.Encoder("m")
    chunks = [ch for e in events for ev in back_decoder.feed(e) for ch in back.feed(ev)]
    for chunk in chunks:
        validate(chunk, "CreateChatCompletionStreamResponse")
    pictures = [
        i for ch in chunks if ch["choices"] for i in ch["choices"][0]["delta"].get("images", ())
    ]
    assert pictures == [chat_image(PNG), chat_image(PNG)]


def test_gemini_inline_pictures_are_answer_parts_and_stream_events() -> None:
    answer = {
        "candidates": [
            {
                "content": {
                    "role": "model",
                    "parts": [
                        {"inlineData": {"mimeType": "image/png", "data": "draft"}, "thought": True},
                        {"text": "Here you are."},
                        {"inlineData": {"mimeType": "image/png", "data": PNG}},
                        {"inlineData": {"mimeType": "application/pdf", "data": "JVBERi0="}},
                    ],
                },
                "finishReason": "STOP",
            }
        ],
        "usageMetadata": {
            "promptTokenCount": 4,
            "candidatesTokenCount": 1300,
            "candidatesTokensDetails": [
                {"modality": "TEXT", "tokenCount": 10},
                {"modality": "IMAGE", "tokenCount": 1290},
            ],
        },
    }
    decoded = google.decode(orjson.dumps(answer))
    # The thought picture is a draft, a PDF is no picture: one picture in the answer.
    assert decoded.parts == [c.Text("Here you are."), c.GeneratedImage("image/png", PNG)]
    assert decoded.usage is not None and decoded.usage.image_output_tokens == 1290

    stream = google.GoogleStream()
    data = b"data: " + orjson.dumps(answer) + b"\r\n\r\n"
    events = stream.feed(data) + stream.finish()
    assert [e for e in events if isinstance(e, c.ImageGenerated)] == [
        c.ImageGenerated(c.GeneratedImage("image/png", PNG))
    ]


def request(image_output: bool = True, cap: int | None = None) -> c.Request:
    return c.Request(model="m", turns=[], image_output=image_output, max_output_tokens=cap)


def test_the_gate_lets_through_only_asked_for_pictures_within_the_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    picture = c.GeneratedImage("image/png", PNG)
    unasked = ImageGate(request(image_output=False))
    assert not unasked.admit(picture) and unasked.delivered == 0

    many = ImageGate(request())
    assert sum(many.admit(picture) for _ in range(100)) == gate_module.MAX_IMAGES

    # Never more pictures than the client's own output cap held for.
    capped = ImageGate(request(cap=3))
    events: list[c.Event] = [c.ImageGenerated(picture)] * 5 + [c.TextDelta("x")]
    assert capped.events(events) == [c.ImageGenerated(picture)] * 3 + [c.TextDelta("x")]
    assert capped.delivered == 3

    monkeypatch.setattr(gate_module, "MAX_IMAGE_CHARS", 2 * len(PNG) + 1)
    heavy = ImageGate(request())
    answer = c.Response("r", "m", [c.Text("a"), picture, picture, picture])
    heavy.answer(answer)
    assert answer.parts == [c.Text("a"), picture, picture] and heavy.delivered == 2


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/x.png",
        "data:text/plain;base64,aGk=",
        "data:image/png,notbase64",
        "data:image/png;base64,",
        "data:image/png;charset=x;base64,AAAA",
        42,
    ],
)
def test_only_inline_base64_pictures_are_kept(url: Any) -> None:
    assert c.GeneratedImage.from_data_url(url) is None


def test_a_streamed_picture_in_a_chat_delta_is_one_event() -> None:
    chunk = json.loads(json.dumps(chat_stream(1)[2]))
    assert chat.Decoder().feed(chunk)[1:] == [c.ImageGenerated(c.GeneratedImage("image/png", PNG))]
