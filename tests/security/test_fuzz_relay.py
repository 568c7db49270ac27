"""Bad input on a real loopback relay: fuzzed bodies, headers and paths never give a 5xx or
a hang, and every refusal is a 4xx in OpenAI's error envelope.

Hypothesis runs are bounded (examples and wall time) so the module takes seconds.
"""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.app import MAX_HEADER_BYTES
from tests.relay.conftest import PUBLIC_MODEL, Gateway, chat_body

pytestmark = pytest.mark.django_db(transaction=True)

# Every request must be answered well within this; a hang fails the test.
REQUEST_TIMEOUT = 10.0
FUZZ = settings(
    max_examples=80,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats()  # NaN and infinities become the non-JSON tokens NaN / Infinity
    | st.text(max_size=30)
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=15,
)
messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "system", "assistant", "tool", "developer", ""])},
        optional={"content": json_values, "name": st.text(max_size=10), "tool_calls": json_values},
    ),
    max_size=3,
)
chat_bodies = st.fixed_dictionaries(
    {
        "model": st.sampled_from([PUBLIC_MODEL, "sim-small", "", "gpt-4o"]) | st.text(max_size=20),
        "messages": messages | json_values,
    },
    optional={
        "stream": st.booleans() | json_values,
        "stream_options": st.fixed_dictionaries({"include_usage": json_values}) | json_values,
        "n": st.integers(min_value=-2, max_value=200) | json_values,
        "max_tokens": st.integers(min_value=-5, max_value=2**70) | json_values,
        "max_completion_tokens": st.integers(min_value=-5, max_value=40) | json_values,
        "temperature": st.floats() | json_values,
        "tools": json_values,
        "tool_choice": json_values,
        "logprobs": json_values,
        "top_logprobs": st.integers(min_value=-3, max_value=30),
        "unknown_field": json_values,
    },
)
# Mostly valid requests, so the fuzz also reaches the upstream and the response path.
plausible_bodies = st.fixed_dictionaries(
    {
        "model": st.just(PUBLIC_MODEL),
        "messages": st.lists(
            st.fixed_dictionaries(
                {"role": st.sampled_from(["user", "system"]), "content": st.text(max_size=40)}
            ),
            min_size=1,
            max_size=3,
        ),
    },
    optional={
        "stream": st.booleans(),
        "max_tokens": st.integers(min_value=1, max_value=40),
        "n": st.integers(min_value=1, max_value=3),
        "temperature": st.floats(min_value=0, max_value=2),
        "user": st.text(max_size=20),
        "metadata": json_values,
    },
)
content_types = st.sampled_from(
    [
        "application/json",
        "application/json; charset=utf-8",
        None,
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/vnd.api+json",
        "",
    ]
)


def check(response: httpx.Response) -> None:
    """No 5xx; a 4xx is OpenAI's envelope; a stream's every data line is JSON."""
    assert response.status_code < 500, (response.status_code, response.text[:500])
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error"}, body
        assert set(body["error"]) == {"message", "type", "param", "code"}, body
        assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    elif response.headers.get("content-type", "").startswith("text/event-stream"):
        for line in response.text.splitlines():
            if line.startswith("data: ") and line != "data: [DONE]":
                json.loads(line[len("data: ") :])
    else:
        response.json()


def post(gateway: Gateway, content: bytes, content_type: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {gateway.secret}"}
    if content_type is not None:
        headers["Content-Type"] = content_type
    return httpx.post(
        gateway.url + "/v1/chat/completions",
        content=content,
        headers=headers,
        timeout=REQUEST_TIMEOUT,
    )


def test_fuzzed_chat_bodies(gateway: Gateway) -> None:
    seen: set[int] = set()

    @FUZZ
    @given(body=plausible_bodies | chat_bodies | json_values, content_type=content_types)
    def run(body: Any, content_type: str | None) -> None:
        response = post(gateway, json.dumps(body).encode(), content_type)
        check(response)
        seen.add(response.status_code)

    run()
    assert {200, 400} <= seen, seen  # the fuzz reached both sides of validation


def test_fuzzed_raw_bytes(gateway: Gateway) -> None:
    @settings(FUZZ, max_examples=60)
    @given(content=st.binary(max_size=300), content_type=content_types)
    def run(content: bytes, content_type: str | None) -> None:
        check(post(gateway, content, content_type))

    run()


def test_fuzzed_model_ids_and_keys(gateway: Gateway) -> None:
    @settings(FUZZ, max_examples=30)
    @given(
        model_id=st.text(min_size=1, max_size=60),
        token=st.text(
            alphabet=st.characters(
                min_codepoint=0x21, max_codepoint=0xFF, exclude_characters="\x7f"
            ),
            min_size=1,
            max_size=80,
        ),
    )
    def run(model_id: str, token: str) -> None:
        path = "/v1/models/" + quote(model_id, safe="")
        mine = httpx.get(
            gateway.url + path,
            headers={"Authorization": f"Bearer {gateway.secret}"},
            timeout=REQUEST_TIMEOUT,
        )
        check(mine)
        assert mine.status_code in (200, 404), mine.text
        for url in (gateway.url + "/v1/models", gateway.url + path):
            stranger = httpx.get(
                url,
                headers={"Authorization": b"Bearer " + token.encode("latin-1")},
                timeout=REQUEST_TIMEOUT,
            )
            check(stranger)
            assert stranger.status_code == 401

    run()


# --- Explicit cases -------------------------------------------------------------------------

BASE = '{"model": "' + PUBLIC_MODEL + '", "messages": [{"role": "user", "content": %s}]}'


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"[" * 100_000 + b"]" * 100_000, id="nested-100k-arrays"),
        pytest.param(b'{"a":' * 50_000 + b"1" + b"}" * 50_000, id="nested-50k-objects"),
        pytest.param((BASE % ("[" * 900 + "]" * 900)).encode(), id="nested-900-in-content"),
        pytest.param((BASE % ("[" * 5000 + "]" * 5000)).encode(), id="nested-5000-in-content"),
        pytest.param((BASE % ("9" * 5000)).encode(), id="5000-digit-integer"),
        pytest.param((BASE % ("9" * 30)).encode(), id="100-bit-integer"),
        pytest.param((BASE % "1e400").encode(), id="float-overflow"),
        pytest.param((BASE % "NaN").encode(), id="nan"),
        pytest.param((BASE % '"\\ud800"').encode(), id="lone-surrogate"),
        pytest.param((BASE % '"\xff\xfe"').encode("latin-1"), id="invalid-utf8"),
        pytest.param(b"", id="empty"),
        pytest.param(b"null", id="null"),
        pytest.param(b'{"model": "' + b"m" * 100_000 + b'", "messages": []}', id="long-model"),
    ],
)
def test_hostile_bodies_are_4xx(gateway: Gateway, content: bytes) -> None:
    response = post(gateway, content, "application/json")
    check(response)
    assert 400 <= response.status_code < 500


def test_a_header_the_http_parser_refuses_is_a_plain_400() -> None:
    """A control character in a header never reaches the relay: the ASGI server's parser
    answers 400 itself (not in OpenAI's envelope; no client library sends one)."""
    from relay.app import RelayApp
    from tests.servers import running_server

    with running_server(RelayApp()) as url:
        response = httpx.get(
            url + "/v1/models", headers={"Authorization": b"Bearer a\x7fb"}, timeout=5
        )
    assert response.status_code == 400


def test_wrong_content_types_are_400(gateway: Gateway) -> None:
    body = json.dumps(chat_body()).encode()
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
        response = post(gateway, body, content_type)
        check(response)
        assert response.status_code == 400, content_type


def test_oversized_bodies_are_413(gateway: Gateway, relay_settings: Any) -> None:
    relay_settings.RELAY_MAX_BODY_BYTES = 256 * 1024
    padding = "x" * (300 * 1024)
    body = json.dumps(chat_body(messages=[{"role": "user", "content": padding}])).encode()
    declared = post(gateway, body, "application/json")
    check(declared)
    assert declared.status_code == 413

    def chunked() -> Any:  # no Content-Length: the limit applies while reading
        for start in range(0, len(body), 16 * 1024):
            yield body[start : start + 16 * 1024]

    streamed = httpx.post(
        gateway.url + "/v1/chat/completions",
        content=chunked(),
        headers={"Authorization": f"Bearer {gateway.secret}", "Content-Type": "application/json"},
        timeout=REQUEST_TIMEOUT,
    )
    check(streamed)
    assert streamed.status_code == 413


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/models", "/v1/models/x"])
def test_oversized_headers_are_431(gateway: Gateway, path: str) -> None:
    headers = {"Authorization": f"Bearer {gateway.secret}", "X-Big": "a" * MAX_HEADER_BYTES}
    started = time.monotonic()
    response = httpx.request(
        "POST" if "chat" in path else "GET",
        gateway.url + path,
        json=chat_body(),
        headers=headers,
        timeout=REQUEST_TIMEOUT,
    )
    check(response)
    assert response.status_code == 431
    assert response.json()["error"]["code"] == "request_headers_too_large"
    many = {f"x-h{i}": "v" * 20 for i in range(2000)}
    response = httpx.get(gateway.url + path, headers={**headers, **many, "X-Big": "a"})
    check(response)
    assert response.status_code == 431
    assert time.monotonic() - started < REQUEST_TIMEOUT
    # An ordinary request still works.
    assert gateway.client.get("/v1/models").status_code == 200
