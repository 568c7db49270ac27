"""The Redis limit store: exact across every relay process."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from relay.batching import ScriptPipe
from relay.limits.scripts import ACQUIRE_LUA, FINISH_LUA, RETURN_LUA, SEED_LUA
from relay.limits.shapes import (
    Admission,
    Reservation,
    Scope,
    _admission,
    _keys,
    _money_args,
    _money_detail,
    _plan_detail,
    _room,
    _text,
    money_keys,
    shifted,
    window_keys,
    window_settlement,
)


class RedisLimitStore:
    def __init__(self, redis: Any, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix
        self._acquire = redis.register_script(ACQUIRE_LUA)
        self._finish = redis.register_script(FINISH_LUA)
        self._seed = redis.register_script(SEED_LUA)
        self._return = redis.register_script(RETURN_LUA)
        self._scripts: dict[str, Any] = {}
        # The limit checks and settlements, pipelined on a connection of their own.
        self._pipe = ScriptPipe(redis)
        self._settled_mark_ms = max(SETTLED_MARK_MS, int(self._pipe.timeout * 4000))

    async def close(self) -> None:
        await self._pipe.close()

    @property
    def queue_key(self) -> str:
        return usage_queue_key(self._prefix)

    @property
    def prefix(self) -> str:
        return self._prefix

    async def run_script(
        self,
        source: str,
        keys: list[Any],
        args: list[Any],
        written: asyncio.Future[None] | None = None,
    ) -> Any:
        """Another module's script, sent with this loop turn's limit checks (``written``:
        see ``ScriptPipe.run``)."""
        script = self._scripts.get(source)
        if script is None:
            script = self._scripts[source] = self._redis.register_script(source)
        return await self._pipe.run(script, keys, args, written)

    async def acquire(
        self,
        scopes: list[Scope],
        request_id: str,
        tokens: int,
        hold_seconds: float,
        reservation: Reservation | None = None,
        lease: tuple[list[str], int] | None = None,
    ) -> Admission:
        """Admit the request, or with ``lease`` (more ids, the second to count them all
        in: ``relay.leases``) it and those ids together, each with its own ``tokens`` and
        ``reservation``, or none of them."""
        now = time.time()
        ids = request_id
        at = int(now)
        more = 0
        if lease is not None:
            ids = ",".join((request_id, *lease[0]))
            at, more = lease[1], len(lease[0])
        args: list[Any] = [int(now * 1000), ids, tokens, int(hold_seconds * 1000)]
        args.append(len(scopes))
        for scope in scopes:
            args += scope.limits.as_args()
        args += _money_args(reservation, hold_seconds, tokens)
        args.append(at)
        keys = _keys(scopes, self._prefix, now)
        for name in reservation.scopes if reservation else ():
            keys += money_keys(self._prefix, name)
        keys += window_keys(self._prefix, reservation)
        result = await self._pipe.run(self._acquire, keys, args)
        stats = [int(v) for v in result[4:]]
        detail = _text(result[3])
        allowed = bool(result[0])
        admission = _admission(
            scopes, allowed, _text(result[1]), int(result[2]), stats, now, tokens
        )
        _money_detail(admission, reservation, detail)
        windows = len(reservation.windows) if reservation is not None else 0
        first = len(scopes) * 4
        window_stats = stats[first : first + windows * 2]
        _plan_detail(admission, reservation, tokens, window_stats, now, detail)
        if allowed:
            extra = stats[first + windows * 2 :]
            admission.room = _room(scopes, stats, tokens, reservation, window_stats, extra)
            if more:
                admission = shifted(admission, more, tokens, reservation)
                admission.bucket = at
        return admission

    async def give_back(
        self,
        scopes: list[Scope],
        ids: list[str],
        tokens: int,
        reservation: Reservation | None,
        at: int,
    ) -> int:
        """Uncount a lease's ids that no request took (``relay.leases``), each once; how
        many were given back now."""
        keys = _keys(scopes, self._prefix, at)
        for name in reservation.scopes if reservation else ():
            keys += money_keys(self._prefix, name)
        keys += window_keys(self._prefix, reservation)
        keys += [settled_key(self._prefix, request_id) for request_id in ids]
        args: list[Any] = [at, tokens, len(scopes)]
        for scope in scopes:
            args += scope.limits.as_args()
        windows = reservation.windows if reservation is not None else ()
        args += [len(reservation.scopes) if reservation else 0, len(windows)]
        for window in windows:
            args += [window.bucket_seconds, reservation.window_amount(window, tokens)]  # type: ignore[union-attr]
        args.append(self._settled_mark_ms)
        args += ids
        return int(await self._pipe.run(self._return, keys, args))

    async def release(
        self,
        scopes: list[Scope],
        request_id: str,
        admission: Admission,
        used_tokens: int | None,
        reservation: Reservation | None = None,
        cost_micros: int | None = None,
        event: bytes = b"",
        open_keys: list[str] | None = None,
        written: asyncio.Future[None] | None = None,
    ) -> bool:
        """Free the request's slots, settle its tokens and money, and queue its usage
        event: one atomic round trip. With ``open_keys`` (a stream's open entry, see
        ``relay.orphans``) the entry goes too, and nothing happens (False) if a sweeper
        has already settled the request. ``written`` is resolved once the call is written
        to Redis (or has failed), before its reply."""
        delta = 0 if used_tokens is None else used_tokens - admission.reserved_tokens
        keys = _keys(scopes, self._prefix, admission.bucket)
        for name in reservation.scopes if reservation else ():
            keys += money_keys(self._prefix, name)
        keys.append(self.queue_key)
        keys += open_keys or []
        keys += window_keys(self._prefix, reservation)
        keys.append(settled_key(self._prefix, request_id))
        done = await self._pipe.run(
            self._finish,
            keys,
            [
                request_id,
                admission.bucket,
                delta,
                len(scopes),
                len(reservation.scopes) if reservation else 0,
                reservation.worst_micros if reservation else 0,
                -1 if cost_micros is None else cost_micros,
                event,
                "1" if open_keys else "",
                *window_settlement(reservation, admission.bucket, delta, cost_micros),
                self._settled_mark_ms,
            ],
            written,
        )
        return bool(done)

    async def written_totals(self, names: tuple[str, ...]) -> list[int]:
        values = await self._redis.mget([money_keys(self._prefix, n)[1] for n in names])
        return [int(v or 0) for v in values]

    async def seed(
        self,
        names: tuple[str, ...],
        bases: list[int],
        written: list[int],
        generation: int,
        fresh_after: float | None = None,
    ) -> None:
        now_ms = int(time.time() * 1000)
        keys: list[str] = []
        args: list[Any] = [generation, now_ms]
        args.append(now_ms + 1 if fresh_after is None else int(fresh_after * 1000))
        for name, base, total in zip(names, bases, written, strict=True):
            keys += money_keys(self._prefix, name)[:2]
            args += [base, total]
        await self._seed(keys=keys, args=args)


# How long a settled request's mark stays in Redis, at least: the script pipe sends a call
# again only at once, on a new connection, after the first one broke before its reply,
# which takes at most its reply and connect timeouts (RELAY_REDIS_TIMEOUT each, 2 s by
# default); the mark is kept for four such timeouts if that is longer. A mark costs Redis
# ~120 bytes while it lasts: ~11 MB at 3,000 requests a second.
SETTLED_MARK_MS = 30_000


def settled_key(prefix: str, request_id: str) -> str:
    """The mark a request's settlement leaves, so that running it again does nothing."""
    return f"{prefix}:settled:{request_id}"


def usage_queue_key(prefix: str) -> str:
    return f"{prefix}:usage:queue"
