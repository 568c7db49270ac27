"""What a request costs: the price tables the relay loads and the exact arithmetic it uses.

Money is integer micro-units (1e-6 of the currency unit); token prices are micro-units
per million tokens. Nothing here uses floats.

Token semantics follow OpenAI's ``usage`` object (and the project's simulator, which
reports ``completion_tokens = visible + reasoning``):

- ``cached_tokens`` (``prompt_tokens_details.cached_tokens``) are a part of
  ``prompt_tokens``: they are billed at the cached-input price and only the rest at the
  input price;
- ``reasoning_tokens`` (``completion_tokens_details.reasoning_tokens``) are a part of
  ``completion_tokens``, so reasoning is billed at the output price by billing
  ``completion_tokens``, not added again. Should an upstream report more reasoning than
  completion tokens (it cannot under these semantics), the larger figure is billed.

The functions the relay calls are ``tenant_price_table`` (once per tenant per cache
generation), ``worst_case_cost_micros`` (to reserve), ``cost_micros`` and
``event_cost_fields`` (to settle and record), and ``account_spending_limit``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from django.core.exceptions import ObjectDoesNotExist
from django.db.models import OuterRef, Q, Subquery
from django.utils import timezone

from billing.models import BillingAccount, KeyQuota, ModelPrice, PriceList, TenantDefaults
from billing.models.prices import default_currency
from billing.money import PER_MILLION, div_ceil, div_round_half_up, percent_of
from billing.periods import Period
from billing.selectors import balances as selectors
from portal.models import Organization


@dataclass(frozen=True, slots=True)
class Prices:
    """Token prices in micro-units per million tokens; ``request_fee`` per request."""

    input: int
    cached_input: int
    output: int
    request_fee: int
    currency: str


@dataclass(frozen=True, slots=True)
class PricePair:
    """What the tenant pays (retail) and what the platform charges for it (wholesale).

    For a tenant directly under the platform the two are the same and ``reseller_id`` is
    None; otherwise ``reseller_id`` is the tenant's reseller, who keeps the difference.
    """

    retail: Prices
    wholesale: Prices
    reseller_id: int | None


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


# --- Arithmetic -----------------------------------------------------------------------------


def cost_micros(
    prices: Prices,
    *,
    prompt_tokens: int,
    cached_tokens: int,
    completion_tokens: int,
    reasoning_tokens: int,
) -> int:
    """The cost of one request in micro-units.

    ``cached_tokens`` are part of ``prompt_tokens`` (capped at it) and priced at
    ``cached_input``; the uncached rest at ``input``; ``max(completion_tokens,
    reasoning_tokens)`` at ``output`` (reasoning is already inside completion under
    OpenAI's semantics). The three products are summed exactly in
    micro-units * tokens, divided by one million and rounded once, half up (an exact half
    micro-unit rounds up), and the request fee is added. A request with no tokens at all
    (an error that reached no model) costs nothing, not even the fee.
    """
    prompt = max(prompt_tokens, 0)
    cached = min(max(cached_tokens, 0), prompt)
    output = max(completion_tokens, reasoning_tokens, 0)
    if prompt == 0 and output == 0:
        return 0
    scaled = (prompt - cached) * prices.input + cached * prices.cached_input
    scaled += output * prices.output
    return div_round_half_up(scaled, PER_MILLION) + prices.request_fee


def worst_case_cost_micros(prices: Prices, *, prompt_bytes: int, max_output_tokens: int) -> int:
    """An upper bound of ``cost_micros`` for a request not yet sent, for reservations.

    Byte-level BPE tokens are at least one byte each, so the byte length of the
    serialised request body bounds its prompt tokens (the JSON framing of each message
    outweighs the few tokens the chat template adds per message). Every prompt token is
    priced at the dearer of the input and cached prices, every possible output token at
    the output price; the division rounds up, so the bound is never below the real cost.
    """
    prompt = max(prompt_bytes, 0)
    output = max(max_output_tokens, 0)
    scaled = prompt * max(prices.input, prices.cached_input) + output * prices.output
    return div_ceil(scaled, PER_MILLION) + prices.request_fee


def event_cost_fields(
    pair: PricePair | None,
    *,
    prompt_tokens: int,
    cached_tokens: int,
    completion_tokens: int,
    reasoning_tokens: int,
) -> dict[str, Any]:
    """The price snapshot and costs to store on a UsageEvent, keyed by field name.

    With no ``pair`` (the model had no price for the tenant) the event is unpriced: blank
    currency, no prices, zero costs. An event without tokens costs zero but still keeps
    the prices that applied.
    """
    if pair is None:
        return {
            "currency": "",
            "reseller_id": None,
            **{f"{side}_{name}": None for side in ("retail", "wholesale") for name in _NAMES},
            "cost_retail_micros": 0,
            "cost_wholesale_micros": 0,
        }
    counts = {
        "prompt_tokens": prompt_tokens,
        "cached_tokens": cached_tokens,
        "completion_tokens": completion_tokens,
        "reasoning_tokens": reasoning_tokens,
    }
    return {
        "currency": pair.retail.currency,
        "reseller_id": pair.reseller_id,
        **_snapshot("retail", pair.retail),
        **_snapshot("wholesale", pair.wholesale),
        "cost_retail_micros": cost_micros(pair.retail, **counts),
        "cost_wholesale_micros": cost_micros(pair.wholesale, **counts),
    }


_NAMES = ("input_per_mtok", "cached_input_per_mtok", "output_per_mtok", "request_fee_micros")


def _snapshot(side: str, prices: Prices) -> dict[str, int]:
    values = (prices.input, prices.cached_input, prices.output, prices.request_fee)
    return {f"{side}_{name}": value for name, value in zip(_NAMES, values, strict=True)}


# --- Lookups --------------------------------------------------------------------------------


def tenant_price_table(tenant_id: int, at: datetime | None = None) -> dict[str, PricePair]:
    """Every model the tenant can be charged for at ``at`` (default now), by public id.

    Wholesale is the platform's default list; retail is the tenant's account's list, or
    else its parent's default list (for a tenant directly under the platform, the
    wholesale list itself). A retail list with a markup prices every wholesale-priced
    model it does not price explicitly at wholesale plus the markup, rounded half up
    per price. A model lacking a wholesale or a retail price, or priced in two currencies,
    is absent: the relay must refuse it, never serve it free. Three queries, whatever
    the number of models.
    """
    at = at or timezone.now()
    tenant = (
        Organization.objects.select_related("parent", "billing_account")
        .filter(pk=tenant_id, kind=Organization.Kind.TENANT)
        .first()
    )
    if tenant is None or tenant.parent is None:
        return {}
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
        return {}
    if retail_list.currency != wholesale_list.currency:
        return {}
    prices = _current_prices({wholesale_list.pk, retail_list.pk}, at)
    wholesale = prices.get(wholesale_list.pk, {})
    retail = prices.get(retail_list.pk, {})
    reseller_id = tenant.parent_id if tenant.parent.kind == Organization.Kind.RESELLER else None
    table: dict[str, PricePair] = {}
    for model_id, wholesale_prices in wholesale.items():
        retail_prices = retail.get(model_id)
        if retail_prices is None and retail_list.markup_percent is not None:
            retail_prices = _marked_up(wholesale_prices, retail_list.markup_percent)
        if retail_prices is not None:
            table[model_id] = PricePair(retail_prices, wholesale_prices, reseller_id)
    return table


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
        .values_list(
            "price_list_id",
            "price_list__currency",
            "model__public_id",
            "input_per_mtok",
            "cached_input_per_mtok",
            "output_per_mtok",
            "request_fee_micros",
        )
    )
    result: dict[int, dict[str, Prices]] = {}
    for list_id, currency, model_id, input_, cached, output, fee in rows:
        result.setdefault(list_id, {})[model_id] = Prices(input_, cached, output, fee, currency)
    return result


def _marked_up(prices: Prices, markup_percent: Decimal) -> Prices:
    factor = Decimal(100) + markup_percent
    return Prices(
        input=percent_of(prices.input, factor),
        cached_input=percent_of(prices.cached_input, factor),
        output=percent_of(prices.output, factor),
        request_fee=percent_of(prices.request_fee, factor),
        currency=prices.currency,
    )


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
