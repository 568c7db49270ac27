"""Upstreams that misbehave: hang, trickle, break the event stream, send invalid JSON, an
error with a 200, or a gigantic answer. The client always gets a clean OpenAI-style error
or the part that was delivered, and the request's usage event is recorded.

Memory under a gigantic answer is measured on a relay in its own process, in
``test_relay_memory``.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from tests.relay.conftest import Gateway, Simulator, chat_body, usage_events

pytestmark = pytest.mark.django_db(transaction=True)

STREAM = {"stream": True}


def use_channel(gateway: Gateway, sim: Simulator, *options: str, **fields: Any) -> None:
    """Point the gateway's only channel at a faulty simulator behaviour (before any request,
    so the relay's first snapshot already has it)."""
    gateway.channel.base_url = sim.channel_url(*options)
    for name, value in fields.items():
        setattr(gateway.channel, name, value)
    gateway.channel.save()


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def stream_parts(response: httpx.Response) -> tuple[str, list[dict[str, Any]], bool]:
    """Delivered text, error payloads and whether [DONE] arrived."""
    import json

    text, failures, done = [], [], False
    for line in response.iter_lines():
        if not line.startswith("data: "):
            continue
        data = line[len("data: ") :]
        if data == "[DONE]":
            done = True
            continue
        chunk = json.loads(data)  # every line the client gets is valid JSON
        if "error" in chunk:
            failures.append(chunk["error"])
        for choice in chunk.get("choices") or ():
            text.append(choice["delta"].get("content") or "")
    return "".join(text), failures, done


def one_event() -> Any:
    events = usage_events(1)
    assert len(events) == 1, events
    return events[0]


# --- Hangs ----------------------------------------------------------------------------------


def test_a_hanging_upstream_is_a_504_within_the_first_byte_timeout(
    gateway: Gateway, sim: Simulator
) -> None:
    use_channel(gateway, sim, "hang", first_byte_timeout=0.5)
    started = time.monotonic()
    error = error_of(gateway.client.post("/v1/chat/completions", json=chat_body()), 504)
    assert time.monotonic() - started < 3
    assert error["type"] == "server_error"
    event = one_event()
    assert event.status_code == 504
    assert event.attempts[0]["error"] == "timeout"


def test_a_stream_that_stalls_midway_keeps_what_was_delivered(
    gateway: Gateway, sim: Simulator
) -> None:
    use_channel(gateway, sim, "hang_after=3", first_byte_timeout=0.5)
    with gateway.client.stream("POST", "/v1/chat/completions", json=chat_body(**STREAM)) as r:
        assert r.status_code == 200
        text, failures, done = stream_parts(r)
    assert text == "tok0 tok1 tok2" and not done
    assert len(failures) == 1 and failures[0]["type"] == "server_error"
    event = one_event()
    assert event.completed is False and event.stream
    assert event.completion_tokens > 0 and event.estimated  # counted from what was delivered


# --- Trickles -------------------------------------------------------------------------------


def test_a_trickling_upstream_is_relayed_whole_when_in_time(
    gateway: Gateway, sim: Simulator
) -> None:
    use_channel(gateway, sim, "trickle=1,tokens=4", first_byte_timeout=0.5)
    response = gateway.client.post("/v1/chat/completions", json=chat_body())
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "tok0 tok1 tok2 tok3"
    with gateway.client.stream("POST", "/v1/chat/completions", json=chat_body(**STREAM)) as r:
        text, failures, done = stream_parts(r)
    assert (text, failures, done) == ("tok0 tok1 tok2 tok3", [], True)
    assert [e.completed for e in usage_events(2)] == [True, True]


def test_a_trickle_too_slow_for_the_total_timeout_is_cut_off(
    gateway: Gateway, sim: Simulator
) -> None:
    """Each read arrives well within the first-byte timeout, so only the total one ends it."""
    use_channel(gateway, sim, "trickle=20,tokens=50", total_timeout=0.8, first_byte_timeout=5)
    started = time.monotonic()
    error = error_of(gateway.client.post("/v1/chat/completions", json=chat_body()), 504)
    assert error["type"] == "server_error"
    with gateway.client.stream("POST", "/v1/chat/completions", json=chat_body(**STREAM)) as r:
        assert r.status_code == 200
        text, failures, done = stream_parts(r)
    assert time.monotonic() - started < 5
    assert "tok49" not in text  # cut off: at most a first part was delivered
    assert not done and len(failures) == 1
    events = usage_events(2)
    assert [e.status_code for e in events] == [504, 200]
    assert events[1].completed is False


# --- Broken bodies --------------------------------------------------------------------------


def test_malformed_sse_ends_the_stream_with_an_error_after_the_good_part(
    gateway: Gateway, sim: Simulator
) -> None:
    use_channel(gateway, sim, "bad_sse")
    with gateway.client.stream("POST", "/v1/chat/completions", json=chat_body(**STREAM)) as r:
        assert r.status_code == 200
        text, failures, done = stream_parts(r)
    assert text == "tok0" and not done
    assert failures and failures[-1]["code"] == "upstream_stream_broken"
    event = one_event()
    assert event.completed is False and event.error_code == "upstream_stream_broken"


def test_invalid_json_is_a_502(gateway: Gateway, sim: Simulator) -> None:
    use_channel(gateway, sim, "bad_json")
    error = error_of(gateway.client.post("/v1/chat/completions", json=chat_body()), 502)
    assert error["type"] == "server_error"
    event = one_event()
    assert event.status_code == 502 and event.attempts[0]["error"] == "invalid_response"


def test_invalid_json_on_a_stream_request_is_a_502(gateway: Gateway, sim: Simulator) -> None:
    use_channel(gateway, sim, "bad_json")
    response = gateway.client.post("/v1/chat/completions", json=chat_body(**STREAM))
    error_of(response, 502)
    assert one_event().status_code == 502


def test_an_error_body_with_status_200_is_a_502(gateway: Gateway, sim: Simulator) -> None:
    use_channel(gateway, sim, "error_body")
    error = error_of(gateway.client.post("/v1/chat/completions", json=chat_body()), 502)
    assert error["type"] == "server_error"
    event = one_event()
    assert event.status_code == 502 and event.attempts[0]["error"] == "error_body"


# --- Gigantic answers -----------------------------------------------------------------------


def test_a_gigantic_plain_answer_is_refused_not_buffered_whole(
    gateway: Gateway, sim: Simulator
) -> None:
    from relay import upstream_errors as chat

    use_channel(gateway, sim, f"huge={chat.MAX_RESPONSE_BYTES + 1024 * 1024}")
    started = time.monotonic()
    error_of(gateway.client.post("/v1/chat/completions", json=chat_body()), 502)
    assert time.monotonic() - started < 30
    event = one_event()
    assert event.status_code == 502 and event.attempts[0]["error"] == "invalid_response"


def test_a_large_stream_is_delivered_whole_and_metered(gateway: Gateway, sim: Simulator) -> None:
    size = 4 * 1024 * 1024
    use_channel(gateway, sim, f"huge={size}")
    with gateway.client.stream("POST", "/v1/chat/completions", json=chat_body(**STREAM)) as r:
        text, failures, done = stream_parts(r)
    assert len(text) == size and not failures and done
    event = one_event()
    assert event.completed and event.completion_tokens == size // 4 and not event.estimated
