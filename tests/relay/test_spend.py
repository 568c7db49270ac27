"""Spend reservations: balances, credit limits, budgets and key quotas hold under load.

Prices here are output-only and every request caps its output at what the simulator
produces, so a request's worst case equals its real cost (``WORST`` micro-units): a
balance of ``k * WORST`` pays for exactly ``k`` requests, whatever their order.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from django.conf import settings

from billing.models import UsageEvent
from billing.selectors import account_balance_micros
from billing.services import (
    account_topup,
    billing_account_create,
    billing_account_update,
    key_quota_set,
    usage_charge_post,
)
from relay.limits import LimitStore, LocalLimitStore, RedisLimitStore, Reservation
from tests.relay.conftest import (
    SIM_TOKENS,
    WORST,
    Gateway,
    Simulator,
    chat_body,
    prepaid,
    usage_events,
)


def ask(client: httpx.Client, url: str = "", **extra: Any) -> httpx.Response:
    return client.post(url + "/v1/chat/completions", json=chat_body(max_tokens=SIM_TOKENS, **extra))


def burst(urls: tuple[str, ...], secret: str, count: int, workers: int = 32) -> list[int]:
    """``count`` requests at once, spread over the relay processes."""

    def call(index: int) -> int:
        return httpx.post(
            urls[index % len(urls)] + "/v1/chat/completions",
            json=chat_body(max_tokens=SIM_TOKENS),
            headers={"Authorization": f"Bearer {secret}"},
            timeout=30,
        ).status_code

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(call, range(count)))


def test_a_balance_pays_for_exactly_its_worst_cases(output_only: Gateway) -> None:
    gateway = output_only
    account = prepaid(gateway, 3 * WORST)

    statuses = [ask(gateway.client).status_code for _ in range(3)]
    refused = ask(gateway.client)

    assert statuses == [200, 200, 200]
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["type"] == "insufficient_quota"
    assert error["code"] == "insufficient_quota"
    assert "balance" in error["message"]
    assert len(usage_events(3)) == 3
    usage_charge_post()
    assert account_balance_micros(account) == 0

    account_topup(account=account, amount_micros=WORST, actor="test")
    deadline = time.monotonic() + 5
    while (response := ask(gateway.client)).status_code == 429:
        assert time.monotonic() < deadline, "a top-up did not reach the relay"
        time.sleep(0.1)
    assert response.status_code == 200
    assert ask(gateway.client).status_code == 429


def test_an_unaffordable_request_is_refused_before_any_upstream_call(
    output_only: Gateway, sim: Simulator
) -> None:
    prepaid(output_only, WORST - 1)
    sim.client.delete("/_sim/requests")

    assert ask(output_only.client).status_code == 429
    assert sim.requests() == []


def test_failed_requests_release_what_they_held(output_only: Gateway, sim: Simulator) -> None:
    gateway = output_only
    prepaid(gateway, WORST)
    gateway.channel.base_url = sim.channel_url("fail=500")
    gateway.channel.save()
    gateway.caught_up()

    for _ in range(3):  # each would be refused if its failed predecessor still held money
        assert ask(gateway.client).status_code == 502

    gateway.channel.base_url = sim.channel_url()
    gateway.channel.save()
    gateway.caught_up()
    assert ask(gateway.client).status_code == 200
    assert ask(gateway.client).status_code == 429


def test_a_postpaid_credit_limit_caps_what_is_owed(output_only: Gateway) -> None:
    gateway = output_only
    billing_account_create(
        organization=gateway.tenant, actor="test", mode="postpaid", credit_limit_micros=2 * WORST
    )

    statuses = [ask(gateway.client).status_code for _ in range(3)]

    assert statuses == [200, 200, 429]


def test_a_hard_budget_stops_and_a_soft_one_does_not(output_only: Gateway) -> None:
    gateway = output_only
    account = billing_account_create(
        organization=gateway.tenant,
        actor="test",
        mode="postpaid",
        monthly_budget_micros=WORST,
        budget_hard_stop=True,
    )
    assert ask(gateway.client).status_code == 200
    refused = ask(gateway.client)
    assert refused.status_code == 429
    assert "budget" in refused.json()["error"]["message"]

    billing_account_update(account=account, actor="test", budget_hard_stop=False)
    deadline = time.monotonic() + 5
    while ask(gateway.client).status_code == 429:
        assert time.monotonic() < deadline, "lifting the hard stop did not reach the relay"
        time.sleep(0.1)


def test_a_key_quota_limits_that_key_only(output_only: Gateway) -> None:
    gateway = output_only
    key_quota_set(api_key=gateway.api_key, actor="test", total_limit_micros=2 * WORST)
    other = gateway.new_key(name="unquoted")

    assert [ask(gateway.client).status_code for _ in range(3)] == [200, 200, 429]
    other_client = httpx.Client(
        base_url=gateway.url, headers={"Authorization": f"Bearer {other}"}, timeout=20
    )
    with other_client:
        assert ask(other_client).status_code == 200
    assert "spend quota" in ask(gateway.client).json()["error"]["message"]


def test_a_concurrent_burst_never_overdraws(output_only: Gateway, sim: Simulator) -> None:
    gateway = output_only
    gateway.channel.base_url = sim.channel_url("latency=100")
    gateway.channel.save()
    account = prepaid(gateway, 7 * WORST)
    gateway.caught_up()

    statuses = burst((gateway.url,), gateway.secret, 35)

    assert statuses.count(200) == 7
    assert statuses.count(429) == 28
    assert len(usage_events(7)) == 7
    usage_charge_post()
    assert account_balance_micros(account) == 0


# --- The store itself ------------------------------------------------------------------------


@pytest.fixture(params=["local", pytest.param("redis", marks=pytest.mark.services)])
def store_factory(request: pytest.FixtureRequest) -> Iterator[Any]:
    def build() -> LimitStore:
        if request.param == "local":
            return LocalLimitStore()
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(settings.REDIS_URL)
        return RedisLimitStore(client, f"{settings.CACHES['default']['KEY_PREFIX']}-{uuid.uuid4()}")

    yield build


def test_holds_of_abandoned_requests_lapse(store_factory: Any) -> None:
    async def run() -> tuple[str, str, bool]:
        store = store_factory()
        money = Reservation(("t1:funds",), worst_micros=100)
        await store.seed(("t1:funds",), [150], [0], 0)
        first = await store.acquire([], "a", 0, 0.3, money)
        second = await store.acquire([], "b", 0, 0.3, money)
        await asyncio.sleep(0.5)  # "a" never finishes: its process died
        third = await store.acquire([], "c", 0, 30, money)
        return first.refused, second.refused, third.allowed

    assert asyncio.run(run()) == ("", "funds", True)


def test_a_seed_from_an_older_generation_is_not_trusted(store_factory: Any) -> None:
    async def run() -> list[str]:
        store = store_factory()
        await store.seed(("k1:total",), [1000], [0], 4)
        fresh = await store.acquire([], "a", 0, 30, Reservation(("k1:total",), 10, 4))
        stale = await store.acquire([], "b", 0, 30, Reservation(("k1:total",), 10, 5))
        await store.seed(("k1:total",), [1000], [0], 3)  # late writer of an old figure
        still = await store.acquire([], "c", 0, 30, Reservation(("k1:total",), 10, 5))
        return [fresh.refused, stale.refused, ",".join(still.unseeded)]

    assert asyncio.run(run()) == ["", "seed", "k1:total"]


def test_a_fresh_base_of_the_same_generation_is_kept(store_factory: Any) -> None:
    """Two requests seed the same cold scope; the second read the database after an
    event of 100 was written, but the written total before it. Its figure counts that
    event twice and must not replace the first seed's; once the base is stale, it does."""

    async def run() -> list[str]:
        store = store_factory()
        money = Reservation(("t1:funds",), worst_micros=1000)
        recent = time.time() - 300
        await store.seed(("t1:funds",), [1000], [0], 0, recent)
        await store.seed(("t1:funds",), [900], [0], 0, recent)
        kept = await store.acquire([], "a", 0, 30, money)
        await store.release([], "a", kept, None, money, cost_micros=0)
        await store.seed(("t1:funds",), [900], [0], 0, time.time() + 1)
        replaced = await store.acquire([], "b", 0, 30, money)
        return [kept.refused, replaced.refused]

    assert asyncio.run(run()) == ["", "funds"]


def test_a_burst_on_cold_scopes_reads_the_database_once(
    output_only: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    from relay import spend
    from relay.snapshot import KeyInfo

    account = prepaid(output_only, 10 * WORST)
    calls: list[tuple[str, ...]] = []
    real = spend.load_bases

    def counting(tenant_id: int, key_id: int, names: tuple[str, ...]) -> list[int]:
        calls.append(names)
        time.sleep(0.05)  # a database that takes a moment, as under load
        return real(tenant_id, key_id, names)

    monkeypatch.setattr(spend, "load_bases", counting)
    key = KeyInfo(
        id=output_only.api_key.id,
        tenant_id=account.organization_id,
        name="k",
        active=True,
        expires_at=None,
        allowed_models=frozenset(),
    )
    money = Reservation((f"t{account.organization_id}:funds",), WORST, 0, time.time() - 300)

    async def run() -> list[bool]:
        store = LocalLimitStore()
        await asyncio.gather(*(spend.seed(store, key, money.scopes, money) for _ in range(20)))
        admissions = [await store.acquire([], str(i), 0, 30, money) for i in range(11)]
        return [admission.allowed for admission in admissions]

    assert asyncio.run(run()) == [True] * 10 + [False]
    assert calls == [money.scopes]


def test_finished_cost_replaces_the_worst_case(store_factory: Any) -> None:
    async def run() -> list[str]:
        store = store_factory()
        money = Reservation(("t1:funds",), worst_micros=100)
        await store.seed(("t1:funds",), [250], [0], 0)
        first = await store.acquire([], "a", 0, 30, money)
        await store.release([], "a", first, None, money, cost_micros=40)
        # 250 - 40 = 210 left: two more worst cases fit, a third does not.
        results = [(await store.acquire([], r, 0, 30, money)).refused for r in "bcd"]
        return results

    assert asyncio.run(run()) == ["", "", "funds"]


def test_refused_requests_write_no_usage(output_only: Gateway) -> None:
    prepaid(output_only, 0)
    assert ask(output_only.client).status_code == 429
    usage_events(0, timeout=0.5)
    assert UsageEvent.objects.count() == 0
    assert usage_charge_post() == 0
