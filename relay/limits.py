"""Admission, exact across relay processes: rate limits and money reservations.

Each limited scope (a key, a tenant) keeps, in Redis:

- ``…:req`` and ``…:tok``: hashes of per-second counts; the last 60 seconds are summed, so
  the per-minute window slides second by second and never lets a burst through twice;
- ``…:conc``: a sorted set of the requests in flight, scored by when they expire, so a
  process that dies mid-request frees its slots when its requests would have timed out;
- ``…:day:<date>``: tokens used this UTC day.

Each money scope (a tenant's funds or monthly budget, a key's spend quota; see
``relay.spend``) keeps a *base* seeded from the database (what it could still spend
then, and the ``written`` total at that moment), the total cost of usage events written
since (``written``), and the *holds* of requests not yet written: the worst case while in
flight, the actual cost once finished. What may still be spent is ``base + base_written -
written - held``; a request is admitted only if that covers its worst case.

One Lua script checks every limit and every money scope and, only if all pass, counts the
request, reserves its estimated tokens and holds its worst-case cost: one round trip,
atomic, no overshoot, nothing spent twice. A second script, when the request ends,
releases the concurrency slot, settles tokens and money with the real figures, and queues
the usage event. Without Redis (the embedded mode, a single process) the same rules run
in memory.
"""

from __future__ import annotations

import functools
import math
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from relay.batching import ScriptBatcher

WINDOW_SECONDS = 60


@dataclass(frozen=True, slots=True)
class Limits:
    rpm: int | None = None
    tpm: int | None = None
    concurrency: int | None = None
    daily_tokens: int | None = None

    def any(self) -> bool:
        return any(v is not None for v in (self.rpm, self.tpm, self.concurrency, self.daily_tokens))

    def as_args(self) -> list[int]:
        """The limits for the scripts: -1 for none (0 is a real limit: nothing allowed)."""
        return [
            -1 if v is None else v
            for v in (self.rpm, self.tpm, self.concurrency, self.daily_tokens)
        ]


@dataclass(frozen=True, slots=True)
class Scope:
    name: str  # e.g. "key:12" or "tenant:3"
    limits: Limits


@dataclass(frozen=True, slots=True)
class Reservation:
    """Money to hold before forwarding: the request's worst-case retail cost, held against
    each limited money scope (names from ``relay.spend``)."""

    scopes: tuple[str, ...]
    worst_micros: int
    # A base seeded before this generation of the relay's caches, or before this moment
    # (epoch seconds), is seeded again first.
    min_generation: int = 0
    fresh_after: float = 0.0


@dataclass(slots=True)
class Admission:
    allowed: bool
    bucket: int  # the second the reservation was counted in
    reserved_tokens: int
    # Which limit refused the request ("requests", "tokens", "concurrency", "daily_tokens",
    # "funds": a money scope, named by ``refused_scope``, cannot cover the worst case), or
    # "seed": the money scopes in ``unseeded`` must be (re)seeded and the request retried.
    refused: str = ""
    refused_scope: str = ""
    unseeded: tuple[str, ...] = ()
    retry_after: int = 0
    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests: float = 0.0
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    reset_tokens: float = 0.0

    def headers(self) -> list[tuple[bytes, bytes]]:
        """OpenAI's x-ratelimit-* headers, for the tightest limit that applies."""
        headers: list[tuple[bytes, bytes]] = []
        if self.limit_requests is not None:
            headers += [
                (b"x-ratelimit-limit-requests", str(self.limit_requests).encode()),
                (b"x-ratelimit-remaining-requests", str(self.remaining_requests).encode()),
                (b"x-ratelimit-reset-requests", _duration(self.reset_requests)),
            ]
        if self.limit_tokens is not None:
            headers += [
                (b"x-ratelimit-limit-tokens", str(self.limit_tokens).encode()),
                (b"x-ratelimit-remaining-tokens", str(self.remaining_tokens).encode()),
                (b"x-ratelimit-reset-tokens", _duration(self.reset_tokens)),
            ]
        return headers


def _duration(seconds: float) -> bytes:
    """OpenAI's reset format: ``1s``, ``6m0s``, ``120ms``."""
    if seconds < 1:
        return f"{max(int(seconds * 1000), 0)}ms".encode()
    whole = math.ceil(seconds)
    minutes, rest = divmod(whole, 60)
    return (f"{minutes}m{rest}s" if minutes else f"{rest}s").encode()


class LimitStore(Protocol):
    async def acquire(
        self,
        scopes: list[Scope],
        request_id: str,
        tokens: int,
        hold_seconds: float,
        reservation: Reservation | None = None,
    ) -> Admission: ...

    async def release(
        self,
        scopes: list[Scope],
        request_id: str,
        admission: Admission,
        used_tokens: int | None,
        reservation: Reservation | None = None,
        cost_micros: int | None = None,
        event: bytes = b"",
    ) -> None: ...

    async def written_totals(self, names: tuple[str, ...]) -> list[int]: ...

    async def seed(
        self,
        names: tuple[str, ...],
        bases: list[int],
        written: list[int],
        generation: int,
        fresh_after: float | None = None,
    ) -> None:
        """Set the scopes' bases, unless a newer figure is already there.

        A base of a newer generation is always kept. One of the same generation is kept
        when it was seeded at or after ``fresh_after`` (another request seeded it while
        this one read the database, and its figure may be the more exact one); with
        ``fresh_after`` None, the same generation is replaced.
        """
        ...


def _day(now: float) -> str:
    return _day_of(int(now // 86400))


@functools.lru_cache(maxsize=4)
def _day_of(days_since_epoch: int) -> str:
    """The UTC date of a day number, formatted once per day rather than per request."""
    return datetime.fromtimestamp(days_since_epoch * 86400, UTC).strftime("%Y%m%d")


def _seconds_to_midnight(now: float) -> int:
    moment = datetime.fromtimestamp(now, UTC)
    midnight = (moment + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return max(math.ceil((midnight - moment).total_seconds()), 1)


# Money keys per reserved scope, in this order (see ``money_keys``).
MONEY_KEYS = 5

# KEYS: per limit scope 4 keys (req, tok, conc, day), then per money scope MONEY_KEYS keys.
# ARGV: now_ms, request_id, tokens, hold_ms, limit scope count, per limit scope 4 limits
# (-1 = none), then money scope count, worst-case cost, money hold ms, the generation a
# base must have reached, the oldest seeding time (ms) still fresh.
# Returns {allowed, refused_kind, retry_ms, detail, then per limit scope: req_used,
# req_oldest, tok_used, tok_oldest}. ``detail`` is, when refused for money, the index of
# the scope that cannot cover the worst case and, for 'seed', the indexes to (re)seed,
# comma-separated.
ACQUIRE_LUA = """
local now_ms = tonumber(ARGV[1])
local now = math.floor(now_ms / 1000)
local request_id = ARGV[2]
local tokens = tonumber(ARGV[3])
local hold_ms = tonumber(ARGV[4])
local scopes = tonumber(ARGV[5])
local m_at = 6 + scopes * 4
local money = tonumber(ARGV[m_at]) or 0
local worst = tonumber(ARGV[m_at + 1]) or 0
local money_hold_ms = tonumber(ARGV[m_at + 2]) or 0
local min_gen = tonumber(ARGV[m_at + 3]) or 0
local fresh_after = tonumber(ARGV[m_at + 4]) or 0
local m_keys = scopes * 4
local stats = {}
local refused_kind = ''
local retry_ms = 0
local detail = ''

local function window(key)
  local fields = redis.call('HGETALL', key)
  local used, oldest = 0, 0
  local stale = {}
  for i = 1, #fields, 2 do
    local second = tonumber(fields[i])
    if second <= now - 60 then
      stale[#stale + 1] = fields[i]
    else
      used = used + tonumber(fields[i + 1])
      if oldest == 0 or second < oldest then oldest = second end
    end
  end
  if #stale > 0 then redis.call('HDEL', key, unpack(stale)) end
  return used, oldest
end

for s = 0, scopes - 1 do
  local req_key, tok_key, conc_key, day_key = KEYS[s*4+1], KEYS[s*4+2], KEYS[s*4+3], KEYS[s*4+4]
  local rpm = tonumber(ARGV[6 + s*4])
  local tpm = tonumber(ARGV[7 + s*4])
  local conc = tonumber(ARGV[8 + s*4])
  local daily = tonumber(ARGV[9 + s*4])
  local req_used, req_oldest = window(req_key)
  local tok_used, tok_oldest = window(tok_key)
  stats[#stats + 1] = req_used
  stats[#stats + 1] = req_oldest
  stats[#stats + 1] = tok_used
  stats[#stats + 1] = tok_oldest
  if refused_kind == '' then
    if rpm >= 0 and req_used + 1 > rpm then
      refused_kind = 'requests'
      retry_ms = ((req_oldest + 60) * 1000) - now_ms
    elseif tpm >= 0 and tok_used + tokens > tpm then
      refused_kind = 'tokens'
      retry_ms = ((tok_oldest > 0 and tok_oldest or now) + 60) * 1000 - now_ms
    end
  end
  if refused_kind == '' and conc >= 0 then
    redis.call('ZREMRANGEBYSCORE', conc_key, '-inf', now_ms)
    if redis.call('ZCARD', conc_key) + 1 > conc then
      refused_kind = 'concurrency'
      retry_ms = 1000
    end
  end
  if refused_kind == '' and daily >= 0 then
    local day_used = tonumber(redis.call('GET', day_key) or '0')
    if day_used + tokens > daily then
      refused_kind = 'daily_tokens'
      retry_ms = -1
    end
  end
end

-- Money: what a scope may still spend is its seeded base, less what was written to the
-- database since the seed, less what requests hold (in flight, or finished but unwritten).
local seeds = {}
for m = 0, money - 1 do
  local k = m_keys + m * 5
  local base_key, written_key, held_key, holds_key, exp_key =
    KEYS[k+1], KEYS[k+2], KEYS[k+3], KEYS[k+4], KEYS[k+5]
  local base = redis.call('HMGET', base_key, 'base', 'written', 'gen', 'at')
  if not base[1] or tonumber(base[3]) < min_gen or tonumber(base[4]) < fresh_after then
    seeds[#seeds + 1] = m
  elseif refused_kind == '' then
    local expired = redis.call('ZRANGEBYSCORE', exp_key, '-inf', now_ms, 'LIMIT', 0, 200)
    if #expired > 0 then
      local amounts = redis.call('HMGET', holds_key, unpack(expired))
      local freed = 0
      for i = 1, #amounts do
        if amounts[i] then freed = freed + tonumber(amounts[i]) end
      end
      redis.call('HDEL', holds_key, unpack(expired))
      redis.call('ZREM', exp_key, unpack(expired))
      if freed ~= 0 then redis.call('DECRBY', held_key, freed) end
    end
    local available = tonumber(base[1]) + tonumber(base[2])
      - tonumber(redis.call('GET', written_key) or '0')
      - tonumber(redis.call('GET', held_key) or '0')
    if available < worst then
      refused_kind = 'funds'
      detail = tostring(m)
    end
  end
end

if refused_kind ~= '' then
  return {0, refused_kind, retry_ms, detail, unpack(stats)}
end
if #seeds > 0 then
  return {0, 'seed', 0, table.concat(seeds, ','), unpack(stats)}
end

for s = 0, scopes - 1 do
  local req_key, tok_key, conc_key, day_key = KEYS[s*4+1], KEYS[s*4+2], KEYS[s*4+3], KEYS[s*4+4]
  local rpm = tonumber(ARGV[6 + s*4])
  local tpm = tonumber(ARGV[7 + s*4])
  local conc = tonumber(ARGV[8 + s*4])
  local daily = tonumber(ARGV[9 + s*4])
  if rpm >= 0 then
    redis.call('HINCRBY', req_key, now, 1)
    redis.call('EXPIRE', req_key, 120)
  end
  if tpm >= 0 then
    redis.call('HINCRBY', tok_key, now, tokens)
    redis.call('EXPIRE', tok_key, 120)
  end
  if conc >= 0 then
    redis.call('ZADD', conc_key, now_ms + hold_ms, request_id)
    redis.call('PEXPIRE', conc_key, hold_ms + 60000)
  end
  if daily >= 0 then
    redis.call('INCRBY', day_key, tokens)
    redis.call('EXPIRE', day_key, 172800)
  end
end
for m = 0, money - 1 do
  local k = m_keys + m * 5
  redis.call('HSET', KEYS[k+4], request_id, worst)
  redis.call('ZADD', KEYS[k+5], now_ms + money_hold_ms, request_id)
  redis.call('INCRBY', KEYS[k+3], worst)
  for i = 1, 5 do redis.call('EXPIRE', KEYS[k+i], MONEY_TTL) end
end
return {1, '', 0, '', unpack(stats)}
""".replace("MONEY_TTL", "3024000")  # 35 days: longer than any period a scope counts

# KEYS: as for acquire, then the usage queue. ARGV: request_id, bucket second, token
# delta, limit scope count, money scope count, worst-case cost held, the actual cost (-1:
# not known yet, keep holding the worst case until the event is written), the usage event
# to queue ('' for none).
FINISH_LUA = """
local request_id = ARGV[1]
local bucket = ARGV[2]
local delta = tonumber(ARGV[3])
local scopes = tonumber(ARGV[4])
local money = tonumber(ARGV[5])
local worst = tonumber(ARGV[6])
local cost = tonumber(ARGV[7])
for s = 0, scopes - 1 do
  local tok_key, conc_key, day_key = KEYS[s*4+2], KEYS[s*4+3], KEYS[s*4+4]
  redis.call('ZREM', conc_key, request_id)
  if delta ~= 0 then
    if redis.call('HEXISTS', tok_key, bucket) == 1 then
      redis.call('HINCRBY', tok_key, bucket, delta)
    end
    if redis.call('EXISTS', day_key) == 1 then
      redis.call('INCRBY', day_key, delta)
    end
  end
end
local amount = cost >= 0 and cost or worst
for m = 0, money - 1 do
  local k = scopes * 4 + m * 5
  local held_key, holds_key, exp_key = KEYS[k+3], KEYS[k+4], KEYS[k+5]
  local previous = tonumber(redis.call('HGET', holds_key, request_id) or '0')
  redis.call('ZREM', exp_key, request_id)
  if amount > 0 then
    -- Held, now without expiry, until the usage event is in the database.
    redis.call('HSET', holds_key, request_id, amount)
  else
    redis.call('HDEL', holds_key, request_id)
  end
  if amount ~= previous then redis.call('INCRBY', held_key, amount - previous) end
end
if ARGV[8] ~= '' then
  redis.call('RPUSH', KEYS[#KEYS], ARGV[8])
end
return 1
"""

# KEYS: per scope: base, written. ARGV: generation, now_ms, the seeding time (ms) from
# which a base of the same generation is fresh and kept, then per scope: base, the written
# total read before the database was asked. A newer generation is never replaced.
SEED_LUA = """
local gen = tonumber(ARGV[1])
local fresh_after = tonumber(ARGV[3])
for s = 0, (#KEYS / 2) - 1 do
  local base_key = KEYS[s*2+1]
  local seen = redis.call('HMGET', base_key, 'gen', 'at')
  local current = tonumber(seen[1] or '-1')
  local at = tonumber(seen[2] or '-1')
  if current < gen or (current == gen and at < fresh_after) then
    redis.call('HSET', base_key, 'base', ARGV[4 + s*2], 'written', ARGV[5 + s*2],
      'gen', gen, 'at', ARGV[2])
    redis.call('EXPIRE', base_key, MONEY_TTL)
  end
end
return 1
""".replace("MONEY_TTL", "3024000")


def _admission(
    scopes: list[Scope],
    allowed: bool,
    refused: str,
    retry_ms: int,
    stats: list[int],
    now: float,
    tokens: int,
) -> Admission:
    """Build the answer, with headers for the tightest request and token limits."""
    admission = Admission(
        allowed=allowed, bucket=int(now), reserved_tokens=tokens if allowed else 0
    )
    admission.refused = refused
    if refused == "daily_tokens":
        admission.retry_after = _seconds_to_midnight(now)
    elif refused in ("requests", "tokens", "concurrency"):
        admission.retry_after = max(math.ceil(retry_ms / 1000), 1)
    for index, scope in enumerate(scopes):
        req_used, req_oldest, tok_used, tok_oldest = stats[index * 4 : index * 4 + 4]
        counted = 1 if allowed else 0
        if scope.limits.rpm is not None:
            remaining = max(scope.limits.rpm - req_used - counted, 0)
            if admission.remaining_requests is None or remaining < admission.remaining_requests:
                admission.limit_requests = scope.limits.rpm
                admission.remaining_requests = remaining
                oldest = req_oldest or int(now)
                admission.reset_requests = max(oldest + WINDOW_SECONDS - now, 0.0)
        if scope.limits.tpm is not None:
            remaining = max(scope.limits.tpm - tok_used - counted * tokens, 0)
            if admission.remaining_tokens is None or remaining < admission.remaining_tokens:
                admission.limit_tokens = scope.limits.tpm
                admission.remaining_tokens = remaining
                oldest = tok_oldest or int(now)
                admission.reset_tokens = max(oldest + WINDOW_SECONDS - now, 0.0)
    return admission


def _money_detail(admission: Admission, reservation: Reservation | None, detail: str) -> None:
    if reservation is None or not detail:
        return
    indexes = [int(i) for i in detail.split(",")]
    if admission.refused == "funds":
        admission.refused_scope = reservation.scopes[indexes[0]]
    elif admission.refused == "seed":
        admission.unseeded = tuple(reservation.scopes[i] for i in indexes)


def _keys(scopes: list[Scope], prefix: str, now: float) -> list[str]:
    if not scopes:
        return []
    day = _day(now)
    keys: list[str] = []
    for scope in scopes:
        base = f"{prefix}:rl:{scope.name}"
        keys += [f"{base}:req", f"{base}:tok", f"{base}:conc", f"{base}:day:{day}"]
    return keys


def money_keys(prefix: str, scope: str) -> list[str]:
    """A money scope's keys: seeded base, written total, held total, holds, hold expiries."""
    base = f"{prefix}:m:{scope}"
    return [f"{base}:base", f"{base}:written", f"{base}:held", f"{base}:holds", f"{base}:exp"]


def _money_args(reservation: Reservation | None, hold_seconds: float) -> list[Any]:
    if reservation is None:
        return [0, 0, 0, 0, 0]
    return [
        len(reservation.scopes),
        reservation.worst_micros,
        int(hold_seconds * 1000),
        reservation.min_generation,
        int(reservation.fresh_after * 1000),
    ]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisLimitStore:
    def __init__(self, redis: Any, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix
        self._acquire = redis.register_script(ACQUIRE_LUA)
        self._finish = redis.register_script(FINISH_LUA)
        self._seed = redis.register_script(SEED_LUA)
        # The limit checks and settlements of one loop turn share a round trip.
        self._batcher = ScriptBatcher(redis)

    @property
    def queue_key(self) -> str:
        return usage_queue_key(self._prefix)

    async def acquire(
        self,
        scopes: list[Scope],
        request_id: str,
        tokens: int,
        hold_seconds: float,
        reservation: Reservation | None = None,
    ) -> Admission:
        now = time.time()
        args: list[Any] = [int(now * 1000), request_id, tokens, int(hold_seconds * 1000)]
        args.append(len(scopes))
        for scope in scopes:
            args += scope.limits.as_args()
        args += _money_args(reservation, hold_seconds)
        keys = _keys(scopes, self._prefix, now)
        for name in reservation.scopes if reservation else ():
            keys += money_keys(self._prefix, name)
        result = await self._batcher.run(self._acquire, keys, args)
        stats = [int(v) for v in result[4:]]
        admission = _admission(
            scopes, bool(result[0]), _text(result[1]), int(result[2]), stats, now, tokens
        )
        _money_detail(admission, reservation, _text(result[3]))
        return admission

    async def release(
        self,
        scopes: list[Scope],
        request_id: str,
        admission: Admission,
        used_tokens: int | None,
        reservation: Reservation | None = None,
        cost_micros: int | None = None,
        event: bytes = b"",
    ) -> None:
        """Free the request's slots, settle its tokens and money, and queue its usage
        event: one atomic round trip."""
        delta = 0 if used_tokens is None else used_tokens - admission.reserved_tokens
        keys = _keys(scopes, self._prefix, admission.bucket)
        for name in reservation.scopes if reservation else ():
            keys += money_keys(self._prefix, name)
        keys.append(self.queue_key)
        await self._batcher.run(
            self._finish,
            keys,
            [
                request_id,
                admission.bucket,
                delta,
                len(scopes),
                len(reservation.scopes) if reservation else 0,
                reservation.worst_micros if reservation else 0,
                -1 if cost_micros is None else cost_micros,
                event,
            ],
        )

    async def written_totals(self, names: tuple[str, ...]) -> list[int]:
        values = await self._redis.mget([money_keys(self._prefix, n)[1] for n in names])
        return [int(v or 0) for v in values]

    async def seed(
        self,
        names: tuple[str, ...],
        bases: list[int],
        written: list[int],
        generation: int,
        fresh_after: float | None = None,
    ) -> None:
        now_ms = int(time.time() * 1000)
        keys: list[str] = []
        args: list[Any] = [generation, now_ms]
        args.append(now_ms + 1 if fresh_after is None else int(fresh_after * 1000))
        for name, base, total in zip(names, bases, written, strict=True):
            keys += money_keys(self._prefix, name)[:2]
            args += [base, total]
        await self._seed(keys=keys, args=args)


def usage_queue_key(prefix: str) -> str:
    return f"{prefix}:usage:queue"


@dataclass(slots=True)
class _Money:
    base: int = 0
    base_written: int = 0
    generation: int = -1
    seeded_at: float = -1.0
    written: int = 0
    held: int = 0
    holds: dict[str, int] = field(default_factory=dict)
    expiries: dict[str, float] = field(default_factory=dict)


class LocalLimitStore:
    """The same rules in one process's memory (embedded mode: one process).

    The relay's loop reserves and settles; the usage writer's thread records what it
    wrote (``written``), so the money part is guarded by a lock.
    """

    def __init__(self) -> None:
        self._windows: dict[str, dict[int, int]] = {}
        self._in_flight: dict[str, dict[str, float]] = {}
        self._days: dict[str, int] = {}
        self._money: dict[str, _Money] = {}
        self._lock = threading.Lock()

    def _window(self, key: str, now: int) -> tuple[int, int]:
        counts = self._windows.setdefault(key, {})
        for second in [s for s in counts if s <= now - WINDOW_SECONDS]:
            del counts[second]
        return sum(counts.values()), min(counts, default=0)

    def _check_money(self, reservation: Reservation, now: float) -> tuple[str, str]:
        """('', '') when every scope covers the worst case, else the refusal and detail."""
        unseeded = []
        for index, name in enumerate(reservation.scopes):
            money = self._money.get(name)
            if (
                money is None
                or money.generation < reservation.min_generation
                or money.seeded_at < reservation.fresh_after
            ):
                unseeded.append(str(index))
                continue
            for request_id in [r for r, until in money.expiries.items() if until <= now]:
                del money.expiries[request_id]
                money.held -= money.holds.pop(request_id, 0)
            available = money.base + money.base_written - money.written - money.held
            if available < reservation.worst_micros:
                return "funds", str(index)
        return ("seed", ",".join(unseeded)) if unseeded else ("", "")

    async def acquire(
        self,
        scopes: list[Scope],
        request_id: str,
        tokens: int,
        hold_seconds: float,
        reservation: Reservation | None = None,
    ) -> Admission:
        now = time.time()
        second = int(now)
        keys = _keys(scopes, "local", now)
        stats: list[int] = []
        refused, retry_ms, detail = "", 0, ""
        for index, scope in enumerate(scopes):
            req_key, tok_key, conc_key, day_key = keys[index * 4 : index * 4 + 4]
            rpm, tpm, conc, daily = scope.limits.as_args()
            req_used, req_oldest = self._window(req_key, second)
            tok_used, tok_oldest = self._window(tok_key, second)
            stats += [req_used, req_oldest, tok_used, tok_oldest]
            if refused:
                continue
            if rpm >= 0 and req_used + 1 > rpm:
                refused, retry_ms = "requests", int(((req_oldest + 60) - now) * 1000)
            elif tpm >= 0 and tok_used + tokens > tpm:
                refused, retry_ms = "tokens", int(((tok_oldest or second) + 60 - now) * 1000)
            elif conc >= 0:
                flights = self._in_flight.setdefault(conc_key, {})
                for rid in [r for r, until in flights.items() if until <= now]:
                    del flights[rid]
                if len(flights) + 1 > conc:
                    refused, retry_ms = "concurrency", 1000
            if not refused and daily >= 0 and self._days.get(day_key, 0) + tokens > daily:
                refused = "daily_tokens"
        with self._lock:
            if not refused and reservation is not None:
                refused, detail = self._check_money(reservation, now)
            if not refused:
                self._count(scopes, keys, request_id, tokens, second, now + hold_seconds)
                for name in reservation.scopes if reservation else ():
                    money = self._money[name]
                    money.holds[request_id] = reservation.worst_micros
                    money.expiries[request_id] = now + hold_seconds
                    money.held += reservation.worst_micros
        admission = _admission(scopes, not refused, refused, retry_ms, stats, now, tokens)
        _money_detail(admission, reservation, detail)
        return admission

    def _count(
        self,
        scopes: list[Scope],
        keys: list[str],
        request_id: str,
        tokens: int,
        second: int,
        until: float,
    ) -> None:
        for index, scope in enumerate(scopes):
            req_key, tok_key, conc_key, day_key = keys[index * 4 : index * 4 + 4]
            rpm, tpm, conc, daily = scope.limits.as_args()
            if rpm >= 0:
                window = self._windows.setdefault(req_key, {})
                window[second] = window.get(second, 0) + 1
            if tpm >= 0:
                window = self._windows.setdefault(tok_key, {})
                window[second] = window.get(second, 0) + tokens
            if conc >= 0:
                self._in_flight.setdefault(conc_key, {})[request_id] = until
            if daily >= 0:
                self._days[day_key] = self._days.get(day_key, 0) + tokens

    async def release(
        self,
        scopes: list[Scope],
        request_id: str,
        admission: Admission,
        used_tokens: int | None,
        reservation: Reservation | None = None,
        cost_micros: int | None = None,
        event: bytes = b"",
    ) -> None:
        delta = 0 if used_tokens is None else used_tokens - admission.reserved_tokens
        keys = _keys(scopes, "local", admission.bucket)
        for index in range(len(scopes)):
            _, tok_key, conc_key, day_key = keys[index * 4 : index * 4 + 4]
            self._in_flight.get(conc_key, {}).pop(request_id, None)
            if delta:
                window = self._windows.get(tok_key, {})
                if admission.bucket in window:
                    window[admission.bucket] += delta
                if day_key in self._days:
                    self._days[day_key] += delta
        if reservation is None:
            return
        amount = reservation.worst_micros if cost_micros is None else cost_micros
        with self._lock:
            for name in reservation.scopes:
                money = self._money.setdefault(name, _Money())
                previous = money.holds.pop(request_id, 0)
                money.expiries.pop(request_id, None)
                if amount > 0:
                    money.holds[request_id] = amount
                money.held += amount - previous

    def written(self, request_id: str, names: tuple[str, ...], cost_micros: int) -> None:
        """The usage writer wrote this request's event: move its hold into ``written``."""
        with self._lock:
            for name in names:
                money = self._money.setdefault(name, _Money())
                money.held -= money.holds.pop(request_id, 0)
                money.expiries.pop(request_id, None)
                money.written += cost_micros

    async def written_totals(self, names: tuple[str, ...]) -> list[int]:
        with self._lock:
            return [self._money[n].written if n in self._money else 0 for n in names]

    async def seed(
        self,
        names: tuple[str, ...],
        bases: list[int],
        written: list[int],
        generation: int,
        fresh_after: float | None = None,
    ) -> None:
        now = time.time()
        stale_before = math.inf if fresh_after is None else fresh_after
        with self._lock:
            for name, base, total in zip(names, bases, written, strict=True):
                money = self._money.setdefault(name, _Money())
                if money.generation < generation or (
                    money.generation == generation and money.seeded_at < stale_before
                ):
                    money.base, money.base_written = base, total
                    money.generation, money.seeded_at = generation, now
