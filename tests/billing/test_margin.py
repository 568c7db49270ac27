"""Reseller margin: retail minus wholesale of the same events, by tenant and model."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime

import pytest
import time_machine

from billing.models import UsageEvent
from billing.selectors import reseller_margin
from billing.services import invoice_generate, rollup_recompute
from portal.models import Organization
from tests.billing.conftest import MARCH, Market, generate_month

pytestmark = pytest.mark.django_db


def test_margin_is_retail_minus_wholesale_of_the_same_events(market: Market) -> None:
    generate_month(market)
    rollup_recompute(start=MARCH.start_at, end=MARCH.end_at)
    second = Organization.objects.create(
        name="Second", slug="second", kind="tenant", parent=market.reseller
    )
    assert second  # a tenant without usage has no rows

    rows = reseller_margin(reseller=market.reseller, period=MARCH)

    expected: dict[tuple[int, str], list[int]] = defaultdict(lambda: [0, 0, 0])
    for event in UsageEvent.objects.filter(reseller=market.reseller):
        sums = expected[(event.tenant_id, event.model)]
        sums[0] += 1
        sums[1] += event.cost_retail_micros
        sums[2] += event.cost_wholesale_micros
    assert {
        (r.tenant_id, r.model): [r.requests, r.retail_micros, r.wholesale_micros] for r in rows
    } == expected
    for row in rows:
        assert row.margin_micros == row.retail_micros - row.wholesale_micros > 0
        assert row.tenant_name == "Tenant" and row.currency == "USD"
    # Other resellers' and direct tenants' usage never shows up.
    assert {row.tenant_id for row in rows} == {market.tenant.pk}
    assert reseller_margin(reseller=market.other_reseller, period=MARCH)
    assert reseller_margin(reseller=market.reseller, period=MARCH.previous()) == []


def test_margin_agrees_with_the_two_invoices(market: Market) -> None:
    generate_month(market, count=200)
    rollup_recompute(start=MARCH.start_at, end=MARCH.end_at)
    with time_machine.travel(datetime(2026, 4, 2, tzinfo=UTC), tick=False):
        sold = invoice_generate(customer=market.tenant, period=MARCH)
        bought = invoice_generate(customer=market.reseller, period=MARCH)

    margin = sum(
        row.margin_micros for row in reseller_margin(reseller=market.reseller, period=MARCH)
    )

    assert margin == sold.subtotal_micros - bought.subtotal_micros
