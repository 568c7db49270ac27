"""How a streamed answer is handed to the web server: a short answer the upstream sent
whole goes out as one message after its head, so that the server writes head, events and
end in one system call (``relay.server``, tested in test_server_writes.py); a stream still
arriving has its head sent at once, as before.

The relay is served on loopback with its own HTTP protocol, behind a layer that records
the ASGI messages it sends; the upstreams are loopback servers speaking OpenAI's stream,
or Anthropic's for a stream decoded by a provider adapter (``relay.forward_native``).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from relay.server import HttpToolsProtocol
from tests.relay.conftest import (
    PUBLIC_MODEL,
    UPSTREAM_MODEL,
    Gateway,
    chat_body,
    messages_stream_events,
    sse_chunks,
    usage_events,
)
from tests.servers import asgi_body, running_server

WORDS = ["Hello", " from", " one", " read"]


def _events(tail: bytes = b"") -> bytes:
    chunks: list[dict[str, Any]] = [
        {
            "id": "chatcmpl-w",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": UPSTREAM_MODEL,
            "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}],
        }
        for word in WORDS
    ]
    chunks.append(
        {
            "id": "chatcmpl-w",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": UPSTREAM_MODEL,
            "choices": [],
            "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13},
        }
    )
    body = b"".join(b"data: " + orjson.dumps(chunk) + b"\n\n" for chunk in chunks)
    return body + b"data: [DONE]\n\n" + tail


def _anthropic_events(cut: bool = False, tail: bytes = b"") -> bytes:
    """The same answer in Anthropic's Messages stream (``cut``: without its last two
    events), then ``tail``."""
    events = messages_stream_events(WORDS)
    if cut:
        del events[-2:]
    whole = b"".join(
        b"event: " + e["type"].encode() + b"\ndata: " + orjson.dumps(e) + b"\n\n" for e in events
    )
    return whole + tail


class Upstream:
    """A chat upstream that streams its whole answer in one body message, at once or once
    ``release`` is set (``anthropic``: the answer in Anthropic's stream)."""

    def __init__(
        self, tail: bytes = b"", wait: bool = False, anthropic: bool = False, cut: bool = False
    ) -> None:
        self.anthropic = anthropic
        self.cut = cut
        self.tail = tail
        self.wait = wait
        self.release = threading.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await asgi_body(receive)
        head = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": head})
        if self.wait:
            await asyncio.to_thread(self.release.wait, 10)
        body = _anthropic_events(self.cut, self.tail) if self.anthropic else _events(self.tail)
        await send({"type": "http.response.body", "body": body})


@pytest.fixture
def recorded(gateway: Gateway) -> Iterator[tuple[httpx.Client, list[dict[str, Any]]]]:
    """A client of the gateway's relay served with its own protocol, and the messages the
    relay sends for chat requests."""
    messages: list[dict[str, Any]] = []
    app = gateway.relay_app
    assert app is not None

    async def recording(scope: dict[str, Any], receive: Any, send: Any) -> None:
        async def record(message: dict[str, Any]) -> None:
            if scope.get("path") == "/v1/chat/completions":
                messages.append(message)
            await send(message)

        await app(scope, receive, record)

    with running_server(recording, http=HttpToolsProtocol) as url:
        client = httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {gateway.secret}"}, timeout=20
        )
        yield client, messages
        client.close()


def _use(gateway: Gateway, url: str, client: httpx.Client, provider: str = "openai") -> int:
    """Point the gateway's channel at ``url`` and wait until the relay streams from it;
    the number of requests that took."""
    gateway.channel.base_url = f"{url}/v1" if provider == "openai" else url
    gateway.channel.provider_type = provider
    gateway.channel.save()
    deadline = time.monotonic() + 10
    sent = 0
    while True:  # the relay reloads its routes within a moment of the change
        answer = client.post("/v1/chat/completions", json=chat_body(stream=True))
        sent += 1
        if b" one" in answer.content or time.monotonic() > deadline:
            return sent
        time.sleep(0.05)


def _stream(client: httpx.Client) -> httpx.Response:
    return client.post(
        "/v1/chat/completions",
        json=chat_body(stream=True, stream_options={"include_usage": True}),
    )


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_short_stream_sent_whole_goes_to_the_server_as_one_message(
    gateway: Gateway, recorded: tuple[httpx.Client, list[dict[str, Any]]], provider: str
) -> None:
    """Passed through (an OpenAI-compatible channel), or decoded from Anthropic's stream by
    its adapter and written as chat chunks with the closing frames."""
    client, messages = recorded
    # The upstream on the relay's protocol too: its head, events and end in one write, so
    # that the relay reads the whole answer at once.
    upstream = Upstream(anthropic=provider == "anthropic")
    with running_server(upstream, http=HttpToolsProtocol) as url:
        sent = _use(gateway, url, client, provider)
        messages.clear()
        answer = _stream(client)
    assert answer.status_code == 200, answer.text
    chunks, done = sse_chunks(answer)
    assert done
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "".join(WORDS)
    assert chunks[-1]["usage"]["completion_tokens"] == 4
    assert {c["model"] for c in chunks} == {PUBLIC_MODEL}
    # The head, then every event and the end together: the server joins the two.
    assert [m["type"] for m in messages] == ["http.response.start", "http.response.body"]
    assert not messages[1].get("more_body", False)
    assert messages[1]["body"].endswith(b"data: [DONE]\n\n")
    # Settled before its end went out, and metered once, as every stream.
    events = usage_events(sent + 1)
    assert len(events) == sent + 1
    assert (events[-1].prompt_tokens, events[-1].completion_tokens) == (9, 4)
    assert events[-1].stream and events[-1].completed


# The upstream's last bytes, without the blank line that would end them: read when its
# body ends, after the events before them were decoded.
OVERLOADED = b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error"}}'


@pytest.mark.parametrize(
    ("tail", "code"), [(b"", "upstream_stream_incomplete"), (OVERLOADED, "upstream_overloaded")]
)
def test_a_provider_stream_sent_whole_but_cut_delivers_its_text_before_the_error(
    gateway: Gateway,
    recorded: tuple[httpx.Client, list[dict[str, Any]]],
    tail: bytes,
    code: str,
) -> None:
    """The events held back for the end go out ahead of the error that ends the stream
    instead: a stream that stopped short (no ``message_stop``), or whose last bytes are
    the provider's error."""
    client, _ = recorded
    upstream = Upstream(anthropic=True)
    with running_server(upstream, http=HttpToolsProtocol) as url:
        _use(gateway, url, client, provider="anthropic")
        upstream.cut, upstream.tail = True, tail
        answer = _stream(client)
    assert answer.status_code == 200, answer.text
    lines = [line for line in answer.content.split(b"\n\n") if line]
    *chunks, error = [orjson.loads(line.removeprefix(b"data: ")) for line in lines]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "".join(WORDS)
    assert error["error"]["code"] == code


def test_a_stream_still_arriving_has_its_head_sent_at_once(
    gateway: Gateway, recorded: tuple[httpx.Client, list[dict[str, Any]]]
) -> None:
    client, _ = recorded
    upstream = Upstream(wait=True)
    with running_server(upstream) as url:
        upstream.release.set()  # the routes' reload waits for nothing
        _use(gateway, url, client)
        upstream.release.clear()
        body = chat_body(stream=True)
        # Headers within 5 s while the upstream holds its events for 10: the head is not
        # kept back for them.
        with client.stream(
            "POST", "/v1/chat/completions", json=body, timeout=httpx.Timeout(20, read=5)
        ) as response:
            assert response.status_code == 200
            assert not upstream.release.is_set()
            upstream.release.set()
            text = response.read()
    assert text.endswith(b"data: [DONE]\n\n")
    assert b" one" in text


def test_bytes_after_the_end_still_reach_the_client(
    gateway: Gateway, recorded: tuple[httpx.Client, list[dict[str, Any]]]
) -> None:
    """What follows the final event in a later batch (here the upstream's last bytes,
    left without a blank line) goes out after the end's events, as it always did, in
    the same message as the events held for the end."""
    client, messages = recorded
    with running_server(Upstream(tail=b": trailing"), http=HttpToolsProtocol) as url:
        _use(gateway, url, client)
        messages.clear()
        answer = _stream(client)
    assert answer.status_code == 200, answer.text
    assert answer.content.endswith(b"data: [DONE]\n\n: trailing\n\n")
    bodies = [m["body"] for m in messages if m["type"] == "http.response.body"]
    assert b"".join(bodies) == answer.content
    assert bodies[0].endswith(b"data: [DONE]\n\n: trailing\n\n")
    assert not messages[-1].get("more_body", False)
