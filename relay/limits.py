"""Rate and concurrency limits, exact across relay processes.

Each limited scope (a key, a tenant) keeps, in Redis:

- ``…:req`` and ``…:tok``: hashes of per-second counts; the last 60 seconds are summed, so
  the per-minute window slides second by second and never lets a burst through twice;
- ``…:conc``: a sorted set of the requests in flight, scored by when they expire, so a
  process that dies mid-request frees its slots when its requests would have timed out;
- ``…:day:<date>``: tokens used this UTC day.

One Lua script checks every limit of every scope and, only if all pass, counts the request
and reserves its estimated tokens: one round trip, atomic, no overshoot. A second script
releases the concurrency slot and settles the reservation with the real token count.
Without Redis (the embedded mode, a single process) the same rules run in memory.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

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


@dataclass(slots=True)
class Admission:
    allowed: bool
    bucket: int  # the second the reservation was counted in
    reserved_tokens: int
    # Which limit refused the request ("requests", "tokens", "concurrency", "daily_tokens").
    refused: str = ""
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
        self, scopes: list[Scope], request_id: str, tokens: int, hold_seconds: float
    ) -> Admission: ...

    async def release(
        self, scopes: list[Scope], request_id: str, admission: Admission, used_tokens: int | None
    ) -> None: ...


def _day(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).strftime("%Y%m%d")


def _seconds_to_midnight(now: float) -> int:
    moment = datetime.fromtimestamp(now, UTC)
    midnight = (moment + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return max(math.ceil((midnight - moment).total_seconds()), 1)


# KEYS: per scope 4 keys (req, tok, conc, day). ARGV: now_ms, request_id, tokens,
# hold_ms, then per scope 4 limits (0 = none). Returns {allowed, refused_index, refused_kind,
# retry_after_ms, then per scope: req_used, req_oldest, tok_used, tok_oldest}.
ACQUIRE_LUA = """
local now_ms = tonumber(ARGV[1])
local now = math.floor(now_ms / 1000)
local request_id = ARGV[2]
local tokens = tonumber(ARGV[3])
local hold_ms = tonumber(ARGV[4])
local scopes = #KEYS / 4
local stats = {}
local refused_kind = ''
local retry_ms = 0

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
  local rpm = tonumber(ARGV[5 + s*4])
  local tpm = tonumber(ARGV[6 + s*4])
  local conc = tonumber(ARGV[7 + s*4])
  local daily = tonumber(ARGV[8 + s*4])
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

if refused_kind ~= '' then
  return {0, refused_kind, retry_ms, unpack(stats)}
end

for s = 0, scopes - 1 do
  local req_key, tok_key, conc_key, day_key = KEYS[s*4+1], KEYS[s*4+2], KEYS[s*4+3], KEYS[s*4+4]
  local rpm = tonumber(ARGV[5 + s*4])
  local tpm = tonumber(ARGV[6 + s*4])
  local conc = tonumber(ARGV[7 + s*4])
  local daily = tonumber(ARGV[8 + s*4])
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
return {1, '', 0, unpack(stats)}
"""

# KEYS as for acquire. ARGV: request_id, bucket second, token delta.
RELEASE_LUA = """
local request_id = ARGV[1]
local bucket = ARGV[2]
local delta = tonumber(ARGV[3])
for s = 0, (#KEYS / 4) - 1 do
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
return 1
"""


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
    elif refused:
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


def _keys(scopes: list[Scope], prefix: str, now: float) -> list[str]:
    day = _day(now)
    keys: list[str] = []
    for scope in scopes:
        base = f"{prefix}:rl:{scope.name}"
        keys += [f"{base}:req", f"{base}:tok", f"{base}:conc", f"{base}:day:{day}"]
    return keys


class RedisLimitStore:
    def __init__(self, redis: Any, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix
        self._acquire = redis.register_script(ACQUIRE_LUA)
        self._release = redis.register_script(RELEASE_LUA)

    async def acquire(
        self, scopes: list[Scope], request_id: str, tokens: int, hold_seconds: float
    ) -> Admission:
        now = time.time()
        args: list[Any] = [int(now * 1000), request_id, tokens, int(hold_seconds * 1000)]
        for scope in scopes:
            args += scope.limits.as_args()
        result = await self._acquire(keys=_keys(scopes, self._prefix, now), args=args)
        refused = result[1].decode() if isinstance(result[1], bytes) else str(result[1])
        stats = [int(v) for v in result[3:]]
        return _admission(scopes, bool(result[0]), refused, int(result[2]), stats, now, tokens)

    async def release(
        self, scopes: list[Scope], request_id: str, admission: Admission, used_tokens: int | None
    ) -> None:
        delta = 0 if used_tokens is None else used_tokens - admission.reserved_tokens
        await self._release(
            keys=_keys(scopes, self._prefix, admission.bucket),
            args=[request_id, admission.bucket, delta],
        )


class LocalLimitStore:
    """The same rules in one process's memory (embedded mode: one process, one loop)."""

    def __init__(self) -> None:
        self._windows: dict[str, dict[int, int]] = {}
        self._in_flight: dict[str, dict[str, float]] = {}
        self._days: dict[str, int] = {}

    def _window(self, key: str, now: int) -> tuple[int, int]:
        counts = self._windows.setdefault(key, {})
        for second in [s for s in counts if s <= now - WINDOW_SECONDS]:
            del counts[second]
        return sum(counts.values()), min(counts, default=0)

    async def acquire(
        self, scopes: list[Scope], request_id: str, tokens: int, hold_seconds: float
    ) -> Admission:
        now = time.time()
        second = int(now)
        keys = _keys(scopes, "local", now)
        stats: list[int] = []
        refused, retry_ms = "", 0
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
        if not refused:
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
                    self._in_flight.setdefault(conc_key, {})[request_id] = now + hold_seconds
                if daily >= 0:
                    self._days[day_key] = self._days.get(day_key, 0) + tokens
        return _admission(scopes, not refused, refused, retry_ms, stats, now, tokens)

    async def release(
        self, scopes: list[Scope], request_id: str, admission: Admission, used_tokens: int | None
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
