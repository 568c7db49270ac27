"""What a request costs: the prices the relay loads (``lookups``) and the exact arithmetic
it uses (``arithmetic``). Callers import from here."""

from __future__ import annotations

from billing.pricing.arithmetic import (
    DIMENSIONS,
    LABELS,
    UNITS,
    Counts,
    PricePair,
    Prices,
    charges,
    cost_micros,
    event_cost_fields,
    event_cost_fields_of,
    quantities,
    total_micros,
    worst_case_cost_micros,
)
from billing.pricing.lookups import (
    KeySpendingLimit,
    PriceSchedule,
    SpendingLimit,
    account_spending_limit,
    key_spending_limit,
    prices_of,
    tenant_price_schedule,
    tenant_price_table,
)

__all__ = [
    "DIMENSIONS",
    "LABELS",
    "UNITS",
    "Counts",
    "KeySpendingLimit",
    "PricePair",
    "PriceSchedule",
    "Prices",
    "SpendingLimit",
    "account_spending_limit",
    "charges",
    "cost_micros",
    "event_cost_fields",
    "event_cost_fields_of",
    "key_spending_limit",
    "prices_of",
    "quantities",
    "tenant_price_schedule",
    "tenant_price_table",
    "total_micros",
    "worst_case_cost_micros",
]
