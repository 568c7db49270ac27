"""The Celery application; the beat schedule is defined here and only here.

Beat schedule (UTC); every task is idempotent, so a missed or doubled run is harmless:

- relay.channels_health_check, every minute: test channels, resume recovered ones;
- billing.usage_charges_advance, every minute: one ledger charge per billable usage event;
- billing.price_changes_announce, every minute: relays reload when a future price starts;
- billing.rollups_advance, every 5 minutes: fold new usage events into hourly/daily rollups;
- billing.budget_checks, every 10 minutes: budget alerts, once per threshold and month;
- billing.invoice_drafts, daily 02:15: create or refresh last month's draft invoices;
- billing.prune_usage_events, daily 03:30: drop raw events past BILLING_RAW_RETENTION_DAYS.
"""

from __future__ import annotations

import os

from celery import Celery
from celery.schedules import crontab

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("tollgate")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

app.conf.beat_schedule = {
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
    "billing-budget-checks": {
        "task": "billing.budget_checks",
        "schedule": crontab(minute="*/10"),
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
