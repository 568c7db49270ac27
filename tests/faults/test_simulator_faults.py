"""The simulator's fault modes themselves: trickle, bad_sse and huge."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from relay.simulator import build_app
from tests.servers import running_server

BODY = {"model": "sim-small", "messages": [{"role": "user", "content": "hi"}]}
AUTH = {"Authorization": "Bearer sk-any"}


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with running_server(build_app()) as url, httpx.Client(base_url=url, headers=AUTH) as c:
        yield c


def test_trickle_sends_small_pieces_slowly(client: httpx.Client) -> None:
    started = time.monotonic()
    with client.stream("POST", "/sim/trickle=5,tokens=2/v1/chat/completions", json=BODY) as r:
        pieces = list(r.iter_raw())
    elapsed = time.monotonic() - started
    body = b"".join(pieces)
    assert httpx.Response(200, content=body).json()["choices"][0]["message"]["content"] == (
        "tok0 tok1"
    )
    assert len(pieces) > 10 and max(map(len, pieces)) <= 64
    assert elapsed >= len(body) / 8 * 0.005 * 0.8


def test_bad_sse_breaks_the_stream_after_the_first_token(client: httpx.Client) -> None:
    response = client.post("/sim/bad_sse/v1/chat/completions", json={**BODY, "stream": True})
    events = response.text.split("\n\n")
    assert '"content":"tok0"' in events[1]
    assert events[2].startswith('data: {"choices": [{"delta"') and "<html>" in events[3]


@pytest.mark.parametrize("stream", [False, True])
def test_huge_answers_with_exactly_that_many_content_bytes(
    client: httpx.Client, stream: bool
) -> None:
    size = 300_000
    body = {
        **BODY,
        "stream": stream,
        **({"stream_options": {"include_usage": True}} if stream else {}),
    }
    response = client.post(f"/sim/huge={size}/v1/chat/completions", json=body)
    assert response.status_code == 200
    if stream:
        import json

        chunks = [
            json.loads(line[6:])
            for line in response.text.split("\n\n")
            if line.startswith("data: {")
        ]
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
        usage = chunks[-1]["usage"]
    else:
        text = response.json()["choices"][0]["message"]["content"]
        usage = response.json()["usage"]
    assert len(text) == size and usage["completion_tokens"] == size // 4
