"""The Celery application; the beat schedule is defined here and only here.

Beat schedule (UTC); every task is idempotent, so a missed or doubled run is harmless:

- relay.channels_health_check, every minute: test channels, resume recovered ones;
- billing.usage_charges_advance, every minute: one ledger charge per billable usage event;
- billing.price_changes_announce, every minute: relays reload when a future price starts;
- billing.rollups_advance, every 5 minutes: fold new usage events into hourly/daily rollups;
- billing.auto_recharge_checks, every minute: charge saved cards whose balance fell low;
- billing.plans_renew, hourly: charge each plan subscription's month, once;
- billing.budget_checks, every 10 minutes: budget alerts, once per threshold and month;
- billing.invoice_drafts, daily 02:15: create or refresh last month's draft invoices;
- billing.prune_usage_events, daily 03:30: drop raw events past BILLING_RAW_RETENTION_DAYS.

With ``TOLLGATE_PERIODIC_SECONDS`` set (``bin/demo`` sets it), every job but pruning runs
that often instead, and the drafts job also drafts the current month: a demo shows its
money within a minute of traffic.

The worker and beat load this module (``celery -A config.celery_app``); nothing else needs
to. The app object itself is ``portal.background.app``, which the tasks bind to.
"""

from __future__ import annotations

from celery.schedules import crontab
from django.conf import settings

from portal.background import app

app.autodiscover_tasks()

PRODUCTION_SCHEDULE = {
    "relay-channels-health-check": {
        "task": "relay.channels_health_check",
        "schedule": crontab(minute="*"),
    },
    "billing-rollups": {
        "task": "billing.rollups_advance",
        "schedule": crontab(minute="*/5"),
    },
    "billing-usage-charges": {
        "task": "billing.usage_charges_advance",
        "schedule": crontab(minute="*"),
    },
    "billing-price-changes": {
        "task": "billing.price_changes_announce",
        "schedule": crontab(minute="*"),
    },
    "billing-auto-recharge": {
        "task": "billing.auto_recharge_checks",
        "schedule": crontab(minute="*"),
    },
    "billing-budget-checks": {
        "task": "billing.budget_checks",
        "schedule": crontab(minute="*/10"),
    },
    "billing-plans-renew": {
        "task": "billing.plans_renew",
        "schedule": crontab(minute=5),
    },
    # Daily rather than monthly: last month's drafts pick up late events until issued.
    "billing-invoice-drafts": {
        "task": "billing.invoice_drafts",
        "schedule": crontab(hour=2, minute=15),
    },
    "billing-prune-usage-events": {
        "task": "billing.prune_usage_events",
        "schedule": crontab(hour=3, minute=30),
    },
}


def demo_schedule(seconds: float) -> dict[str, dict[str, object]]:
    """The same jobs every ``seconds``; invoice drafts for this month as well as the last."""
    schedule: dict[str, dict[str, object]] = {
        name: {**entry, "schedule": seconds}
        for name, entry in PRODUCTION_SCHEDULE.items()
        if name != "billing-prune-usage-events"
    }
    schedule["billing-prune-usage-events"] = PRODUCTION_SCHEDULE["billing-prune-usage-events"]
    schedule["billing-invoice-drafts-current"] = {
        "task": "billing.invoice_drafts",
        "schedule": seconds,
        "args": ("current",),
    }
    return schedule


app.conf.beat_schedule = (
    demo_schedule(settings.TOLLGATE_PERIODIC_SECONDS)
    if settings.TOLLGATE_PERIODIC_SECONDS
    else PRODUCTION_SCHEDULE
)
