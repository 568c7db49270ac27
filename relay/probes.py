"""Liveness and readiness probes for load balancers and orchestrators.

``/healthz`` answers as long as the process serves requests. ``/readyz`` also checks what
serving needs: the database, Redis (cache, limits, usage queue) when configured, the
Celery broker when it is not that same Redis, and that the routing table can be built
(naming the channels left out of it).
Both are served by the lean ASGI path: no session, middleware or template runs.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import orjson
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections, connection

from relay.errors import RelayError

if TYPE_CHECKING:
    from relay.cache import RelayCache

PROBE_TIMEOUT_SECONDS = 2.0


def _broker() -> None:
    """A Celery broker other than Redis (e.g. RabbitMQ): connect with Celery's own client.

    Imported here: the relay's workers load no Celery (~0.3 s, ~15 MB) for a probe that
    most deployments (broker = the Redis already checked) never make."""
    from portal.background import app

    with app.connection_for_write(url=settings.CELERY_BROKER_URL) as conn:
        conn.ensure_connection(max_retries=0, timeout=PROBE_TIMEOUT_SECONDS)


def _database() -> None:
    close_old_connections()
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


async def _redis(url: str | None = None) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(
        url or settings.REDIS_URL,
        socket_connect_timeout=PROBE_TIMEOUT_SECONDS,
        socket_timeout=PROBE_TIMEOUT_SECONDS,
    )
    try:
        await client.ping()
    finally:
        await client.aclose()


async def _check(name: str, check: Any) -> tuple[str, dict[str, Any]]:
    started = time.monotonic()
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_SECONDS):
            await check()
    except Exception as exc:  # any failure makes the process not ready; say which
        return name, {"ok": False, "error": type(exc).__name__}
    return name, {"ok": True, "latency_ms": int((time.monotonic() - started) * 1000)}


async def _routing(cache: RelayCache) -> dict[str, Any]:
    """The routing table builds (loaded once; later probes read it from memory)."""
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_SECONDS):
            table = await cache.snapshot()
    except TimeoutError:
        return {"ok": False, "error": "TimeoutError"}
    except RelayError as exc:
        return {"ok": False, "error": exc.code or "unavailable"}
    # A channel that cannot be built is left out (and flagged on its page); the others
    # serve, so the process is ready, and says which channels are missing.
    return {"ok": True, "models": len(table.models), "skipped_channels": table.skipped_channels}


async def readiness(cache: RelayCache | None = None) -> tuple[int, bytes]:
    checks = [_check("database", sync_to_async(_database))]
    if settings.REDIS_URL:
        checks.append(_check("redis", _redis))
    broker = settings.CELERY_BROKER_URL
    if broker and broker != settings.REDIS_URL and not broker.startswith("memory://"):
        if broker.startswith(("redis://", "rediss://")):
            checks.append(_check("broker", lambda: _redis(broker)))
        else:
            checks.append(_check("broker", sync_to_async(_broker)))
    results = dict(await asyncio.gather(*checks))
    if cache is not None:
        results["routing"] = await _routing(cache)
    ready = all(result["ok"] for result in results.values())
    body = {"status": "ready" if ready else "unavailable", "checks": results}
    return (200 if ready else 503), orjson.dumps(body)


LIVENESS_BODY = orjson.dumps({"status": "ok"})
