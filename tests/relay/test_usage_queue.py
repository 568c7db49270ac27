"""The Redis usage queue: a writer that dies after claiming a batch, or after writing it
but before confirming, loses nothing and counts nothing twice."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
import redis
import redis.asyncio
from django.conf import settings
from django.utils import timezone

from billing.models import UsageEvent
from billing.pricing import tenant_price_table
from relay import orphans
from relay.limits import (
    Limits,
    RedisLimitStore,
    Reservation,
    Scope,
    Window,
    limit_keys,
    money_keys,
)
from relay.metering import RedisUsageQueue, Usage, UsageRecord, write_events
from tests.relay.conftest import PUBLIC_MODEL, Gateway, fail_to_build

pytestmark = pytest.mark.services

SCOPE = "t0:funds"


def _records(gateway: Gateway, count: int) -> list[UsageRecord]:
    price = tenant_price_table(gateway.tenant.pk)[PUBLIC_MODEL]
    return [
        UsageRecord(
            request_id=f"queued-{uuid.uuid4().hex}",
            created_at=timezone.now(),
            tenant_id=gateway.tenant.pk,
            api_key_id=gateway.api_key.pk,
            model=PUBLIC_MODEL,
            stream=False,
            status_code=200,
            total_latency_ms=5,
            usage=Usage(prompt_tokens=100, completion_tokens=10),
            price=price,
            spend_scopes=(SCOPE,),
        )
        for _ in range(count)
    ]


def _finish(prefix: str, records: list[UsageRecord], worst: int) -> None:
    """What relay processes do as requests end: hold, settle and queue each one."""

    async def run() -> None:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(settings.REDIS_URL)
        store = RedisLimitStore(client, prefix)
        money = Reservation((SCOPE,), worst)
        await store.seed((SCOPE,), [10**9], [0], 0)
        for record in records:
            admission = await store.acquire([], record.request_id, 0, 60, money)
            assert admission.allowed
            await store.release(
                [], record.request_id, admission, None, money, record.known_cost(), record.to_json()
            )
        await client.aclose()

    asyncio.run(run())


@pytest.fixture
def queue(settings: Any) -> RedisUsageQueue:
    settings.RELAY_USAGE_LEASE_SECONDS = 0.3
    settings.RELAY_PROGRESS_FIRST_MARK_SECONDS = 0  # a cut stream (CutStream) is marked at once
    client = redis.Redis.from_url(settings.REDIS_URL)
    return RedisUsageQueue(client, f"{settings.CACHES['default']['KEY_PREFIX']}-{uuid.uuid4()}")


def _money(queue: RedisUsageQueue) -> tuple[int, int]:
    _, written, held, _, _ = money_keys(queue._prefix, SCOPE)
    return int(queue._redis.get(written) or 0), int(queue._redis.get(held) or 0)


def _claim(queue: RedisUsageQueue) -> list[bytes]:
    return queue._claim(
        keys=[queue.queue_key, queue.leases_key],
        args=[int(time.time() * 1000), 300, 100, f"{queue._prefix}:usage:batch:dead"],
    )


def test_a_batch_claimed_by_a_dead_writer_is_written_by_another(
    gateway: Gateway, queue: RedisUsageQueue
) -> None:
    records = _records(gateway, 5)
    _finish(queue._prefix, records, worst=10_000)
    cost = sum(r.known_cost() or 0 for r in records)
    assert _money(queue) == (0, cost)  # held at the real cost until written

    assert len(_claim(queue)) == 6  # batch key + 5 records; then the claimer "dies"
    assert queue.drain_once() == 0  # its lease still runs: nobody else takes the batch
    time.sleep(0.4)

    assert queue.drain_once() == 5
    assert UsageEvent.objects.filter(request_id__startswith="queued-").count() == 5
    assert _money(queue) == (cost, 0)
    assert queue.idle()


def test_a_batch_written_but_not_confirmed_is_not_counted_twice(
    gateway: Gateway, queue: RedisUsageQueue
) -> None:
    records = _records(gateway, 3)
    _finish(queue._prefix, records, worst=10_000)
    cost = sum(r.known_cost() or 0 for r in records)
    claimed = _claim(queue)
    write_events([UsageRecord.from_json(item) for item in claimed[1:]])  # then it dies
    time.sleep(0.4)

    assert queue.drain_once() == 3
    assert queue.drain_once() == 0
    assert UsageEvent.objects.filter(request_id__startswith="queued-").count() == 3
    assert _money(queue) == (cost, 0)


def test_an_event_the_database_refuses_releases_its_hold(
    gateway: Gateway, queue: RedisUsageQueue
) -> None:
    """A settled request's hold has no expiry: it waits for its event. An event the database
    refuses (its key deleted meanwhile) is left out, and must give its hold back, or the
    tenant could spend that much less for good."""
    records = _records(gateway, 2)
    records[0].api_key_id = 2**31 - 1  # no such key: the event's foreign key fails
    _finish(queue._prefix, records, worst=10_000)
    cost = [r.known_cost() or 0 for r in records]
    assert _money(queue) == (0, sum(cost))

    assert queue.drain_once() == 2
    assert not UsageEvent.objects.filter(request_id=records[0].request_id).exists()
    assert _money(queue) == (cost[1], 0)  # the refused one added nothing and holds nothing
    assert queue.idle()


def test_records_survive_the_round_trip(gateway: Gateway) -> None:
    record = _records(gateway, 1)[0]
    record.completion_text = ["hello"]
    copy = UsageRecord.from_json(record.to_json())
    assert copy.to_event_fields() == record.to_event_fields()
    assert copy.spend_scopes == (SCOPE,)


def test_a_record_that_cannot_be_written_is_set_aside_and_can_be_put_back(
    gateway: Gateway, queue: RedisUsageQueue, monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    # One record that fails to read or to build must not hold the batch, and so every
    # tenant's usage, back for ever; it is kept on a dead-letter list instead.
    from io import StringIO

    from django.core.management import call_command

    records = _records(gateway, 4)
    _finish(queue._prefix, records, worst=10_000)
    queue._redis.rpush(queue.queue_key, b'{"request_id": "unreadable"')  # cut short
    broken = records[2]
    fail_to_build(monkeypatch, broken.request_id)
    # The command finds the queue by the deployment's cache prefix: this test's own.
    settings.CACHES = {
        **settings.CACHES,
        "default": {**settings.CACHES["default"], "KEY_PREFIX": queue._prefix},
    }

    assert queue.drain_once() == 5
    assert queue.idle()  # confirmed, not handed back to be retried for ever
    ids = {r.request_id for r in records}
    stored = set(UsageEvent.objects.filter(request_id__in=ids).values_list("request_id", flat=True))
    assert stored == ids - {broken.request_id}
    written_cost = sum(r.known_cost() or 0 for r in records if r is not broken)
    assert _money(queue) == (written_cost, broken.known_cost())  # its hold stays until written
    out = StringIO()
    call_command("usage_dead_letters", stdout=out)
    assert "2 usage record(s) set aside." in out.getvalue()
    assert broken.request_id in out.getvalue() and "unreadable" in out.getvalue()

    monkeypatch.undo()  # the fault is fixed
    out = StringIO()
    call_command("usage_dead_letters", "--requeue", stdout=out)
    assert "2 usage record(s) put back on the queue." in out.getvalue()
    assert queue.drain_once() == 2

    assert UsageEvent.objects.filter(request_id__in=ids).count() == 4
    assert _money(queue) == (sum(r.known_cost() or 0 for r in records), 0)
    assert queue._redis.lrange(queue.dead_key, 0, -1) == [b'{"request_id": "unreadable"']


def test_a_written_total_beyond_64_bits_does_not_stick_the_batch(
    gateway: Gateway, queue: RedisUsageQueue
) -> None:
    # Absurd prices (a price is any 63-bit number) can make costs whose sum passes Redis's
    # integers: the confirmation then failed, and the batch was claimed, written and
    # refused again for ever. The total is held at 2^62 instead, refusing the scope's
    # requests until its next seed from the database.
    records = _records(gateway, 2)
    _finish(queue._prefix, records, worst=10_000)
    _, written, _, _, _ = money_keys(queue._prefix, SCOPE)
    queue._redis.set(written, 2**63 - 2)

    assert queue.drain_once() == 2

    assert queue.idle()
    assert UsageEvent.objects.filter(request_id__in=[r.request_id for r in records]).count() == 2
    # The first event's cost passed the maximum; the second's counts on from 2^62.
    assert _money(queue) == (2**62 + (records[1].known_cost() or 0), 0)


class CutStream:
    """A stream admitted against token limits and two plan windows (1,000 tokens reserved, a
    worst case of 50,000), marked, and cut: its owner is lost, and the sweeper has queued
    its cut record, which reports the upstream's usage (110 tokens)."""

    WINDOWS = (
        Window(name="s1:tokens", length="5h", kind="tokens", cap=10**9, seconds=18_000),
        Window(name="s1:spend", length="5h", kind="spend", cap=10**12, seconds=18_000),
    )

    def __init__(self, gateway: Gateway, queue: RedisUsageQueue) -> None:
        self.queue = queue
        self.record = _records(gateway, 1)[0]
        self.record.stream, self.record.completion_text = True, []
        self.record.usage = Usage(prompt_tokens=100, completion_tokens=10)  # before the cut
        self.scopes = [Scope(f"key:{gateway.api_key.pk}", Limits(tpm=10**5, daily_tokens=10**6))]
        self.money = Reservation((SCOPE,), 50_000, windows=self.WINDOWS)
        self.lost = f"lost-{uuid.uuid4().hex[:8]}"
        bucket = asyncio.run(self._stream_then_die())
        self.tokens_key, _, self.day_key = limit_keys(self.scopes, queue._prefix, bucket)
        self.window_keys = [f"{queue._prefix}:pw:{w.name}" for w in self.WINDOWS]
        self.slot = str(bucket // self.WINDOWS[0].bucket_seconds)
        assert self.counted() == (1_000, 1_000, 1_000, 50_000)
        orphans.sweeper.settle_owner(self.lost)  # unless this process's sweeper did already
        assert queue._redis.llen(queue.queue_key) == 1
        assert self.counted() == (1_000, 1_000, 1_000, 50_000)  # nothing corrected yet

    async def _stream_then_die(self) -> int:
        prefix = self.queue._prefix
        client = redis.asyncio.Redis.from_url(settings.REDIS_URL)
        store = RedisLimitStore(client, prefix)
        await store.seed((SCOPE,), [10**9], [0], 0)
        admission = await store.acquire(self.scopes, self.record.request_id, 1_000, 60, self.money)
        assert admission.allowed
        progress = orphans.Progress(
            store, self.record, self.scopes, admission.bucket, self.money, self.lost,
            reserved_tokens=admission.reserved_tokens,
        )  # fmt: skip
        progress.delivered()
        await progress.close()
        entry = orphans.entry_key(prefix, self.record.request_id)
        for _ in range(1000):  # the mark is written; wait until Redis has run it
            if await client.exists(entry):
                break
            await asyncio.sleep(0.01)
        await client.zrem(orphans.alive_key(prefix), self.lost)  # the owner is gone
        await store.close()
        await client.aclose()
        return admission.bucket

    def counted(self) -> tuple[int, int, int, int]:
        """Tokens this minute and today, and what the two plan windows' bucket holds."""
        r = self.queue._redis
        return (
            int(r.hget(self.tokens_key, "sum") or 0),
            int(r.get(self.day_key) or 0),
            int(r.hget(self.window_keys[0], self.slot) or 0),
            int(r.hget(self.window_keys[1], self.slot) or 0),
        )


@pytest.fixture
def cut_stream(
    gateway: Gateway, queue: RedisUsageQueue, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> CutStream:
    # The sweeper queues by the deployment's cache prefix: the queue's own here. The queue
    # is what the tests look at, so this process's writer must not drain it meanwhile.
    settings.CACHES = {
        **settings.CACHES,
        "default": {**settings.CACHES["default"], "KEY_PREFIX": queue._prefix},
    }
    monkeypatch.setattr(orphans.usage_writer, "start_draining", lambda: None)
    return CutStream(gateway, queue)


def test_a_cut_stream_billed_by_a_sweeper_corrects_what_its_admission_counted(
    cut_stream: CutStream, queue: RedisUsageQueue
) -> None:
    """A relay process dies mid-stream: its settlement, which would have corrected the
    tokens and plan windows its admission counted in advance (1,000 tokens reserved, the
    worst case for spend), never runs. Once the sweeper's cut record is written, the
    drainer corrects them to what was billed (110 tokens, its cost), as the settlement
    would have: else a plan window of a week would keep the reserve for a week."""
    assert queue.drain_once() == 1
    (event,) = UsageEvent.objects.filter(request_id=cut_stream.record.request_id)
    assert (event.prompt_tokens, event.completion_tokens, event.completed) == (100, 10, False)
    assert cut_stream.counted() == (110, 110, 110, event.cost_retail_micros)
    assert event.cost_retail_micros > 0


def test_a_cut_stream_is_corrected_once_when_two_writers_write_its_batch(
    cut_stream: CutStream, queue: RedisUsageQueue
) -> None:
    """A writer claims the batch and stalls past its lease; another claims it, writes and
    confirms it, and corrects the cut stream. When the first one goes on, its writes are
    no-ops and its confirmation finds the batch gone: it must not correct again (that would
    take 890 more tokens off what the key used)."""
    first = _claim(queue)  # the writer that stalls
    time.sleep(0.4)  # past its lease
    assert queue.drain_once() == 1
    cost = UsageEvent.objects.get(request_id=cut_stream.record.request_id).cost_retail_micros
    assert cut_stream.counted() == (110, 110, 110, cost)

    queue.write_claimed(first[0], first[1:], int(time.time() * 1000))  # it goes on
    assert UsageEvent.objects.filter(request_id=cut_stream.record.request_id).count() == 1
    assert cut_stream.counted() == (110, 110, 110, cost)
