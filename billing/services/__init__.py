"""Billing workflows, one module per concern; the public functions are re-exported here.

Every function is keyword-only; those a person triggers write an AuditEntry in the same
transaction as the change.
"""

from __future__ import annotations

from billing.services.budgets import budget_alert_deliver, budget_check
from billing.services.catalog import CatalogImport, price_catalog_import
from billing.services.invoices import (
    invoice_drafts_refresh,
    invoice_generate,
    invoice_issue,
    invoice_mark_paid,
    invoice_void,
)
from billing.services.keys import api_key_issue
from billing.services.ledger import (
    account_adjust,
    account_refund,
    account_topup,
    redemption_code_create,
    redemption_code_redeem,
    usage_charge_post,
    usage_charges_advance,
)
from billing.services.plans import (
    plan_charge_post,
    plan_create,
    plan_update,
    plans_renew,
    subscription_cancel,
    subscription_create,
)
from billing.services.prices import (
    OPTIONAL_PRICE_FIELDS,
    billing_account_create,
    billing_account_update,
    key_quota_set,
    model_price_set,
    price_list_create,
    price_list_set_markup,
    tenant_defaults_set,
)
from billing.services.retention import usage_events_prune
from billing.services.rollups import rollup_recompute, rollups_advance
from billing.services.usage import usage_event_row_cleaned, usage_events_insert

__all__ = [
    "OPTIONAL_PRICE_FIELDS",
    "CatalogImport",
    "account_adjust",
    "account_refund",
    "account_topup",
    "api_key_issue",
    "billing_account_create",
    "billing_account_update",
    "budget_alert_deliver",
    "budget_check",
    "invoice_drafts_refresh",
    "invoice_generate",
    "invoice_issue",
    "invoice_mark_paid",
    "invoice_void",
    "key_quota_set",
    "model_price_set",
    "plan_charge_post",
    "plan_create",
    "plan_update",
    "plans_renew",
    "price_catalog_import",
    "price_list_create",
    "price_list_set_markup",
    "redemption_code_create",
    "redemption_code_redeem",
    "rollup_recompute",
    "rollups_advance",
    "subscription_cancel",
    "subscription_create",
    "tenant_defaults_set",
    "usage_charge_post",
    "usage_charges_advance",
    "usage_event_row_cleaned",
    "usage_events_insert",
    "usage_events_prune",
]
