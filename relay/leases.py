"""Leased admissions: a busy key's admission counts a few more requests at once, which its
next requests in this process take without a round trip to Redis.

Every request of a key with limits (or money to hold) is admitted in Redis
(``relay.intake.admit``): one script call, whose write wakes Redis. On the bench's 2-core
VM that round trip is most of what a limited key costs over a key without limits
(bench/README.md, issue 18). So, when a key is busy in this process (it was admitted
here more than once in the last second or so) and far from every limit, its admission
asks Redis to admit up to ``RELAY_LEASE_SIZE`` requests at once (``RedisLimitStore.acquire``
with ``lease``): the request's own id and a few fresh ones, each with the request's
tokens and money, all checked and counted in one atomic step, or none (then the request
is admitted on its own, ``relay.intake.admit``). The key's next requests take those
ids, in this process, for ``LEASE_SECONDS``:

- Nothing is admitted that Redis did not count. Each id is a request counted against
  every limit and money scope, as its own admission would have: its request and tokens
  per minute and per day, a concurrency slot, its worst-case cost held, its plan windows'
  amounts. A request takes an id only if its own estimate fits the id's (its tokens and
  worst case no more than the lease's, the same money scopes and plan windows); it then
  holds and settles the id's figures, exactly as an admission of its own would have.
- The per-minute windows count a lease's requests in its last second (the script's
  ``at``), so that each stays counted until a minute after it was really admitted, never
  less. Leases never span midnight (UTC), so that daily tokens count in the right day.
- Ids no request took within ``LEASE_SECONDS`` are given back (``RETURN_LUA``): uncounted
  as if never admitted, each once. Until then they count, so a key near a limit could be
  refused a moment early: a lease is taken only while the key's last admission left at
  least twice its size before any limit was half used (``relay.limits.Room``), so that
  a key approaching a limit is admitted request by request, as before; and a key whose
  room is under ``RELAY_LEASE_MIN_ROOM`` requests (a small prepaid balance, a low rate
  limit) never leases, so that a burst of its requests spread over processes is admitted
  exactly up to its budget, not refused early for ids waiting in another process.
- The rate-limit headers a request gets are those of the lease's admission, as if the
  ids after its own were not counted yet.
- Once half a lease's ids are taken, the next lease is counted (``_renew``): all fresh
  ids, as many as the key's admissions here in the last second (up to
  ``RELAY_LEASE_SIZE``), on the room the lease's own admission left, one renewal at a
  time per key. It takes over when the lease runs out or its second is over; ending a
  lease (the key changed) ends the one following it.

A process that dies holding a lease loses nothing: its ids' slots and holds expire, and
their counts leave the windows as any request's do. Keys without limits, the embedded
mode, the fail-open fallback and requests pre-admitted before their bodies never lease.
``RELAY_LEASE_SIZE`` 1 turns leases off.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from django.conf import settings
from redis.exceptions import RedisError

from relay import metrics
from relay.exchange import new_request_ids
from relay.limits import Admission, RedisLimitStore, Reservation, Room, Scope
from relay.limits.shapes import _day, shifted

logger = logging.getLogger(__name__)

# Ids of a lease that no request took within this are given back.
LEASE_SECONDS = 1.0
# Keys whose rate is remembered before the idle ones are dropped.
_SWEEP_AT = 10_000
_UNBOUNDED = 2**62


@dataclass(slots=True)
class Lease:
    store: RedisLimitStore
    scopes: list[Scope]
    tokens: int
    reservation: Reservation | None
    admission: Admission  # as counted with every id
    ids: list[str]  # not taken yet, in order
    until: float  # monotonic
    generation: int
    hold_seconds: float  # how long each id's money is held, as asked
    renew_at: int = 0  # a lease with no more ids than this left is renewed (``_renew``)
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)
    # The key's next lease, counted while this one still had ids: it takes over when this
    # one runs out or ends.
    following: Lease | None = field(default=None, repr=False)


def _fits(
    most: int, busy: int, tokens: int, reservation: Reservation | None, room: Room | None
) -> int:
    """How many ids a lease may count: at most ``most``, no more than the key's recent
    admissions here (``busy``) and half the ``room`` its last admission left; none when
    that room is under ``RELAY_LEASE_MIN_ROOM`` requests or the lease would span midnight
    (UTC)."""
    if most < 1 or busy < 1 or room is None:
        return 0
    worst = reservation.worst_micros if reservation is not None else 0
    fit = min(
        room.requests,
        room.tokens // tokens if tokens else _UNBOUNDED,
        room.micros // worst if worst else _UNBOUNDED,
    )
    # A small budget is not leased at all: ids counted ahead could refuse a burst of the
    # key's requests in another process while they wait here to be taken.
    if fit < int(settings.RELAY_LEASE_MIN_ROOM):
        return 0
    count = min(most, busy, fit // 2)
    now = time.time()
    if count < 1 or _day(now) != _day(now + LEASE_SECONDS + 1):
        return 0
    return count


def _covers(lease: Reservation | None, wanted: Reservation | None) -> bool:
    if lease is None or wanted is None:
        return lease is wanted
    return (
        wanted.worst_micros <= lease.worst_micros
        and wanted.scopes == lease.scopes
        and wanted.windows == lease.windows
    )


class Leases:
    """This process's leases, one at most per key and its renewal (one per relay app)."""

    def __init__(self) -> None:
        self._leases: dict[int, Lease] = {}
        # Per key: the second (monotonic) counted in, its admissions, the second before's.
        self._rates: dict[int, list[int]] = {}
        self._returning: set[asyncio.Task[None]] = set()
        # Keys whose admission with a lease is on its way to Redis: one at a time.
        self._asking: set[int] = set()

    def take(
        self,
        key_id: int,
        tokens: int,
        reservation: Reservation | None,
        generation: int,
        store: object,
    ) -> tuple[Admission, RedisLimitStore, str, Reservation | None] | None:
        """An admitted id of the key's lease for a request of ``tokens`` and
        ``reservation`` whose limits are in ``store``: its admission, store, request id
        and the reservation it holds (the lease's); None when there is none it fits."""
        lease = self._leases.get(key_id)
        if lease is not None and lease.until < time.monotonic():
            lease = self._retire(key_id, lease)
        if lease is None:
            return None
        if lease.generation != generation or lease.store is not store:
            # The key changed, or this request settles in another store.
            self._end(key_id, lease)
            return None
        if tokens > lease.tokens or not _covers(lease.reservation, reservation):
            return None
        busy = self._count(key_id)
        request_id = lease.ids.pop(0)
        metrics.observe_lease("taken")
        admission = shifted(
            lease.admission, -len(lease.ids), lease.tokens, lease.reservation, room=False
        )
        if not lease.ids:
            self._retire(key_id, lease)
        elif len(lease.ids) <= lease.renew_at and lease.following is None:
            self._renew(key_id, lease, busy)
        return admission, lease.store, request_id, lease.reservation

    def size(
        self,
        key_id: int,
        tokens: int,
        reservation: Reservation | None,
        generation: int,
        room: Room | None,
    ) -> list[str]:
        """The ids to lease beside an admission of the key about to be made: none unless
        the key is busy here, has no lease, and its last admission (``room``, of the same
        ``generation``) left room for twice as many."""
        busy = self._count(key_id)
        if key_id in self._leases or key_id in self._asking:
            return []
        # Besides the request's own id: one fewer than a lease's size.
        more = _fits(int(settings.RELAY_LEASE_SIZE) - 1, busy - 1, tokens, reservation, room)
        if more < 1:
            return []
        self._asking.add(key_id)
        return new_request_ids(more)

    def answered(self, key_id: int) -> None:
        """The admission that asked for the key's lease has returned (``add`` follows if
        it was allowed): another may ask."""
        self._asking.discard(key_id)

    def add(
        self,
        key_id: int,
        store: RedisLimitStore,
        scopes: list[Scope],
        tokens: int,
        reservation: Reservation | None,
        admission: Admission,
        ids: list[str],
        generation: int,
        hold_seconds: float,
    ) -> None:
        """An admission counted ``ids`` besides its own: the key's next requests take them,
        within ``LEASE_SECONDS`` and before the second they were counted in is over (a
        slow reply from Redis shortens the lease rather than letting a request be
        counted in a second before its own). Each id holds its money for
        ``hold_seconds``, as the lease's renewal will."""
        lease = self._start(
            key_id,
            Lease(
                store,
                scopes,
                tokens,
                reservation,
                admission,
                list(ids),
                0.0,
                generation,
                hold_seconds,
            ),
        )
        self._end(key_id, self._leases.get(key_id))
        if lease is not None:
            self._leases[key_id] = lease

    def _start(self, key_id: int, lease: Lease) -> Lease | None:
        """``lease``, its time set and a timer to end it; None if its time was over
        before it came (its ids are given back)."""
        left = min(LEASE_SECONDS, lease.admission.bucket + 1 - time.time() - 0.01)
        lease.until = time.monotonic() + left
        lease.renew_at = len(lease.ids) // 2
        metrics.observe_lease("leased", len(lease.ids))
        if left <= 0:
            self._end(key_id, lease)
            return None
        lease.timer = asyncio.get_running_loop().call_later(left, self._retire, key_id, lease)
        return lease

    @staticmethod
    def at() -> int:
        """The second a lease taken now counts its requests in: its last one."""
        return int(time.time() + LEASE_SECONDS) + 1

    def _count(self, key_id: int) -> int:
        """Count an admission of the key now; how many it had this second or the last."""
        second = int(time.monotonic())
        seen = self._rates.get(key_id)
        if seen is None or seen[0] < second - 1:
            if seen is None and len(self._rates) >= _SWEEP_AT:
                self._sweep(second)
            seen = self._rates[key_id] = [second, 0, 0]
        elif seen[0] == second - 1:
            seen[0], seen[1], seen[2] = second, 0, seen[1]
        seen[1] += 1
        return max(seen[1], seen[2])

    def _sweep(self, second: int) -> None:
        for key_id in [k for k, seen in self._rates.items() if seen[0] < second - 1]:
            del self._rates[key_id]

    def _end(self, key_id: int, lease: Lease | None) -> None:
        """The lease is over, and the lease following it: the ids no request took are
        given back."""
        while lease is not None:
            if self._leases.get(key_id) is lease:
                del self._leases[key_id]
            if lease.timer is not None:
                lease.timer.cancel()
                lease.timer = None
            if lease.ids:
                ids, lease.ids = lease.ids, []
                metrics.observe_lease("given_back", len(ids))
                task = asyncio.ensure_future(self._give_back(lease, ids))
                self._returning.add(task)
                task.add_done_callback(self._returning.discard)
            following, lease.following = lease.following, None
            lease = following

    def _retire(self, key_id: int, lease: Lease) -> Lease | None:
        """The lease ran out or its time is over: the lease following it, if its time is
        not, takes its place (returned)."""
        following, lease.following = lease.following, None
        self._end(key_id, lease)
        if following is None:
            return None
        if not following.ids or following.until < time.monotonic() or key_id in self._leases:
            self._end(key_id, following)
            return None
        self._leases[key_id] = following
        return following

    def _renew(self, key_id: int, lease: Lease, busy: int) -> None:
        """Count the key's next lease while this one still has ids, so that its requests
        keep finding one rather than going to Redis each while the next is asked for: at
        most one renewal at a time, on the room the lease's own admission left, and only
        for a key busy enough to use it."""
        if key_id in self._asking:
            return
        count = _fits(
            int(settings.RELAY_LEASE_SIZE),
            busy,
            lease.tokens,
            lease.reservation,
            lease.admission.room,
        )
        if count < 1:
            return
        self._asking.add(key_id)
        ids = new_request_ids(count)
        task = asyncio.ensure_future(self._renewal(key_id, lease, ids))
        self._returning.add(task)
        task.add_done_callback(self._returning.discard)

    async def _renewal(self, key_id: int, lease: Lease, ids: list[str]) -> None:
        try:
            admission = await lease.store.acquire(
                lease.scopes,
                ids[0],
                lease.tokens,
                lease.hold_seconds,
                lease.reservation,
                (ids[1:], self.at()),
            )
        except (RedisError, OSError) as exc:
            # Nothing was counted, or what was expires (as a lost process's lease would).
            logger.info("renewing a lease failed: %s", exc)
            return
        finally:
            self._asking.discard(key_id)
        if not admission.allowed:  # others used the room meanwhile: no lease now
            return
        renewed = self._start(
            key_id,
            Lease(
                lease.store,
                lease.scopes,
                lease.tokens,
                lease.reservation,
                admission,
                ids,
                0.0,
                lease.generation,
                lease.hold_seconds,
            ),
        )
        if renewed is None:
            return
        current = self._leases.get(key_id)
        if current is lease and lease.following is None:
            lease.following = renewed
        elif current is None:
            # The lease ran out meanwhile (or was ended because the key changed: then
            # the key's next request ends this one too, ``take``).
            self._leases[key_id] = renewed
        else:  # another lease took its place: not needed
            self._end(key_id, renewed)

    async def _give_back(self, lease: Lease, ids: list[str]) -> None:
        try:
            await lease.store.give_back(
                lease.scopes, ids, lease.tokens, lease.reservation, lease.admission.bucket
            )
        except (RedisError, OSError) as exc:
            # They stay counted: their slots and holds expire, their counts leave the
            # windows within a minute. Only ever on the safe side.
            logger.info("giving back %d leased admissions failed: %s", len(ids), exc)
