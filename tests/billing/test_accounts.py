"""Accounts and prices services, the relay's reload signal, concurrent invoice numbering,
and the hand-off with the relay's usage writer."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine
from django.core.exceptions import ValidationError
from django.db import connection

from billing.models import BillingAccount, PriceList, UsageEvent
from billing.pricing import event_cost_fields, tenant_price_table
from billing.services import (
    billing_account_create,
    billing_account_update,
    invoice_generate,
    invoice_issue,
)
from billing.services.prices import price_changes_announce
from portal import invalidation
from portal.models import AuditEntry, CatalogModel, Organization
from tests.billing.conftest import MARCH, EventFactory, Market, make_key, record_event

APRIL = datetime(2026, 4, 2, tzinfo=UTC)


@pytest.mark.django_db
def test_account_create_and_update_are_audited(market: Market, reseller_admin: Any) -> None:
    account = billing_account_create(
        organization=market.tenant, mode="prepaid", actor=reseller_admin
    )
    billing_account_update(
        account=account, credit_limit_micros=10, monthly_budget_micros=99, actor=reseller_admin
    )

    entry = AuditEntry.objects.get(action="billing_account.update")
    assert entry.actor == reseller_admin
    assert entry.data == {
        "credit_limit_micros": {"before": None, "after": 10},
        "monthly_budget_micros": {"before": None, "after": 99},
    }
    assert BillingAccount.objects.get(pk=account.pk).monthly_budget_micros == 99


@pytest.mark.django_db
def test_a_tenant_is_priced_only_by_its_own_resellers_lists(market: Market) -> None:
    with pytest.raises(ValidationError):
        billing_account_create(
            organization=market.tenant, price_list=market.other_list, actor="test"
        )
    with pytest.raises(ValidationError):
        billing_account_create(organization=market.platform, actor="test")
    with pytest.raises(ValidationError):
        billing_account_create(organization=market.tenant, alert_thresholds=["x"], actor="test")
    with pytest.raises(TypeError):
        billing_account_create(organization=market.tenant, balance=5, actor="test")
    assert not BillingAccount.objects.exists()


@pytest.mark.django_db
def test_a_future_price_is_announced_when_it_starts(
    market: Market, django_capture_on_commit_callbacks: Any
) -> None:
    from tests.billing.conftest import set_prices

    with time_machine.travel(APRIL, tick=False):
        price_changes_announce()  # first run: sets the watermark
        set_prices(market.wholesale, {"model-a": (1, 1, 1, 0)}, APRIL + timedelta(hours=1))
    with time_machine.travel(APRIL + timedelta(minutes=30), tick=False):
        assert price_changes_announce() is False
    before = invalidation.current_generation()
    with (
        time_machine.travel(APRIL + timedelta(hours=1, minutes=1), tick=False),
        django_capture_on_commit_callbacks(execute=True),
    ):
        assert price_changes_announce() is True
    assert invalidation.current_generation() > before


@pytest.mark.django_db(transaction=True)
def test_concurrent_issues_get_distinct_sequential_numbers(market: Market) -> None:
    tenants = [
        Organization.objects.create(
            name=f"T{n}", slug=f"t{n}", kind="tenant", parent=market.reseller
        )
        for n in range(6)
    ]
    with time_machine.travel(APRIL, tick=False):
        for tenant in tenants:
            record_event(
                tenant=tenant,
                api_key=make_key(tenant, "k"),
                model="model-a",
                created_at=MARCH.start_at,
                prompt_tokens=1000,
            )
        drafts = [invoice_generate(customer=tenant, period=MARCH) for tenant in tenants]
    barrier = threading.Barrier(len(drafts))
    failures: list[str] = []

    def issue(invoice: Any) -> None:
        try:
            barrier.wait()
            invoice_issue(invoice=invoice, actor="race")
        except Exception as exc:
            failures.append(repr(exc))
        finally:
            connection.close()

    threads = [threading.Thread(target=issue, args=(draft,)) for draft in drafts]
    with time_machine.travel(APRIL, tick=False):  # the clock is process-wide
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)

    assert failures == []
    numbers = sorted(invoice.number for invoice in market.reseller.issued_invoices.all())
    assert numbers == [f"RESELLER-2026-{n:06d}" for n in range(1, 7)]


@pytest.mark.django_db
def test_the_relay_writer_path_records_prices_and_write_time(
    market: Market, event: EventFactory
) -> None:
    """The relay builds UsageEvent(**fields) and bulk-creates them: the price snapshot from
    event_cost_fields fits, and recorded_at is the time the row was built."""
    pair = tenant_price_table(market.tenant.pk)["model-b"]
    usage = {
        "prompt_tokens": 900,
        "cached_tokens": 0,
        "completion_tokens": 90,
        "reasoning_tokens": 0,
    }
    with time_machine.travel(APRIL, tick=False):
        built = UsageEvent(
            request_id="req-relay-1",
            created_at=APRIL - timedelta(seconds=3),
            tenant_id=market.tenant.pk,
            api_key_id=market.keys[market.tenant.pk][0].pk,
            model="model-b",
            status_code=200,
            total_latency_ms=3000,
            **usage,
            **event_cost_fields(pair, **usage),
        )
        UsageEvent.objects.bulk_create([built], ignore_conflicts=True)
    stored = UsageEvent.objects.get(request_id="req-relay-1")
    assert stored.recorded_at == APRIL
    assert stored.reseller_id == market.reseller.pk
    assert stored.cost_retail_micros == (900 * 3_750_000 + 90 * 15_000_000 + 500_000) // 10**6


@pytest.mark.django_db
def test_catalog_models_without_any_price_are_absent(market: Market) -> None:
    CatalogModel.objects.create(public_id="unpriced")
    assert "unpriced" not in tenant_price_table(market.direct_tenant.pk)
    assert PriceList.objects.filter(owner=market.platform, is_default=True).count() == 1
