"""What admission deals in: limits, scopes, reservations, admissions, the store
protocol, and UTC day arithmetic."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from operator import attrgetter
from typing import Any, Protocol

import orjson

WINDOW_SECONDS = 60


@dataclass(frozen=True, slots=True)
class Limits:
    rpm: int | None = None
    tpm: int | None = None
    concurrency: int | None = None
    daily_tokens: int | None = None

    def any(self) -> bool:
        return not (
            self.rpm is None
            and self.tpm is None
            and self.concurrency is None
            and self.daily_tokens is None
        )

    def as_args(self) -> list[int]:
        """The limits for the scripts: -1 for none (0 is a real limit: nothing allowed)."""
        return [
            -1 if v is None else v
            for v in (self.rpm, self.tpm, self.concurrency, self.daily_tokens)
        ]


@dataclass(frozen=True, slots=True)
class Scope:
    name: str  # e.g. "key:12" or "tenant:3"
    limits: Limits


# A plan window is counted in this many buckets, one more kept: see ``Window``.
WINDOW_BUCKETS = 60


@dataclass(frozen=True, slots=True)
class Window:
    """A plan's rolling window (``billing.models.PlanWindow``), loaded with the key.

    Counted in sliding buckets of ``seconds / WINDOW_BUCKETS``: a request's tokens or
    spend go into the bucket of the second it was admitted, and a check sums the current
    bucket and the ``WINDOW_BUCKETS`` before it. Usage therefore leaves the window between
    ``seconds`` and ``seconds`` plus one bucket after it was admitted (5 hours: 5 minutes
    late at most), never early: no span of the window's length ever passes the cap.
    """

    name: str  # "s<subscription>:w<window>"
    length: str  # "5h", "1d" or "7d": the headers' suffix
    kind: str  # "tokens" or "spend" (retail micro-units)
    cap: int
    seconds: int
    models: frozenset[str] = frozenset()  # empty: every model

    @property
    def bucket_seconds(self) -> int:
        return max(self.seconds // WINDOW_BUCKETS, 1)

    def counts(self, model: str) -> bool:
        return not self.models or model in self.models


@dataclass(frozen=True, slots=True)
class Reservation:
    """Money to hold before forwarding: the request's worst-case retail cost, held against
    each limited money scope (names from ``relay.spend``)."""

    scopes: tuple[str, ...]
    worst_micros: int
    # A base seeded before this generation of the relay's caches, or before this moment
    # (epoch seconds), is seeded again first.
    min_generation: int = 0
    fresh_after: float = 0.0
    # The plan windows that count this request (tokens, or this worst-case spend).
    windows: tuple[Window, ...] = ()

    def window_amount(self, window: Window, tokens: int) -> int:
        return tokens if window.kind == "tokens" else self.worst_micros


@dataclass(frozen=True, slots=True)
class Room:
    """How much more a key could take, as its admission found it, before any of its limits
    is half used: requests (per minute, or in flight), tokens (per minute, per day, plan
    windows of tokens) and money (micro-units: its money scopes, plan windows of spend).
    ``relay.ahead`` lets a request go upstream before its own admission returns only while
    it fits in the room left, so that a refusal comes only when others used the other half
    meanwhile (and the upstream call is then cancelled)."""

    requests: int
    tokens: int
    micros: int


# Where a dimension has no limit.
UNLIMITED = 2**62


@dataclass(slots=True)
class Admission:
    allowed: bool
    bucket: int  # the second the reservation was counted in
    reserved_tokens: int
    # Which limit refused the request ("requests", "tokens", "concurrency", "daily_tokens",
    # "funds": a money scope, named by ``refused_scope``, cannot cover the worst case), or
    # "seed": the money scopes in ``unseeded`` must be (re)seeded and the request retried.
    refused: str = ""
    refused_scope: str = ""
    unseeded: tuple[str, ...] = ()
    retry_after: int = 0
    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests: float = 0.0
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    reset_tokens: float = 0.0
    # Plan windows: which refused ("plan"), and what is left in each (see ``plan_headers``).
    refused_window: Window | None = None
    plan: list[tuple[Window, int, float]] | None = None  # window, remaining, reset seconds
    # Known for admissions made in Redis: see ``Room``.
    room: Room | None = None

    def headers(self) -> list[tuple[bytes, bytes]]:
        """OpenAI's x-ratelimit-* headers, for the tightest limit that applies."""
        headers: list[tuple[bytes, bytes]] = []
        if self.limit_requests is not None:
            headers += [
                (b"x-ratelimit-limit-requests", str(self.limit_requests).encode()),
                (b"x-ratelimit-remaining-requests", str(self.remaining_requests).encode()),
                (b"x-ratelimit-reset-requests", _duration(self.reset_requests)),
            ]
        if self.limit_tokens is not None:
            headers += [
                (b"x-ratelimit-limit-tokens", str(self.limit_tokens).encode()),
                (b"x-ratelimit-remaining-tokens", str(self.remaining_tokens).encode()),
                (b"x-ratelimit-reset-tokens", _duration(self.reset_tokens)),
            ]
        if self.plan:
            headers += plan_headers(self.plan)
        return headers


def plan_headers(plan: list[tuple[Window, int, float]]) -> list[tuple[bytes, bytes]]:
    """``x-tollgate-plan-{limit,remaining,reset}-{tokens,spend-micros}-{5h,1d,7d}``: per
    kind and length, the window of the request with the least left."""
    tightest: dict[tuple[str, str], tuple[Window, int, float]] = {}
    for window, remaining, reset in plan:
        seen = tightest.get((window.kind, window.length))
        if seen is None or remaining < seen[1]:
            tightest[(window.kind, window.length)] = (window, remaining, reset)
    headers = []
    for (kind, length), (window, remaining, reset) in sorted(tightest.items()):
        suffix = f"{'tokens' if kind == 'tokens' else 'spend-micros'}-{length}"
        headers += [
            (f"x-tollgate-plan-limit-{suffix}".encode(), str(window.cap).encode()),
            (f"x-tollgate-plan-remaining-{suffix}".encode(), str(remaining).encode()),
            (f"x-tollgate-plan-reset-{suffix}".encode(), _duration(reset)),
        ]
    return headers


def _duration(seconds: float) -> bytes:
    """OpenAI's reset format: ``1s``, ``6m0s``, ``120ms``."""
    if seconds < 1:
        return f"{max(int(seconds * 1000), 0)}ms".encode()
    whole = math.ceil(seconds)
    minutes, rest = divmod(whole, 60)
    return (f"{minutes}m{rest}s" if minutes else f"{rest}s").encode()


class LimitStore(Protocol):
    async def acquire(
        self,
        scopes: list[Scope],
        request_id: str,
        tokens: int,
        hold_seconds: float,
        reservation: Reservation | None = None,
    ) -> Admission: ...

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
    ) -> bool: ...

    async def written_totals(self, names: tuple[str, ...]) -> list[int]: ...

    async def seed(
        self,
        names: tuple[str, ...],
        bases: list[int],
        written: list[int],
        generation: int,
        fresh_after: float | None = None,
    ) -> None:
        """Set the scopes' bases, unless a newer figure is already there.

        A base of a newer generation is always kept. One of the same generation is kept
        when it was seeded at or after ``fresh_after`` (another request seeded it while
        this one read the database, and its figure may be the more exact one); with
        ``fresh_after`` None, the same generation is replaced.
        """
        ...


def _day(now: float) -> str:
    return _day_of(int(now // 86400))


@functools.lru_cache(maxsize=4)
def _day_of(days_since_epoch: int) -> str:
    """The UTC date of a day number, formatted once per day rather than per request."""
    return datetime.fromtimestamp(days_since_epoch * 86400, UTC).strftime("%Y%m%d")


def _seconds_to_midnight(now: float) -> int:
    moment = datetime.fromtimestamp(now, UTC)
    midnight = (moment + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return max(math.ceil((midnight - moment).total_seconds()), 1)


def _admission(
    scopes: list[Scope],
    allowed: bool,
    refused: str,
    retry_ms: int,
    stats: list[int],
    now: float,
    tokens: int,
) -> Admission:
    """Build the answer, with headers for the tightest request and token limits."""
    admission = Admission(
        allowed=allowed, bucket=int(now), reserved_tokens=tokens if allowed else 0
    )
    admission.refused = refused
    if refused == "daily_tokens":
        admission.retry_after = _seconds_to_midnight(now)
    elif refused in ("requests", "tokens", "concurrency"):
        admission.retry_after = max(math.ceil(retry_ms / 1000), 1)
    for index, scope in enumerate(scopes):
        req_used, req_oldest, tok_used, tok_oldest = stats[index * 4 : index * 4 + 4]
        counted = 1 if allowed else 0
        if scope.limits.rpm is not None:
            remaining = max(scope.limits.rpm - req_used - counted, 0)
            if admission.remaining_requests is None or remaining < admission.remaining_requests:
                admission.limit_requests = scope.limits.rpm
                admission.remaining_requests = remaining
                oldest = req_oldest or int(now)
                admission.reset_requests = max(oldest + WINDOW_SECONDS - now, 0.0)
        if scope.limits.tpm is not None:
            remaining = max(scope.limits.tpm - tok_used - counted * tokens, 0)
            if admission.remaining_tokens is None or remaining < admission.remaining_tokens:
                admission.limit_tokens = scope.limits.tpm
                admission.remaining_tokens = remaining
                oldest = tok_oldest or int(now)
                admission.reset_tokens = max(oldest + WINDOW_SECONDS - now, 0.0)
    return admission


def _room(
    scopes: list[Scope],
    stats: list[int],
    tokens: int,
    reservation: Reservation | None,
    window_stats: list[int],
    extra: list[int],
) -> Room:
    """The room an allowed admission leaves (``Room``), from the script's figures: per
    scope its stats and (``extra``) requests in flight and tokens today, per money scope
    what it could spend before this request's hold; per plan window its use."""
    requests = spend_tokens = micros = UNLIMITED
    worst = reservation.worst_micros if reservation is not None else 0
    for index, scope in enumerate(scopes):
        limits = scope.limits
        req_used, _, tok_used, _ = stats[index * 4 : index * 4 + 4]
        in_flight, day_used = extra[index * 2 : index * 2 + 2]
        if limits.rpm is not None:
            requests = min(requests, limits.rpm // 2 - req_used - 1)
        if limits.concurrency is not None:
            requests = min(requests, limits.concurrency // 2 - in_flight - 1)
        if limits.tpm is not None:
            spend_tokens = min(spend_tokens, limits.tpm // 2 - tok_used - tokens)
        if limits.daily_tokens is not None:
            spend_tokens = min(spend_tokens, limits.daily_tokens // 2 - day_used - tokens)
    for available in extra[len(scopes) * 2 :]:
        micros = min(micros, (available - worst) // 2)
    for index, window in enumerate(reservation.windows if reservation is not None else ()):
        amount = reservation.window_amount(window, tokens)  # type: ignore[union-attr]
        left = window.cap // 2 - window_stats[index * 2] - amount
        if window.kind == "tokens":
            spend_tokens = min(spend_tokens, left)
        else:
            micros = min(micros, left)
    return Room(requests=requests, tokens=spend_tokens, micros=micros)


def _money_detail(admission: Admission, reservation: Reservation | None, detail: str) -> None:
    if reservation is None or not detail:
        return
    indexes = [int(i) for i in detail.split(",")]
    if admission.refused == "funds":
        admission.refused_scope = reservation.scopes[indexes[0]]
    elif admission.refused == "seed":
        admission.unseeded = tuple(reservation.scopes[i] for i in indexes)


def _keys(scopes: list[Scope], prefix: str, now: float) -> list[str]:
    if not scopes:
        return []
    day = _day(now)
    keys: list[str] = []
    for scope in scopes:
        base = f"{prefix}:rl:{scope.name}"
        # The windows' hashes carry a running sum (ACQUIRE_LUA); their keys changed with
        # that layout (once ``:req`` and ``:tok``), so that a relay still running the
        # scripts from before never reads one.
        keys += [f"{base}:requests", f"{base}:tokens", f"{base}:conc", f"{base}:day:{day}"]
    return keys


def limit_keys(scopes: list[Scope], prefix: str, bucket: float) -> list[str]:
    """The keys a request's settlement touches, per limit scope: tokens, concurrency, day."""
    keys = _keys(scopes, prefix, bucket)
    return [key for index, key in enumerate(keys) if index % 4]


def money_keys(prefix: str, scope: str) -> list[str]:
    """A money scope's keys: seeded base, written total, held total, holds, hold expiries."""
    base = f"{prefix}:m:{scope}"
    return [f"{base}:base", f"{base}:written", f"{base}:held", f"{base}:holds", f"{base}:exp"]


def _money_args(reservation: Reservation | None, hold_seconds: float, tokens: int) -> list[Any]:
    """The money scopes' arguments, then the plan windows': count, then per window its
    cap, bucket length (seconds) and the amount to count."""
    if reservation is None:
        return [0, 0, 0, 0, 0, 0]
    args = [
        len(reservation.scopes),
        reservation.worst_micros,
        int(hold_seconds * 1000),
        reservation.min_generation,
        int(reservation.fresh_after * 1000),
        len(reservation.windows),
    ]
    for window in reservation.windows:
        args += [window.cap, window.bucket_seconds, reservation.window_amount(window, tokens)]
    return args


def window_keys(prefix: str, reservation: Reservation | None) -> list[str]:
    """The plan windows' counters: a hash of usage per bucket."""
    return [f"{prefix}:pw:{w.name}" for w in reservation.windows] if reservation else []


def window_settlement(
    reservation: Reservation | None,
    bucket: int,
    token_delta: int,
    cost_micros: int | None,
) -> list[Any]:
    """FINISH's window arguments: count, then per window its bucket and the correction
    of what was counted at admission (real tokens, or real cost, less the estimate)."""
    if reservation is None:
        return [0]
    args: list[Any] = [len(reservation.windows)]
    for window in reservation.windows:
        change = window_change(window.kind, token_delta, cost_micros, reservation.worst_micros)
        args += [bucket // window.bucket_seconds, change]
    return args


def window_change(kind: str, token_delta: int, cost_micros: int | None, worst_micros: int) -> int:
    """How a plan window's count moves once a request is settled: by the real tokens less
    the reserved ones, or by the real cost less the worst case counted at admission (not
    at all while the cost is unknown)."""
    if kind == "tokens":
        return token_delta
    return 0 if cost_micros is None else cost_micros - worst_micros


def cut_correction(
    settle_limits: list[str],
    bucket: int,
    reserved_tokens: int,
    reservation: Reservation | None,
    prefix: str,
) -> bytes:
    """What a stream's admission counted in advance, as kept in its open entry
    (``relay.orphans``) for the usage drainer to correct should the stream be cut and
    billed by a sweeper (``CORRECT_LUA``, ``cut_correction_call``): its limit scopes'
    token counters (minute and day; ``settle_limits`` is ``limit_keys``), its bucket, the
    tokens it reserved, its worst case, and per plan window its counter, bucket and kind.
    Empty when nothing was counted in advance."""
    counters = [key for index, key in enumerate(settle_limits) if index % 3 != 1]
    windows = reservation.windows if reservation is not None else ()
    if not windows and (not counters or not reserved_tokens):
        return b""
    return orjson.dumps(
        {
            "bucket": bucket,
            "reserved": reserved_tokens,
            "worst": reservation.worst_micros if reservation is not None else 0,
            "tokens": counters,
            "windows": [
                [key, bucket // window.bucket_seconds, window.kind]
                for key, window in zip(window_keys(prefix, reservation), windows, strict=True)
            ],
        }
    )


def cut_correction_call(
    correction: dict[str, Any], used_tokens: int, cost_micros: int
) -> tuple[list[str], list[Any]]:
    """``CORRECT_LUA``'s keys and arguments for a cut stream billed ``used_tokens``
    (prompt and completion) at ``cost_micros`` (retail): what its own settlement would have
    corrected (``window_settlement``)."""
    delta = used_tokens - int(correction["reserved"])
    keys = [str(key) for key in correction["tokens"]]
    windows = correction["windows"]
    args: list[Any] = [int(correction["bucket"]), delta, len(keys) // 2, len(windows)]
    for key, window_bucket, kind in windows:
        keys.append(str(key))
        change = window_change(kind, delta, cost_micros, int(correction["worst"]))
        args += [int(window_bucket), change]
    return keys, args


def _plan_detail(
    admission: Admission,
    reservation: Reservation | None,
    tokens: int,
    window_stats: list[int],
    now: float,
    detail: str,
) -> None:
    """What is left in each window (used, oldest counted bucket per window), and which
    window refused the request."""
    if reservation is None or not reservation.windows:
        return
    admission.plan = []
    for index, window in enumerate(reservation.windows):
        used, oldest = window_stats[index * 2 : index * 2 + 2]
        if admission.allowed:
            used += reservation.window_amount(window, tokens)
        size = window.bucket_seconds
        oldest = oldest or int(now) // size  # nothing counted before: this request's bucket
        reset = (oldest + WINDOW_BUCKETS + 1) * size - now if used else 0.0
        admission.plan.append((window, max(window.cap - used, 0), max(reset, 0.0)))
    if admission.refused == "plan":
        window, _, reset = admission.plan[int(detail)]
        admission.refused_window = window
        admission.retry_after = max(math.ceil(reset), 1)


def shifted(
    admission: Admission,
    requests: int,
    tokens: int,
    reservation: Reservation | None,
    *,
    room: bool = True,
) -> Admission:
    """``admission`` as if ``requests`` more requests of ``tokens`` and ``reservation``
    had been counted with it (fewer, if negative): its remaining figures and its room
    (none with ``room`` False). A lease's admission counts all its ids
    (``relay.leases``); each request that takes one is told what is left as if the ids
    after it were not counted yet."""
    twin = Admission(*_fields(admission))  # dataclasses.replace costs four times as much
    if admission.remaining_requests is not None:
        twin.remaining_requests = max(admission.remaining_requests - requests, 0)
    if admission.remaining_tokens is not None:
        twin.remaining_tokens = max(admission.remaining_tokens - requests * tokens, 0)
    plan = admission.plan
    if plan is not None and reservation is not None:
        twin.plan = [
            (window, max(left - requests * reservation.window_amount(window, tokens), 0), reset)
            for window, left, reset in plan
        ]
    left = admission.room
    if left is not None and room:
        worst = reservation.worst_micros if reservation is not None else 0
        twin.room = Room(
            requests=left.requests - requests,
            tokens=left.tokens - requests * tokens,
            micros=left.micros - requests * worst,
        )
    else:
        twin.room = None
    return twin


# An admission's fields in the order its constructor takes them.
_fields = attrgetter(*(f.name for f in fields(Admission)))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
