"""Streams cut by a dying relay process are still billed, once (issue 11, finding 7).

A stream's usage event is queued when it ends (``relay.limits``' finish script). A relay
process killed mid-stream never gets there: the tokens it delivered would be charged to
nobody, and its limit slots and money holds would linger until they expire. So, with
Redis, every stream that has begun keeps an *open entry* in Redis:

- written by the stream's first *progress mark*, ``RELAY_PROGRESS_FIRST_MARK_SECONDS``
  (0.1 s) after its first bytes reached the client: the usage record as it stands
  (prompt, key, prices, money scopes), the keys its settlement touches, and the process
  that owns it. A stream that ends sooner never writes one: its settlement is its only
  call to Redis beside its admission. Each mark is a Redis call whose write wakes Redis,
  which on a VM costs the relay tens of microseconds; a stream of a few milliseconds
  paid for one it never needed. The price: a stream cut by a dying process within its
  first tenth of a second is not billed, like a non-streaming request in flight then
  (the client has had a tenth of a second of text at most; its holds lapse);
- brought up to date by later marks, at most once per ``RELAY_PROGRESS_MARK_SECONDS``
  and only while text is being delivered (the text delivered since the last mark is
  written at its offset, so a retried mark never counts text twice). A mark is one
  script call, sent in the same pipeline as the other scripts of its event-loop turn
  (``relay.batching``), in the background: the stream never waits for it;
- removed by the stream's own settlement, in the same atomic script that settles its
  limits and money and queues its usage event.

Each relay process announces it is alive (a score in a sorted set, refreshed every few
seconds by a thread, and by every mark). A *sweeper* thread in every relay process looks,
every ``RELAY_ORPHAN_AFTER_SECONDS / 3``, for open entries whose owner has not been heard
of for ``RELAY_ORPHAN_AFTER_SECONDS`` (or that outlived any request), and settles each in
one atomic script: it frees the concurrency slot, keeps the money held (the worst case)
until the event is written, queues a usage record marked cut (``completed`` false, error
code ``relay_worker_lost``; counted locally from the delivered text, so estimated, unless
the upstream's usage had arrived) and leaves a tombstone. Once that event is written, the
usage drainer corrects what the admission counted in advance (the tokens reserved, per
minute and per day, and the plan windows' reserved tokens or worst case) to what was
billed, as the stream's own settlement would have (``relay.limits.cut_correction``).
Should the owner turn out to be alive after all (stalled, not dead), its own settlement
finds the tombstone and does nothing: one event and one settlement per request, whoever
gets there first.

Why relay threads rather than a Celery beat task: the entries and the liveness are in the
relay's Redis, the delay should be seconds (the cut request's worst case stays held
meanwhile, and its key's concurrency slot taken), beat runs at minute granularity and
may not run at all where only relays are deployed, and any surviving or restarted relay
process can do it with one small script call per owner every few seconds.

Without Redis (the embedded mode: one process) there is nobody to take over, and nothing
is marked.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
import uuid
from typing import Any

import orjson
from django.conf import settings
from redis.exceptions import RedisError

from relay.limits import (
    RedisLimitStore,
    Reservation,
    Scope,
    cut_correction,
    limit_keys,
    money_keys,
    usage_queue_key,
)
from relay.metering import UsageRecord, usage_writer
from relay.metering.records import queued_counts
from relay.orphan_scripts import MARK_LUA, SWEEP_LUA

logger = logging.getLogger(__name__)

# What the event of a stream settled by a sweeper says (``UsageEvent.error_code``).
CUT_ERROR_CODE = "relay_worker_lost"
# Entries and tombstones outlive any request by this much (then Redis drops them).
_MARGIN_SECONDS = 3600
# Entries one sweep call settles for one owner; the sweeper repeats while there are more.
_SWEEP_BATCH = 100


def entry_key(prefix: str, request_id: str) -> str:
    return f"{prefix}:open:{request_id}"


def text_key(prefix: str, request_id: str) -> str:
    return f"{prefix}:open:{request_id}:text"


def open_keys(prefix: str, request_id: str, owner: str) -> list[str]:
    """What a stream's own settlement removes with it (``relay.limits.FINISH_LUA``)."""
    return [entry_key(prefix, request_id), text_key(prefix, request_id), owned_key(prefix, owner)]


def owned_key(prefix: str, owner: str) -> str:
    """A sorted set of the owner's open requests, scored by when they were opened."""
    return f"{prefix}:open:by:{owner}"


def owners_key(prefix: str) -> str:
    return f"{prefix}:open:owners"


def alive_key(prefix: str) -> str:
    """Relay processes, scored by the time (ms) until which they are known to be alive."""
    return f"{prefix}:relay:alive"


_process: tuple[int, str] | None = None


def process_id() -> str:
    """This process's name as an owner of open entries (a new one after a fork)."""
    global _process
    pid = os.getpid()
    if _process is None or _process[0] != pid:
        _process = (pid, f"{uuid.uuid4().hex[:12]}-{pid}")
    return _process[1]


def _ttl() -> int:
    return int(settings.RELAY_TOTAL_TIMEOUT) + _MARGIN_SECONDS


def _alive_until_ms(now: float) -> int:
    return int((now + settings.RELAY_ORPHAN_AFTER_SECONDS) * 1000)


class Progress:
    """One stream's progress mark: written in the background, at most once per interval,
    and always within an interval of the last text delivered."""

    def __init__(
        self,
        store: RedisLimitStore,
        record: UsageRecord,
        scopes: list[Scope],
        bucket: int,
        reservation: Reservation | None,
        owner: str = "",
        prompt: tuple[Any, Any] = (None, None),
        reserved_tokens: int = 0,
    ) -> None:
        self.owner = owner or process_id()
        self._prompt = prompt  # messages and tools, to count locally if cut
        self._store = store
        self._record = record
        self.prefix = self._prefix = store.prefix
        self._settle_limits = limit_keys(scopes, self._prefix, bucket)
        self._settle_money: list[str] = []
        for name in reservation.scopes if reservation else ():
            self._settle_money += money_keys(self._prefix, name)[2:]
        self._worst = reservation.worst_micros if reservation else 0
        self._admitted = (bucket, reserved_tokens, reservation)
        self._registered = False
        # The web searches the registered record counted: a search since sends it again,
        # so that a sweeper bills the searches the provider ran before its usage came.
        self._searches = 0
        self._text_index = 0  # pieces of record.completion_text already marked
        self._text_bytes = 0  # their length in the entry's text
        # The first mark waits RELAY_PROGRESS_FIRST_MARK_SECONDS: a stream that ends
        # sooner settles without ever writing an entry (see the module's docstring).
        self._last = (
            time.monotonic()
            - settings.RELAY_PROGRESS_MARK_SECONDS
            + settings.RELAY_PROGRESS_FIRST_MARK_SECONDS
        )
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._written: asyncio.Future[None] | None = None  # the last mark's write
        self._closed = False
        self.attempted = False  # a mark was sent: the entry may exist
        sweeper.start()

    def open_keys(self) -> list[str]:
        return open_keys(self.prefix, self._record.request_id, self.owner)

    def delivered(self) -> None:
        """Text went out to the client: mark it now or when the interval allows."""
        if self._closed or self._timer is not None:
            return
        wait = self._last + settings.RELAY_PROGRESS_MARK_SECONDS - time.monotonic()
        if wait <= 0 and (self._task is None or self._task.done()):
            self._start_mark()
        else:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(wait if wait > 0 else 0.05, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._closed:
            return
        if self._task is not None and not self._task.done():
            self.delivered()  # the previous mark is still on its way: try again later
            return
        self._start_mark()

    def _start_mark(self) -> None:
        self._last = time.monotonic()
        self.attempted = True
        written = self._written = asyncio.get_running_loop().create_future()
        self._task = asyncio.ensure_future(self._mark(written))

    async def _mark(self, written: asyncio.Future[None]) -> None:
        try:
            await self._send_mark(written)
        finally:
            if not written.done():
                written.set_result(None)

    async def _send_mark(self, written: asyncio.Future[None]) -> None:
        record = self._record
        texts = record.completion_text or []
        piece = "".join(texts[self._text_index :]).encode("utf-8", errors="replace")
        end = len(texts)
        usage = record.usage
        searches = record.web_search_calls
        fresh = not self._registered or searches != self._searches
        now = time.time()
        args = [
            int(now * 1000),
            self.owner,
            record.request_id,
            self._static() if fresh else b"",
            orjson.dumps(self._settle_limits),
            orjson.dumps(self._settle_money),
            self._worst,
            self._text_bytes,
            piece,
            record.completion_overflow_chars,
            orjson.dumps(queued_counts(usage)) if usage is not None else b"",
            _ttl(),
            _alive_until_ms(now),
            self._correction() if fresh else b"",
        ]
        prefix = self._prefix
        keys = [
            entry_key(prefix, record.request_id),
            text_key(prefix, record.request_id),
            owned_key(prefix, self.owner),
            owners_key(prefix),
            alive_key(prefix),
        ]
        try:
            done = await self._store.run_script(MARK_LUA, keys, args, written)
        except (RedisError, OSError) as exc:
            logger.info("progress mark of %s failed: %s", record.request_id, exc)
            return
        except Exception:
            logger.exception("progress mark of %s failed", record.request_id)
            return
        if done:
            self._registered = True
            self._searches = searches
            self._text_index = end
            self._text_bytes += len(piece)

    def _correction(self) -> bytes:
        """What the usage drainer corrects should a sweeper bill this stream."""
        return cut_correction(self._settle_limits, *self._admitted, self._prefix)

    def _static(self) -> bytes:
        """The record as a sweeper should bill it: a cut stream, delivered text aside."""
        record = self._record
        saved = (
            record.completion_text,
            record.usage,
            record.completed,
            record.error_code,
            record.prompt_messages,
            record.prompt_tools,
        )
        record.completion_text, record.usage = None, None
        record.completed, record.error_code = False, CUT_ERROR_CODE
        if record.prompt_messages is None:
            record.prompt_messages, record.prompt_tools = self._prompt
        try:
            return record.to_json()
        finally:
            (
                record.completion_text,
                record.usage,
                record.completed,
                record.error_code,
                record.prompt_messages,
                record.prompt_tools,
            ) = saved

    async def close(self) -> None:
        """Before the stream settles: no more marks, and the last one is written to Redis
        (the settlement, sent after it on the same connection, runs after it there and
        is the entry's last word; its reply need not be waited for)."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None and not self._task.done() and self._written is not None:
            await asyncio.shield(self._written)


class Sweeper:
    """This process's liveness and its share of settling other processes' open entries."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._client: Any = None
        self._sweep: Any = None

    def start(self) -> None:
        if self._thread is not None or not settings.REDIS_URL:
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="tollgate-orphan-sweeper", daemon=True
                )
                self._thread.start()

    def _redis(self) -> Any:
        if self._client is None:
            import redis

            self._client = redis.Redis.from_url(
                settings.REDIS_URL,
                socket_connect_timeout=settings.RELAY_REDIS_TIMEOUT,
                socket_timeout=max(settings.RELAY_REDIS_TIMEOUT, 5.0),
            )
            self._sweep = self._client.register_script(SWEEP_LUA)
        return self._client

    def _run(self) -> None:
        failing = False
        while True:
            try:
                self.run_once()
            except (RedisError, OSError) as exc:
                if not failing:
                    logger.warning("orphan sweeper cannot reach Redis: %r", exc)
                failing = True
            else:
                if failing:
                    logger.warning("orphan sweeper reaches Redis again")
                failing = False
            time.sleep(max(settings.RELAY_ORPHAN_AFTER_SECONDS / 3, 0.1))

    def run_once(self) -> int:
        """Say this process is alive, then settle what dead owners left; how many."""
        client = self._redis()
        prefix = str(settings.CACHES["default"].get("KEY_PREFIX") or "tollgate")
        now = time.time()
        client.zadd(alive_key(prefix), {process_id(): _alive_until_ms(now)})
        # Owners gone for a day are forgotten (their entries were settled long since).
        client.zremrangebyscore(alive_key(prefix), "-inf", int((now - 86400) * 1000))
        queued = 0
        for raw in client.smembers(owners_key(prefix)):
            queued += self.settle_owner(raw.decode() if isinstance(raw, bytes) else str(raw))
        return queued

    def settle_owner(self, owner: str) -> int:
        """Settle ``owner``'s open entries: all if it is not alive, else those older than
        any request can be; how many usage records were queued."""
        self._redis()
        prefix = str(settings.CACHES["default"].get("KEY_PREFIX") or "tollgate")
        oldest = int((time.time() - settings.RELAY_TOTAL_TIMEOUT - 60) * 1000)
        keys = [
            owned_key(prefix, owner),
            owners_key(prefix),
            alive_key(prefix),
            usage_queue_key(prefix),
        ]
        queued = 0
        while True:
            count, seen, left = self._sweep(
                keys=keys,
                args=[int(time.time() * 1000), owner, oldest, _SWEEP_BATCH, prefix, _ttl()],
            )
            queued += int(count)
            if int(seen) < _SWEEP_BATCH or not int(left):
                break
        if queued:
            logger.warning("settled %d streams cut by lost relay process %s", queued, owner)
            usage_writer.start_draining()
        return queued


sweeper = Sweeper()
