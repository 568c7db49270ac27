"""Per-key and per-tenant limits: exact under concurrency, OpenAI's 429 and headers."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from django.conf import settings

from portal import services
from relay.limits import Limits, LimitStore, LocalLimitStore, RedisLimitStore, Scope
from tests.relay.conftest import Gateway, Simulator, chat_body


@pytest.fixture(params=["local", pytest.param("redis", marks=pytest.mark.services)])
def store_factory(request: pytest.FixtureRequest) -> Iterator[Any]:
    """Builds a store on the running loop: in memory, or on this run's Redis namespace."""

    def build() -> LimitStore:
        if request.param == "local":
            return LocalLimitStore()
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(settings.REDIS_URL)
        return RedisLimitStore(client, f"{settings.CACHES['default']['KEY_PREFIX']}-{uuid.uuid4()}")

    yield build
    # Each test drives its store inside one asyncio.run(); its connections died with that
    # loop, so there is nothing left to close here.


def test_rpm_admits_exactly_n_of_a_concurrent_burst(store_factory: Any) -> None:
    async def burst() -> list[bool]:
        store = store_factory()
        scopes = [Scope("key:1", Limits(rpm=10)), Scope("tenant:1", Limits(rpm=100))]
        results = await asyncio.gather(*(store.acquire(scopes, f"r{i}", 1, 30) for i in range(30)))
        return [r.allowed for r in results]

    assert sum(asyncio.run(burst())) == 10


def test_the_tighter_scope_wins_and_headers_report_it(store_factory: Any) -> None:
    async def run() -> list[Any]:
        store = store_factory()
        scopes = [Scope("key:1", Limits(rpm=50, tpm=1000)), Scope("tenant:1", Limits(rpm=3))]
        return [await store.acquire(scopes, f"r{i}", 100, 30) for i in range(4)]

    first, _, third, fourth = asyncio.run(run())
    assert (first.limit_requests, first.remaining_requests) == (3, 2)
    assert (first.limit_tokens, first.remaining_tokens) == (1000, 900)
    assert (third.allowed, third.remaining_requests) == (True, 0)
    assert not fourth.allowed and fourth.refused == "requests"
    assert 1 <= fourth.retry_after <= 60
    headers = dict(fourth.headers())
    assert headers[b"x-ratelimit-limit-requests"] == b"3"
    assert headers[b"x-ratelimit-remaining-requests"] == b"0"
    assert headers[b"x-ratelimit-reset-requests"].endswith(b"s")


def test_concurrency_slots_are_held_until_released(store_factory: Any) -> None:
    async def run() -> tuple[bool, bool, bool]:
        store = store_factory()
        scopes = [Scope("key:9", Limits(concurrency=1))]
        first = await store.acquire(scopes, "a", 0, 30)
        second = await store.acquire(scopes, "b", 0, 30)
        await store.release(scopes, "a", first, None)
        third = await store.acquire(scopes, "c", 0, 30)
        return first.allowed, second.allowed, third.allowed

    assert asyncio.run(run()) == (True, False, True)


def test_token_reservations_settle_to_the_real_count(store_factory: Any) -> None:
    async def run() -> tuple[bool, bool]:
        store = store_factory()
        scopes = [Scope("key:5", Limits(tpm=1000, daily_tokens=5000))]
        big = await store.acquire(scopes, "a", 900, 30)  # reserve the worst case
        await store.release(scopes, "a", big, 100)  # it used only 100
        after = await store.acquire(scopes, "b", 850, 30)  # fits only if 800 came back
        too_much = await store.acquire(scopes, "c", 100, 30)
        return after.allowed, too_much.allowed

    assert asyncio.run(run()) == (True, False)


def test_daily_cap_refuses_until_midnight(store_factory: Any) -> None:
    async def run() -> Any:
        store = store_factory()
        scopes = [Scope("key:6", Limits(daily_tokens=100))]
        await store.acquire(scopes, "a", 80, 30)
        return await store.acquire(scopes, "b", 30, 30)

    refused = asyncio.run(run())
    assert not refused.allowed and refused.refused == "daily_tokens"
    assert 1 <= refused.retry_after <= 86_400


# --- Through the relay -----------------------------------------------------------------------


def _limit_key(gateway: Gateway, **limits: Any) -> str:
    return gateway.new_key(name="limited", **limits)


def test_429_with_retry_after_and_headers_on_every_response(gateway: Gateway) -> None:
    secret = _limit_key(gateway, rpm_limit=3, tpm_limit=100_000)
    headers = {"Authorization": f"Bearer {secret}"}
    remaining = []
    for _ in range(3):
        response = gateway.client.post("/v1/chat/completions", json=chat_body(), headers=headers)
        assert response.status_code == 200
        assert response.headers["x-ratelimit-limit-requests"] == "3"
        assert response.headers["x-ratelimit-limit-tokens"] == "100000"
        assert int(response.headers["x-ratelimit-remaining-tokens"]) < 100_000
        assert response.headers["x-ratelimit-reset-requests"]
        remaining.append(int(response.headers["x-ratelimit-remaining-requests"]))
    assert remaining == [2, 1, 0]

    refused = gateway.client.post("/v1/chat/completions", json=chat_body(), headers=headers)
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["code"] == "rate_limit_exceeded"
    assert error["type"] == "requests"
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"

    streamed = gateway.client.post(
        "/v1/chat/completions", json=chat_body(stream=True), headers=headers
    )
    assert streamed.status_code == 429


def test_tenant_limits_apply_to_all_its_keys(gateway: Gateway) -> None:
    gateway.tenant.rpm_limit = 2
    gateway.tenant.save()
    other = gateway.new_key(name="second")
    statuses = []
    for secret in (gateway.secret, other, gateway.secret):
        response = httpx.post(
            gateway.url + "/v1/chat/completions",
            json=chat_body(),
            headers={"Authorization": f"Bearer {secret}"},
        )
        statuses.append(response.status_code)
    assert statuses == [200, 200, 429]


@pytest.mark.parametrize(("cap", "seller"), [(None, 2), (2, 50), (50, 2)])
def test_the_tighter_of_the_operators_cap_and_the_sellers_limit_applies(
    gateway: Gateway, cap: int | None, seller: int
) -> None:
    gateway.tenant.rpm_limit = cap  # the operator's, in the admin
    gateway.tenant.save()
    services.tenant_limits_set(tenant=gateway.tenant, limits={"rpm_limit": seller}, actor="test")
    other = gateway.new_key(name="second")
    gateway.caught_up()
    statuses = [
        httpx.post(
            gateway.url + "/v1/chat/completions",
            json=chat_body(),
            headers={"Authorization": f"Bearer {secret}"},
        ).status_code
        for secret in (gateway.secret, other, gateway.secret)
    ]
    assert statuses == [200, 200, 429]


def test_a_deactivated_tenants_keys_are_refused_until_it_is_reactivated(
    gateway: Gateway,
) -> None:
    def status() -> int:
        return httpx.post(
            gateway.url + "/v1/chat/completions",
            json=chat_body(),
            headers={"Authorization": f"Bearer {gateway.secret}"},
        ).status_code

    assert status() == 200
    services.tenant_set_active(tenant=gateway.tenant, active=False, actor="test")
    gateway.caught_up()
    refused = status()
    services.tenant_set_active(tenant=gateway.tenant, active=True, actor="test")
    gateway.caught_up()
    assert (refused, status()) == (401, 200)


def test_concurrency_limit_is_never_exceeded(gateway: Gateway, sim: Simulator) -> None:
    gateway.channel.base_url = sim.channel_url("latency=400")
    gateway.channel.save()
    secret = _limit_key(gateway, concurrency_limit=2)
    gateway.caught_up()
    sim.client.delete("/_sim/requests")

    def call(_: int) -> int:
        return httpx.post(
            gateway.url + "/v1/chat/completions",
            json=chat_body(),
            headers={"Authorization": f"Bearer {secret}"},
            timeout=20,
        ).status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(call, range(8)))

    assert statuses.count(200) >= 2
    assert set(statuses) <= {200, 429}
    assert 429 in statuses
    assert sim.stats()["peak_in_flight"] <= 2


@pytest.mark.parametrize(
    ("networks", "forwarded", "status"),
    [
        (["10.0.0.0/8"], None, 403),
        (["127.0.0.0/8"], None, 200),
        # uvicorn trusts X-Forwarded-For from 127.0.0.1 (--forwarded-allow-ips) and hands
        # the relay the client's address.
        (["203.0.113.0/24"], "203.0.113.9", 200),
        (["203.0.113.0/24"], "198.51.100.1", 403),
    ],
)
def test_keys_restricted_to_networks(
    gateway: Gateway, networks: list[str], forwarded: str | None, status: int
) -> None:
    secret = gateway.new_key(name="netted", allowed_networks=networks)
    headers = {"Authorization": f"Bearer {secret}"}
    if forwarded:
        headers["X-Forwarded-For"] = forwarded
    response = httpx.get(gateway.url + "/v1/models", headers=headers)
    assert response.status_code == status
    if status == 403:
        assert response.json()["error"]["code"] == "ip_not_allowed"


def test_a_new_event_loop_never_inherits_a_dead_loops_redis_handles(settings: Any) -> None:
    # Handles were kept by id(loop): a loop made after another was gone often got its id,
    # and with it a client of whatever REDIS_URL was set then (here, a port nothing
    # listens on), so a relay refused keys with limits as if Redis were down.
    import gc

    import uvloop

    from relay import shared

    async def port() -> int:
        client = shared._for_loop()[0]
        return int(client.connection_pool.connection_kwargs["port"])

    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    assert uvloop.run(port()) == 1
    settings.REDIS_URL = "redis://127.0.0.1:6379/0"
    ports = []
    for _ in range(20):  # uvloop's loops, as the relay's, reuse a freed loop's id at once
        gc.collect()
        ports.append(uvloop.run(port()))
    assert ports == [6379] * 20
