"""Plan windows: a rolling cap on tokens or spend, counted in the same atomic check as
the other limits, refusing the request that would pass it until the window rolls on."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import time_machine
from django.conf import settings

from billing.services import plan_create, plan_update, subscription_create
from relay.limits import LimitStore, LocalLimitStore, RedisLimitStore, Reservation, Window
from tests.relay.conftest import Gateway, chat_body, usage_events
from tests.servers import RelayProcess, database_url

FIVE_HOURS = 5 * 3600
# The window's bucket (5 minutes) plus a margin: when 5h-usage has certainly rolled off.
ROLLED_ON = FIVE_HOURS + 300 + 5


@pytest.fixture(params=["local", pytest.param("redis", marks=pytest.mark.services)])
def store_factory(request: pytest.FixtureRequest) -> Iterator[Any]:
    def build() -> LimitStore:
        if request.param == "local":
            return LocalLimitStore()
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(settings.REDIS_URL)
        return RedisLimitStore(client, f"{settings.CACHES['default']['KEY_PREFIX']}-{uuid.uuid4()}")

    yield build


def window(kind: str = "tokens", cap: int = 1000, length: str = "5h") -> Window:
    seconds = {"5h": FIVE_HOURS, "1d": 86400, "7d": 7 * 86400}[length]
    return Window(name="s1:w1", length=length, kind=kind, cap=cap, seconds=seconds)


def test_a_token_window_refuses_what_would_pass_it_until_it_rolls_on(store_factory: Any) -> None:
    held = Reservation(scopes=(), worst_micros=0, windows=(window(),))

    async def run(traveller: Any) -> dict[str, Any]:
        store = store_factory()
        seen: dict[str, Any] = {}
        seen["first"] = await store.acquire([], "a", 600, 30, held)
        seen["over"] = await store.acquire([], "b", 401, 30, held)
        seen["exact"] = await store.acquire([], "c", 400, 30, held)
        traveller.shift(FIVE_HOURS - 60)
        seen["not_yet"] = await store.acquire([], "d", 1, 30, held)
        traveller.shift(ROLLED_ON - (FIVE_HOURS - 60))
        seen["rolled"] = await store.acquire([], "e", 1000, 30, held)
        return seen

    with time_machine.travel(time.time(), tick=False) as traveller:
        seen = asyncio.run(run(traveller))
    assert seen["first"].allowed and seen["first"].plan[0][1] == 400
    over = seen["over"]
    assert not over.allowed and over.refused == "plan"
    assert over.refused_window == window()
    assert FIVE_HOURS - 1 <= over.retry_after <= FIVE_HOURS + 300
    assert seen["exact"].allowed and seen["exact"].plan[0][1] == 0
    assert not seen["not_yet"].allowed
    assert seen["rolled"].allowed and seen["rolled"].plan[0][1] == 0
    headers = dict(seen["first"].headers())
    assert headers[b"x-tollgate-plan-limit-tokens-5h"] == b"1000"
    assert headers[b"x-tollgate-plan-remaining-tokens-5h"] == b"400"
    assert headers[b"x-tollgate-plan-reset-tokens-5h"].startswith(b"30")  # 5h05m: 305m..s


def test_a_spend_window_settles_to_the_real_cost(store_factory: Any) -> None:
    held = Reservation(scopes=(), worst_micros=600, windows=(window("spend", 1000, "1d"),))

    async def run() -> list[bool]:
        store = store_factory()
        first = await store.acquire([], "a", 50, 30, held)
        await store.release([], "a", first, 40, held, cost_micros=100)
        second = await store.acquire([], "b", 50, 30, held)  # 100 + 600 fits in 1000
        third = await store.acquire([], "c", 50, 30, held)  # 700 + 600 does not
        await store.release([], "b", second, 40, held, cost_micros=None)  # cost unknown
        fourth = await store.acquire([], "d", 50, 30, held)
        return [first.allowed, second.allowed, third.allowed, fourth.allowed]

    assert asyncio.run(run()) == [True, True, False, False]


# --- Through the relay -----------------------------------------------------------------------


def subscribe(gateway: Gateway, windows: list[dict[str, Any]]) -> Any:
    plan = plan_create(
        seller=gateway.tenant.parent,
        name="Starter",
        monthly_fee_micros=0,
        windows=windows,
        actor="test",
    )
    subscription_create(tenant=gateway.tenant, plan=plan, actor="test")
    return plan


def remaining(response: Any) -> int:
    return int(response.headers["x-tollgate-plan-remaining-tokens-5h"])


def test_the_relay_enforces_a_window_and_reports_what_is_left(gateway: Gateway) -> None:
    plan = subscribe(gateway, [{"length": "5h", "kind": "tokens", "cap": 10_000_000}])
    body = chat_body(max_tokens=16)
    with time_machine.travel(time.time(), tick=True) as traveller:
        first = gateway.client.post("/v1/chat/completions", json=body)
        assert first.status_code == 200, first.text
        reserved = 10_000_000 - remaining(first)  # the request's estimate
        used = usage_events(1)[0]
        actual = used.prompt_tokens + used.completion_tokens
        # A fresh window of room for exactly two more requests, not three.
        cap = 2 * actual + reserved - 1
        plan_update(plan=plan, actor="test", windows=[{"length": "5h", "cap": cap}])
        deadline = time.monotonic() + 10
        while True:
            response = gateway.client.post("/v1/chat/completions", json=body)
            if response.headers.get("x-tollgate-plan-limit-tokens-5h") == str(cap):
                break
            assert time.monotonic() < deadline, "the relay did not load the new window"
            time.sleep(0.1)
        assert remaining(response) == cap - reserved
        second = gateway.client.post("/v1/chat/completions", json=body)
        assert second.status_code == 200
        assert remaining(second) == cap - actual - reserved
        refused = gateway.client.post("/v1/chat/completions", json=body)
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "plan_limit_exceeded"
        assert remaining(refused) == cap - 2 * actual
        assert int(refused.headers["retry-after"]) > FIVE_HOURS - 60

        traveller.shift(ROLLED_ON)
        again = gateway.client.post("/v1/chat/completions", json=body)
        assert again.status_code == 200, again.text
        assert remaining(again) == cap - reserved


def test_a_window_for_other_models_does_not_count_this_one(gateway: Gateway) -> None:
    subscribe(gateway, [{"length": "1d", "cap": 1, "model_ids": ["another-model"]}])
    response = gateway.client.post("/v1/chat/completions", json=chat_body())
    assert response.status_code == 200
    assert not any(name.startswith("x-tollgate-plan") for name in response.headers)


@pytest.mark.services
@pytest.mark.timeout(480)  # four relay processes start one after another
def test_two_relay_processes_share_a_window_that_rolls_on(gateway: Gateway) -> None:
    """Both processes count into the one window in Redis; their clocks are moved with
    time-machine (``tests/relay/clocked_relay.py``), restarting them: Redis keeps the
    window meanwhile."""
    plan = subscribe(gateway, [{"length": "5h", "kind": "tokens", "cap": 10_000_000}])
    body = chat_body(max_tokens=16)
    probe = gateway.client.post("/v1/chat/completions", json=body)
    reserved = 10_000_000 - remaining(probe)
    used = usage_events(1)[0]
    actual = used.prompt_tokens + used.completion_tokens
    cap = 3 * actual + reserved - 1  # three requests fit, the fourth would pass the cap
    plan_update(plan=plan, actor="test", windows=[{"length": "5h", "cap": cap}])

    def relays(count: int, shift: int) -> list[RelayProcess]:
        env = {
            "DATABASE_URL": database_url(),
            "REDIS_URL": settings.REDIS_URL,
            "CACHE_KEY_PREFIX": settings.CACHES["default"]["KEY_PREFIX"],
            "TEST_CLOCK_SHIFT_SECONDS": str(shift),
        }
        return [RelayProcess(env, launcher="tests.relay.clocked_relay") for _ in range(count)]

    def post(relay: RelayProcess) -> Any:
        import httpx

        headers = {"Authorization": f"Bearer {gateway.secret}"}
        return httpx.post(
            relay.url + "/v1/chat/completions", json=body, headers=headers, timeout=20
        )

    first, second = relays(2, 0)
    try:
        answers = [post(relay) for relay in (first, second, first, second)]
    finally:
        first.stop()
        second.stop()
    assert [a.status_code for a in answers] == [200, 200, 200, 429], answers[-1].text
    assert [remaining(a) for a in answers] == [
        cap - reserved,
        cap - actual - reserved,
        cap - 2 * actual - reserved,
        cap - 3 * actual,
    ]

    (later,) = relays(1, FIVE_HOURS - 120)
    try:
        assert post(later).status_code == 429  # not yet: the window still holds them all
    finally:
        later.stop()
    (rolled_on,) = relays(1, ROLLED_ON)
    try:
        rolled = [post(rolled_on), post(rolled_on)]
    finally:
        rolled_on.stop()
    assert [a.status_code for a in rolled] == [200, 200]
    assert remaining(rolled[1]) == cap - actual - reserved
