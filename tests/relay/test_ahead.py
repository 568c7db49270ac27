"""Forwarding ahead of admission (``relay.ahead``): a far-from-its-limits key's request goes
upstream while its admission is in flight; a refusal cuts the call and answers the 429;
a key near any limit, or one whose room is unknown, waits for its admission."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest
from django.conf import settings
from prometheus_client.parser import text_string_to_metric_families

from portal.models import ApiKey
from relay import ahead as ahead_module
from relay import shared
from relay.ahead import MAX_AHEAD, Ahead
from relay.limits import Admission, Limits, RedisLimitStore, Room, Scope
from tests.relay.conftest import (
    WORST,
    Gateway,
    Simulator,
    chat_body,
    prepaid,
    sse_chunks,
    usage_events,
)

# --- Which requests may go ahead (no I/O) -------------------------------------------------


@pytest.fixture(autouse=True)
def _room_trusted_for_the_test(monkeypatch: pytest.MonkeyPatch) -> None:
    """A key's measured room is trusted for ``AHEAD_SECONDS`` (1 s). Between a test's
    first request and the one that is to go ahead, a loaded CI machine has taken longer
    (the second then waited for its admission and the test failed); how long the room is
    trusted is not what these tests check, so it is made long enough for any machine."""
    monkeypatch.setattr(ahead_module, "AHEAD_SECONDS", 60.0)


@pytest.fixture(autouse=True)
def _no_leases(settings: Any) -> None:
    """These tests count a key's admissions in Redis, one per request, as going ahead
    makes them; a lease (``relay.leases``, tests/relay/test_leases.py) would ask for ids
    in advance, and one refused whole is asked again for its request alone."""
    settings.RELAY_LEASE_SIZE = 1


def _admitted(requests: int, tokens: int = 10**9, micros: int = 10**12) -> Admission:
    return Admission(True, 0, 0, room=Room(requests, tokens, micros))


def test_a_key_goes_ahead_only_within_the_room_its_last_admission_left() -> None:
    ahead = Ahead()
    assert not ahead.take(1, 10, 0, 0), "nothing known of the key yet"
    ahead.note(1, 7, _admitted(requests=2, tokens=25), 0)
    assert ahead.take(1, 10, 0, 0)
    assert ahead.take(1, 10, 0, 0)
    assert not ahead.take(1, 1, 0, 0), "two requests already ahead fill a room of two"
    ahead.back(7, 10, 0)
    assert not ahead.take(1, 20, 0, 0), "10 + 20 tokens do not fit in 25"
    assert ahead.take(1, 15, 0, 0)


def test_money_room_counts_each_requests_worst_case() -> None:
    ahead = Ahead()
    ahead.note(1, 7, _admitted(requests=100, micros=250), 0)
    assert ahead.take(1, 0, 100, 0)
    assert ahead.take(1, 0, 100, 0)
    assert not ahead.take(1, 0, 100, 0)


def test_a_tenants_keys_share_what_is_ahead() -> None:
    ahead = Ahead()
    for key_id in (1, 2, 3):  # each key's last admission saw room for two
        ahead.note(key_id, 7, _admitted(requests=2), 0)
    ahead.note(4, 8, _admitted(requests=2), 0)  # another tenant's
    assert [ahead.take(key_id, 0, 0, 0) for key_id in (1, 2, 3)] == [True, True, False]
    assert ahead.take(4, 0, 0, 0)
    ahead.back(7, 0, 0)
    assert ahead.take(3, 0, 0, 0)


def test_a_refusal_an_unknown_room_a_stale_one_or_new_limits_stop_going_ahead(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ahead = Ahead()
    ahead.note(1, 7, _admitted(requests=5), 0)
    ahead.note(1, 7, Admission(False, 0, 0, refused="requests"), 0)
    assert not ahead.take(1, 0, 0, 0)

    ahead.note(1, 7, _admitted(requests=5), 0)
    ahead.note(1, 7, Admission(True, 0, 0), 0)  # admitted without Redis: no room measured
    assert not ahead.take(1, 0, 0, 0)

    ahead.note(1, 7, _admitted(requests=5), 0)
    assert not ahead.take(1, 0, 0, 1), "the caches reloaded: the key's limits may differ"

    ahead.note(1, 7, _admitted(requests=5), 0)
    later = time.monotonic() + ahead_module.AHEAD_SECONDS + 1
    monkeypatch.setattr(time, "monotonic", lambda: later)
    assert not ahead.take(1, 0, 0, 0), "a room measured too long ago"


def test_one_process_sends_at_most_max_ahead_of_one_tenant_at_once() -> None:
    ahead = Ahead()
    ahead.note(1, 7, _admitted(requests=10**6), 0)
    taken = [ahead.take(1, 0, 0, 0) for _ in range(MAX_AHEAD + 3)]
    assert taken == [True] * MAX_AHEAD + [False] * 3


# --- The room an admission in Redis reports -------------------------------------------------


@pytest.mark.services
def test_redis_admissions_report_the_room_left_before_half_of_each_limit() -> None:
    async def run() -> list[Any]:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(settings.REDIS_URL)
        store = RedisLimitStore(
            client, f"{settings.CACHES['default']['KEY_PREFIX']}-{uuid.uuid4()}"
        )
        key = Scope("key:1", Limits(rpm=100, tpm=10_000, concurrency=10))
        tenant = Scope("tenant:1", Limits(daily_tokens=3_000))
        rooms = []
        for index in range(3):
            admission = await store.acquire([key, tenant], f"r{index}", 200, 30)
            rooms.append(admission.room)
        refused = await store.acquire([Scope("key:2", Limits(rpm=0))], "x", 0, 30)
        rooms.append(refused.room)
        await store.close()
        await client.aclose()
        return rooms

    first, _, third, refused = asyncio.run(run())
    # rpm 100: 50 - 0 used - 1; concurrency 10: 5 - 0 in flight - 1.
    assert first == Room(requests=4, tokens=1_500 - 0 - 200, micros=2**62)
    # Two requests in flight and two counted: concurrency 5 - 2 - 1; daily 1,500 - 400 - 200.
    assert third == Room(requests=2, tokens=1_500 - 400 - 200, micros=2**62)
    assert refused is None


# --- Through the relay ----------------------------------------------------------------------


class Upstream:
    """An OpenAI-style upstream on loopback that notes each request, and either answers at
    once or holds it until the caller goes away."""

    def __init__(self) -> None:
        self.count = 0
        self.arrived = threading.Event()
        self.hold = False
        self.gone = threading.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        more = True
        while more:
            message = await receive()
            more = message.get("more_body", False)
        self.count += 1
        self.arrived.set()
        if self.hold:
            while (await receive())["type"] != "http.disconnect":
                pass
            self.gone.set()
            return
        body = orjson.dumps(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": 1,
                "model": "sim-upstream",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "hello"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
            }
        )
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


@pytest.fixture
def upstream(gateway: Gateway) -> Any:
    from tests.servers import serve_in_thread

    app = Upstream()
    url, stop = serve_in_thread(app)
    gateway.channel.base_url = url + "/v1"
    gateway.channel.save()
    gateway.caught_up()
    yield app
    stop()


def _ahead_counts(gateway: Gateway) -> dict[str, float]:
    counts = {}
    for family in text_string_to_metric_families(httpx.get(gateway.url + "/metrics").text):
        for sample in family.samples:
            if sample.name == "tollgate_ahead_requests_total":
                counts[sample.labels["outcome"]] = sample.value
    return counts


def _admissions_wait_for(
    monkeypatch: pytest.MonkeyPatch, arrived: Callable[[float], bool]
) -> list[bool]:
    """Hold each admission in Redis until ``arrived(timeout)`` says the upstream has the
    request, which it can only have if the request went ahead (else the admission waits
    out the 5 s and goes on); returns, per admission, whether the upstream had it."""
    real = RedisLimitStore.acquire
    found: list[bool] = []

    async def acquire(self: RedisLimitStore, *args: Any, **kwargs: Any) -> Admission:
        found.append(await asyncio.to_thread(arrived, 5))
        return await real(self, *args, **kwargs)

    monkeypatch.setattr(RedisLimitStore, "acquire", acquire)
    return found


def _post(gateway: Gateway, secret: str, **extra: Any) -> httpx.Response:
    return httpx.post(
        gateway.url + "/v1/chat/completions",
        json=chat_body(**extra),
        headers={"Authorization": f"Bearer {secret}"},
        timeout=20,
    )


@pytest.mark.services
def test_a_far_key_is_sent_upstream_before_its_admission_returns(
    gateway: Gateway, upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = gateway.new_key(name="far", rpm_limit=1000)
    assert _post(gateway, secret).status_code == 200  # measures the key's room
    upstream.arrived.clear()

    found = _admissions_wait_for(monkeypatch, upstream.arrived.wait)
    before = _ahead_counts(gateway).get("admitted", 0)
    response = _post(gateway, secret)

    assert response.status_code == 200
    assert found == [True]
    # The answer waited for the admission: it carries the admission's headers.
    assert response.headers["x-ratelimit-limit-requests"] == "1000"
    assert response.headers["x-ratelimit-remaining-requests"] == "998"
    assert _ahead_counts(gateway)["admitted"] == before + 1
    events = usage_events(2)
    assert [event.status_code for event in events] == [200, 200]


@pytest.mark.services
def test_a_stream_that_went_ahead_reaches_its_client_whole(
    gateway: Gateway, sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = gateway.new_key(name="streams", rpm_limit=1000, tpm_limit=1_000_000)
    assert _post(gateway, secret).status_code == 200

    def upstream_has_it(timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(sim.requests()) >= 2:
                return True
            time.sleep(0.01)
        return False

    found = _admissions_wait_for(monkeypatch, upstream_has_it)
    with httpx.stream(
        "POST",
        gateway.url + "/v1/chat/completions",
        json=chat_body(stream=True, stream_options={"include_usage": True}),
        headers={"Authorization": f"Bearer {secret}"},
        timeout=20,
    ) as response:
        assert response.status_code == 200
        assert response.headers["x-ratelimit-remaining-requests"] == "998"
        chunks, done = sse_chunks(response)

    assert found == [True]
    assert done
    assert chunks[-1]["usage"]["completion_tokens"] > 0
    streamed = usage_events(2)[-1]
    assert (streamed.stream, streamed.status_code, streamed.completed) == (True, 200, True)
    assert streamed.completion_tokens == chunks[-1]["usage"]["completion_tokens"]


@pytest.mark.services
def test_a_refusal_cuts_the_call_that_went_ahead_and_answers_the_429(
    gateway: Gateway, upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = gateway.new_key(name="raced", rpm_limit=10)
    assert _post(gateway, secret).status_code == 200  # room: 10 / 2 - 0 - 1 = 4 requests
    # Another relay process uses the rest of the minute meanwhile.
    key_id = ApiKey.objects.get(name="raced").id

    async def use_the_rest() -> None:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(settings.REDIS_URL)
        store = RedisLimitStore(client, shared.limit_prefix())
        scopes = [Scope(f"key:{key_id}", Limits(rpm=10))]
        for index in range(9):
            assert (await store.acquire(scopes, f"other-{index}", 0, 30)).allowed
        await store.close()
        await client.aclose()

    asyncio.run(use_the_rest())
    upstream.hold = True
    upstream.arrived.clear()
    found = _admissions_wait_for(monkeypatch, upstream.arrived.wait)  # refused once out
    before = _ahead_counts(gateway).get("refused", 0)
    started = time.monotonic()
    refused = _post(gateway, secret)
    monkeypatch.undo()

    assert found == [True]
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert upstream.gone.wait(5), "the upstream call was not cut"
    assert time.monotonic() - started < 5
    assert _ahead_counts(gateway)["refused"] == before + 1

    # After a refusal the key waits for its admissions: the next one never leaves.
    upstream.hold = False
    count = upstream.count
    assert _post(gateway, secret).status_code == 429
    assert upstream.count == count
    events = usage_events(1)
    time.sleep(0.3)  # a refused request must not be written at all: give it the chance
    assert len(usage_events(1)) == len(events) == 1


@pytest.mark.services
def test_a_key_near_its_limits_never_sends_a_refused_request_upstream(
    gateway: Gateway, upstream: Upstream
) -> None:
    secret = gateway.new_key(name="small", rpm_limit=4)
    before = sum(_ahead_counts(gateway).values())
    statuses = [_post(gateway, secret).status_code for _ in range(6)]

    assert statuses == [200, 200, 200, 200, 429, 429]
    assert upstream.count == 4
    # The second request went ahead (room 4 / 2 - 0 - 1 = 1); the third did not.
    assert sum(_ahead_counts(gateway).values()) == before + 1


@pytest.mark.services
def test_a_balance_is_never_sent_upstream_past_what_it_pays_for(
    output_only: Gateway, sim: Simulator
) -> None:
    gateway = output_only
    prepaid(gateway, 4 * WORST)
    sim.client.delete("/_sim/requests")
    before = sum(_ahead_counts(gateway).values())

    statuses = [
        gateway.client.post("/v1/chat/completions", json=chat_body(max_tokens=16)).status_code
        for _ in range(6)
    ]

    assert statuses == [200, 200, 200, 200, 429, 429]
    assert len(sim.requests()) == 4
    # Room (4W - W) / 2 let the second go ahead, (3W - W) / 2 the third; no more.
    assert sum(_ahead_counts(gateway).values()) == before + 2


@pytest.mark.services
def test_a_request_that_fails_before_its_admission_returns_still_frees_its_slot(
    gateway: Gateway, upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = gateway.new_key(name="failing", rpm_limit=1000, concurrency_limit=100)
    assert _post(gateway, secret).status_code == 200
    with socket.socket() as sock:  # a port nobody listens on: the call fails at once
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    gateway.channel.base_url = f"http://127.0.0.1:{port}/v1"
    gateway.channel.save()
    gateway.caught_up()

    real = RedisLimitStore.acquire
    entered = threading.Event()

    async def acquire(self: RedisLimitStore, *args: Any, **kwargs: Any) -> Admission:
        entered.set()
        await asyncio.sleep(0.3)  # the upstream call fails well before this returns
        return await real(self, *args, **kwargs)

    monkeypatch.setattr(RedisLimitStore, "acquire", acquire)
    response = _post(gateway, secret)

    assert entered.is_set()
    assert response.status_code == 502
    # The admission was awaited and its answer kept: headers, and a settled slot.
    assert response.headers["x-ratelimit-remaining-requests"] == "998"
    key_id = ApiKey.objects.get(name="failing").id

    async def in_flight() -> int:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(settings.REDIS_URL)
        count = await client.zcard(f"{shared.limit_prefix()}:rl:key:{key_id}:conc")
        await client.aclose()
        return int(count)

    assert asyncio.run(in_flight()) == 0
    events = usage_events(2)
    assert [event.status_code for event in events] == [200, 502]


@pytest.mark.services
def test_turned_off_every_limited_request_waits_for_its_admission(
    gateway: Gateway, upstream: Upstream, settings: Any
) -> None:
    settings.RELAY_FORWARD_AHEAD = False
    secret = gateway.new_key(name="waits", rpm_limit=1000)
    before = sum(_ahead_counts(gateway).values())
    assert [_post(gateway, secret).status_code for _ in range(3)] == [200, 200, 200]
    assert sum(_ahead_counts(gateway).values()) == before
