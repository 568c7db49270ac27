"""The Lua calls of one loop turn go to Redis as one pipeline, and each keeps its own
answer, its own atomicity and its own error."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from django.conf import settings
from redis.exceptions import ConnectionError as RedisConnectionError

from relay.batching import ScriptBatcher
from relay.limits import Limits, RedisLimitStore, Scope

pytestmark = pytest.mark.services

# Adds ARGV[1] to KEYS[1] and returns the new value: its answer says which call it was.
INCR_LUA = "return redis.call('INCRBY', KEYS[1], ARGV[1])"


class CountingRedis:
    """The real client, counting the pipelines and single calls made through it."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.pipelines = 0

    def pipeline(self, **kwargs: Any) -> Any:
        self.pipelines += 1
        return self.client.pipeline(**kwargs)


def _client() -> Any:
    import redis.asyncio as aioredis

    return aioredis.Redis.from_url(settings.REDIS_URL)


def test_calls_of_one_turn_share_a_pipeline_and_keep_their_answers() -> None:
    async def run() -> tuple[list[int], int, int]:
        client = _client()
        counting = CountingRedis(client)
        batcher = ScriptBatcher(counting)
        script = client.register_script(INCR_LUA)
        key = f"test-batch-{uuid.uuid4().hex}"
        answers = await asyncio.gather(*(batcher.run(script, [key], [1]) for _ in range(40)))
        alone = await batcher.run(script, [key], [1000])
        await client.delete(key)
        await client.aclose()
        return answers, alone, counting.pipelines

    answers, alone, pipelines = asyncio.run(run())
    assert sorted(answers) == list(range(1, 41))  # each call ran once, atomically
    assert alone == 1040  # a call alone in its turn runs directly
    assert pipelines == 1


def test_scripts_flushed_from_redis_are_loaded_again() -> None:
    async def run() -> list[int]:
        client = _client()
        batcher = ScriptBatcher(client)
        script = client.register_script(INCR_LUA)
        key = f"test-batch-{uuid.uuid4().hex}"
        await client.script_flush()
        answers = await asyncio.gather(*(batcher.run(script, [key], [2]) for _ in range(5)))
        await client.delete(key)
        await client.aclose()
        return answers

    assert sorted(asyncio.run(run())) == [2, 4, 6, 8, 10]


def test_a_caller_that_left_before_the_turn_ended_sends_nothing() -> None:
    async def run() -> tuple[list[int], int]:
        client = _client()
        batcher = ScriptBatcher(client)
        script = client.register_script(INCR_LUA)
        key = f"test-batch-{uuid.uuid4().hex}"
        leaving = asyncio.ensure_future(batcher.run(script, [key], [100]))
        staying = [asyncio.ensure_future(batcher.run(script, [key], [1])) for _ in range(3)]
        await asyncio.sleep(0)  # the calls are queued
        leaving.cancel()
        answers = await asyncio.gather(*staying)
        total = int(await client.get(key))
        await client.delete(key)
        await client.aclose()
        return answers, total

    answers, total = asyncio.run(run())
    assert sorted(answers) == [1, 2, 3]
    assert total == 3


def test_a_dead_connection_fails_every_call_in_the_pipeline() -> None:
    async def run() -> list[Any]:
        import redis.asyncio as aioredis

        client = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
        batcher = ScriptBatcher(client)
        script = client.register_script(INCR_LUA)
        results = await asyncio.gather(
            *(batcher.run(script, ["k"], [1]) for _ in range(4)), return_exceptions=True
        )
        await client.aclose()
        return results

    results = asyncio.run(run())
    assert len(results) == 4
    assert all(isinstance(r, RedisConnectionError) for r in results)


def test_limits_stay_exact_when_their_checks_are_batched() -> None:
    async def run() -> int:
        client = _client()
        store = RedisLimitStore(client, f"test-batch-{uuid.uuid4().hex}")
        scopes = [Scope("key:1", Limits(rpm=20))]
        admissions = await asyncio.gather(
            *(store.acquire(scopes, f"r{i}", 0, 30) for i in range(60))
        )
        await client.aclose()
        return sum(a.allowed for a in admissions)

    assert asyncio.run(run()) == 20
