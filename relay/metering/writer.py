"""The usage writer thread, and the Redis queue every relay process feeds."""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
import uuid
from typing import Any

import orjson
from django.conf import settings
from django.db import DatabaseError

from relay import outage
from relay.limits import cut_correction_call, money_keys, usage_queue_key
from relay.limits.scripts import CORRECT_LUA
from relay.metering.events import write_events
from relay.metering.records import MAX_PENDING_EVENTS, UsageRecord

logger = logging.getLogger("relay.metering")


class UsageWriter:
    """Writes usage events in batches from a daemon thread: records handed to it in this
    process (embedded mode, or when Redis cannot take them), and, with Redis, the shared
    queue every relay process feeds."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[UsageRecord] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._drainer: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._submitted = 0
        self._written = 0
        self._progress = threading.Condition()

    def submit(self, record: UsageRecord) -> None:
        if self._thread is None:
            self._start()
        with self._progress:
            self._submitted += 1
        self._queue.put(record)

    def flush(self, timeout: float = 10.0, *, shared_queue: bool = True) -> bool:
        """Wait until everything submitted so far (and, with Redis and ``shared_queue``,
        everything queued there by any process) is written; True if it was in time."""
        deadline = time.monotonic() + timeout
        with self._progress:
            target = self._submitted
            if not self._progress.wait_for(lambda: self._written >= target, timeout=timeout):
                return False
        if not settings.REDIS_URL or not shared_queue:
            return True
        self.start_draining()
        queue_ = RedisUsageQueue.shared()
        while time.monotonic() < deadline:
            if queue_.idle():
                return True
            time.sleep(0.01)
        return False

    def start_draining(self) -> None:
        """Start this process's thread that writes what the Redis queue holds."""
        if self._drainer is None and settings.REDIS_URL:
            with self._start_lock:
                if self._drainer is None:
                    self._drainer = threading.Thread(
                        target=self._drain, name="tollgate-usage-drainer", daemon=True
                    )
                    self._drainer.start()

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="tollgate-usage-writer", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        pending: list[UsageRecord] = []
        while True:
            if not pending:
                pending.append(self._queue.get())  # sleep until there is something to write
            # Read after the wait, which may have lasted through a change of the setting.
            interval = settings.RELAY_USAGE_FLUSH_SECONDS
            # Gather what arrives within one interval of the first event into one batch.
            deadline = time.monotonic() + interval
            while len(pending) < settings.RELAY_USAGE_BATCH_SIZE:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    pending.append(self._queue.get(timeout=remaining))
                except queue.Empty:
                    break
            try:
                written = write_events(pending)
            except Exception as exc:
                _store_failed(exc, f"writing {len(pending)} usage events")
                if len(pending) > MAX_PENDING_EVENTS:
                    dropped = len(pending) - MAX_PENDING_EVENTS
                    logger.error("dropping %d usage events after a long outage", dropped)
                    del pending[:dropped]
                    self._mark_written(dropped)
                time.sleep(min(interval * 4, 2.0))
                continue
            outage.database.ok()
            _release_local_holds(written)
            self._mark_written(len(pending))
            pending = []

    def _drain(self) -> None:
        usage = RedisUsageQueue.shared()
        while True:
            try:
                # Straight on while there is a backlog; otherwise let the next batch
                # gather for a moment: a batch of one costs ten times as much per event
                # (bench/usage_write.py), and the records wait safely in Redis.
                if usage.drain_once() < settings.RELAY_USAGE_BATCH_SIZE:
                    time.sleep(settings.RELAY_USAGE_FLUSH_SECONDS / 5)
            except Exception as exc:
                _store_failed(exc, "writing queued usage events")
                time.sleep(1.0)
            else:
                outage.redis.ok()
                outage.database.ok()

    def _mark_written(self, count: int) -> None:
        with self._progress:
            self._written += count
            self._progress.notify_all()


def _release_local_holds(written: list[tuple[UsageRecord, int]]) -> None:
    """Embedded mode: the events are in the database, so their money is no longer held
    but written (with Redis, the queue's confirmation does this)."""
    from relay import shared

    store = shared.local_limit_store()
    if store is None:
        return
    for record, cost in written:
        if record.spend_scopes:
            store.written(record.request_id, record.spend_scopes, cost)


# KEYS: queue, leases. ARGV: now_ms, lease_ms, count, key for a new batch.
# Claims the oldest batch whose lease ran out (its claimer died), else up to ``count``
# new records; returns {batch key, records...} or {} when there is nothing.
def _store_failed(exc: Exception, what: str) -> None:
    """Log a failed write once per outage of the store at fault (see ``relay.outage``)."""
    from redis.exceptions import RedisError

    if isinstance(exc, DatabaseError):
        outage.database.failed(what, exc)
    elif isinstance(exc, RedisError | OSError):
        outage.redis.failed(what, exc)
    else:
        logger.exception("%s failed; will retry", what)


# KEYS: leases. ARGV: batch key, the lease deadline its claim set.
# A batch whose write failed (the database is away) is handed back at once, so it is
# written as soon as the database returns rather than when its lease would have run out;
# not if its lease ran out meanwhile and another process claimed it.
RELEASE_LUA = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) == tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], 0, ARGV[1])
  return 1
end
return 0
"""

CLAIM_LUA = """
local now = tonumber(ARGV[1])
local stale = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 1)
if #stale > 0 then
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), stale[1])
  local items = redis.call('LRANGE', stale[1], 0, -1)
  table.insert(items, 1, stale[1])
  return items
end
local items = redis.call('LPOP', KEYS[1], tonumber(ARGV[3]))
if not items then return {} end
redis.call('RPUSH', ARGV[4], unpack(items))
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[4])
table.insert(items, 1, ARGV[4])
return items
"""

# KEYS: batch, leases, dead letters, then per event per money scope: written, held, holds,
# expiries. ARGV: the number of records set aside, those records, then per event: request
# id, retail cost (-1 for an event the database refused), its number of money scopes.
# Confirms a written batch once: moves each event's hold into ``written``, drops the hold
# of an event the database refused (its key or tenant gone: a settled request's hold has no
# expiry, so it would be held for good), keeps the records that could not be built on the
# dead-letter list (their holds stay until they are written), drops the batch. A written
# total that would pass Redis's 64-bit integers (only absurd prices can make one) is held
# at 2^62, which refuses the scope's requests until it is seeded again from the database:
# an error here would leave the batch to be claimed, written and refused again for ever.
ACK_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local dead = tonumber(ARGV[1])
if dead > 0 then
  redis.call('RPUSH', KEYS[3], unpack(ARGV, 2, dead + 1))
end
local k = 3
local a = dead + 2
while a <= #ARGV do
  local request_id, cost, scopes = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2])
  a = a + 3
  for s = 1, scopes do
    local written, held, holds, exp = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4]
    k = k + 4
    local previous = redis.call('HGET', holds, request_id)
    if previous then
      redis.call('HDEL', holds, request_id)
      redis.call('DECRBY', held, previous)
    end
    redis.call('ZREM', exp, request_id)
    if cost ~= '-1' then
      local added = redis.pcall('INCRBY', written, cost)
      if type(added) == 'table' and added.err then
        redis.call('SET', written, '4611686018427387904')
      end
      redis.call('EXPIRE', written, 3024000)
    end
  end
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], KEYS[1])
return 1
"""


def dead_letters_key(prefix: str) -> str:
    """The list of usage records set aside: not buildable, or not readable."""
    return f"{prefix}:usage:dead"


class RedisUsageQueue:
    """The shared queue of finished requests' usage records (see the module docstring)."""

    _shared: RedisUsageQueue | None = None
    _shared_lock = threading.Lock()

    def __init__(self, redis: Any, prefix: str) -> None:
        self.redis = self._redis = redis
        self._prefix = prefix
        self.queue_key = usage_queue_key(prefix)
        self.leases_key = f"{prefix}:usage:leases"
        # Records that could not be written, kept for ``manage.py usage_dead_letters``.
        self.dead_key = dead_letters_key(prefix)
        self._claim = redis.register_script(CLAIM_LUA)
        self._ack = redis.register_script(ACK_LUA)
        self._release = redis.register_script(RELEASE_LUA)
        self._correct = redis.register_script(CORRECT_LUA)

    @classmethod
    def shared(cls) -> RedisUsageQueue:
        with cls._shared_lock:
            prefix = str(settings.CACHES["default"].get("KEY_PREFIX") or "tollgate")
            if cls._shared is None or cls._shared._prefix != prefix:
                import redis

                client = redis.Redis.from_url(
                    settings.REDIS_URL,
                    socket_connect_timeout=settings.RELAY_REDIS_TIMEOUT,
                    socket_timeout=max(settings.RELAY_REDIS_TIMEOUT, 5.0),
                )
                cls._shared = cls(client, prefix)
            return cls._shared

    def idle(self) -> bool:
        """Nothing queued and no batch claimed but unconfirmed."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.llen(self.queue_key)
        pipe.zcard(self.leases_key)
        queued, leased = pipe.execute()
        return queued == 0 and leased == 0

    def drain_once(self) -> int:
        """Claim one batch, write it, confirm it; the number of records it held."""
        now_ms = int(time.time() * 1000)
        lease_ms = int(settings.RELAY_USAGE_LEASE_SECONDS * 1000)
        claimed = self._claim(
            keys=[self.queue_key, self.leases_key],
            args=[
                now_ms,
                lease_ms,
                settings.RELAY_USAGE_BATCH_SIZE,
                f"{self._prefix}:usage:batch:{uuid.uuid4().hex}",
            ],
        )
        if not claimed:
            return 0
        self.write_claimed(claimed[0], claimed[1:], now_ms + lease_ms)
        return len(claimed) - 1

    def write_claimed(self, batch: bytes, raw: list[bytes], lease_until_ms: int) -> None:
        """Write a claimed batch (``raw``: its records as queued), confirm it, and correct
        its cut streams' limits if this writer's confirmation is the one that lands."""
        records = []
        queued: dict[int, bytes] = {}
        dead: list[bytes] = []
        for item in raw:
            try:
                record = UsageRecord.from_queued(item)
            except Exception:
                logger.exception("an unreadable usage record set aside: %r", item[:200])
                dead.append(item)
            else:
                records.append(record)
                queued[id(record)] = item

        aside: set[int] = set()

        def set_aside(record: UsageRecord, exc: Exception) -> None:
            dead.append(queued[id(record)])
            aside.add(id(record))

        try:
            written = write_events(records, set_aside)
        except Exception:
            with contextlib.suppress(Exception):  # else the lease runs out on its own
                self._release(keys=[self.leases_key], args=[batch, lease_until_ms])
            raise
        keys: list[Any] = [batch, self.leases_key, self.dead_key]
        args: list[Any] = [len(dead), *dead]
        confirmed: list[tuple[UsageRecord, int]] = list(written)
        done = {id(record) for record, _ in written} | aside
        confirmed += [(r, -1) for r in records if id(r) not in done and r.spend_scopes]
        for record, cost in confirmed:
            args += [record.request_id, cost, len(record.spend_scopes)]
            for name in record.spend_scopes:
                keys += money_keys(self._prefix, name)[1:]
        if not self._ack(keys=keys, args=args):
            # Confirmed already, by a writer that claimed the batch when this one's lease
            # ran out: it corrected the cut streams too.
            return
        # Only after this writer's confirmation, so that each cut stream is corrected once.
        for record, cost in written:
            item = queued[id(record)]
            if not item.startswith(b'{"request_id"'):
                self._correct_cut(record, item, cost)

    def _correct_cut(self, record: UsageRecord, item: bytes, cost: int) -> None:
        """A stream cut by a lost relay process is billed now: correct what its admission
        counted in advance (``relay.orphans``), as its own settlement would have."""
        try:
            correction = orjson.loads(orjson.loads(item).get("fix") or "null")
            if not correction:
                return
            usage, _ = record.counts()  # as its event was written
            keys, args = cut_correction_call(
                correction, usage.prompt_tokens + usage.completion_tokens, cost
            )
            self._correct(keys=keys, args=args)
        except Exception:  # its event is written: the counts only stay high (safe side)
            logger.exception("correcting the limits of cut stream %s failed", record.request_id)


usage_writer = UsageWriter()
