"""The in-memory limit store of the embedded mode (one process)."""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field

from relay.limits.shapes import (
    WINDOW_BUCKETS,
    WINDOW_SECONDS,
    Admission,
    Reservation,
    Scope,
    _admission,
    _keys,
    _money_detail,
    _plan_detail,
    window_settlement,
)


@dataclass(slots=True)
class _Money:
    base: int = 0
    base_written: int = 0
    generation: int = -1
    seeded_at: float = -1.0
    written: int = 0
    held: int = 0
    holds: dict[str, int] = field(default_factory=dict)
    expiries: dict[str, float] = field(default_factory=dict)


class LocalLimitStore:
    """The same rules in one process's memory (embedded mode: one process).

    The relay's loop reserves and settles; the usage writer's thread records what it
    wrote (``written``), so the money part is guarded by a lock.
    """

    def __init__(self) -> None:
        self._windows: dict[str, dict[int, int]] = {}
        self._in_flight: dict[str, dict[str, float]] = {}
        self._days: dict[str, int] = {}
        self._money: dict[str, _Money] = {}
        self._plan_windows: dict[str, dict[int, int]] = {}
        self._lock = threading.Lock()

    def _check_windows(
        self, reservation: Reservation | None, tokens: int, second: int, stats: list[int]
    ) -> tuple[str, int]:
        """Sum each plan window's buckets, as ACQUIRE_LUA does; the refusing window's
        index and the milliseconds until its oldest bucket leaves, else ('', 0)."""
        refused, retry_ms = "", 0
        for index, window in enumerate(reservation.windows if reservation else ()):
            assert reservation is not None
            size = window.bucket_seconds
            current = second // size
            buckets = self._plan_windows.setdefault(window.name, {})
            for stale in [b for b in buckets if b < current - WINDOW_BUCKETS]:
                del buckets[stale]
            used, oldest = sum(buckets.values()), min(buckets, default=0)
            stats += [used, oldest]
            amount = reservation.window_amount(window, tokens)
            if not refused and used + amount > window.cap:
                refused = str(index)
                retry_ms = ((oldest or current) + WINDOW_BUCKETS + 1) * size * 1000
        return refused, retry_ms

    def window_buckets(self, name: str) -> dict[int, int]:
        """A plan window's usage per bucket (for the dashboard)."""
        with self._lock:
            return dict(self._plan_windows.get(name, {}))

    def _count_windows(self, reservation: Reservation | None, tokens: int, second: int) -> None:
        for window in reservation.windows if reservation else ():
            assert reservation is not None
            buckets = self._plan_windows.setdefault(window.name, {})
            bucket = second // window.bucket_seconds
            buckets[bucket] = buckets.get(bucket, 0) + reservation.window_amount(window, tokens)

    def _window(self, key: str, now: int) -> tuple[int, int]:
        counts = self._windows.setdefault(key, {})
        for second in [s for s in counts if s <= now - WINDOW_SECONDS]:
            del counts[second]
        return sum(counts.values()), min(counts, default=0)

    def _check_money(self, reservation: Reservation, now: float) -> tuple[str, str]:
        """('', '') when every scope covers the worst case, else the refusal and detail."""
        unseeded = []
        for index, name in enumerate(reservation.scopes):
            money = self._money.get(name)
            if (
                money is None
                or money.generation < reservation.min_generation
                or money.seeded_at < reservation.fresh_after
            ):
                unseeded.append(str(index))
                continue
            for request_id in [r for r, until in money.expiries.items() if until <= now]:
                del money.expiries[request_id]
                money.held -= money.holds.pop(request_id, 0)
            available = money.base + money.base_written - money.written - money.held
            if available < reservation.worst_micros:
                return "funds", str(index)
        return ("seed", ",".join(unseeded)) if unseeded else ("", "")

    async def acquire(
        self,
        scopes: list[Scope],
        request_id: str,
        tokens: int,
        hold_seconds: float,
        reservation: Reservation | None = None,
    ) -> Admission:
        now = time.time()
        second = int(now)
        keys = _keys(scopes, "local", now)
        stats: list[int] = []
        refused, retry_ms, detail = "", 0, ""
        for index, scope in enumerate(scopes):
            req_key, tok_key, conc_key, day_key = keys[index * 4 : index * 4 + 4]
            rpm, tpm, conc, daily = scope.limits.as_args()
            req_used, req_oldest = self._window(req_key, second)
            tok_used, tok_oldest = self._window(tok_key, second)
            stats += [req_used, req_oldest, tok_used, tok_oldest]
            if refused:
                continue
            if rpm >= 0 and req_used + 1 > rpm:
                refused, retry_ms = "requests", int(((req_oldest + 60) - now) * 1000)
            elif tpm >= 0 and tok_used + tokens > tpm:
                refused, retry_ms = "tokens", int(((tok_oldest or second) + 60 - now) * 1000)
            elif conc >= 0:
                flights = self._in_flight.setdefault(conc_key, {})
                for rid in [r for r, until in flights.items() if until <= now]:
                    del flights[rid]
                if len(flights) + 1 > conc:
                    refused, retry_ms = "concurrency", 1000
            if not refused and daily >= 0 and self._days.get(day_key, 0) + tokens > daily:
                refused = "daily_tokens"
        with self._lock:
            window, window_retry = self._check_windows(reservation, tokens, second, stats)
            if not refused and window:
                refused, detail, retry_ms = "plan", window, window_retry - int(now * 1000)
            if not refused and reservation is not None:
                refused, detail = self._check_money(reservation, now)
            if not refused:
                self._count_windows(reservation, tokens, second)
                self._count(scopes, keys, request_id, tokens, second, now + hold_seconds)
                worst = reservation.worst_micros if reservation else 0
                for name in reservation.scopes if reservation else ():
                    money = self._money[name]
                    money.holds[request_id] = worst
                    money.expiries[request_id] = now + hold_seconds
                    money.held += worst
        admission = _admission(scopes, not refused, refused, retry_ms, stats, now, tokens)
        _money_detail(admission, reservation, detail)
        _plan_detail(admission, reservation, tokens, stats[len(scopes) * 4 :], now, detail)
        return admission

    def _count(
        self,
        scopes: list[Scope],
        keys: list[str],
        request_id: str,
        tokens: int,
        second: int,
        until: float,
    ) -> None:
        for index, scope in enumerate(scopes):
            req_key, tok_key, conc_key, day_key = keys[index * 4 : index * 4 + 4]
            rpm, tpm, conc, daily = scope.limits.as_args()
            if rpm >= 0:
                window = self._windows.setdefault(req_key, {})
                window[second] = window.get(second, 0) + 1
            if tpm >= 0:
                window = self._windows.setdefault(tok_key, {})
                window[second] = window.get(second, 0) + tokens
            if conc >= 0:
                self._in_flight.setdefault(conc_key, {})[request_id] = until
            if daily >= 0:
                self._days[day_key] = self._days.get(day_key, 0) + tokens

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
    ) -> bool:
        delta = 0 if used_tokens is None else used_tokens - admission.reserved_tokens
        keys = _keys(scopes, "local", admission.bucket)
        for index in range(len(scopes)):
            _, tok_key, conc_key, day_key = keys[index * 4 : index * 4 + 4]
            self._in_flight.get(conc_key, {}).pop(request_id, None)
            if delta:
                window = self._windows.get(tok_key, {})
                if admission.bucket in window:
                    window[admission.bucket] += delta
                if day_key in self._days:
                    self._days[day_key] += delta
        if reservation is None:
            return True
        settlement = window_settlement(reservation, admission.bucket, delta, cost_micros)
        amount = reservation.worst_micros if cost_micros is None else cost_micros
        with self._lock:
            for index, plan_window in enumerate(reservation.windows):
                bucket, change = settlement[1 + index * 2 : 3 + index * 2]
                buckets = self._plan_windows.get(plan_window.name, {})
                if change and bucket in buckets:
                    buckets[bucket] += change
            for name in reservation.scopes:
                money = self._money.setdefault(name, _Money())
                previous = money.holds.pop(request_id, 0)
                money.expiries.pop(request_id, None)
                if amount > 0:
                    money.holds[request_id] = amount
                money.held += amount - previous
        return True

    def written(self, request_id: str, names: tuple[str, ...], cost_micros: int) -> None:
        """The usage writer wrote this request's event: move its hold into ``written``."""
        with self._lock:
            for name in names:
                money = self._money.setdefault(name, _Money())
                money.held -= money.holds.pop(request_id, 0)
                money.expiries.pop(request_id, None)
                money.written += cost_micros

    async def written_totals(self, names: tuple[str, ...]) -> list[int]:
        with self._lock:
            return [self._money[n].written if n in self._money else 0 for n in names]

    async def seed(
        self,
        names: tuple[str, ...],
        bases: list[int],
        written: list[int],
        generation: int,
        fresh_after: float | None = None,
    ) -> None:
        now = time.time()
        stale_before = math.inf if fresh_after is None else fresh_after
        with self._lock:
            for name, base, total in zip(names, bases, written, strict=True):
                money = self._money.setdefault(name, _Money())
                if money.generation < generation or (
                    money.generation == generation and money.seeded_at < stale_before
                ):
                    money.base, money.base_written = base, total
                    money.generation, money.seeded_at = generation, now
