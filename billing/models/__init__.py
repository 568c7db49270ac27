"""Billing's models, one module per concern."""

from __future__ import annotations

from billing.models.accounts import BillingAccount, KeyQuota, TenantDefaults
from billing.models.alerts import BudgetAlert
from billing.models.invoices import Invoice, InvoiceLine, InvoiceSequence
from billing.models.ledger import LedgerEntry, RedemptionCode
from billing.models.payments import AutoRecharge, Payment, StripeAccount, StripeEvent
from billing.models.plans import Plan, PlanCharge, PlanWindow, Subscription
from billing.models.prices import ModelPrice, PriceList
from billing.models.rollups import BillingWatermark, UsageRollup
from billing.models.usage import UsageEvent

__all__ = [
    "AutoRecharge",
    "BillingAccount",
    "BillingWatermark",
    "BudgetAlert",
    "Invoice",
    "InvoiceLine",
    "InvoiceSequence",
    "KeyQuota",
    "LedgerEntry",
    "ModelPrice",
    "Payment",
    "Plan",
    "PlanCharge",
    "PlanWindow",
    "PriceList",
    "RedemptionCode",
    "StripeAccount",
    "StripeEvent",
    "Subscription",
    "TenantDefaults",
    "UsageEvent",
    "UsageRollup",
]
