"""Billing's reads, one home for each: balances, spend and margin (``balances``), the
money pages' lists (``dashboard``) and usage series and tenant lists (``usage``).

The money arithmetic other apps and billing's own services call is re-exported here.
"""

from __future__ import annotations

from billing.selectors.balances import (
    BILLABLE,
    MarginRow,
    UsageScope,
    account_balance_micros,
    floor_hour,
    organization_balance,
    organization_invoices,
    period_spend_micros,
    reseller_margin,
    settled_before,
    spend_micros,
    unposted_usage_micros,
    usage_scope,
    watermark_margin,
    watermark_position,
)

__all__ = [
    "BILLABLE",
    "MarginRow",
    "UsageScope",
    "account_balance_micros",
    "floor_hour",
    "organization_balance",
    "organization_invoices",
    "period_spend_micros",
    "reseller_margin",
    "settled_before",
    "spend_micros",
    "unposted_usage_micros",
    "usage_scope",
    "watermark_margin",
    "watermark_position",
]
