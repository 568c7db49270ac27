"""How the relay takes a request in (``relay.intake``): one admission for a small body, a
pre-admission before a large one, caps and deadlines, and slots freed on every path."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from relay import limits
from tests.relay.conftest import Gateway, Simulator, chat_body


class StoreCalls:
    """Counts the limit store's round trips (acquire, release) made by the relay."""

    def __init__(self) -> None:
        self.acquires = 0
        self.releases = 0


@pytest.fixture
def store_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[StoreCalls]:
    calls = StoreCalls()
    for cls in (limits.LocalLimitStore, limits.RedisLimitStore):
        acquire, release = cls.acquire, cls.release

        async def counted_acquire(self: Any, *args: Any, _f: Any = acquire, **kw: Any) -> Any:
            calls.acquires += 1
            return await _f(self, *args, **kw)

        async def counted_release(self: Any, *args: Any, _f: Any = release, **kw: Any) -> Any:
            calls.releases += 1
            return await _f(self, *args, **kw)

        monkeypatch.setattr(cls, "acquire", counted_acquire)
        monkeypatch.setattr(cls, "release", counted_release)
    yield calls


def _post(gateway: Gateway, secret: str, body: bytes) -> httpx.Response:
    return httpx.post(
        gateway.url + "/v1/chat/completions",
        content=body,
        headers={"Authorization": f"Bearer {secret}", "content-type": "application/json"},
        timeout=20,
    )


def _large(size: int = 200_000) -> bytes:
    return orjson.dumps(chat_body(messages=[{"role": "user", "content": "x" * size}]))


def test_a_small_body_is_admitted_in_one_round_trip(
    gateway: Gateway, sim: Simulator, store_calls: StoreCalls
) -> None:
    secret = gateway.new_key(name="limited", rpm_limit=100, concurrency_limit=1)
    response = _post(gateway, secret, orjson.dumps(chat_body()))
    assert response.status_code == 200, response.text
    assert (store_calls.acquires, store_calls.releases) == (1, 1)
    assert response.headers["x-ratelimit-limit-requests"] == "100"


def test_a_large_body_is_counted_before_it_is_read_and_freed_after(
    gateway: Gateway, sim: Simulator, store_calls: StoreCalls
) -> None:
    secret = gateway.new_key(name="limited", rpm_limit=100, tpm_limit=10**6, concurrency_limit=1)
    response = _post(gateway, secret, _large())
    assert response.status_code == 200, response.text
    # The pre-admission (requests, concurrency) and the admission (tokens) after the parse.
    assert (store_calls.acquires, store_calls.releases) == (2, 1)
    assert response.headers["x-ratelimit-limit-requests"] == "100"
    assert response.headers["x-ratelimit-limit-tokens"] == str(10**6)
    # The concurrency slot was freed: the key's only one is free again.
    assert _post(gateway, secret, _large()).status_code == 200


def test_a_large_body_with_only_rate_limits_needs_no_second_round_trip(
    gateway: Gateway, sim: Simulator, store_calls: StoreCalls
) -> None:
    secret = gateway.new_key(name="limited", rpm_limit=100, concurrency_limit=1)
    for _ in range(2):  # the second proves the first's slot was freed
        assert _post(gateway, secret, _large()).status_code == 200
    assert (store_calls.acquires, store_calls.releases) == (2, 2)


def test_a_large_body_refused_after_the_parse_frees_its_slot(
    gateway: Gateway, sim: Simulator, store_calls: StoreCalls
) -> None:
    secret = gateway.new_key(name="limited", tpm_limit=1000, concurrency_limit=1)
    refused = _post(gateway, secret, _large(100_000))  # ~25,000 tokens
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["type"] == "tokens"
    assert store_calls.releases == 1
    assert _post(gateway, secret, orjson.dumps(chat_body())).status_code == 200


def test_an_over_structured_body_is_refused_by_its_value_count(
    gateway: Gateway, relay_settings: Any
) -> None:
    relay_settings.RELAY_MAX_BODY_VALUES = 1000
    body = orjson.dumps(chat_body(padding=[[] for _ in range(600)]))
    response = _post(gateway, gateway.secret, body)
    assert response.status_code == 413, response.text
    error = response.json()["error"]
    assert error["code"] == "request_too_large" and "1000 JSON values" in error["message"]
    assert response.headers["connection"] == "close"
    padded = orjson.dumps(chat_body(padding=[[] for _ in range(400)]))
    assert _post(gateway, gateway.secret, padded).status_code == 200


def test_a_body_refused_by_its_declared_size_closes_the_connection(
    gateway: Gateway, relay_settings: Any
) -> None:
    relay_settings.RELAY_MAX_BODY_BYTES = 1000
    response = _post(gateway, gateway.secret, _large(2000))
    assert response.status_code == 413
    assert response.headers["connection"] == "close"


def test_a_body_that_does_not_arrive_in_time_gets_a_408(
    gateway: Gateway, relay_settings: Any
) -> None:
    relay_settings.RELAY_BODY_TIMEOUT = 0.5
    relay_settings.RELAY_BODY_FAST_PATH_SECONDS = 0.1
    host, port = gateway.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: relay\r\n"
            b"Authorization: Bearer " + gateway.secret.encode() + b"\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
        )
        started = time.monotonic()
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert 0.4 < time.monotonic() - started < 5
    error = orjson.loads(answer.partition(b"\r\n\r\n")[2])["error"]
    assert error["code"] == "request_timeout"


def test_a_deadline_fires_within_its_sweep_and_spares_outside_cancellation() -> None:
    from relay.deadlines import SWEEP_SECONDS, Deadline

    async def run() -> tuple[float, bool]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(TimeoutError), Deadline(started + 0.1):
            await asyncio.Event().wait()
        fired_after = loop.time() - started

        async def cancelled_from_outside() -> None:
            with Deadline(loop.time() + 60):
                await asyncio.Event().wait()

        task = asyncio.ensure_future(cancelled_from_outside())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # A span that ends in time is left alone, and nothing is left watched.
        with Deadline(loop.time() + 0.05):
            await asyncio.sleep(0)
        await asyncio.sleep(SWEEP_SECONDS * 3)
        return fired_after, task.cancelled()

    fired_after, cancelled = asyncio.run(run())
    assert 0.1 <= fired_after < 0.1 + 10 * SWEEP_SECONDS
    assert cancelled
