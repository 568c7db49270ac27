"""A channel cannot stop usage events from being written.

What the usage event keeps from a channel's answer is written even when PostgreSQL would
refuse it as sent: an error code with a NUL character is written cleaned, and a token
count beyond any real one is held to the column maximum. Before, such an event failed
its whole batch, which was handed back and retried for ever: no usage event of any
tenant was written, and the money held for them was never released."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from django.db import connection

from tests.relay.conftest import Gateway, Simulator, chat_body, usage_events
from tests.servers import running_server


async def nul_error_upstream(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    error = {"message": "bad\u0000request", "type": "invalid\u0000type", "code": "nul\u0000code"}
    body = orjson.dumps({"error": error})
    head = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": 400, "headers": head})
    await send({"type": "http.response.body", "body": body})


async def huge_count_upstream(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    answer = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
        ],
        "usage": {
            "prompt_tokens": 2**64 - 1,
            "completion_tokens": 2**63,
            "total_tokens": 2**64 - 1,
            "prompt_tokens_details": {"cached_tokens": 2**62},
        },
    }
    head = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": 200, "headers": head})
    await send({"type": "http.response.body", "body": orjson.dumps(answer)})


@contextlib.contextmanager
def _served_by(gateway: Gateway, upstream: Any) -> Iterator[Gateway]:
    """The gateway, its channel pointed at ``upstream`` (run on loopback meanwhile)."""
    with running_server(upstream) as url:
        gateway.channel.base_url = f"{url}/v1"
        gateway.channel.save()
        gateway.caught_up()
        yield gateway


@pytest.fixture
def huge_count_channel(gateway: Gateway) -> Iterator[Gateway]:
    with _served_by(gateway, huge_count_upstream) as served:
        yield served


@pytest.fixture
def nul_channel(gateway: Gateway) -> Iterator[Gateway]:
    with _served_by(gateway, nul_error_upstream) as served:
        yield served


def test_an_error_code_with_a_nul_is_written_cleaned(nul_channel: Gateway) -> None:
    response = nul_channel.client.post("/v1/chat/completions", json=chat_body())
    assert response.status_code == 400

    (event,) = usage_events(1)
    assert event.status_code == 400
    # PostgreSQL refuses a NUL in text: it is written as U+FFFD there (SQLite keeps it).
    expected = "nul\ufffdcode" if connection.vendor == "postgresql" else "nul\x00code"
    assert event.error_code == expected


def test_a_count_beyond_any_real_one_leaves_the_writer_writing(
    huge_count_channel: Gateway, sim: Simulator
) -> None:
    response = huge_count_channel.client.post("/v1/chat/completions", json=chat_body())
    assert response.status_code == 200
    # Then a request served as usual: its event is written after the first one.
    huge_count_channel.channel.base_url = sim.channel_url()
    huge_count_channel.channel.save()
    huge_count_channel.caught_up()
    assert (
        huge_count_channel.client.post("/v1/chat/completions", json=chat_body()).status_code == 200
    )

    first, second = usage_events(2)
    assert (first.prompt_tokens, first.completion_tokens) == (2**31 - 1, 2**31 - 1)
    assert first.cost_retail_micros > 0
    assert second.prompt_tokens < 1000
