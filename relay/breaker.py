"""Circuit breakers: a channel that keeps failing is skipped until a probe succeeds.

Failures are counted per channel in a sliding window; at ``RELAY_BREAKER_FAILURES``
within ``RELAY_BREAKER_WINDOW`` seconds the breaker opens for ``RELAY_BREAKER_COOLDOWN``
seconds. After the cool-down one request, claimed atomically by whichever process gets
there first, is let through as a probe (half-open): success closes the breaker, failure
opens it again. The state lives in Redis, shared by all relay processes; each process
reads all of it once per poll (with its cache generation), so the hot path pays nothing
unless a breaker is half-open. Failures are reported off the client's path.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from django.conf import settings

# KEYS: failures zset, states hash. ARGV: channel, now_ms, window_ms, threshold, cooldown_ms,
# failure id. Returns the open-until time in ms when this failure opened the breaker, else 0.
RECORD_FAILURE_LUA = """
local channel, now = ARGV[1], tonumber(ARGV[2])
local window, threshold, cooldown = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
redis.call('ZADD', KEYS[1], now, ARGV[6])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
redis.call('PEXPIRE', KEYS[1], window)
if redis.call('HEXISTS', KEYS[2], channel) == 1 or redis.call('ZCARD', KEYS[1]) >= threshold then
  local until_ms = now + cooldown
  redis.call('HSET', KEYS[2], channel, until_ms)
  redis.call('DEL', KEYS[1])
  return until_ms
end
return 0
"""


class BreakerStore(Protocol):
    async def states(self) -> dict[int, float]: ...
    async def record_failure(self, channel_id: int, failure_id: str) -> float: ...
    async def claim_probe(self, channel_id: int) -> bool: ...
    async def close(self, channel_id: int) -> None: ...


class RedisBreakerStore:
    def __init__(self, redis: Any, prefix: str) -> None:
        self._redis = redis
        self._states_key = f"{prefix}:breaker:open"
        self._prefix = prefix
        self._record = redis.register_script(RECORD_FAILURE_LUA)

    async def states(self) -> dict[int, float]:
        raw = await self._redis.hgetall(self._states_key)
        return {int(k): int(v) / 1000 for k, v in raw.items()}

    async def record_failure(self, channel_id: int, failure_id: str) -> float:
        until_ms = await self._record(
            keys=[f"{self._prefix}:breaker:failures:{channel_id}", self._states_key],
            args=[
                channel_id,
                int(time.time() * 1000),
                int(settings.RELAY_BREAKER_WINDOW * 1000),
                settings.RELAY_BREAKER_FAILURES,
                int(settings.RELAY_BREAKER_COOLDOWN * 1000),
                failure_id,
            ],
        )
        return int(until_ms) / 1000

    async def claim_probe(self, channel_id: int) -> bool:
        claimed = await self._redis.set(
            f"{self._prefix}:breaker:probe:{channel_id}",
            b"1",
            nx=True,
            px=int(settings.RELAY_BREAKER_COOLDOWN * 1000),
        )
        return bool(claimed)

    async def close(self, channel_id: int) -> None:
        await self._redis.hdel(self._states_key, channel_id)
        await self._redis.delete(
            f"{self._prefix}:breaker:probe:{channel_id}",
            f"{self._prefix}:breaker:failures:{channel_id}",
        )


class LocalBreakerStore:
    def __init__(self) -> None:
        self._failures: dict[int, list[float]] = {}
        self._open: dict[int, float] = {}
        self._probes: dict[int, float] = {}

    async def states(self) -> dict[int, float]:
        return dict(self._open)

    async def record_failure(self, channel_id: int, failure_id: str) -> float:
        now = time.time()
        recent = [
            t for t in self._failures.get(channel_id, []) if t > now - settings.RELAY_BREAKER_WINDOW
        ]
        recent.append(now)
        if channel_id in self._open or len(recent) >= settings.RELAY_BREAKER_FAILURES:
            self._open[channel_id] = now + settings.RELAY_BREAKER_COOLDOWN
            self._failures.pop(channel_id, None)
            return self._open[channel_id]
        self._failures[channel_id] = recent
        return 0.0

    async def claim_probe(self, channel_id: int) -> bool:
        now = time.time()
        if self._probes.get(channel_id, 0) > now:
            return False
        self._probes[channel_id] = now + settings.RELAY_BREAKER_COOLDOWN
        return True

    async def close(self, channel_id: int) -> None:
        self._open.pop(channel_id, None)
        self._probes.pop(channel_id, None)
        self._failures.pop(channel_id, None)


class BreakerBoard:
    """This process's view of every breaker, refreshed by the relay's poller."""

    def __init__(self, store: BreakerStore) -> None:
        self.store = store
        self._open: dict[int, float] = {}  # channel id -> open until (epoch seconds)
        # Bumped by every change this process makes, so that a refresh whose read began
        # before it does not put back the state the change replaced.
        self._changes = 0

    async def refresh(self) -> None:
        seen = self._changes
        states = await self.store.states()
        if seen == self._changes:
            self._open = states
        # else: a breaker this process opened or closed meanwhile may be missing from what
        # was read; the next poll reads the store with that change in it.

    def is_open(self, channel_id: int) -> bool:
        return channel_id in self._open

    async def admit(self, channel_id: int) -> tuple[bool, bool]:
        """Whether to try this channel now, and whether the try is a half-open probe."""
        until = self._open.get(channel_id)
        if until is None:
            return True, False
        if until > time.time():
            return False, False
        claimed = await self.store.claim_probe(channel_id)
        return claimed, claimed

    async def failure(self, channel_id: int, failure_id: str) -> None:
        until = await self.store.record_failure(channel_id, failure_id)
        if until:
            self._changes += 1
            self._open[channel_id] = until

    async def success(self, channel_id: int) -> None:
        self._changes += 1
        self._open.pop(channel_id, None)
        await self.store.close(channel_id)
