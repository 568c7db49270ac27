"""Spend reservations: what a request may cost at worst, and what it is held against.

A request is held against every *money scope* that limits it:

- ``t<tenant>:funds``: a prepaid tenant's balance, or a postpaid tenant's credit limit;
- ``t<tenant>:budget:<YYYYMM>``: a tenant's monthly budget, when it is a hard stop;
- ``k<key>:total`` and ``k<key>:day:<YYYYMMDD>`` / ``k<key>:month:<YYYYMM>``: an API
  key's spend quota, in total and per UTC period.

Each scope's base is seeded from the database (``billing.pricing``) the first time a
relay process needs it, again when the relay's caches change generation (a top-up, a new
credit limit, a quota edit all bump it), and every ``RELAY_SPEND_RESEED_SECONDS``; in
between, ``relay.limits`` keeps the running figures in Redis. Amounts are retail
micro-units of the tenant's currency.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DatabaseError, close_old_connections

from billing.pricing import (
    PricePair,
    account_spending_limit,
    key_spending_limit,
    worst_case_cost_micros,
)
from portal import invalidation
from relay import errors
from relay.limits import LimitStore, Reservation

if TYPE_CHECKING:
    from relay.snapshot import KeyInfo

logger = logging.getLogger(__name__)

# The base of a scope that turned out to have no limit (it was lifted meanwhile): large,
# yet exact in Redis's Lua numbers (doubles).
UNLIMITED_MICROS = 2**52


@dataclass(frozen=True, slots=True)
class SpendShape:
    """Which money scopes limit a key's requests (loaded with the key)."""

    funds: bool = False  # prepaid, or postpaid with a credit limit
    prepaid: bool = False
    budget: bool = False  # a monthly budget that refuses requests once spent
    key_total: bool = False
    key_period: str = ""  # "day", "month" or "" (no per-period quota)

    def any(self) -> bool:
        return self.funds or self.budget or self.key_total or bool(self.key_period)


def scope_names(key: KeyInfo, now: datetime) -> tuple[str, ...]:
    shape = key.spend
    names: list[str] = []
    if shape.funds:
        names.append(f"t{key.tenant_id}:funds")
    if shape.budget:
        names.append(f"t{key.tenant_id}:budget:{now:%Y%m}")
    if shape.key_total:
        names.append(f"k{key.id}:total")
    if shape.key_period == "day":
        names.append(f"k{key.id}:day:{now:%Y%m%d}")
    elif shape.key_period == "month":
        names.append(f"k{key.id}:month:{now:%Y%m}")
    return tuple(names)


def reservation(
    key: KeyInfo,
    output_tokens: int,
    body_bytes: int,
    price: PricePair,
    generation: int,
    model: str = "",
    *,
    input_images: int = 0,
    generates_images: bool = False,
    web_searches: int = 0,
    fetched_tokens: int = 0,
) -> Reservation | None:
    """The hold for a request of ``body_bytes`` with ``input_images`` pictures that may be
    billed ``output_tokens`` at worst (its dialect's figure: its own cap on every choice,
    else the model's, else ``RELAY_RESERVE_OUTPUT_TOKENS``), with the plan windows that
    count ``model``. Only a request that asks for pictures (``generates_images``) can be
    billed generated images, each costing at least an output token; ``web_searches`` is
    the most searches the provider may bill it; ``fetched_tokens`` the prompt tokens
    allowed beyond those its bytes bound: inputs the provider fetches by URL, and what
    the provider's own tools may add and its tool loop read again
    (``relay.dialects.fees.ToolLoop``)."""
    windows = tuple(w for w in key.plan_windows if w.counts(model))
    if not key.spend.any() and not windows:
        return None
    worst = worst_case_cost_micros(
        price.retail,
        prompt_bytes=body_bytes + fetched_tokens,
        max_output_tokens=output_tokens,
        input_images=input_images,
        output_images=output_tokens if generates_images else 0,
        web_searches=web_searches,
    )
    return Reservation(
        scopes=scope_names(key, datetime.now(UTC)) if key.spend.any() else (),
        worst_micros=worst,
        min_generation=generation,
        fresh_after=time.time() - settings.RELAY_SPEND_RESEED_SECONDS,
        windows=windows,
    )


def load_bases(tenant_id: int, key_id: int, names: tuple[str, ...]) -> list[int]:
    """What each scope could still spend, by the database, right now."""
    close_old_connections()
    tenant = account_spending_limit(tenant_id) if any(n[0] == "t" for n in names) else None
    quota = key_spending_limit(key_id) if any(n[0] == "k" for n in names) else None
    bases: list[int | None] = []
    for name in names:
        kind = name.split(":")[1]
        if kind == "funds":
            bases.append(tenant.available_micros if tenant else None)
        elif kind == "budget":
            bases.append(tenant.budget_remaining_micros if tenant and tenant.hard_stop else None)
        elif kind == "total":
            bases.append(quota.total_remaining_micros if quota else None)
        else:
            same_period = quota is not None and quota.period == kind
            bases.append(quota.period_remaining_micros if quota and same_period else None)
    return [UNLIMITED_MICROS if base is None else base for base in bases]


# Seeds running in this process, so that a burst of requests on cold scopes asks the
# database once rather than once per request.
_seeding: dict[tuple[Any, ...], asyncio.Future[bool]] = {}


async def seed(
    store: LimitStore, key: KeyInfo, names: tuple[str, ...], reservation: Reservation
) -> None:
    """(Re)seed the scopes' bases from the database, once per burst.

    The generation and the written totals are read *before* the database: an event
    written meanwhile is then counted twice (refusing a little early, until the next
    seed), never not at all. A base another request seeded while this one read is
    fresher than ours and is kept (see ``LimitStore.seed``).
    """
    loop = asyncio.get_running_loop()
    token = (id(loop), id(store), key.id, names, reservation.min_generation)
    running = _seeding.get(token)
    if running is not None and await asyncio.shield(running):
        return
    # Nobody is seeding these scopes, or the one who was failed: this request does.
    future: asyncio.Future[bool] = loop.create_future()
    _seeding.setdefault(token, future)
    succeeded = False
    try:
        await _seed(store, key, names, reservation)
        succeeded = True
    finally:
        if _seeding.get(token) is future:
            del _seeding[token]
        future.set_result(succeeded)


async def _seed(
    store: LimitStore, key: KeyInfo, names: tuple[str, ...], reservation: Reservation
) -> None:
    generation = max(await invalidation.acurrent_generation(), reservation.min_generation)
    written = await store.written_totals(names)
    bases = await sync_to_async(load_bases)(key.tenant_id, key.id, names)
    await store.seed(names, bases, written, generation, reservation.fresh_after)


async def admit(
    store: LimitStore, key: KeyInfo, acquire: Any, reservation: Reservation | None
) -> Any:
    """Run ``acquire(reservation)``, seeding money scopes it asks for first.

    With the database down, a scope that has a base (however old) keeps being served on
    it; only a scope never seeded refuses the request.
    """
    admission = await acquire(reservation)
    if admission.refused != "seed" or reservation is None:
        return admission
    try:
        await seed(store, key, admission.unseeded, reservation)
    except DatabaseError:
        logger.warning("seeding spend limits failed; using the last figures", exc_info=True)
        stale_ok = replace(reservation, min_generation=0, fresh_after=0.0)
        admission = await acquire(stale_ok)
        if admission.refused == "seed":
            raise errors.RelayError(
                503,
                "The gateway cannot reach its database right now; retry shortly.",
                type="server_error",
                code="database_unavailable",
                headers=((b"retry-after", b"2"),),
            ) from None
        return admission
    return await acquire(reservation)


def refusal(scope: str, prepaid: bool) -> errors.RelayError:
    """OpenAI's answer to a request nobody will pay for: 429 ``insufficient_quota``."""
    kind = scope.split(":")[1]
    if kind == "funds" and prepaid:
        message = (
            "You exceeded your current quota: your balance cannot cover this request. "
            "Please top up or check your plan and billing details."
        )
    elif kind == "funds":
        message = (
            "You exceeded your current quota: this request would exceed your credit "
            "limit. Please check your plan and billing details."
        )
    elif kind == "budget":
        message = "You exceeded your current quota: your monthly budget is spent."
    else:
        message = "You exceeded your current quota: this API key's spend quota is used up."
    return errors.RelayError(429, message, type="insufficient_quota", code="insufficient_quota")


def check_searches(searches: int, price: PricePair) -> None:
    """Refuse a request that lets the provider search the web (``searches``: the most it
    may run) on a model without a price per search on either side, the tenant's or the
    platform's, unless the operator lets web search through unmetered
    (``RELAY_UNMETERED_FEATURES``): the provider would bill every search to the operator."""
    if not searches or "web_search" in settings.RELAY_UNMETERED_FEATURES:
        return
    if not (price.retail.offers("web_search") and price.wholesale.offers("web_search")):
        raise errors.invalid_request(
            "The built-in tool 'web_search' is not offered here for this model: it has no "
            "price per search.",
            param="tools",
        )
