"""How the relay takes a request in: the body under caps and deadlines, and its limits.

Nearly every request has a small body that arrives with its headers. It is read at once,
parsed, and admitted in one step (``admit``: one atomic Redis round trip for every
limit and money hold). A body that is large, or still arriving after
``RELAY_BODY_FAST_PATH_SECONDS``, costs one more round trip: the key's and tenant's
request and concurrency limits are counted (``pre-admission``) before the rest of the
body is read, so a key over its limits never makes the relay read or parse a large body,
and a slow body holds its key's concurrency slot while it trickles in. The later
admission then checks only what needed the parsed body (tokens, money).

Whatever the path, a body is capped in bytes and in JSON values (counted as it arrives,
so an over-structured body is refused long before it is all read; parsing it is what
would cost memory and event-loop time) and must arrive within ``RELAY_BODY_TIMEOUT``.
Nothing here knows a request format: a surface passes its cap and, for ``admit``, its
token estimate.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from dataclasses import dataclass, replace

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver
from redis.exceptions import RedisError

from relay import errors, metrics, outage, shared, spend
from relay.deadlines import Deadline
from relay.exchange import ClientGone, Exchange
from relay.leases import LEASE_SECONDS
from relay.limits import Admission, Limits, LimitStore, RedisLimitStore, Reservation, Scope
from relay.limits.shapes import shifted
from relay.snapshot import KeyInfo


@dataclass(slots=True)
class PreAdmission:
    """A request counted against its request and concurrency limits before its body."""

    store: LimitStore
    admission: Admission


@dataclass(slots=True)
class Intake:
    body: bytes
    pre: PreAdmission | None = None


def _hold_seconds() -> float:
    return settings.RELAY_TOTAL_TIMEOUT + 30


@functools.cache
def _knobs() -> tuple[float, int, float, int]:
    """The intake's settings, read once rather than on every request."""
    return (
        float(settings.RELAY_BODY_TIMEOUT),
        int(settings.RELAY_BODY_FAST_PATH_BYTES),
        float(settings.RELAY_BODY_FAST_PATH_SECONDS),
        int(settings.RELAY_MAX_BODY_VALUES),
    )


@receiver(setting_changed)
def _forget_knobs(**kwargs: object) -> None:
    _knobs.cache_clear()


async def intake_body(
    exchange: Exchange, key: KeyInfo, *, max_bytes: int, max_values: int | None = None
) -> Intake:
    """Read the body within its caps and deadline, pre-admitting it when large or slow.

    Raises a ``RelayError`` (413, 408, 429, ...) when it is refused; answered before the
    body was read whole, the exchange closes the connection (see ``Exchange``).
    """
    content_type = exchange.header(b"content-type")
    if content_type is not None and b"json" not in content_type.lower():
        raise errors.invalid_request(
            "Unsupported Content-Type: the OpenAI API expects application/json."
        )
    declared = exchange.header(b"content-length")
    size = int(declared) if declared is not None and declared.isdigit() else None
    if size is not None and size > max_bytes:
        raise _too_large(max_bytes)
    timeout, fast_bytes, fast_seconds, default_values = _knobs()
    reader = _BodyReader(exchange, max_bytes, max_values or default_values, size)
    now = asyncio.get_running_loop().time()
    deadline = now + timeout
    fast = size is not None and size <= fast_bytes
    if fast and await reader.read_until(min(deadline, now + fast_seconds)):
        return Intake(reader.joined())
    pre = await preadmit(exchange, key)
    try:
        if not await reader.read_until(deadline):
            raise errors.RelayError(
                408,
                f"The request body did not arrive within {timeout:g} seconds.",
                code="request_timeout",
            )
    except BaseException:
        await intake_release(exchange, key, pre)
        raise
    return Intake(reader.joined(), pre)


class _BodyReader:
    """Accumulates a request body, refusing it as soon as it passes a cap."""

    __slots__ = ("chunks", "count_values", "exchange", "max_bytes", "max_values", "size", "values")

    def __init__(
        self, exchange: Exchange, max_bytes: int, max_values: int, size: int | None
    ) -> None:
        self.exchange = exchange
        self.max_bytes = max_bytes
        self.max_values = max_values
        # A body with fewer bytes than the cap has values cannot pass it: nothing to count.
        self.count_values = size is None or size > max_values
        self.chunks: list[bytes] = []
        self.size = 0
        self.values = 0

    def joined(self) -> bytes:
        """The body; the chunks are let go (one chunk, nearly every body, is not copied)."""
        chunks, self.chunks = self.chunks, []
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def read_until(self, deadline: float) -> bool:
        """True once the body is complete; False if ``deadline`` (loop time) came first."""
        try:
            with Deadline(deadline):
                while True:
                    # Cancelling the server's receive() loses nothing: a chunk is handed
                    # over only when it returns.
                    message = await self.exchange.receive()
                    if message["type"] == "http.disconnect":
                        self.exchange.disconnected = True
                        raise ClientGone
                    self._add(message.get("body", b""))
                    if not message.get("more_body"):
                        self.exchange.body_read = True
                        return True
        except TimeoutError:
            return False

    def _add(self, chunk: bytes) -> None:
        if not chunk:
            return
        self.chunks.append(chunk)
        self.size += len(chunk)
        if self.size > self.max_bytes:
            raise _too_large(self.max_bytes)
        # Every JSON value but the first follows a comma or opens a container; commas and
        # brackets inside strings count too, which only errs on the safe side. Parsing is
        # what costs (a 20 MB body of empty arrays is seven million lists, ~500 MB and
        # seconds of a worker's event loop), so the count is kept before any of it.
        if not self.count_values and self.size <= self.max_values:
            return
        self.values += chunk.count(b",") + chunk.count(b"[") + chunk.count(b"{")
        if self.values > self.max_values:
            raise errors.RelayError(
                413,
                f"The request body has more than the {self.max_values} JSON values this "
                "gateway accepts.",
                code="request_too_large",
            )


def _too_large(limit: int) -> errors.RelayError:
    return errors.RelayError(
        413,
        f"The request body is larger than the {limit} bytes this gateway accepts.",
        code="request_too_large",
    )


def _rate_scopes(key: KeyInfo) -> list[Scope]:
    """The key's and tenant's request and concurrency limits, without the others."""
    scopes = []
    for scope in key.limit_scopes():
        limits = Limits(rpm=scope.limits.rpm, concurrency=scope.limits.concurrency)
        if limits.any():
            scopes.append(Scope(scope.name, limits))
    return scopes


def _after_pre(scopes: list[Scope]) -> list[Scope]:
    """What is left to check once the request and concurrency limits were counted."""
    rest = []
    for scope in scopes:
        limits = replace(scope.limits, rpm=None, concurrency=None)
        if limits.any():
            rest.append(Scope(scope.name, limits))
    return rest


async def preadmit(exchange: Exchange, key: KeyInfo) -> PreAdmission | None:
    """Count the request against its request and concurrency limits now, before its body
    is read; None when the key has no such limit. Refuses with a 429 (closing the
    connection, as the body is not read) like ``admit``."""
    scopes = _rate_scopes(key)
    if not scopes:
        return None
    store = shared.limit_store()
    try:
        admission = await store.acquire(scopes, exchange.request_id, 0, _hold_seconds())
    except RedisError as exc:
        store = _fallback_store(exc)
        admission = await store.acquire(scopes, exchange.request_id, 0, _hold_seconds())
    exchange.extra_headers.extend(admission.headers())
    if not admission.allowed:
        metrics.observe_limit_rejection(admission.refused)
        raise limit_error(admission)
    return PreAdmission(store, admission)


async def intake_release(exchange: Exchange, key: KeyInfo, pre: PreAdmission | None) -> None:
    """Free a pre-admission's concurrency slot when the request ends before it is admitted."""
    if pre is None:
        return
    with contextlib.suppress(RedisError):
        await pre.store.release(key.limit_scopes(), exchange.request_id, pre.admission, None)


def _fallback_store(exc: RedisError) -> LimitStore:
    outage.redis.failed("checking rate limits", exc)
    if not settings.RELAY_LIMITS_FAIL_OPEN:
        raise errors.RelayError(
            503,
            "The gateway cannot check rate limits right now; retry shortly.",
            type="server_error",
            code="limiter_unavailable",
            headers=((b"retry-after", b"1"),),
        ) from None
    # Fail open: this process applies the rate limits on its own (each process allows the
    # full limit) and holds no money; usage is still recorded and charged.
    return shared.fallback_limit_store()


async def admit(
    exchange: Exchange,
    key: KeyInfo,
    reserved_tokens: int,
    reservation: Reservation | None,
    pre: PreAdmission | None = None,
) -> tuple[Admission | None, LimitStore | None]:
    """Count the request against the key's and tenant's limits and hold its worst-case
    cost against their money, or refuse it with a 429; returns the admission and the store
    that made it (None, None when nothing limits the key).

    After a pre-admission, only the limits it left (tokens, money) are checked, on the
    same store; its concurrency slot is freed with the request's.
    """
    scopes = key.limit_scopes()
    if pre is not None:
        scopes = _after_pre(scopes)
        if not scopes and reservation is None:
            return pre.admission, pre.store
    elif not scopes and reservation is None:
        return None, None
    hold = _hold_seconds()
    store = pre.store if pre is not None else shared.limit_store()
    # A busy key far from its limits leases a few admissions more (relay.leases).
    leases = getattr(exchange.app, "leases", None) if pre is None else None
    lease: tuple[list[str], int] | None = None
    generation = 0
    if leases is not None and isinstance(store, RedisLimitStore):
        generation = exchange.app.cache.generation
        room = exchange.app.ahead.room(key.id, generation)
        ids = leases.size(key.id, reserved_tokens, reservation, generation, room)
        if ids:
            lease = (ids, leases.at())
    held = [reservation]
    leased = [False]

    async def acquire(money: Reservation | None) -> Admission:
        held[0] = money
        if lease is not None and isinstance(store, RedisLimitStore):
            admission = await store.acquire(
                scopes, exchange.request_id, reserved_tokens, hold + LEASE_SECONDS, money, lease
            )
            leased[0] = admission.allowed
            if admission.allowed or admission.refused == "seed":
                return admission
            # The lease did not fit (others used the room meanwhile): the request alone
            # may still, and must not be refused for ids it never asked for.
        return await store.acquire(scopes, exchange.request_id, reserved_tokens, hold, money)

    try:
        if store is shared.limit_store():
            admission = await spend.admit(store, key, acquire, reservation)
        else:  # pre-admitted by the fail-open fallback: it holds no money
            admission = await acquire(None)
    except RedisError as exc:
        store = _fallback_store(exc)
        admission = await store.acquire(scopes, exchange.request_id, reserved_tokens, hold)
        if pre is not None:  # its slot is in Redis: best effort, else it expires
            await intake_release(exchange, key, pre)
    finally:
        if lease is not None and leases is not None:
            leases.answered(key.id)
    if lease is not None and leased[0] and admission.allowed and store is shared.limit_store():
        assert leases is not None and isinstance(store, RedisLimitStore)
        leases.add(
            key.id,
            store,
            scopes,
            reserved_tokens,
            held[0],
            admission,
            lease[0],
            generation,
            hold + LEASE_SECONDS,
        )
        # Told what is left as if the lease's other ids were not counted yet.
        counted = admission
        admission = shifted(admission, -len(lease[0]), reserved_tokens, held[0])
        admission.room = counted.room
    exchange.extra_headers.extend(admission.headers())
    if admission.refused == "funds":
        metrics.observe_limit_rejection("insufficient_quota")
        raise spend.refusal(admission.refused_scope, key.spend.prepaid)
    if not admission.allowed:
        metrics.observe_limit_rejection(admission.refused)
        raise limit_error(admission)
    return admission, store


def limit_error(admission: Admission) -> errors.RelayError:
    window = admission.refused_window
    if admission.refused == "plan" and window is not None:
        what = "tokens" if window.kind == "tokens" else "spend (micro-units)"
        return errors.RelayError(
            429,
            f"Your plan's limit of {window.cap} {what} per {window.length} is reached. "
            f"Please try again in {admission.retry_after}s.",
            type="tokens" if window.kind == "tokens" else "requests",
            code="plan_limit_exceeded",
            headers=((b"retry-after", str(admission.retry_after).encode()),),
        )
    described = {
        "requests": ("requests per minute", admission.limit_requests),
        "tokens": ("tokens per minute", admission.limit_tokens),
        "concurrency": ("concurrent requests", None),
        "daily_tokens": ("tokens per day", None),
    }[admission.refused]
    limit = f" (limit {described[1]})" if described[1] else ""
    return errors.RelayError(
        429,
        f"Rate limit reached for {described[0]}{limit}. "
        f"Please try again in {admission.retry_after}s.",
        type="tokens" if "tokens" in admission.refused else "requests",
        code="rate_limit_exceeded",
        headers=((b"retry-after", str(admission.retry_after).encode()),),
    )
