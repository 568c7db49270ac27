"""The prices a tenant is charged, now and as scheduled, and what it may still spend.

The relay calls ``tenant_price_schedule`` once per tenant per cache generation: the prices
in force and those already scheduled, so that a change takes effect at its moment on
every process without a reload. ``account_spending_limit`` and ``key_spending_limit`` seed
its spend reservations. The arithmetic is in ``billing.pricing.arithmetic``.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.core.exceptions import ObjectDoesNotExist
from django.db.models import OuterRef, Q, Subquery
from django.utils import timezone

from billing.models import BillingAccount, KeyQuota, ModelPrice, PriceList, TenantDefaults
from billing.models.prices import default_currency
from billing.periods import Period
from billing.pricing.arithmetic import DIMENSIONS, UNSET, PricePair, Prices, price_attribute
from billing.selectors import balances as selectors
from portal.models import Organization

# How many scheduled changes a tenant's schedule holds ahead; later ones are read when the
# relay re-reads its caches (every RELAY_CACHE_REVALIDATE_SECONDS).
MAX_SCHEDULED_CHANGES = 16


@dataclass(frozen=True, slots=True)
class SpendingLimit:
    """What a tenant may still spend, for the relay's reservation (see
    ``account_spending_limit``). Amounts in micro-units of ``currency``; None: no limit."""

    mode: str  # "prepaid" or "postpaid"
    currency: str
    available_micros: int | None
    budget_remaining_micros: int | None
    hard_stop: bool


@dataclass(frozen=True, slots=True)
class KeySpendingLimit:
    """What one API key may still spend under its quota (retail micro-units); None: no
    limit of that kind. Either figure may be zero or negative once the quota is spent."""

    total_remaining_micros: int | None
    period: str  # "day" or "month" (UTC)
    period_remaining_micros: int | None


# --- Lookups --------------------------------------------------------------------------------


class PriceSchedule(Mapping[str, PricePair]):
    """A tenant's price table in force now and at each scheduled change, by public id.

    As a mapping it answers with the table in force at the moment of the lookup; ``at``
    answers for a given moment (a request's admission time), so every relay process
    switches to a scheduled price at its moment, to the microsecond, with no reload.
    """

    __slots__ = ("_starts", "_tables")

    def __init__(
        self, current: dict[str, PricePair], changes: list[tuple[datetime, dict[str, PricePair]]]
    ) -> None:
        changes = sorted(changes, key=lambda change: change[0])
        self._starts = [start.timestamp() for start, _ in changes]
        self._tables = [current, *(table for _, table in changes)]

    def table(self, moment: datetime | None = None) -> dict[str, PricePair]:
        when = (moment or datetime.now(UTC)).timestamp()
        return self._tables[bisect.bisect_right(self._starts, when)]

    def at(self, public_id: str, moment: datetime) -> PricePair | None:
        return self.table(moment).get(public_id)

    def __getitem__(self, public_id: str) -> PricePair:
        return self.table()[public_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self.table())

    def __len__(self) -> int:
        return len(self.table())

    @property
    def scheduled(self) -> int:
        return len(self._starts)


def tenant_price_schedule(tenant_id: int, at: datetime | None = None) -> PriceSchedule:
    """The tenant's prices at ``at`` (default now) and at each of its next scheduled
    changes (up to MAX_SCHEDULED_CHANGES). Four queries, plus one per change."""
    at = at or timezone.now()
    terms = _tenant_lists(tenant_id)
    if terms is None:
        return PriceSchedule({}, [])
    moments = list(
        ModelPrice.objects.filter(
            price_list_id__in={terms[0].pk, terms[1].pk}, effective_from__gt=at
        )
        .order_by("effective_from")
        .values_list("effective_from", flat=True)
        .distinct()[:MAX_SCHEDULED_CHANGES]
    )
    changes = [(moment, _table(terms, moment)) for moment in moments]
    return PriceSchedule(_table(terms, at), changes)


def tenant_price_table(tenant_id: int, at: datetime | None = None) -> dict[str, PricePair]:
    """Every model the tenant can be charged for at ``at`` (default now), by public id.

    Wholesale is the platform's default list; retail is the tenant's account's list, or
    else its parent's default list (for a tenant directly under the platform, the
    wholesale list itself). A retail list with a markup prices every wholesale-priced
    model it does not price explicitly at wholesale plus the markup, rounded half up
    per price and dimension. A model lacking a wholesale or a retail price, or priced in two
    currencies, is absent: the relay must refuse it, never serve it free. Three queries,
    whatever the number of models.
    """
    terms = _tenant_lists(tenant_id)
    if terms is None:
        return {}
    return _table(terms, at or timezone.now())


Terms = tuple[PriceList, PriceList, int | None]  # wholesale list, retail list, reseller id


def _tenant_lists(tenant_id: int) -> Terms | None:
    tenant = (
        Organization.objects.select_related("parent", "billing_account")
        .filter(pk=tenant_id, kind=Organization.Kind.TENANT)
        .first()
    )
    if tenant is None or tenant.parent is None:
        return None
    try:
        account_list_id = tenant.billing_account.price_list_id
    except ObjectDoesNotExist:
        account_list_id = None
    lists = {
        price_list.pk: price_list
        for price_list in PriceList.objects.select_related("owner").filter(
            Q(owner__kind=Organization.Kind.PLATFORM, is_default=True)
            | Q(owner_id=tenant.parent_id, is_default=True)
            | Q(pk=account_list_id or 0)
        )
    }
    wholesale_list = next(
        (pl for pl in lists.values() if pl.owner.kind == "platform" and pl.is_default), None
    )
    retail_list = lists.get(account_list_id or 0) or next(
        (pl for pl in lists.values() if pl.owner_id == tenant.parent_id and pl.is_default),
        None,
    )
    if wholesale_list is None or retail_list is None:
        return None
    if retail_list.currency != wholesale_list.currency:
        return None
    reseller_id = tenant.parent_id if tenant.parent.kind == Organization.Kind.RESELLER else None
    return wholesale_list, retail_list, reseller_id


def _table(terms: Terms, at: datetime) -> dict[str, PricePair]:
    wholesale_list, retail_list, reseller_id = terms
    prices = _current_prices({wholesale_list.pk, retail_list.pk}, at)
    wholesale = prices.get(wholesale_list.pk, {})
    retail = prices.get(retail_list.pk, {})
    table: dict[str, PricePair] = {}
    for model_id, wholesale_prices in wholesale.items():
        retail_prices = retail.get(model_id)
        if retail_prices is None and retail_list.markup_percent is not None:
            retail_prices = wholesale_prices.marked_up(retail_list.markup_percent)
        if retail_prices is not None:
            table[model_id] = PricePair(retail_prices, wholesale_prices, reseller_id)
    return table


# ModelPrice's price columns, in the order of Prices' fields.
PRICE_COLUMNS = {
    "input": "input_per_mtok",
    "cached_input": "cached_input_per_mtok",
    "output": "output_per_mtok",
    "request_fee": "request_fee_micros",
    "cache_write_5m": "cache_write_5m_per_mtok",
    "cache_write_1h": "cache_write_1h_per_mtok",
    "audio_input": "audio_input_per_mtok",
    "audio_output": "audio_output_per_mtok",
    "image_input": "image_input_per_mtok",
    "image_output": "image_output_per_mtok",
    "input_image": "input_image_micros",
    "output_image": "output_image_micros",
    "web_search": "web_search_micros",
}
_PER_IMAGE = ("input_image", "output_image")
_TIER_NAMES = {price_attribute(d) for d in DIMENSIONS}


def prices_of(price: ModelPrice, currency: str) -> Prices:
    """The resolved prices of one ModelPrice row, its long-context set included."""
    values: dict[str, Any] = {}
    for name, column in PRICE_COLUMNS.items():
        value = getattr(price, column)
        values[name] = (0 if name in _PER_IMAGE else UNSET) if value is None else value
    base = Prices(
        currency=currency,
        flex_percent=100 if price.flex_percent is None else price.flex_percent,
        priority_percent=100 if price.priority_percent is None else price.priority_percent,
        **values,
    )
    if price.long_context_above_tokens is None:
        return base
    tier: dict[str, Any] = {
        price_attribute(name): int(value)
        for name, value in (price.long_context_prices or {}).items()
        if price_attribute(name) in _TIER_NAMES and value is not None
    }
    return dataclasses.replace(
        base,
        long_context_above=price.long_context_above_tokens,
        long_context=dataclasses.replace(base, **tier),
    )


def _current_prices(list_ids: set[int], at: datetime) -> dict[int, dict[str, Prices]]:
    """The price in force at ``at`` per list and model: one query."""
    newest = (
        ModelPrice.objects.filter(
            price_list=OuterRef("price_list"), model=OuterRef("model"), effective_from__lte=at
        )
        .order_by("-effective_from")
        .values("pk")[:1]
    )
    rows = (
        ModelPrice.objects.filter(price_list__in=list_ids, effective_from__lte=at)
        .filter(pk=Subquery(newest))
        .select_related("price_list", "model")
        .only(
            "price_list__currency",
            "model__public_id",
            "flex_percent",
            "priority_percent",
            "long_context_above_tokens",
            "long_context_prices",
            *PRICE_COLUMNS.values(),
        )
    )
    result: dict[int, dict[str, Prices]] = {}
    for row in rows:
        prices = prices_of(row, row.price_list.currency)
        result.setdefault(row.price_list_id, {})[row.model.public_id] = prices
    return result


def account_spending_limit(tenant_id: int) -> SpendingLimit:
    """What the tenant may still spend, from the ledger and the usage events written.

    - ``available_micros``: prepaid, the balance (ledger entries minus usage events not
      yet posted to the ledger), which may be zero or negative; postpaid, the credit limit
      minus what is owed (unpaid and not yet invoiced usage), or None without a limit.
    - ``budget_remaining_micros``: the monthly budget (UTC calendar month) minus this
      month's retail spend, or None without a budget; may be negative.
    - ``hard_stop``: whether the budget refuses requests (else it only sends alerts).

    The figures count every usage event already in the database; requests in flight
    (reserved, or settled but not yet written by the relay's writer) are the relay's to
    subtract. A tenant without a billing account is on its seller's default terms:
    prepaid with nothing to spend unless the seller set others (``TenantDefaults``).
    """
    account = (
        BillingAccount.objects.select_related("organization")
        .filter(organization_id=tenant_id)
        .first()
    )
    if account is None:
        return _default_spending_limit(tenant_id)
    balance = selectors.account_balance_micros(account, include_unposted=True)
    if account.is_prepaid:
        available: int | None = balance
    elif account.credit_limit_micros is None:
        available = None
    else:
        available = account.credit_limit_micros + balance
    # The budget that refuses requests: the lower of the seller's and the tenant's own,
    # among those with a hard stop; else the one alerts measure (no refusal).
    hard = account.hard_budget_micros
    budget = hard if hard is not None else account.budget_micros
    remaining = None
    if budget is not None:
        remaining = budget - selectors.period_spend_micros(account=account, period=Period.current())
    return SpendingLimit(
        mode=account.mode,
        currency=account.currency,
        available_micros=available,
        budget_remaining_micros=remaining,
        hard_stop=hard is not None,
    )


def _default_spending_limit(tenant_id: int) -> SpendingLimit:
    """A tenant without an account: its seller's defaults, and nothing paid in yet."""
    defaults = TenantDefaults.objects.filter(
        seller_id=Organization.objects.filter(pk=tenant_id).values("parent_id")[:1]
    ).first()
    if defaults is None or defaults.mode == BillingAccount.Mode.PREPAID:
        return SpendingLimit("prepaid", default_currency(), 0, None, False)
    return SpendingLimit("postpaid", default_currency(), defaults.credit_limit_micros, None, False)


def key_spending_limit(api_key_id: int) -> KeySpendingLimit | None:
    """The key's remaining spend under its quota, or None when it has no quota.

    Like ``account_spending_limit``, it counts the usage events already written; the
    relay subtracts what it has in flight. At most seven queries.
    """
    quota = KeyQuota.objects.filter(api_key_id=api_key_id).first()
    if quota is None:
        return None
    events = Q(api_key_id=api_key_id)
    total = period = None
    if quota.total_limit_micros is not None:
        spent = selectors.spend_micros(events=events, cost_field="cost_retail_micros", start=None)
        total = quota.total_limit_micros - spent
    if quota.period_limit_micros is not None:
        now = timezone.now().astimezone(UTC)
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        if quota.period == KeyQuota.Period.MONTH:
            start = start.replace(day=1)
        spent = selectors.spend_micros(events=events, cost_field="cost_retail_micros", start=start)
        period = quota.period_limit_micros - spent
    return KeySpendingLimit(total, quota.period, period)
