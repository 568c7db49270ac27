"""Usage recorded after its period's invoice was issued is carried to the next invoice as
a dated line: every ledger charge appears on exactly one live invoice."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

import pytest
import time_machine

from billing.models import BillingAccount, Invoice, InvoiceLine, LedgerEntry, UsageEvent
from billing.periods import Period
from billing.services import (
    invoice_generate,
    invoice_issue,
    invoice_void,
    usage_charge_post,
)
from billing.services.invoices import invoice_customers
from portal.models import Organization
from tests.billing.conftest import MARCH, EventFactory, Market, generate_month

pytestmark = pytest.mark.django_db

APRIL = Period.month(2026, 4)


def invoice_month(period: Period, *, issue: bool = True) -> list[Invoice]:
    invoices = []
    for customer in Organization.objects.filter(pk__in=invoice_customers(period=period)):
        invoice = invoice_generate(customer=customer, period=period)
        if invoice is not None and issue and invoice.is_draft:
            invoice = invoice_issue(invoice=invoice, actor="test")
        if invoice is not None:
            invoices.append(invoice)
    return invoices


def assert_every_charge_on_one_invoice() -> None:
    """Each usage charge in the ledger is listed by exactly one live invoice of the
    account's organisation, and each account's listed usage adds up to its charges."""
    live = Invoice.objects.exclude(status=Invoice.Status.VOID)
    for account in BillingAccount.objects.select_related("organization"):
        customer = account.organization
        charges = LedgerEntry.objects.filter(account=account, kind=LedgerEntry.Kind.USAGE)
        if not charges.exists():
            continue
        mark = "tenant_invoice" if customer.kind == "tenant" else "reseller_invoice"
        events = set(charges.values_list("reference", flat=True))
        seen: Counter[str] = Counter()
        for invoice in live.filter(customer=customer):
            for event in UsageEvent.objects.filter(**{mark: invoice}):
                seen[event.request_id] += 1
        assert set(seen) == set(events), customer
        assert set(seen.values()) == {1}
        usage_lines = InvoiceLine.objects.filter(
            invoice__in=live.filter(customer=customer),
            kind__in=(InvoiceLine.Kind.USAGE, InvoiceLine.Kind.CARRIED),
        )
        listed = sum(line.amount_micros for line in usage_lines)
        assert listed == -sum(c.amount_micros for c in charges), customer


def test_usage_recorded_after_its_invoice_goes_on_the_next_one(
    market: Market, event: EventFactory
) -> None:
    with time_machine.travel(datetime(2026, 4, 1, 0, 30, tzinfo=UTC), tick=False):
        generate_month(market, count=80)
        usage_charge_post()
        march = invoice_month(MARCH)
        assert all(invoice.status == Invoice.Status.ISSUED for invoice in march)
        issued = {invoice.pk: invoice.total_micros for invoice in march}

    # A stream that began at 23:59 on March 31 ends after the invoice went out; an outage
    # held another event until April 2. Both are charged when they are written.
    with time_machine.travel(datetime(2026, 4, 2, 9, tzinfo=UTC), tick=False):
        late = [
            event(created_at=datetime(2026, 3, 31, 23, 59, tzinfo=UTC), prompt_tokens=9000),
            event(
                model="model-c",
                created_at=datetime(2026, 3, 30, 8, tzinfo=UTC),
                completion_tokens=400,
            ),
        ]
        april_use = event(created_at=datetime(2026, 4, 2, 8, tzinfo=UTC), prompt_tokens=500)
        usage_charge_post()
        # March's invoices do not change, and a March draft is not reopened.
        assert invoice_generate(customer=market.tenant, period=MARCH).pk in issued
        for invoice in Invoice.objects.filter(pk__in=issued):
            assert invoice.total_micros == issued[invoice.pk]

    with time_machine.travel(datetime(2026, 5, 1, 1, tzinfo=UTC), tick=False):
        april = invoice_month(APRIL)
        tenant_april = next(i for i in april if i.customer == market.tenant)
        carried = tenant_april.lines.filter(kind=InvoiceLine.Kind.CARRIED)
        assert {(line.model, line.usage_date) for line in carried} == {
            ("model-a", datetime(2026, 3, 31).date()),
            ("model-c", datetime(2026, 3, 30).date()),
        }
        assert sum(line.amount_micros for line in carried) == sum(
            e.cost_retail_micros for e in late
        )
        usage = tenant_april.lines.filter(kind=InvoiceLine.Kind.USAGE)
        assert sum(line.amount_micros for line in usage) == april_use.cost_retail_micros
        # The reseller's wholesale invoice carries the same events at wholesale.
        reseller_april = next(i for i in april if i.customer == market.reseller)
        assert sum(
            line.amount_micros
            for line in reseller_april.lines.filter(kind=InvoiceLine.Kind.CARRIED)
        ) == sum(e.cost_wholesale_micros for e in late)
        # Rerunning the drafts changes nothing.
        assert [i.pk for i in invoice_month(APRIL)] == [i.pk for i in april]

    assert_every_charge_on_one_invoice()


def test_a_voided_invoice_frees_its_usage_for_the_replacement(
    market: Market, event: EventFactory
) -> None:
    with time_machine.travel(datetime(2026, 4, 3, tzinfo=UTC), tick=False):
        event(prompt_tokens=1000)
        event(prompt_tokens=2000)
        usage_charge_post()
        invoice = invoice_issue(
            invoice=invoice_generate(customer=market.tenant, period=MARCH), actor="test"
        )
        assert UsageEvent.objects.filter(tenant_invoice=invoice).count() == 2

        invoice_void(invoice=invoice, actor="test", reason="wrong address")
        assert not UsageEvent.objects.filter(tenant_invoice=invoice).exists()
        replacement = invoice_generate(customer=market.tenant, period=MARCH)
        assert replacement.pk != invoice.pk
        assert replacement.subtotal_micros == invoice.subtotal_micros
        invoice_issue(invoice=replacement, actor="test")
        invoice_generate(customer=market.reseller, period=MARCH)
        invoice_issue(
            invoice=invoice_generate(customer=market.reseller, period=MARCH), actor="test"
        )

    assert_every_charge_on_one_invoice()


def test_an_unissued_earlier_draft_keeps_its_own_late_events(
    market: Market, event: EventFactory
) -> None:
    """Until March's invoice is issued, March's events belong to March's draft, however
    late they are written: April's draft does not take them."""
    with time_machine.travel(datetime(2026, 4, 2, tzinfo=UTC), tick=False):
        march_event = event(prompt_tokens=1000)
        event(created_at=datetime(2026, 4, 1, 12, tzinfo=UTC), prompt_tokens=10)
        march = invoice_generate(customer=market.tenant, period=MARCH)
        april = invoice_generate(customer=market.tenant, period=APRIL)
        assert march.subtotal_micros == march_event.cost_retail_micros
        assert not april.lines.filter(kind=InvoiceLine.Kind.CARRIED).exists()
