"""Celery: the beat schedule names real tasks; the monthly drafts job is idempotent."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
import time_machine

from billing.models import Invoice, InvoiceLine, UsageEvent
from billing.tasks import invoice_drafts_task, rollups_advance_task, usage_charges_advance_task
from config.celery_app import app
from tests.billing.conftest import MARCH, Market, generate_month

APRIL_2 = datetime(2026, 4, 2, 2, 15, tzinfo=UTC)


def test_every_beat_entry_names_a_registered_task() -> None:
    app.loader.import_default_modules()
    schedule = app.conf.beat_schedule
    assert {entry["task"] for entry in schedule.values()} >= {
        "billing.rollups_advance",
        "billing.usage_charges_advance",
        "billing.budget_checks",
        "billing.invoice_drafts",
        "billing.prune_usage_events",
        "billing.price_changes_announce",
    }
    for entry in schedule.values():
        assert entry["task"] in app.tasks, entry["task"]


@pytest.mark.django_db
def test_monthly_drafts_for_every_customer_idempotently(market: Market, celery_eager: None) -> None:
    generate_month(market, count=120)
    with time_machine.travel(APRIL_2, tick=False):
        assert invoice_drafts_task.delay().get() == 5  # 3 tenants and 2 resellers
        first = list(Invoice.objects.order_by("id").values())
        lines = list(InvoiceLine.objects.order_by("id").values())
        invoice_drafts_task.delay("2026-03").get()

    assert list(Invoice.objects.order_by("id").values()) == first
    assert list(InvoiceLine.objects.order_by("id").values()) == lines
    assert {(i["customer_id"], i["period_start"]) for i in first} == {
        (c.pk, MARCH.start) for c in (*market.tenants, market.reseller, market.other_reseller)
    }
    for invoice in Invoice.objects.filter(kind="tenant"):
        events = UsageEvent.objects.filter(tenant=invoice.customer)
        assert invoice.total_micros == sum(e.cost_retail_micros for e in events)


@pytest.mark.django_db
def test_periodic_tasks_return_counts(market: Market, celery_eager: None, event: Any) -> None:
    with time_machine.travel(APRIL_2, tick=False):
        event(prompt_tokens=100)
        assert usage_charges_advance_task.delay().get() == 1
        assert rollups_advance_task.delay().get() == 2  # one hourly and one daily row
