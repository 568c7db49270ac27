"""What is left in a subscription's plan windows, read from the relay's own counters.

For the dashboard and the management API, outside the request path: one Redis round trip
(a pipeline) for all the windows, or, in the embedded mode, this process's memory. The
figures are the ones the relay admits requests by (``relay.limits.Window``).
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from relay import shared
from relay.limits import Window
from relay.limits.shapes import WINDOW_BUCKETS


@dataclass(frozen=True, slots=True)
class WindowLeft:
    window: Window
    used: int
    remaining: int
    reset_seconds: float  # until the oldest usage counted leaves the window (0: none)

    @property
    def used_percent(self) -> int:
        return min(100, self.used * 100 // self.window.cap) if self.window.cap else 100


@functools.cache
def _redis() -> Any:
    import redis

    return redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2, socket_timeout=2)


def windows_left(windows: list[Window], now: float | None = None) -> list[WindowLeft]:
    """Each window's usage and what is left of its cap, now."""
    now = time.time() if now is None else now
    if not windows:
        return []
    if settings.REDIS_URL:
        prefix = shared.limit_prefix()
        pipeline = _redis().pipeline(transaction=False)
        for window in windows:
            pipeline.hgetall(f"{prefix}:pw:{window.name}")
        raw = pipeline.execute()
        buckets = [{int(k): int(v) for k, v in fields.items()} for fields in raw]
    else:
        store = shared.local_limit_store()
        buckets = [store.window_buckets(w.name) if store else {} for w in windows]
    return [_left(window, counts, now) for window, counts in zip(windows, buckets, strict=True)]


def _left(window: Window, counts: dict[int, int], now: float) -> WindowLeft:
    size = window.bucket_seconds
    current = int(now) // size
    live = {
        bucket: amount for bucket, amount in counts.items() if bucket >= current - WINDOW_BUCKETS
    }
    used = sum(live.values())
    reset = (min(live) + WINDOW_BUCKETS + 1) * size - now if live and used else 0.0
    return WindowLeft(window, used, max(window.cap - used, 0), max(reset, 0.0))
