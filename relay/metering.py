"""Metering: turn what the upstream reported into counts, and write usage events.

With Redis, a finished request's usage record is queued in Redis in the same atomic step
that settles its limits and money (``relay.limits``), before the last byte of its
response is sent; a writer thread in every relay process claims batches from that queue,
writes them to the database and only then confirms them, so a process killed at any
point loses nothing it answered, and a database outage only lengthens the queue. An
event is written once however often its batch is retried (``request_id`` is unique).

Without Redis (the embedded mode) records go to an in-process queue and the same kind of
thread. Where the upstream reported no usage, the writer thread has the counts made with
the bundled tokenizer (in a child process, ``relay.tokens``) and the event is marked
estimated.
"""

from __future__ import annotations

import functools
import json
import logging
import queue
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, is_dataclass
from datetime import datetime
from typing import Any

import orjson
from django.conf import settings
from django.db import IntegrityError, close_old_connections
from django.utils import timezone

from billing.pricing import PricePair, Prices, cost_micros, event_cost_fields
from relay import tokens
from relay.limits import money_keys, usage_queue_key

logger = logging.getLogger(__name__)

# Events kept in memory while the database refuses writes; beyond this the oldest are
# dropped (and logged) rather than let a long outage exhaust the process's memory.
MAX_PENDING_EVENTS = 100_000
# Delivered text kept per request for local token counting (when the upstream reports no
# usage); longer answers are extrapolated from this much.
MAX_KEPT_TEXT_CHARS = 64 * 1024


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    # Part of prompt_tokens: what the provider wrote to its prompt cache.
    cache_write_tokens: int = 0

    @classmethod
    def from_canonical(cls, usage: Any) -> Usage | None:
        """From ``relay.translate.canonical.Usage`` (whole prompt, reasoning in output)."""
        if usage is None:
            return None
        return cls(
            prompt_tokens=usage.input_tokens,
            completion_tokens=usage.output_tokens,
            cached_tokens=usage.cached_tokens,
            reasoning_tokens=usage.reasoning_tokens,
            cache_write_tokens=usage.cache_write_tokens,
        )

    @classmethod
    def from_openai(cls, usage: Any) -> Usage | None:
        if not isinstance(usage, Mapping):
            return None
        prompt_details = usage.get("prompt_tokens_details") or {}
        completion_details = usage.get("completion_tokens_details") or {}
        return cls(
            prompt_tokens=_count(usage.get("prompt_tokens")),
            completion_tokens=_count(usage.get("completion_tokens")),
            cached_tokens=_count(_get(prompt_details, "cached_tokens")),
            reasoning_tokens=_count(_get(completion_details, "reasoning_tokens")),
        )


def _get(mapping: Any, name: str) -> Any:
    return mapping.get(name) if isinstance(mapping, Mapping) else None


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


@dataclass(slots=True)
class UsageRecord:
    request_id: str
    created_at: datetime
    tenant_id: int
    api_key_id: int
    model: str
    stream: bool
    status_code: int
    total_latency_ms: int
    surface: str = "chat"
    channel_id: int | None = None
    upstream_model: str = ""
    error_code: str = ""
    completed: bool = True
    upstream_latency_ms: int | None = None
    attempts: list[dict[str, Any]] = field(default_factory=list)
    usage: Usage | None = None
    # The prices in force when the request arrived, kept on the event with its cost.
    price: PricePair | None = None
    # Material for local counting when the upstream sent no usage: the request's messages
    # and tools, and the text delivered to the client.
    prompt_messages: Any = None
    prompt_tools: Any = None
    completion_text: list[str] | None = None
    # Characters of delivered text beyond MAX_KEPT_TEXT_CHARS: not kept, only counted.
    completion_kept_chars: int = 0
    completion_overflow_chars: int = 0
    # The money scopes the request was held against (``relay.spend``), released when its
    # event is written.
    spend_scopes: tuple[str, ...] = ()

    def keep_text(self, pieces: list[str]) -> None:
        """Keep delivered text for local counting, up to MAX_KEPT_TEXT_CHARS; beyond that
        only its length, so a long stream's memory stays flat."""
        texts = self.completion_text
        if texts is None:
            return
        for piece in pieces:
            if self.completion_kept_chars < MAX_KEPT_TEXT_CHARS:
                texts.append(piece)
                self.completion_kept_chars += len(piece)
            else:
                self.completion_overflow_chars += len(piece)

    def known_cost(self) -> int | None:
        """The retail cost, if it is known without counting tokens locally."""
        if self.price is None:
            return 0
        if self.usage is None:
            if self.status_code >= 400 and not self.completion_text:
                return 0
            return None
        usage = self.usage
        return cost_micros(
            self.price.retail,
            prompt_tokens=usage.prompt_tokens,
            cached_tokens=usage.cached_tokens,
            completion_tokens=usage.completion_tokens,
            reasoning_tokens=usage.reasoning_tokens,
        )

    def to_json(self) -> bytes:
        """The record for the Redis queue; the prompt only when it must be counted."""
        data = {name: getattr(self, name) for name in self.__slots__}  # type: ignore[attr-defined]
        if self.usage is not None or (self.status_code >= 400 and not self.completion_text):
            data["prompt_messages"] = data["prompt_tools"] = data["completion_text"] = None
        try:
            return orjson.dumps(data)
        except TypeError:  # text orjson refuses (lone surrogates): escape it instead
            return json.dumps(data, default=_plain, ensure_ascii=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> UsageRecord:
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            data = json.loads(raw)
        data["created_at"] = datetime.fromisoformat(data["created_at"])
        data["spend_scopes"] = tuple(data.get("spend_scopes") or ())
        if data.get("usage") is not None:
            data["usage"] = Usage(**data["usage"])
        if data.get("price") is not None:
            price = data["price"]
            data["price"] = PricePair(
                Prices(**price["retail"]), Prices(**price["wholesale"]), price["reseller_id"]
            )
        return cls(**data)

    def counts(self) -> tuple[Usage, bool]:
        """The token counts to bill, and whether they are estimated."""
        if self.usage is not None:
            return self.usage, False
        if self.status_code >= 400 and not self.completion_text:
            return Usage(), False  # nothing reached a model that we know of
        kept = "".join(self.completion_text or ())
        prompt, completion = tokens.counter.count(
            self.prompt_messages,
            self.prompt_tools,
            kept,
            idle_seconds=settings.RELAY_TOKEN_COUNTER_IDLE_SECONDS,
        )
        if self.completion_overflow_chars:
            # The text not kept is counted at the kept text's tokens per character.
            completion += -(
                -self.completion_overflow_chars * max(completion, 1) // max(len(kept), 4)
            )
        return Usage(prompt_tokens=prompt, completion_tokens=completion), True

    def to_event_fields(self) -> dict[str, Any]:
        usage, estimated = self.counts()
        return {
            "request_id": self.request_id,
            "created_at": self.created_at,
            "tenant_id": self.tenant_id,
            "api_key_id": self.api_key_id,
            "model": self.model,
            "surface": self.surface,
            "channel_id": self.channel_id,
            "upstream_model": self.upstream_model,
            "stream": self.stream,
            "status_code": self.status_code,
            "error_code": self.error_code,
            "completed": self.completed,
            "upstream_latency_ms": self.upstream_latency_ms,
            "total_latency_ms": self.total_latency_ms,
            "attempts": self.attempts,
            "estimated": estimated,
            **asdict(usage),
            **event_cost_fields(
                self.price,
                prompt_tokens=usage.prompt_tokens,
                cached_tokens=usage.cached_tokens,
                completion_tokens=usage.completion_tokens,
                reasoning_tokens=usage.reasoning_tokens,
            ),
        }


def write_events(records: list[UsageRecord]) -> list[tuple[UsageRecord, int]]:
    """Write the records' events (idempotent on ``request_id``); each with its retail cost.

    An event the database refuses (it points at a row that no longer exists) is logged and
    left out; every other is written. Raises when the database cannot be reached.
    """
    close_old_connections()
    rows = [record.to_event_fields() for record in records]
    written = [(r, row["cost_retail_micros"]) for r, row in zip(records, rows, strict=True)]
    try:
        _insert_events(rows)
    except IntegrityError:
        written = []
        for record, row in zip(records, rows, strict=True):
            try:
                _insert_events([row])
            except IntegrityError:
                logger.error("usage event %s refused by the database", row["request_id"])
            else:
                written.append((record, row["cost_retail_micros"]))
    return written


@functools.cache
def _event_table() -> tuple[str, tuple[Any, ...], frozenset[str]]:
    """The usage event table, its columns' fields, and those whose values need adapting
    to the database (dates, JSON); the rest are plain numbers, strings and booleans."""
    from billing.models import UsageEvent

    fields = tuple(f for f in UsageEvent._meta.concrete_fields if not f.primary_key)
    adapted = frozenset(
        f.attname for f in fields if f.get_internal_type() in ("DateTimeField", "JSONField")
    )
    return UsageEvent._meta.db_table, fields, adapted


def _insert_events(rows: list[dict[str, Any]]) -> None:
    """Insert usage event rows in one transaction, skipping request ids already written.

    This is the relay's busiest write. Measured per row (``bench/README.md``): Django's
    ``bulk_create`` spent ~105 us building and preparing model instances and quoting
    every value client-side; a prepared INSERT run by psycopg's ``executemany`` over a
    server-binding cursor, which adapts the values in C, spends ~35-50 us. SQLite runs
    the same statement through Django's cursor.
    """
    from django.db import connection, transaction

    table, fields, adapted = _event_table()
    quote = connection.ops.quote_name
    # Only quoted model metadata and placeholders go into the text; values are parameters.
    sql = (
        f"INSERT INTO {quote(table)} ({', '.join(quote(f.column) for f in fields)}) "  # noqa: S608
        f"VALUES ({', '.join(['%s'] * len(fields))}) ON CONFLICT (request_id) DO NOTHING"
    )
    defaults = {f.attname: f.get_default() for f in fields}
    defaults["recorded_at"] = timezone.now()
    postgres = connection.vendor == "postgresql"
    params = []
    for row in rows:
        values = []
        for f in fields:
            name = f.attname
            value = row.get(name, defaults[name])
            if name in adapted and (not postgres or f.get_internal_type() == "JSONField"):
                value = f.get_db_prep_save(value, connection)
            values.append(value)
        params.append(values)
    with transaction.atomic():
        if postgres:
            import psycopg

            # Django's own wrapper around the server-binding cursor: its error mapping,
            # execute wrappers and query logging still apply.
            raw = psycopg.Cursor(connection.connection)
            wrap = (
                connection.make_debug_cursor
                if connection.queries_logged
                else connection.make_cursor
            )
            with wrap(raw) as cursor:
                cursor.executemany(sql, params)
        else:
            with connection.cursor() as cursor:
                cursor.executemany(sql, params)


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    raise TypeError(type(value).__name__)


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
            interval = settings.RELAY_USAGE_FLUSH_SECONDS
            if not pending:
                pending.append(self._queue.get())  # sleep until there is something to write
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
            except Exception:
                logger.exception("writing %d usage events failed; will retry", len(pending))
                if len(pending) > MAX_PENDING_EVENTS:
                    dropped = len(pending) - MAX_PENDING_EVENTS
                    logger.error("dropping %d usage events after a long outage", dropped)
                    del pending[:dropped]
                    self._mark_written(dropped)
                time.sleep(min(interval * 4, 2.0))
                continue
            _release_local_holds(written)
            self._mark_written(len(pending))
            pending = []

    def _drain(self) -> None:
        usage = RedisUsageQueue.shared()
        failing_since = 0.0
        while True:
            try:
                # Straight on while there is a backlog; otherwise let the next batch
                # gather for a moment: a batch of one costs ten times as much per event
                # (bench/usage_write.py), and the records wait safely in Redis.
                if usage.drain_once() < settings.RELAY_USAGE_BATCH_SIZE:
                    time.sleep(settings.RELAY_USAGE_FLUSH_SECONDS / 5)
            except Exception as exc:
                # Once with the traceback, then a line every 30 s until it works again.
                now = time.monotonic()
                if not failing_since:
                    logger.exception("writing queued usage events failed; will retry")
                    failing_since = now
                elif now - failing_since >= 30:
                    logger.error("writing queued usage events still fails: %r", exc)
                    failing_since = now
                time.sleep(1.0)
            else:
                if failing_since:
                    logger.warning("writing queued usage events works again")
                    failing_since = 0.0

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

# KEYS: batch, leases, then per event per money scope: written, held, holds, expiries.
# ARGV: per event: request id, retail cost, its number of money scopes.
# Confirms a written batch once: moves each event's hold into ``written``, drops the batch.
ACK_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local k = 2
local a = 1
while a <= #ARGV do
  local request_id, cost, scopes = ARGV[a], tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
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
    redis.call('INCRBY', written, cost)
    redis.call('EXPIRE', written, 3024000)
  end
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], KEYS[1])
return 1
"""


class RedisUsageQueue:
    """The shared queue of finished requests' usage records (see the module docstring)."""

    _shared: RedisUsageQueue | None = None
    _shared_lock = threading.Lock()

    def __init__(self, redis: Any, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix
        self.queue_key = usage_queue_key(prefix)
        self.leases_key = f"{prefix}:usage:leases"
        self._claim = redis.register_script(CLAIM_LUA)
        self._ack = redis.register_script(ACK_LUA)

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
        claimed = self._claim(
            keys=[self.queue_key, self.leases_key],
            args=[
                int(time.time() * 1000),
                int(settings.RELAY_USAGE_LEASE_SECONDS * 1000),
                settings.RELAY_USAGE_BATCH_SIZE,
                f"{self._prefix}:usage:batch:{uuid.uuid4().hex}",
            ],
        )
        if not claimed:
            return 0
        batch, raw = claimed[0], claimed[1:]
        records = []
        for item in raw:
            try:
                records.append(UsageRecord.from_json(item))
            except (ValueError, TypeError, KeyError):
                logger.error("dropping an unreadable usage record: %r", item[:200])
        written = write_events(records)
        keys: list[Any] = [batch, self.leases_key]
        args: list[Any] = []
        for record, cost in written:
            args += [record.request_id, cost, len(record.spend_scopes)]
            for name in record.spend_scopes:
                keys += money_keys(self._prefix, name)[1:]
        # Refused events: their holds lapse like an abandoned request's.
        self._ack(keys=keys, args=args)
        return len(raw)


usage_writer = UsageWriter()
