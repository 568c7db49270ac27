"""The Redis store's minute windows keep a running sum (ACQUIRE_LUA); the in-memory store
adds its counts up each time. Driven through the same requests on the same clock, both
must admit, refuse and report alike, whatever the clock does: steady traffic, pauses
shorter and longer than a minute, bursts, and a clock that steps back (another relay's,
a little behind)."""

from __future__ import annotations

import asyncio
import random
import uuid
from types import SimpleNamespace
from typing import Any

import pytest
import redis as sync_redis
from django.conf import settings

from relay.limits import Admission, Limits, LocalLimitStore, RedisLimitStore, Scope
from relay.limits import local as local_module
from relay.limits import redis_store as redis_module

pytestmark = pytest.mark.services

STEPS = [0.0, 0.0, 0.2, 0.5, 1.0, 1.0, 2.0, 7.0, 30.0, 59.0, 60.0, 61.0, 125.0, -1.0, -3.0]


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.25

    def time(self) -> float:
        return self.now


def _seen(admission: Admission) -> tuple[Any, ...]:
    return (
        admission.allowed,
        admission.refused,
        admission.retry_after,
        admission.remaining_requests,
        admission.remaining_tokens,
        round(admission.reset_requests or 0.0, 6),
        round(admission.reset_tokens or 0.0, 6),
    )


def _check_hash(client: Any, key: str, now: int) -> None:
    """The running sum is the sum of the counts, and 'low' the oldest counted second."""
    fields = {k.decode(): int(v) for k, v in client.hgetall(key).items()}
    if not fields:
        return
    counts = {int(k): v for k, v in fields.items() if k not in ("sum", "low")}
    assert fields["sum"] == sum(counts.values())
    assert fields["low"] == min(counts, default=0)
    assert all(second > now - 180 for second in counts)  # nothing stale lingers long


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5, 6])
def test_running_sums_admit_exactly_as_counting_every_second(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(seed)
    clock = Clock()
    monkeypatch.setattr(local_module, "time", SimpleNamespace(time=clock.time))
    monkeypatch.setattr(redis_module, "time", SimpleNamespace(time=clock.time))
    prefix = f"{settings.CACHES['default']['KEY_PREFIX']}-windows-{uuid.uuid4()}"
    scopes = [
        Scope("key:1", Limits(rpm=rng.choice([5, 40, 200]), tpm=rng.choice([300, 2_000]))),
        Scope("tenant:1", Limits(rpm=rng.choice([60, 500]), tpm=10_000)),
    ]
    checker = sync_redis.Redis.from_url(settings.REDIS_URL)

    async def run() -> int:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(settings.REDIS_URL)
        local, shared = LocalLimitStore(), RedisLimitStore(client, prefix)
        open_requests: list[tuple[str, Admission, Admission]] = []
        compared = 0
        try:
            for step in range(400):
                clock.now += rng.choice(STEPS)
                if open_requests and rng.random() < 0.4:
                    request_id, mine, theirs = open_requests.pop(rng.randrange(len(open_requests)))
                    used = rng.choice([None, 0, rng.randrange(0, 80)])
                    await local.release(scopes, request_id, mine, used)
                    await shared.release(scopes, request_id, theirs, used)
                    continue
                request_id, tokens = f"r{step}", rng.randrange(0, 60)
                mine = await local.acquire(scopes, request_id, tokens, 30)
                theirs = await shared.acquire(scopes, request_id, tokens, 30)
                assert _seen(theirs) == _seen(mine), f"step {step} at {clock.now}"
                compared += 1
                if mine.allowed:
                    open_requests.append((request_id, mine, theirs))
                for name in ("requests", "tokens"):
                    for scope in scopes:
                        _check_hash(checker, f"{prefix}:rl:{scope.name}:{name}", int(clock.now))
        finally:
            await shared.close()
            await client.aclose()
        return compared

    try:
        assert asyncio.run(run()) > 150
    finally:
        for key in checker.scan_iter(f"{prefix}:*"):
            checker.delete(key)
        checker.close()


def test_a_window_made_by_the_scripts_before_the_running_sum_is_added_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A hash of bare per-second counts (no 'sum', no 'low') is counted in full, once."""
    clock = Clock()
    monkeypatch.setattr(redis_module, "time", SimpleNamespace(time=clock.time))
    prefix = f"{settings.CACHES['default']['KEY_PREFIX']}-windows-{uuid.uuid4()}"
    now = int(clock.now)
    checker = sync_redis.Redis.from_url(settings.REDIS_URL)
    key = f"{prefix}:rl:key:7:requests"
    checker.hset(key, mapping={str(now - 61): 4, str(now - 30): 2, str(now - 1): 1})
    scopes = [Scope("key:7", Limits(rpm=5))]

    async def run() -> list[bool]:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(settings.REDIS_URL)
        store = RedisLimitStore(client, prefix)
        try:
            return [(await store.acquire(scopes, f"r{i}", 0, 30)).allowed for i in range(3)]
        finally:
            await store.close()
            await client.aclose()

    try:
        # 3 counted in the last minute (the 4 of 61 s ago have left): 2 more fit.
        assert asyncio.run(run()) == [True, True, False]
        fields = {k.decode(): int(v) for k, v in checker.hgetall(key).items()}
        assert fields["sum"] == 5 and fields["low"] == now - 30
        assert str(now - 61) not in fields
    finally:
        checker.delete(key)
        checker.close()
