"""An upstream that echoes the channel's key in every field of its errors (issue 11, #4).

The key must reach neither the client (message, type, param, code; answered errors and
error events inside a stream) nor the usage event's ``error_code``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from billing.models import UsageEvent
from portal.models import Channel
from relay.metering import usage_writer
from tests.relay.conftest import Gateway, chat_body, usage_events
from tests.servers import asgi_body, running_server

# What a careless provider does: its error repeats the credentials it was sent.
LEAKED_KEY = "sk-echoed-9f8e7d6c5b4a"


async def echoing_upstream(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    headers = dict(scope["headers"])
    auth = headers.get(b"authorization", b"").decode()
    key = auth.removeprefix("Bearer ")
    body = await asgi_body(receive)
    error = {
        "message": f"Invalid key {key} (sent as {auth!r})",
        "type": f"invalid_key:{key}",
        "param": f"authorization={auth}",
        "code": key,
    }
    if orjson.loads(body).get("stream"):
        chunk = {
            "id": "c1",
            "object": "chat.completion.chunk",
            "model": "m",
            "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}],
        }
        events = b"data: " + orjson.dumps(chunk) + b"\n\n"
        events += b"data: " + orjson.dumps({"error": error}) + b"\n\n"
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        await send({"type": "http.response.body", "body": events})
        return
    await send(
        {
            "type": "http.response.start",
            "status": 400,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": orjson.dumps({"error": error})})


@pytest.fixture
def echoing(gateway: Gateway) -> Iterator[Gateway]:
    with running_server(echoing_upstream) as url:
        channel = gateway.channel
        channel.base_url = f"{url}/v1"
        channel.secret = LEAKED_KEY
        channel.save()
        yield gateway


def _wait_for_channel(gateway: Gateway) -> Any:
    """The first answer from the echoing channel (the relay reloads within a moment)."""
    deadline = time.monotonic() + 10
    while True:
        response = gateway.client.post("/v1/chat/completions", json=chat_body())
        if response.status_code == 400 or time.monotonic() > deadline:
            return response
        time.sleep(0.05)


def test_an_answered_error_is_redacted_in_every_field(echoing: Gateway) -> None:
    response = _wait_for_channel(echoing)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert LEAKED_KEY not in response.text
    assert error["message"].startswith("Invalid key [redacted]")
    assert error["type"] == "invalid_key:[redacted]"
    assert error["param"] == "authorization=Bearer [redacted]"
    assert error["code"] == "[redacted]"
    events = usage_events(1)
    assert all(LEAKED_KEY not in e.error_code for e in events)
    assert events[-1].error_code == "[redacted]"


def test_an_error_event_inside_a_stream_is_redacted(echoing: Gateway) -> None:
    _wait_for_channel(echoing)
    with echoing.client.stream(
        "POST", "/v1/chat/completions", json=chat_body(stream=True)
    ) as response:
        text = response.read().decode()
    assert response.status_code == 200
    assert LEAKED_KEY not in text
    events = [orjson.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
    error = events[-1]["error"]
    assert error["message"].startswith("Invalid key [redacted]")
    assert error["code"] == "upstream_error"
    deadline = time.monotonic() + 10
    while not UsageEvent.objects.filter(error_code="upstream_stream_error").exists():
        assert time.monotonic() < deadline, "the stream's usage event was never written"
        usage_writer.flush(timeout=1)
    assert UsageEvent.objects.filter(error_code__contains=LEAKED_KEY).count() == 0
    assert LEAKED_KEY not in str(list(UsageEvent.objects.values()))
    assert Channel.objects.filter(last_check_error__contains=LEAKED_KEY).count() == 0
