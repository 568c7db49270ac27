"""Plans: defined by a seller, subscribed by its tenants, renewed once a month: one fee
posted and one credit granted per month, however often and wherever the renewal runs,
and the fee invoiced once."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any

import pytest
import time_machine
from django.core.exceptions import ValidationError
from django.db import connection

from billing.models import Invoice, InvoiceLine, LedgerEntry, PlanCharge, Subscription
from billing.periods import Period
from billing.selectors import account_balance_micros
from billing.services import (
    invoice_generate,
    invoice_issue,
    plan_create,
    plan_update,
    plans_renew,
    subscription_cancel,
    subscription_create,
)
from billing.services.common import account_for
from billing.tasks import plans_renew_task
from portal.models import AuditEntry
from portal.services import tenant_set_active
from tests.billing.conftest import Market

pytestmark = pytest.mark.django_db

MARCH_10 = datetime(2026, 3, 10, 9, tzinfo=UTC)
APRIL_1 = datetime(2026, 4, 1, 0, 5, tzinfo=UTC)
WINDOWS = [
    {"length": "5h", "kind": "tokens", "cap": 100_000},
    {"length": "7d", "kind": "spend", "cap": 5_000_000, "model_ids": ["model-b"]},
]


def make_plan(market: Market, **extra: Any) -> Any:
    fields = {
        "seller": market.reseller,
        "name": "Pro",
        "monthly_fee_micros": 20_000_000,
        "included_credit_micros": 5_000_000,
        "windows": WINDOWS,
        "actor": "test",
    }
    return plan_create(**{**fields, **extra})


def fees(market: Market) -> list[int]:
    return list(
        LedgerEntry.objects.filter(
            account__organization=market.tenant, kind=LedgerEntry.Kind.PLAN_FEE
        ).values_list("amount_micros", flat=True)
    )


def test_a_plan_holds_its_windows_and_refuses_bad_ones(market: Market) -> None:
    plan = make_plan(market)
    assert [(w.length, w.kind, w.cap, w.model_ids) for w in plan.windows.all()] == [
        ("5h", "tokens", 100_000, []),
        ("7d", "spend", 5_000_000, ["model-b"]),
    ]
    assert AuditEntry.objects.filter(action="plan.create").count() == 1
    for bad in (
        {"length": "2h", "cap": 1},
        {"length": "5h", "cap": 0},
        {"length": "5h", "kind": "requests", "cap": 5},
        {"length": "1d", "cap": 5, "model_ids": "model-a"},
    ):
        with pytest.raises(ValidationError):
            make_plan(market, name=f"bad {bad}", windows=[bad])
    with pytest.raises(ValidationError):
        make_plan(market, seller=market.tenant, name="Tenant plan")
    plan_update(plan=plan, actor="test", windows=[{"length": "1d", "cap": 7}])
    assert [str(w) for w in plan.windows.all()] == ["7 tokens / 1d"]


def test_subscribing_posts_the_month_once_and_renewal_the_next(market: Market) -> None:
    plan = make_plan(market)
    with time_machine.travel(MARCH_10, tick=False):
        subscription_create(tenant=market.tenant, plan=plan, actor="test")
        assert plans_renew() == 0  # March is paid already
        assert fees(market) == [-20_000_000]
        assert account_balance_micros(account_for(market.tenant)) == -15_000_000
    with time_machine.travel(APRIL_1, tick=False):
        assert plans_renew() == 1
        assert plans_renew() == 0
        assert plans_renew_task.apply().get() == 0
    assert fees(market) == [-20_000_000, -20_000_000]
    assert PlanCharge.objects.count() == 2
    credits = LedgerEntry.objects.filter(kind=LedgerEntry.Kind.PLAN_CREDIT)
    assert [c.amount_micros for c in credits] == [5_000_000, 5_000_000]


def test_a_deactivated_tenant_is_not_renewed_until_reactivated(market: Market) -> None:
    """The relay refuses a deactivated tenant (or one under a deactivated reseller): a
    month it spends so costs no fee; the first run after reactivation charges its month."""
    plan = make_plan(market)
    with time_machine.travel(MARCH_10, tick=False):
        subscription_create(tenant=market.tenant, plan=plan, actor="test")
        tenant_set_active(tenant=market.tenant, active=False, actor="test")
    with time_machine.travel(APRIL_1, tick=False):
        assert plans_renew() == 0
        with pytest.raises(ValidationError, match="reactivated"):
            subscription_create(tenant=market.tenant, plan=plan, actor="test")
    assert fees(market) == [-20_000_000]
    with time_machine.travel(datetime(2026, 5, 20, tzinfo=UTC), tick=False):
        tenant_set_active(tenant=market.tenant, active=True, actor="test")
        market.reseller.is_active = False
        market.reseller.save(update_fields=["is_active"])
        assert plans_renew() == 0  # its reseller is deactivated now
        with pytest.raises(ValidationError, match="reactivated"):
            subscription_create(tenant=market.tenant, plan=plan, actor="test")
        market.reseller.is_active = True
        market.reseller.save(update_fields=["is_active"])
        assert plans_renew() == 1
    months = PlanCharge.objects.order_by("period_start").values_list("period_start", flat=True)
    assert [m.month for m in months] == [3, 5]  # April, spent deactivated, is not charged
    assert fees(market) == [-20_000_000, -20_000_000]


def test_only_the_sellers_tenants_may_subscribe(market: Market) -> None:
    plan = make_plan(market)
    for customer in (market.other_tenant, market.direct_tenant, market.reseller):
        with pytest.raises(ValidationError):
            subscription_create(tenant=customer, plan=plan, actor="test")
    plan_update(plan=plan, actor="test", is_active=False)
    with pytest.raises(ValidationError):
        subscription_create(tenant=market.tenant, plan=plan, actor="test")


def test_a_cancelled_subscription_is_not_renewed(market: Market) -> None:
    plan = make_plan(market)
    with time_machine.travel(MARCH_10, tick=False):
        subscription = subscription_create(tenant=market.tenant, plan=plan, actor="test")
        subscription_cancel(subscription=subscription, actor="test")
        with pytest.raises(ValidationError):
            subscription_cancel(subscription=subscription, actor="test")
    with time_machine.travel(APRIL_1, tick=False):
        assert plans_renew() == 0
    assert fees(market) == [-20_000_000]


def test_switching_plans_ends_the_old_subscription(market: Market) -> None:
    basic = make_plan(market, name="Basic", monthly_fee_micros=1_000_000)
    pro = make_plan(market)
    with time_machine.travel(MARCH_10, tick=False):
        subscription_create(tenant=market.tenant, plan=basic, actor="test")
        subscription_create(tenant=market.tenant, plan=pro, actor="test")
    active = Subscription.objects.get(tenant=market.tenant, status="active")
    assert active.plan == pro
    with time_machine.travel(APRIL_1, tick=False):
        assert plans_renew() == 1
    assert sorted(fees(market)) == [-20_000_000, -20_000_000, -1_000_000]


def test_the_fee_and_credit_are_invoiced_once(market: Market) -> None:
    plan = make_plan(market)
    with time_machine.travel(MARCH_10, tick=False):
        subscription_create(tenant=market.tenant, plan=plan, actor="test")
    with time_machine.travel(APRIL_1, tick=False):
        plans_renew()
        march = invoice_generate(customer=market.tenant, period=Period.month(2026, 3))
        assert [(line.kind, line.amount_micros) for line in march.lines.all()] == [
            (InvoiceLine.Kind.PLAN_FEE, 20_000_000),
            (InvoiceLine.Kind.PLAN_CREDIT, -5_000_000),
        ]
        assert march.total_micros == 15_000_000
        invoice_issue(invoice=march, actor="test")
    with time_machine.travel(datetime(2026, 5, 1, 1, tzinfo=UTC), tick=False):
        april = invoice_generate(customer=market.tenant, period=Period.month(2026, 4))
        assert april.lines.filter(kind=InvoiceLine.Kind.PLAN_FEE).count() == 1
        assert april.lines.get(kind=InvoiceLine.Kind.PLAN_FEE).description == "Pro (2026-04)"
        invoice_issue(invoice=april, actor="test")
    # Each month's charge is on exactly one invoice.
    for charge in PlanCharge.objects.all():
        assert charge.invoice is not None
        assert charge.invoice.period_start == charge.period_start
    assert Invoice.objects.filter(customer=market.tenant).count() == 2


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
def test_renewal_on_two_workers_at_once_posts_one_fee(market: Market) -> None:
    plan = make_plan(market)
    with time_machine.travel(MARCH_10, tick=False):
        subscription_create(tenant=market.tenant, plan=plan, actor="test")
    results: list[int] = []
    barrier = threading.Barrier(4)

    def worker() -> None:
        try:
            with time_machine.travel(APRIL_1, tick=False):
                barrier.wait()
                results.append(plans_renew())
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [0, 0, 0, 1]
    assert fees(market) == [-20_000_000, -20_000_000]
