"""One log line when a store (Redis, PostgreSQL) becomes unreachable, not one per request.

While a store is away, every request and background loop that uses it fails; logging
each failure with its traceback buried the logs (about 2,000 tracebacks in 30 s of a Redis
outage). Instead each store has one ``Outage`` per process: the first failure is logged
with its cause, a reminder follows every ``REMINDER_SECONDS`` while it lasts (with how
many failures it has counted), and one line says when it works again.
"""

from __future__ import annotations

import logging
import threading
import time

logger = logging.getLogger("relay.outage")

REMINDER_SECONDS = 60.0


class Outage:
    """Tracks whether one store is reachable from this process, and logs the changes."""

    def __init__(self, store: str, *, reminder_seconds: float = REMINDER_SECONDS) -> None:
        self.store = store
        self.reminder_seconds = reminder_seconds
        self.down_since: float | None = None
        self._failures = 0
        self._reminded_at = 0.0
        self._lock = threading.Lock()  # used from the event loop and writer threads

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def failed(self, what: str, exc: BaseException | None = None) -> None:
        """``what`` failed because the store is unreachable (``exc`` says how)."""
        cause = f"{type(exc).__name__}: {exc}"[:300] if exc is not None else "unreachable"
        now = time.monotonic()
        with self._lock:
            self._failures += 1
            if self.down_since is None:
                self.down_since = self._reminded_at = now
                failures = 0
            elif now - self._reminded_at >= self.reminder_seconds:
                self._reminded_at = now
                failures = self._failures
            else:
                return
        if failures == 0:
            logger.error("%s is unreachable (%s failed: %s)", self.store, what, cause)
        else:
            logger.error(
                "%s is still unreachable after %.0f s: %d failures so far (last: %s failed: %s)",
                self.store,
                now - (self.down_since or now),
                failures,
                what,
                cause,
            )

    def ok(self) -> None:
        """An operation on the store succeeded: log its return if it was away."""
        if self.down_since is None:  # the common case: no lock, nothing to do
            return
        with self._lock:
            since, self.down_since = self.down_since, None
            failures, self._failures = self._failures, 0
        if since is not None:
            logger.warning(
                "%s is reachable again after %.1f s (%d failures meanwhile)",
                self.store,
                time.monotonic() - since,
                failures,
            )


redis = Outage("Redis")
database = Outage("PostgreSQL")
