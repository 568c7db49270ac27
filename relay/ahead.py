"""Forwarding ahead of admission: a limited key's request may go upstream while its
admission is still on its way to Redis, when the key is far from every limit.

A key with limits (or money to hold) is admitted by one Redis round trip
(``relay.intake.admit``). Waiting for it before the upstream call adds that round trip to
every such request's latency, which a single client feels whole. So, for a key whose last
admission in this process (under ``AHEAD_SECONDS`` ago) left it far from its limits, the
request is sent upstream at once and its admission runs meanwhile:

- Nothing reaches the client, and nothing is settled, before the admission has allowed
  the request (``Gate.wait``): headers, limits and money are exactly as if it had waited.
  The admission itself is unchanged: Redis still decides every request, atomically.
- A refusal cancels the upstream call at once (``Gate.race``) and the client gets the
  same 429 it would have had. The operator may still pay the provider for the call it
  cut, so a request goes ahead only while it fits in the *room* the key's last admission
  left before any limit was half used (``relay.limits.Room``: requests, tokens, money),
  less what the tenant's requests still ahead of their admission in this process take
  (whichever of its keys sent them; at most ``MAX_AHEAD``). A refusal then
  needs others to use the other half in the meantime (another relay process, within one
  round trip), and after a refusal the key waits for its admissions again until one shows
  room. A key with small limits (a concurrency of 2, a balance of a few requests) never
  goes ahead.
- Requests ahead of their admission are counted (``tollgate_ahead_requests``, by outcome)
  and each one refused after going upstream is logged.

``RELAY_FORWARD_AHEAD`` (default on) turns it off; keys without limits, the embedded
mode, bodies pre-admitted before they were read and a Redis outage never go ahead.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from relay.limits import Admission, LimitStore, Room

logger = logging.getLogger(__name__)

# A key's room is trusted this long after the admission that measured it.
AHEAD_SECONDS = 1.0
# Requests of one key that one process lets go ahead of their admissions at once.
MAX_AHEAD = 8
# Keys remembered before the stale ones are dropped.
_SWEEP_AT = 10_000


@dataclass(slots=True)
class _Seen:
    room: Room
    until: float
    generation: int
    tenant_id: int


@dataclass(slots=True)
class _Out:
    """What a tenant's requests gone ahead of their admissions (not back yet) take."""

    requests: int = 0
    tokens: int = 0
    micros: int = 0


class Ahead:
    """The keys this process may forward ahead of admission (one per relay app).

    A key's room comes from its own last admission, which measured its tenant's limits and
    money too; what is ahead is counted per tenant, so that a tenant's many keys cannot
    each spend the tenant's room."""

    def __init__(self) -> None:
        self._keys: dict[int, _Seen] = {}
        self._out: dict[int, _Out] = {}

    def take(self, key_id: int, tokens: int, micros: int, generation: int) -> bool:
        """Whether a request of ``key_id`` (``tokens`` and ``micros`` to hold) may go ahead
        of its admission now; if so it counts against the room until ``back``."""
        seen = self._keys.get(key_id)
        if seen is None:
            return False
        if seen.until < time.monotonic() or seen.generation != generation:
            del self._keys[key_id]  # stale, or the key's limits may have changed since
            return False
        room = seen.room
        out = self._out.get(seen.tenant_id)
        if out is None:
            out = self._out[seen.tenant_id] = _Out()
        if (
            out.requests >= MAX_AHEAD
            or out.requests + 1 > room.requests
            or out.tokens + tokens > room.tokens
            or out.micros + micros > room.micros
        ):
            return False
        out.requests += 1
        out.tokens += tokens
        out.micros += micros
        return True

    def back(self, tenant_id: int, tokens: int, micros: int) -> None:
        """The admission of a request of the tenant that went ahead has returned."""
        out = self._out.get(tenant_id)
        if out is None:
            return
        out.requests -= 1
        out.tokens -= tokens
        out.micros -= micros
        if out.requests <= 0:
            del self._out[tenant_id]

    def note(
        self, key_id: int, tenant_id: int, admission: Admission | None, generation: int
    ) -> None:
        """What an admission of the key found: its room, or (refused, or admitted without
        Redis) nothing to go ahead on."""
        room = admission.room if admission is not None and admission.allowed else None
        if room is None or room.requests <= 0:
            self._keys.pop(key_id, None)
            return
        until = time.monotonic() + AHEAD_SECONDS
        seen = self._keys.get(key_id)
        if seen is not None and seen.generation == generation:
            seen.room, seen.until = room, until
            return
        if len(self._keys) >= _SWEEP_AT:
            self._sweep()
        self._keys[key_id] = _Seen(room, until, generation, tenant_id)

    def forget(self, key_id: int) -> None:
        self._keys.pop(key_id, None)

    def room(self, key_id: int, generation: int) -> Room | None:
        """The room the key's last admission left, while it is trusted."""
        seen = self._keys.get(key_id)
        if seen is None or seen.until < time.monotonic() or seen.generation != generation:
            return None
        return seen.room

    def _sweep(self) -> None:
        now = time.monotonic()
        for key_id in [k for k, seen in self._keys.items() if seen.until < now]:
            del self._keys[key_id]


class Refused(Exception):
    """The admission a request went ahead of did not allow it; ``error`` (a 429, or why
    the admission failed) is the client's answer."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


Admitted = tuple[Admission | None, LimitStore | None]


class Gate:
    """One request's admission, still in flight while its upstream call starts."""

    def __init__(
        self,
        task: asyncio.Task[Admitted],
        on_admitted: Callable[[Admission | None, LimitStore | None], None],
        on_refused: Callable[[BaseException], None],
    ) -> None:
        self.task = task
        self._on_admitted = on_admitted
        self._on_refused = on_refused
        self.passed = False
        self.refusal: BaseException | None = None
        self.sent = False  # an upstream call went out before the admission returned

    async def wait(self) -> None:
        """Return once the request is admitted; raise ``Refused`` if it is not. The
        admission is never cancelled (its slot and hold must be known to be freed): a
        cancelled waiter leaves it running, and the next ``wait`` picks it up."""
        if self.passed:
            return
        if self.refusal is None:
            try:
                admission, store = await asyncio.shield(self.task)
            except Exception as exc:
                self.refusal = exc
                self._on_refused(exc)
            else:
                self.passed = True
                self._on_admitted(admission, store)
                return
        raise Refused(self.refusal)

    async def race(self, work: Coroutine[Any, Any, Any], disconnected: Callable[[], bool]) -> Any:
        """Await ``work`` (the upstream call), cancelling it as soon as the admission
        refuses the request; then raises ``Refused``."""
        if self.task.done():
            try:
                await self.wait()
            except BaseException:
                work.close()
                raise
            return await work
        self.sent = True
        current = asyncio.current_task()
        assert current is not None
        state = {"active": True, "cut": False}

        def admission_done(task: asyncio.Task[Admitted]) -> None:
            if not state["active"] or disconnected():
                return
            if task.cancelled() or task.exception() is not None:
                state["cut"] = True
                current.cancel()

        self.task.add_done_callback(admission_done)
        result = None
        try:
            result = await work
        except asyncio.CancelledError:
            if not state["cut"]:
                raise
            state["cut"] = False  # the cancel was ours: taken back below, once
            current.uncancel()
            if disconnected():
                raise
        finally:
            state["active"] = False
            self.task.remove_done_callback(admission_done)
        if state["cut"]:  # cut as the call returned: the cancel is still pending
            current.uncancel()
        try:
            await self.wait()  # raises Refused when cut
        except BaseException:
            release = getattr(result, "release", None)
            if release is not None:  # the answer came, but nobody may read it
                release()
            raise
        return result
