"""Celery tasks for billing: thin wrappers that take ids or labels and call a service.

The beat schedule that drives the periodic ones is in ``config/celery_app.py``.
"""

from __future__ import annotations

import functools
from typing import Any

from celery import Task
from django.db import transaction

from billing import services
from billing.models import BillingAccount
from billing.periods import Period
from billing.services.auto_recharge import auto_recharge_accounts, auto_recharge_check
from billing.services.budgets import budget_accounts
from billing.services.invoices import invoice_customers
from billing.services.plans import plans_renew
from billing.services.prices import price_changes_announce
from portal.background import app
from portal.models import Organization


def _same_queue(task: Task) -> dict[str, Any]:
    """Options that send a fanned-out task to the queue its parent came from."""
    delivery = getattr(task.request, "delivery_info", None) or {}
    queue = delivery.get("routing_key")
    return {"queue": queue} if queue else {}


@app.task(name="billing.rollups_advance")
def rollups_advance_task() -> int:
    """Fold newly recorded usage events into the hourly and daily rollups."""
    return services.rollups_advance().total


@app.task(name="billing.rollup_recompute")
def rollup_recompute_task(start: str, end: str) -> int:
    """Recompute the rollups of ``[start, end)`` (ISO 8601 datetimes)."""
    from django.utils.dateparse import parse_datetime

    start_at, end_at = parse_datetime(start), parse_datetime(end)
    if start_at is None or end_at is None:
        raise ValueError("start and end must be ISO 8601 datetimes")
    return services.rollup_recompute(start=start_at, end=end_at).total


@app.task(name="billing.usage_charges_advance")
def usage_charges_advance_task() -> int:
    """Post a ledger charge for each billable usage event not charged yet."""
    return services.usage_charges_advance()


@app.task(name="billing.budget_checks", bind=True)
def budget_checks_task(self: Task) -> int:
    """Check this month's spend of every account with a budget, one task per account."""
    accounts = budget_accounts()
    for account_id in accounts:
        budget_check_task.apply_async((account_id,), **_same_queue(self))
    return len(accounts)


@app.task(name="billing.budget_check")
def budget_check_task(account_id: int) -> int:
    """Record the account's newly crossed thresholds, then have each alert delivered once
    the check has committed."""
    account = BillingAccount.objects.select_related("organization").get(pk=account_id)
    alerts = services.budget_check(account=account)
    for alert in alerts:
        transaction.on_commit(functools.partial(budget_alert_deliver_task.delay, alert.pk))
    return len(alerts)


@app.task(name="billing.budget_alert_deliver")
def budget_alert_deliver_task(alert_id: int) -> bool:
    return services.budget_alert_deliver(alert_id=alert_id)


@app.task(name="billing.invoice_drafts", bind=True)
def invoice_drafts_task(self: Task, period: str | None = None) -> int:
    """Create or refresh the drafts of ``period`` (``YYYY-MM``, or ``current``; default
    last month) for every customer with usage in it, one task per customer."""
    if period == "current":
        month = Period.current()
    else:
        month = Period.parse(period) if period else Period.current().previous()
    customers = invoice_customers(period=month)
    for customer_id in customers:
        invoice_draft_task.apply_async((customer_id, month.label), **_same_queue(self))
    return len(customers)


@app.task(name="billing.invoice_draft")
def invoice_draft_task(customer_id: int, period: str) -> int | None:
    customer = Organization.objects.select_related("parent").get(pk=customer_id)
    invoice = services.invoice_generate(customer=customer, period=Period.parse(period))
    return invoice.pk if invoice else None


@app.task(name="billing.plans_renew")
def plans_renew_task() -> int:
    """Charge every active plan subscription for the current month, once."""
    return plans_renew()


@app.task(name="billing.prune_usage_events")
def prune_usage_events_task() -> int:
    """Delete raw usage events past retention (BILLING_RAW_RETENTION_DAYS)."""
    return services.usage_events_prune()


@app.task(name="billing.price_changes_announce")
def price_changes_announce_task() -> bool:
    """Make relay processes reload when a price set ahead of time comes into force."""
    return price_changes_announce()


@app.task(name="billing.auto_recharge_checks", bind=True)
def auto_recharge_checks_task(self: Task) -> int:
    """Check every account with auto-recharge on, one task per account."""
    accounts = auto_recharge_accounts()
    for account_id in accounts:
        auto_recharge_check_task.apply_async((account_id,), **_same_queue(self))
    return len(accounts)


@app.task(name="billing.auto_recharge_check")
def auto_recharge_check_task(account_id: int) -> int | None:
    """Charge the saved card once if the balance crossed below its threshold."""
    payment = auto_recharge_check(account_id=account_id)
    return payment.pk if payment else None
