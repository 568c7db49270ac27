"""Open entries of streams, progress marks and the sweeper, against a real Redis.

Whoever settles a stream first (its own process, or a sweeper that took the process for
dead) is the only one to: one usage record queued, one settlement of limits and money.
The end-to-end case, with relay processes killed for real, is
``tests/faults/test_stream_cut.py``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from django.conf import settings

from relay import orphans
from relay.limits import Limits, RedisLimitStore, Reservation, Scope, money_keys
from relay.metering import Usage, UsageRecord

pytestmark = pytest.mark.services

WORST = 5_000
FUNDS = "t9001:funds"


@pytest.fixture
def prefix(settings: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A key namespace of this test's own (the sweeper looks at every owner in it).

    The usage queue is what these tests look at, so this process's writer must not start
    draining it (the sweeper starts it, as it should in a relay process)."""
    monkeypatch.setattr(orphans.usage_writer, "start_draining", lambda: None)
    name = f"orphans-test-{uuid.uuid4().hex[:8]}"
    settings.CACHES = {
        **settings.CACHES,
        "default": {**settings.CACHES["default"], "KEY_PREFIX": name},
    }
    settings.RELAY_PROGRESS_MARK_SECONDS = 0.05
    settings.RELAY_PROGRESS_FIRST_MARK_SECONDS = 0  # marked at once, unless a test says
    yield name
    import redis

    client = redis.Redis.from_url(settings.REDIS_URL)
    keys = list(client.scan_iter(f"{name}:*"))
    if keys:
        client.delete(*keys)


def _record(request_id: str) -> UsageRecord:
    return UsageRecord(
        request_id=request_id,
        created_at=datetime.now(UTC),
        tenant_id=9001,
        api_key_id=9002,
        model="tollgate-chat",
        stream=True,
        status_code=200,
        total_latency_ms=0,
        prompt_messages=[{"role": "user", "content": "Count to ten, please"}],
        completion_text=[],
        spend_scopes=(FUNDS,),
    )


class World:
    """A Redis limit store, one admitted stream, and what Redis says of it."""

    def __init__(self, prefix: str) -> None:
        import redis.asyncio as aioredis

        self.prefix = prefix
        self.client = aioredis.Redis.from_url(settings.REDIS_URL)
        self.store = RedisLimitStore(self.client, prefix)
        self.scopes = [Scope("key:9002", Limits(concurrency=4))]
        self.reservation = Reservation((FUNDS,), WORST)
        self.request_id = "req_" + uuid.uuid4().hex

    async def admit(self) -> Any:
        await self.store.seed((FUNDS,), [1_000_000], [0], 0)
        admission = await self.store.acquire(self.scopes, self.request_id, 10, 60, self.reservation)
        assert admission.allowed
        return admission

    async def money(self) -> tuple[int, int]:
        """What the funds scope holds and whether this request has a hold there."""
        _, _, held, holds, _ = money_keys(self.prefix, FUNDS)
        return int(await self.client.get(held) or 0), int(
            await self.client.hget(holds, self.request_id) or 0
        )

    async def in_flight(self) -> int:
        return int(await self.client.zcard(f"{self.prefix}:rl:key:9002:conc"))

    async def queued(self) -> list[bytes]:
        return list(await self.client.lrange(f"{self.prefix}:usage:queue", 0, -1))


def _stream(world: World, admission: Any, record: UsageRecord, owner: str = "") -> orphans.Progress:
    return orphans.Progress(
        world.store, record, world.scopes, admission.bucket, world.reservation, owner
    )


def _counting_marks(world: World) -> Callable[[], int]:
    """From now on, count the scripts the store runs for others: the progress marks."""
    calls = [0]
    run_script = world.store.run_script

    async def counted(*args: Any) -> Any:
        calls[0] += 1
        return await run_script(*args)

    world.store.run_script = counted  # type: ignore[method-assign]
    return lambda: calls[0]


def test_a_stream_whose_owner_is_lost_is_settled_once_from_its_mark(prefix: str) -> None:
    async def scenario() -> tuple[Any, ...]:
        world = World(prefix)
        admission = await world.admit()
        record = _record(world.request_id)
        # An owner of its own: this process's sweeper thread never speaks for it.
        lost = f"lost-{uuid.uuid4().hex[:8]}"
        progress = _stream(world, admission, record, lost)
        progress.delivered()
        record.keep_text(["One, two, ", "three, four"])
        progress.delivered()
        await asyncio.sleep(0.2)  # past the mark interval: the trailing mark is written
        record.keep_text([", five"])
        progress.delivered()
        await progress.close()  # the last mark has landed
        # The owner is now lost: its marks said it was alive, nothing says so any more.
        assert await world.client.zscore(orphans.alive_key(prefix), lost)
        await world.client.zrem(orphans.alive_key(prefix), lost)
        swept = await asyncio.to_thread(orphans.sweeper.settle_owner, lost)
        after_sweep = (await world.money(), await world.in_flight(), await world.queued())
        # The owner was only stalled: its own settlement now finds the tombstone.
        settled = await world.store.release(
            world.scopes,
            world.request_id,
            admission,
            20,
            world.reservation,
            1234,
            record.to_json(),
            progress.open_keys(),
        )
        after_finish = (await world.money(), await world.queued())
        await world.client.aclose()
        return swept, after_sweep, settled, after_finish

    swept, (money, in_flight, queue), settled, (money_after, queue_after) = asyncio.run(scenario())
    assert swept == 1
    assert money == (WORST, WORST)  # held, without expiry, until the event is written
    assert in_flight == 0  # the concurrency slot is free
    (item,) = queue
    cut = UsageRecord.from_queued(item)
    assert cut.completion_text == ["One, two, three, four, five"]
    assert (cut.completed, cut.error_code, cut.status_code) == (False, "relay_worker_lost", 200)
    assert cut.prompt_messages == [{"role": "user", "content": "Count to ten, please"}]
    assert cut.spend_scopes == (FUNDS,)
    usage, estimated = cut.counts()
    assert estimated and usage.completion_tokens > 0 and usage.prompt_tokens > 0
    assert settled is False
    assert money_after == (WORST, WORST) and queue_after == queue  # nothing a second time


def test_web_searches_counted_after_the_first_mark_are_billed_by_the_sweeper(
    prefix: str,
) -> None:
    """The provider's searches come before its usage: a stream whose owner is lost after
    them is billed for them, its entry's opening time kept as it was."""

    async def scenario() -> tuple[Any, ...]:
        world = World(prefix)
        admission = await world.admit()
        record = _record(world.request_id)
        lost = f"lost-{uuid.uuid4().hex[:8]}"
        progress = _stream(world, admission, record, lost)
        record.keep_text(["Searching"])
        progress.delivered()
        await asyncio.sleep(0.2)  # past the mark interval: the first mark is written
        opened = await world.client.zscore(orphans.owned_key(prefix, lost), world.request_id)
        record.web_search_calls = 2  # two search blocks went out
        record.keep_text([", found it"])
        progress.delivered()
        await progress.close()
        reopened = await world.client.zscore(orphans.owned_key(prefix, lost), world.request_id)
        await world.client.zrem(orphans.alive_key(prefix), lost)
        swept = await asyncio.to_thread(orphans.sweeper.settle_owner, lost)
        queued = await world.queued()
        await world.client.aclose()
        return opened, reopened, swept, queued

    opened, reopened, swept, queue = asyncio.run(scenario())
    assert opened is not None and reopened == opened
    assert swept == 1
    (item,) = queue
    cut = UsageRecord.from_queued(item)
    assert cut.completion_text == ["Searching, found it"]
    assert cut.web_search_calls == 2
    assert cut.counts()[0].web_search_calls == 2


def test_a_stream_that_settles_itself_leaves_nothing_to_sweep(prefix: str) -> None:
    async def scenario() -> tuple[Any, ...]:
        world = World(prefix)
        admission = await world.admit()
        record = _record(world.request_id)
        lost = f"lost-{uuid.uuid4().hex[:8]}"
        progress = _stream(world, admission, record, lost)
        progress.delivered()
        record.keep_text(["Hello"])
        record.usage = Usage(prompt_tokens=7, completion_tokens=1)
        progress.delivered()
        await progress.close()
        entry = await world.client.hgetall(orphans.entry_key(prefix, world.request_id))
        settled = await world.store.release(
            world.scopes,
            world.request_id,
            admission,
            8,
            world.reservation,
            1234,
            record.to_json(),
            progress.open_keys(),
        )
        await world.client.zrem(orphans.alive_key(prefix), lost)
        swept = await asyncio.to_thread(orphans.sweeper.settle_owner, lost)
        leftovers = await world.client.keys(f"{prefix}:open:*")
        state = (await world.money(), await world.queued(), leftovers)
        await world.client.aclose()
        return entry, settled, swept, state

    entry, settled, swept, (money, queue, leftovers) = asyncio.run(scenario())
    assert entry[b"owner"].decode().startswith("lost-") and b"record" in entry
    assert settled is True and swept == 0
    assert money == (1234, 1234)  # the real cost, until the writer confirms the event
    assert len(queue) == 1 and UsageRecord.from_queued(queue[0]).completed
    assert leftovers == []


def test_a_live_owners_quiet_stream_is_left_alone(prefix: str) -> None:
    """A stream waiting on a slow upstream writes no marks, yet is not taken for cut."""

    async def scenario() -> tuple[int, list[bytes]]:
        world = World(prefix)
        admission = await world.admit()
        record = _record(world.request_id)
        progress = _stream(world, admission, record)
        progress.delivered()
        await progress.close()
        swept = await asyncio.to_thread(orphans.sweeper.run_once)  # says it is alive first
        queue = await world.queued()
        await world.client.aclose()
        return swept, queue

    swept, queue = asyncio.run(scenario())
    assert swept == 0 and queue == []


def test_marks_are_rate_limited_per_stream(prefix: str, settings: Any) -> None:
    """A long stream writes one mark per interval, not one per chunk."""
    settings.RELAY_PROGRESS_MARK_SECONDS = 0.2

    async def scenario() -> tuple[int, bytes, bytes]:
        world = World(prefix)
        admission = await world.admit()
        record = _record(world.request_id)
        progress = _stream(world, admission, record)
        marks = _counting_marks(world)
        loop = asyncio.get_running_loop()
        started = loop.time()
        progress.delivered()
        while loop.time() - started < 1.0:  # 200 chunks over one second
            record.keep_text(["tok "])
            progress.delivered()
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.3)  # the trailing mark catches up with the last chunk
        await progress.close()
        text = await world.client.get(orphans.text_key(prefix, world.request_id))
        await world.client.aclose()
        return marks(), text, "".join(record.completion_text or []).encode()

    calls, text, delivered = asyncio.run(scenario())
    assert 4 <= calls <= 8, calls  # about 1 s / 0.2 s, plus the first and the trailing one
    assert text == delivered and len(delivered) > 4 * 20


def test_a_stream_that_ends_before_its_first_mark_writes_no_entry(
    prefix: str, settings: Any
) -> None:
    """Within RELAY_PROGRESS_FIRST_MARK_SECONDS a stream costs Redis no mark: it settles
    with its admission's figures and no open entry is ever written."""
    settings.RELAY_PROGRESS_FIRST_MARK_SECONDS = 30

    async def scenario() -> tuple[Any, ...]:
        world = World(prefix)
        admission = await world.admit()
        record = _record(world.request_id)
        progress = _stream(world, admission, record)
        marks = _counting_marks(world)
        for piece in ("One, ", "two"):
            record.keep_text([piece])
            progress.delivered()
            await asyncio.sleep(0.05)
        await progress.close()
        settled = await world.store.release(
            world.scopes,
            world.request_id,
            admission,
            8,
            world.reservation,
            1234,
            record.to_json(),
            progress.open_keys() if progress.attempted else None,
        )
        leftovers = await world.client.keys(f"{prefix}:open:*")
        state = (await world.money(), await world.in_flight(), await world.queued())
        await world.client.aclose()
        return marks(), progress.attempted, settled, leftovers, state

    calls, attempted, settled, leftovers, (money, in_flight, queue) = asyncio.run(scenario())
    assert calls == 0 and attempted is False
    assert settled is True and leftovers == []
    assert money == (1234, 1234) and in_flight == 0
    (item,) = queue
    assert "".join(UsageRecord.from_queued(item).completion_text or []) == "One, two"


def test_a_longer_stream_is_marked_once_its_first_mark_is_due(prefix: str, settings: Any) -> None:
    """The first mark waits RELAY_PROGRESS_FIRST_MARK_SECONDS, then holds all the text
    delivered so far."""
    settings.RELAY_PROGRESS_FIRST_MARK_SECONDS = 0.3
    settings.RELAY_PROGRESS_MARK_SECONDS = 5

    async def scenario() -> tuple[Any, ...]:
        world = World(prefix)
        admission = await world.admit()
        record = _record(world.request_id)
        progress = _stream(world, admission, record)
        entry = orphans.entry_key(prefix, world.request_id)
        loop = asyncio.get_running_loop()
        started = loop.time()
        record.keep_text(["One, "])
        progress.delivered()
        await asyncio.sleep(0.1)
        record.keep_text(["two"])
        progress.delivered()
        early = await world.client.exists(entry)
        while not await world.client.exists(entry) and loop.time() - started < 10:
            await asyncio.sleep(0.01)
        marked_after = loop.time() - started
        await progress.close()
        text = await world.client.get(orphans.text_key(prefix, world.request_id))
        await world.client.aclose()
        return early, marked_after, text, progress.attempted

    early, marked_after, text, attempted = asyncio.run(scenario())
    assert early == 0
    assert 0.3 <= marked_after < 10
    assert text == b"One, two" and attempted is True
