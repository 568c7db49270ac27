"""Admission, exact across relay processes: rate limits and money reservations.

Each limited scope (a key, a tenant) keeps, in Redis:

- ``…:requests`` and ``…:tokens``: hashes of per-second counts over the last 60 seconds,
  with their running sum and oldest second, so the per-minute window slides second by
  second and never lets a burst through twice, and admitting a request reads a few fields
  of it, not all sixty;
- ``…:conc``: a sorted set of the requests in flight, scored by when they expire, so a
  process that dies mid-request frees its slots when its requests would have timed out;
- ``…:day:<date>``: tokens used this UTC day.

Each plan window (``Window``: a subscription's cap on tokens or spend over 5 hours, a day
or a week) keeps a hash of usage per bucket (``…:pw:s<subscription>:w<window>``), summed
over the window by the same script that checks the limits: no extra round trip.

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

from relay.limits.local import LocalLimitStore
from relay.limits.redis_store import RedisLimitStore, usage_queue_key
from relay.limits.shapes import (
    WINDOW_SECONDS,
    Admission,
    Limits,
    LimitStore,
    Reservation,
    Room,
    Scope,
    Window,
    cut_correction,
    cut_correction_call,
    limit_keys,
    money_keys,
)

__all__ = [
    "WINDOW_SECONDS",
    "Admission",
    "LimitStore",
    "Limits",
    "LocalLimitStore",
    "RedisLimitStore",
    "Reservation",
    "Room",
    "Scope",
    "Window",
    "cut_correction",
    "cut_correction_call",
    "limit_keys",
    "money_keys",
    "usage_queue_key",
]
