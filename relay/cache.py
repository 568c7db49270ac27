"""Each relay process's memory of keys, prices and the routing table, and how it stays true.

Steady-state requests read only this memory: no SQL. It stays true three ways:

- a background poll of the shared change counter (``portal.invalidation``, in Redis)
  about once a second drops everything when a change was committed;
- a process whose poll failed (Redis away) may have missed a change: once the counter can
  be read again, it re-reads everything it holds at once;
- whatever else loses a notice (a process killed between its commit and its notice, a
  network split), everything held is re-read every ``RELAY_CACHE_REVALIDATE_SECONDS``: the
  routing table, the keys in batches of ``REVALIDATE_BATCH`` per query, each cached
  tenant's prices. Re-reading swaps new entries in; with the database away the old ones
  keep being served.

Unknown keys are remembered apart from known ones, so a flood of random keys cannot push
valid keys out, and an address trying many unknown keys is refused without a query.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DatabaseError

from billing.pricing import PriceSchedule
from portal import invalidation
from relay import errors, outage, shared, snapshot
from relay.snapshot import KeyInfo, Snapshot

logger = logging.getLogger(__name__)

# A key that failed to authenticate is remembered briefly, so a client hammering the relay
# with a wrong key costs one query per interval rather than one per request.
NEGATIVE_TTL_SECONDS = 10.0
MAX_CACHED_KEYS = 200_000
MAX_CACHED_MISSES = 20_000
MAX_CACHED_TENANTS = 50_000
MAX_TRACKED_ADDRESSES = 20_000
REVALIDATE_BATCH = 500
FAILURE_WINDOW_SECONDS = 60.0


def _database_unavailable() -> errors.RelayError:
    # Keys and routes already cached keep being served; only what is not yet is refused.
    return errors.RelayError(
        503,
        "The gateway cannot reach its database right now; retry shortly.",
        type="server_error",
        code="database_unavailable",
        headers=((b"retry-after", b"2"),),
    )


def _too_many_failures() -> errors.RelayError:
    return errors.RelayError(
        429,
        "Too many requests with incorrect API keys from your address; retry in a minute.",
        type="requests",
        code="too_many_authentication_failures",
        headers=((b"retry-after", b"60"),),
    )


class AuthFailures:
    """Unknown keys tried per client address in the current minute, for a bounded number
    of addresses (the oldest are forgotten first)."""

    def __init__(self) -> None:
        self._counts: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def exceeded(self, address: str, now: float) -> bool:
        entry = self._counts.get(address)
        if entry is None or now - entry[0] >= FAILURE_WINDOW_SECONDS:
            return False
        return entry[1] >= settings.RELAY_AUTH_FAILURES_PER_MINUTE

    def add(self, address: str, now: float) -> None:
        entry = self._counts.pop(address, None)
        if entry is None or now - entry[0] >= FAILURE_WINDOW_SECONDS:
            entry = (now, 0)
        self._counts[address] = (entry[0], entry[1] + 1)
        if len(self._counts) > MAX_TRACKED_ADDRESSES:
            self._counts.popitem(last=False)


class RelayCache:
    """Per-process cache of keys, prices and the routing snapshot."""

    def __init__(self) -> None:
        self._keys: OrderedDict[str, KeyInfo] = OrderedDict()
        self._misses: OrderedDict[str, float] = OrderedDict()  # digest: forget at
        self._failures = AuthFailures()
        self._prices: dict[int, PriceSchedule] = {}
        self._snapshot: Snapshot | None = None
        self._generation: int | None = None
        # Bumped on every invalidation; a load that started in an older epoch is not kept.
        self._epoch = 0
        self._poll_failed = False
        self._revalidate_due = time.monotonic() + settings.RELAY_CACHE_REVALIDATE_SECONDS
        self._poller: asyncio.Task[None] | None = None
        self._snapshot_lock: asyncio.Lock | None = None
        # Why the routing table could not be built last time (None: it could), for /readyz.
        self.routing_error: str | None = None

    async def key(self, digest: str, address: str | None = None) -> KeyInfo | None:
        self._ensure_poller()
        info = self._keys.get(digest)
        if info is not None:
            return info
        now = time.monotonic()
        forget_at = self._misses.get(digest)
        if forget_at is not None and now < forget_at:
            return None
        if address is not None and self._failures.exceeded(address, now):
            raise _too_many_failures()
        epoch = self._epoch
        try:
            info = await sync_to_async(snapshot.load_key)(digest)
        except DatabaseError as exc:
            outage.database.failed("loading an API key", exc)
            raise _database_unavailable() from None
        outage.database.ok()
        if info is None:
            self._misses.pop(digest, None)
            self._misses[digest] = now + NEGATIVE_TTL_SECONDS
            if len(self._misses) > MAX_CACHED_MISSES:
                self._misses.popitem(last=False)
            if address is not None:
                self._failures.add(address, now)
        elif epoch == self._epoch:
            self._keep_key(digest, info)
        return info

    def _keep_key(self, digest: str, info: KeyInfo) -> None:
        self._keys[digest] = info
        if len(self._keys) > MAX_CACHED_KEYS:
            self._keys.popitem(last=False)

    async def prices(self, tenant_id: int) -> PriceSchedule:
        """The tenant's price per public model id, now and as scheduled; a model missing
        here cannot be served."""
        table = self._prices.get(tenant_id)
        if table is not None:
            return table
        epoch = self._epoch
        try:
            table = await sync_to_async(snapshot.load_prices)(tenant_id)
        except DatabaseError as exc:
            outage.database.failed("loading prices", exc)
            raise _database_unavailable() from None
        if epoch == self._epoch:
            if len(self._prices) >= MAX_CACHED_TENANTS:
                self._prices.clear()
            self._prices[tenant_id] = table
        return table

    async def snapshot(self) -> Snapshot:
        self._ensure_poller()
        current = self._snapshot
        if current is not None:
            return current
        if self._snapshot_lock is None:
            self._snapshot_lock = asyncio.Lock()
        async with self._snapshot_lock:
            if self._snapshot is None:
                epoch = self._epoch
                loaded = await self._load_snapshot()
                if epoch != self._epoch:
                    return loaded  # stale before it landed: serve it once, keep nothing
                self._snapshot = loaded
            return self._snapshot

    async def _load_snapshot(self) -> Snapshot:
        try:
            loaded = await sync_to_async(snapshot.load_snapshot)()
        except DatabaseError as exc:
            outage.database.failed("loading the routing table", exc)
            raise _database_unavailable() from None
        except Exception as exc:
            # Each channel is built on its own, so this is a fault of the code or the data
            # as a whole; say so on /readyz rather than as a 500 on every request.
            logger.exception("building the routing table failed")
            self.routing_error = type(exc).__name__
            raise errors.RelayError(
                503,
                "The gateway cannot build its routing table right now.",
                type="server_error",
                code="routing_unavailable",
                headers=((b"retry-after", b"5"),),
            ) from None
        self.routing_error = None
        return loaded

    @property
    def generation(self) -> int:
        """The generation of keys, prices and limits this process has last seen."""
        return self._generation or 0

    @property
    def polled(self) -> bool:
        """Whether this process has read the change counter yet; until it has, it holds
        nothing that a change could have made stale."""
        return self._generation is not None

    def invalidate(self) -> None:
        self._epoch += 1
        self._keys.clear()
        self._misses.clear()
        self._prices.clear()
        self._snapshot = None

    async def revalidate(self) -> bool:
        """Re-read everything held and swap it in; False (keeping it all) if the database
        could not be read or a change invalidated the cache meanwhile."""
        epoch = self._epoch
        digests = list(self._keys)
        tenants = list(self._prices)
        try:
            fresh_snapshot = (
                await sync_to_async(snapshot.load_snapshot)() if self._snapshot else None
            )
            keys: dict[str, KeyInfo] = {}
            for start in range(0, len(digests), REVALIDATE_BATCH):
                batch = digests[start : start + REVALIDATE_BATCH]
                keys.update(await sync_to_async(snapshot.load_keys)(batch))
            prices = {t: await sync_to_async(snapshot.load_prices)(t) for t in tenants}
        except DatabaseError as exc:
            outage.database.failed("re-reading the relay's caches", exc)
            return False
        except Exception:
            logger.exception("re-reading the relay's caches failed")
            return False
        outage.database.ok()
        if epoch != self._epoch:
            return False  # everything was dropped meanwhile: nothing left to refresh
        if fresh_snapshot is not None:
            self._snapshot = fresh_snapshot
            self.routing_error = None
        for digest in digests:
            info = keys.get(digest)
            if info is None:
                self._keys.pop(digest, None)
            else:
                self._keys[digest] = info
        self._prices.update(prices)
        return True

    def _ensure_poller(self) -> None:
        if self._poller is None or self._poller.done():
            self._poller = asyncio.get_running_loop().create_task(self._poll())

    async def _poll(self) -> None:
        while True:
            await self._poll_once()
            await asyncio.sleep(settings.RELAY_CACHE_POLL_SECONDS)

    async def _poll_once(self) -> None:
        try:
            generation = await invalidation.acurrent_generation()
        except Exception as exc:  # the cache being down must not stop the relay
            outage.redis.failed("reading the relay's change counter", exc)
            self._poll_failed = True
        else:
            outage.redis.ok()
            if generation != self._generation:
                if self._generation is not None:
                    self.invalidate()
                self._generation = generation
            elif self._poll_failed:
                # A change committed while the counter could not be read may never have
                # bumped it: re-read what is held, now.
                self._revalidate_due = 0.0
            self._poll_failed = False
        try:
            await shared.breakers().refresh()
        except Exception as exc:
            outage.redis.failed("reading breaker states", exc)
        if time.monotonic() >= self._revalidate_due and await self.revalidate():
            self._revalidate_due = time.monotonic() + settings.RELAY_CACHE_REVALIDATE_SECONDS

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
