"""How a relayed stream ends when the upstream does not end it as its API says.

A stream whose body ends cleanly before its answer's last event (``[DONE]``,
``response.completed``, ``message_stop``) is a truncated answer: the client gets its
dialect's error event at the end, the request is recorded incomplete, and the channel is
reported to its breaker; what was delivered is billed as before. An OpenAI-compatible
stream whose every choice gave its ``finish_reason`` is whole without ``[DONE]`` (servers
such as llama.cpp's long sent none): it is closed for the client as usual.

An error event inside a stream ends the stream after it (passed on, redacted), and is
recorded as a failure; the channel is reported unless the error blames the request.

The upstream is a loopback server that answers each API with a stream chosen by a
``case-<name>`` word in the request; the breaker opens on one failure, so a report shows.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from billing.models import UsageEvent
from relay import health
from relay.metering import usage_writer
from tests.relay.conftest import PUBLIC_MODEL, UPSTREAM_MODEL, Gateway, messages_stream_events
from tests.servers import asgi_body, running_server

WORDS = ["Hello", " from", " one", " read"]
USAGE = {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}


def _sse(payload: Any, name: str | None = None) -> bytes:
    head = b"event: " + name.encode() + b"\n" if name else b""
    data = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    return head + b"data: " + data + b"\n\n"


def _openai(case: str, legacy: bool) -> bytes:
    """A chat (or legacy completions) stream: words, finish, usage, [DONE]."""
    base = {"id": "cmpl-e", "created": 1, "model": UPSTREAM_MODEL}
    base["object"] = "text_completion" if legacy else "chat.completion.chunk"

    def choice(word: str, finish: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"text": word} if legacy else {"delta": {"content": word}}
        return {**base, "choices": [{"index": 0, **body, "finish_reason": finish}]}

    words = [_sse(choice(word)) for word in WORDS]
    end = [_sse(choice("", "stop")), _sse({**base, "choices": [], "usage": USAGE})]
    if case == "cut":
        return b"".join(words)
    if case == "nodone":
        return b"".join(words + end)
    if case in ("error", "refused"):
        error = (
            {"message": "The server had an error", "type": "server_error", "code": None}
            if case == "error"
            else {
                "message": "Too long",
                "type": "invalid_request_error",
                "code": "context_length_exceeded",
            }
        )
        return b"".join([*words[:2], _sse({"error": error}), *words[2:], *end, _sse(b"[DONE]")])
    return b"".join([*words, *end, _sse(b"[DONE]")])


def _responses(case: str) -> bytes:
    response = {"id": "resp_e", "object": "response", "status": "in_progress", "output": []}
    start = _sse({"type": "response.created", "response": response}, "response.created")
    words = [
        _sse(
            {"type": "response.output_text.delta", "item_id": "m", "delta": w},
            "response.output_text.delta",
        )
        for w in WORDS
    ]
    usage = {"input_tokens": 9, "output_tokens": 4, "total_tokens": 13}
    done = {**response, "status": "completed", "usage": usage}
    end = _sse({"type": "response.completed", "response": done}, "response.completed")
    if case == "cut":
        return start + b"".join(words)
    if case == "failed":
        failed = {**response, "status": "failed", "error": {"code": "server_error", "message": "x"}}
        return (
            start
            + b"".join(words[:2])
            + _sse({"type": "response.failed", "response": failed}, "response.failed")
        )
    if case in ("error", "refused"):
        code = "server_error" if case == "error" else "invalid_prompt"
        error = _sse({"type": "error", "code": code, "message": "No", "param": None}, "error")
        return start + b"".join(words[:2]) + error + b"".join(words[2:]) + end
    return start + b"".join(words) + end


def _messages(case: str) -> bytes:
    events = messages_stream_events(WORDS)
    if case == "cut":
        del events[-3:]  # the block's stop, the usage and the end
    elif case in ("error", "refused"):
        kind = "overloaded_error" if case == "error" else "invalid_request_error"
        events.insert(4, {"type": "error", "error": {"type": kind, "message": "No"}})
    return b"".join(_sse(event, event["type"]) for event in events)


class Upstream:
    """Answers every API with the stream its request names (``case-<name>``)."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.url = ""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = await asgi_body(receive)
        path = scope["path"]
        self.paths.append(path)
        found = body.split(b"case-", 1)[1][:8] if b"case-" in body else b"whole"
        case = next(
            c
            for c in ("cut", "nodone", "error", "refused", "failed", "whole")
            if found.startswith(c.encode())
        )
        if path.endswith("/responses"):
            stream = _responses(case)
        elif path.endswith("/messages"):
            stream = _messages(case)
        else:
            stream = _openai(case, legacy=path.endswith("/v1/completions"))
        head = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": head})
        await send({"type": "http.response.body", "body": stream})


def _request(path: str, case: str) -> dict[str, Any]:
    text = f"Say hello case-{case}"
    body: dict[str, Any] = {"model": PUBLIC_MODEL, "stream": True}
    if path == "/v1/responses":
        return {**body, "input": text}
    if path == "/v1/completions":
        return {**body, "prompt": text, "max_tokens": 16}
    messages = [{"role": "user", "content": text}]
    if path == "/v1/messages":
        return {**body, "messages": messages, "max_tokens": 32}
    return {**body, "messages": messages}


@pytest.fixture
def upstream(gateway: Gateway, relay_settings: Any) -> Iterator[Upstream]:
    relay_settings.RELAY_BREAKER_FAILURES = 1  # one report opens it: a report shows
    relay_settings.RELAY_BREAKER_COOLDOWN = 60.0
    app = Upstream()
    with running_server(app) as url:
        app.url = url
        yield app


def _serve(gateway: Gateway, upstream: Upstream, way: str, path: str) -> None:
    """Point the channel at the upstream, speaking ``way`` (``openai``: translated, or
    passed through for chat and completions; ``native``: the client's API itself;
    ``anthropic``: through the Anthropic adapter), and wait until ``path`` reaches it so."""
    channel = gateway.channel
    url = upstream.url
    channel.provider_type = "anthropic" if way == "anthropic" else "openai"
    channel.base_url = url if way == "anthropic" else f"{url}/v1"
    channel.native_surfaces = [path.rsplit("/", 1)[1]] if way == "native" else []
    channel.save()
    wanted = "/v1/messages" if way == "anthropic" else path if way == "native" else None
    if wanted is None:
        wanted = "/v1/chat/completions" if path in ("/v1/responses", "/v1/messages") else path
    deadline = time.monotonic() + 10
    while True:  # the relay takes in the change within a moment
        upstream.paths.clear()
        answer = gateway.client.post(path, json=_request(path, "whole"))
        assert answer.status_code == 200, answer.text
        if upstream.paths == [wanted]:
            return
        assert time.monotonic() < deadline, "the relay never used the upstream"
        time.sleep(0.05)


def _stream(gateway: Gateway, path: str, case: str) -> tuple[bytes, UsageEvent]:
    answer = gateway.client.post(path, json=_request(path, case))
    assert answer.status_code == 200, answer.text
    return answer.content, _event(answer.headers["x-request-id"])


def _event(request_id: str) -> UsageEvent:
    deadline = time.monotonic() + 10
    while True:
        usage_writer.flush(timeout=1)
        event = UsageEvent.objects.filter(request_id=request_id).first()
        if event is not None:
            return event
        assert time.monotonic() < deadline, "the request's usage event was never written"
        time.sleep(0.02)


def _reported(gateway: Gateway, expected: bool) -> None:
    """Whether the channel was reported to its breaker (one failure opens it)."""
    channel = gateway.channel.pk
    deadline = time.monotonic() + (5 if expected else 0.5)
    while (health.breaker_states() or {}).get(channel) != "open":
        if time.monotonic() > deadline:
            assert not expected, "the channel was not reported"
            return
        time.sleep(0.02)
    assert expected, "the channel was reported for a failure that was not its own"


def _frames(body: bytes) -> list[dict[str, Any]]:
    return [
        orjson.loads(line[6:])
        for line in body.split(b"\n")
        if line.startswith(b"data: ") and line != b"data: [DONE]"
    ]


def _text(path: str, frames: list[dict[str, Any]]) -> str:
    """The answer's text as the client received it."""
    pieces = []
    for frame in frames:
        if path == "/v1/responses":
            if frame.get("type") == "response.output_text.delta":
                pieces.append(frame["delta"])
        elif path == "/v1/messages":
            if frame.get("type") == "content_block_delta":
                pieces.append(frame["delta"].get("text", ""))
        else:
            for choice in frame.get("choices") or ():
                pieces.append(
                    choice.get("text") or (choice.get("delta") or {}).get("content") or ""
                )
    return "".join(pieces)


def _error_of(path: str, frame: dict[str, Any]) -> dict[str, Any]:
    """The error a stream's error frame carries, in the client's API."""
    if path == "/v1/responses":
        assert frame["type"] == "error", frame
        return frame
    if path == "/v1/messages":
        assert frame["type"] == "error", frame
        return frame["error"]
    return frame["error"]


# The client's API and how the channel serves it: passed through (chat and completions to
# an OpenAI-compatible channel, responses and messages to one that speaks them), translated
# to chat, or through the Anthropic adapter.
CUT = [
    ("/v1/chat/completions", "openai"),
    ("/v1/completions", "openai"),
    ("/v1/responses", "native"),
    ("/v1/messages", "native"),
    ("/v1/responses", "openai"),
    ("/v1/messages", "openai"),
    ("/v1/chat/completions", "anthropic"),
    ("/v1/responses", "anthropic"),
]


@pytest.mark.parametrize(("path", "way"), CUT)
def test_a_stream_that_stops_before_its_end_ends_with_an_error(
    gateway: Gateway, upstream: Upstream, path: str, way: str
) -> None:
    _serve(gateway, upstream, way, path)
    body, event = _stream(gateway, path, "cut")
    *frames, last = _frames(body)
    assert _text(path, frames) == "".join(WORDS)  # what came is delivered
    error = _error_of(path, last)
    assert "ended before the response was complete" in error["message"]
    assert b"[DONE]" not in body
    assert b"response.completed" not in body and b"message_stop" not in body
    assert (event.completed, event.error_code) == (False, "upstream_stream_incomplete")
    # Billed as before: the delivered text counted locally, and the prompt as the
    # provider counted it when it said (Anthropic's message_start).
    assert event.estimated
    assert event.completion_tokens == 4
    if way == "anthropic" or (path, way) == ("/v1/messages", "native"):
        assert event.prompt_tokens == 9
    _reported(gateway, True)


@pytest.mark.parametrize(
    ("path", "way", "closing"),
    [
        ("/v1/chat/completions", "openai", b"data: [DONE]\n\n"),
        ("/v1/completions", "openai", b"data: [DONE]\n\n"),
        ("/v1/responses", "openai", b'"type":"response.completed"'),
        ("/v1/messages", "openai", b'{"type":"message_stop"}\n\n'),
    ],
)
def test_a_whole_answer_without_done_is_closed_as_usual(
    gateway: Gateway, upstream: Upstream, path: str, way: str, closing: bytes
) -> None:
    """Every choice gave its finish_reason, and the usage came: only [DONE] is missing."""
    _serve(gateway, upstream, way, path)
    body, event = _stream(gateway, path, "nodone")
    assert closing in body.rsplit(b"\n\n", 2)[-2] + b"\n\n"  # the last event
    frames = _frames(body)
    assert _text(path, frames) == "".join(WORDS)
    assert not [f for f in frames if f.get("type") == "error" or "error" in f]
    assert (event.completed, event.error_code) == (True, "")
    assert (event.prompt_tokens, event.completion_tokens, event.estimated) == (9, 4, False)
    _reported(gateway, False)


ERRORS = [
    ("/v1/chat/completions", "openai", "context_length_exceeded"),
    ("/v1/completions", "openai", "context_length_exceeded"),
    ("/v1/responses", "native", "invalid_prompt"),
    ("/v1/messages", "native", "upstream_request_refused"),
    ("/v1/responses", "openai", "context_length_exceeded"),
    ("/v1/messages", "openai", "context_length_exceeded"),
    # Decoded by the adapter: its in-stream error is classified as its HTTP one would be.
    ("/v1/chat/completions", "anthropic", "invalid_request_error"),
]


@pytest.mark.parametrize(("path", "way", "refused_code"), ERRORS)
@pytest.mark.parametrize("case", ["error", "refused"])
def test_an_error_event_ends_the_stream_after_it(
    gateway: Gateway, upstream: Upstream, path: str, way: str, refused_code: str, case: str
) -> None:
    """``error``: the provider's (overloaded, a server error), which counts against the
    channel; ``refused``: the request's own (too long, a prompt refused), which does not."""
    _serve(gateway, upstream, way, path)
    body, event = _stream(gateway, path, case)
    *frames, last = _frames(body)
    assert _text(path, frames) == "".join(WORDS[:2])  # nothing after the error
    error = _error_of(path, last)
    assert error["message"]
    if way == "openai":  # a chat channel's error, in the client's terms
        blamed = case == "refused"
        if path == "/v1/responses":
            assert error["code"] == ("context_length_exceeded" if blamed else "upstream_error")
        elif path == "/v1/messages":
            assert error["type"] == ("invalid_request_error" if blamed else "api_error")
        else:
            assert error["type"] == ("invalid_request_error" if blamed else "server_error")
        if path in ("/v1/chat/completions", "/v1/completions"):
            assert error["code"] == ("context_length_exceeded" if blamed else "upstream_error")
    assert b"[DONE]" not in body and b"message_stop" not in body
    code = "upstream_stream_error" if case == "error" else refused_code
    assert (event.completed, event.error_code) == (False, code)
    assert (event.completion_tokens, event.estimated) == (2, True)
    _reported(gateway, case == "error")


def test_a_failed_response_ends_the_stream_and_counts_against_the_channel(
    gateway: Gateway, upstream: Upstream
) -> None:
    _serve(gateway, upstream, "native", "/v1/responses")
    body, event = _stream(gateway, "/v1/responses", "failed")
    *frames, last = _frames(body)
    assert _text("/v1/responses", frames) == "".join(WORDS[:2])
    assert last["type"] == "response.failed"
    assert (event.completed, event.error_code) == (False, "upstream_stream_error")
    _reported(gateway, True)
