"""Per-process handles on the state relay processes share: Redis, limits, breakers.

With ``REDIS_URL`` set, limits and breaker state live in Redis and hold across every
relay process; without it (embedded mode: one process) they live in this process.
Handles are kept per event loop, as connections belong to the loop that opened them.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

from relay.breaker import BreakerBoard, LocalBreakerStore, RedisBreakerStore
from relay.limits import LimitStore, LocalLimitStore, RedisLimitStore

# Per loop, held weakly: a loop's handles go with it. (Keyed by id(), a later loop given
# a dead one's id took over its handles, connections to a Redis of another setting.)
_state: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, tuple[Any, LimitStore, BreakerBoard]
] = weakref.WeakKeyDictionary()
# In-memory stores hold nothing bound to a loop, and must be one per process so that,
# say, a health check run from a task closes the breaker the relay consults.
_local: tuple[None, LimitStore, BreakerBoard] | None = None


def _prefix() -> str:
    return str(settings.CACHES["default"].get("KEY_PREFIX") or "tollgate")


def limit_prefix() -> str:
    """The prefix of the limit store's keys in Redis."""
    return _prefix()


# The last loop asked for and its handles: nearly every call comes from the one loop of a
# relay process, several per request.
_last: tuple[asyncio.AbstractEventLoop, tuple[Any, LimitStore, BreakerBoard]] | None = None


@receiver(setting_changed)
def _forget_last(**kwargs: object) -> None:
    global _last
    _last = None


def forget_local() -> None:
    """Start the in-memory stores (no Redis: the embedded mode) over: their limits and
    breakers live as long as the process, which in a test run outlasts each test."""
    global _local, _last
    _local = None
    _last = None


def _for_loop() -> tuple[Any, LimitStore, BreakerBoard]:
    global _last
    loop = asyncio.get_running_loop()
    last = _last
    if last is not None and last[0] is loop:
        return last[1]
    state = _state_for(loop)
    _last = (loop, state)
    return state


def _state_for(loop: asyncio.AbstractEventLoop) -> tuple[Any, LimitStore, BreakerBoard]:
    global _local
    if not settings.REDIS_URL:
        if _local is None:
            _local = (None, LocalLimitStore(), BreakerBoard(LocalBreakerStore()))
        return _local
    state = _state.get(loop)
    if state is None:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import ConstantBackoff

        client = aioredis.Redis.from_url(
            settings.REDIS_URL,
            socket_connect_timeout=settings.RELAY_REDIS_TIMEOUT,
            socket_timeout=settings.RELAY_REDIS_TIMEOUT,
            health_check_interval=30,
            # One quick retry (a connection dropped while idle), not redis-py's default of
            # ten with back-off: a request must learn within RELAY_REDIS_TIMEOUT that Redis
            # is away, and then fail closed or open as configured.
            retry=Retry(ConstantBackoff(0.01), 1),
        )
        state = (
            client,
            RedisLimitStore(client, _prefix()),
            BreakerBoard(RedisBreakerStore(client, _prefix())),
        )
        _state[loop] = state
    return state


def limit_store() -> LimitStore:
    return _for_loop()[1]


def redis_client() -> Any:
    """The running loop's Redis client (redis.asyncio); None in the embedded mode."""
    return _for_loop()[0]


_fallback: LocalLimitStore | None = None


def fallback_limit_store() -> LocalLimitStore:
    """This process's own limits, applied while Redis is unreachable and limits fail open."""
    global _fallback
    if _fallback is None:
        _fallback = LocalLimitStore()
    return _fallback


def local_limit_store() -> LocalLimitStore | None:
    """The in-memory store of the embedded mode, if this process has one."""
    store = _local[1] if _local is not None else None
    return store if isinstance(store, LocalLimitStore) else None


def breakers() -> BreakerBoard:
    return _for_loop()[2]


async def close() -> None:
    global _last
    _last = None
    state = _state.pop(asyncio.get_running_loop(), None)
    if state is not None and state[0] is not None:
        if isinstance(state[1], RedisLimitStore):
            await state[1].close()
        await state[0].aclose()
