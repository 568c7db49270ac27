"""Invoices: totals equal priced usage to the micro-unit; drafts regenerate idempotently;
issued invoices are immutable and numbered per issuer; PDF and CSV render."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
import time_machine
from django.core.exceptions import ValidationError
from pypdf import PdfReader

from billing.documents import invoice_csv, invoice_pdf
from billing.models import Invoice, InvoiceLine, LedgerEntry, UsageEvent
from billing.money import format_micros
from billing.periods import Period
from billing.selectors import BILLABLE, account_balance_micros
from billing.services import (
    billing_account_create,
    invoice_generate,
    invoice_issue,
    invoice_mark_paid,
    invoice_void,
)
from billing.services.invoices import invoice_customers
from portal.models import AuditEntry, Organization
from tests.billing.conftest import MARCH, EventFactory, Market, generate_month

pytestmark = pytest.mark.django_db

APRIL_3 = datetime(2026, 4, 3, 10, tzinfo=UTC)


@pytest.fixture
def april() -> Any:
    with time_machine.travel(APRIL_3, tick=False) as traveller:
        yield traveller


def events_of(customer: Organization, period: Period = MARCH) -> Any:
    scope = {"tenant": customer} if customer.kind == "tenant" else {"reseller": customer}
    return UsageEvent.objects.filter(
        created_at__gte=period.start_at, created_at__lt=period.end_at, **scope
    )


def invoice_rows(invoice: Invoice) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    header = Invoice.objects.filter(pk=invoice.pk).values().get()
    lines = list(InvoiceLine.objects.filter(invoice=invoice).order_by("id").values())
    return header, lines


def test_invoice_totals_equal_the_sum_of_priced_events(market: Market, april: Any) -> None:
    generate_month(market)
    customers = [*market.tenants, market.reseller, market.other_reseller]
    assert sorted(invoice_customers(period=MARCH)) == sorted(c.pk for c in customers)

    for customer in customers:
        invoice = invoice_generate(customer=customer, period=MARCH)
        assert invoice is not None
        side = "retail" if customer.kind == "tenant" else "wholesale"
        costs = [getattr(e, f"cost_{side}_micros") for e in events_of(customer)]
        assert invoice.subtotal_micros == sum(costs) > 0
        assert invoice.total_micros == invoice.subtotal_micros  # no tax rate
        assert sum(line.amount_micros for line in invoice.lines.all()) == invoice.subtotal_micros
        billable = events_of(customer).filter(BILLABLE)
        used = billable.exclude(prompt_tokens=0, completion_tokens=0)
        fee_lines = invoice.lines.filter(dimension="request")
        assert sum(line.quantity for line in fee_lines) == used.count()
        assert invoice.kind == ("tenant" if customer.kind == "tenant" else "reseller")
        assert invoice.issuer == customer.parent


def test_a_mid_month_price_change_gives_one_line_per_price(market: Market, april: Any) -> None:
    generate_month(market)

    direct = invoice_generate(customer=market.direct_tenant, period=MARCH)
    tenant = invoice_generate(customer=market.tenant, period=MARCH)

    def prices(invoice: Invoice, model: str) -> list[set[int]]:
        """The unit prices of the model's input, cached input and output lines."""
        return [
            {
                line.unit_price_micros
                for line in invoice.lines.filter(model=model, dimension=dimension)
            }
            for dimension in ("input", "cached_input", "output")
        ]

    # Wholesale model-a changed on the 15th; the direct tenant pays wholesale.
    assert prices(direct, "model-a") == [{150_000, 200_000}, {75_000, 50_000}, {600_000, 800_000}]
    # The reseller's markup follows wholesale, and its explicit model-c price changed too.
    assert prices(tenant, "model-a") == [
        {225_000, 300_000},
        {112_500, 75_000},
        {900_000, 1_200_000},
    ]
    assert prices(tenant, "model-c") == [
        {1_333_333, 1_500_001},
        {133_333, 150_001},
        {5_555_555, 6_000_001},
    ]
    # The reseller's own (wholesale) invoice prices model-c at wholesale only.
    reseller = invoice_generate(customer=market.reseller, period=MARCH)
    assert prices(reseller, "model-c") == [{1_000_000}, {100_000}, {4_000_000}]


def test_regenerating_a_draft_changes_nothing(market: Market, april: Any) -> None:
    generate_month(market, count=150)
    invoice = invoice_generate(customer=market.tenant, period=MARCH)
    before = invoice_rows(invoice)

    again = invoice_generate(customer=market.tenant, period=MARCH)

    assert again.pk == invoice.pk
    assert invoice_rows(again) == before
    assert Invoice.objects.count() == 1


def test_a_draft_picks_up_late_events(market: Market, event: EventFactory, april: Any) -> None:
    generate_month(market, count=60)
    invoice = invoice_generate(customer=market.tenant, period=MARCH)
    subtotal = invoice.subtotal_micros

    late = event(model="model-b", prompt_tokens=1000, completion_tokens=100)
    invoice = invoice_generate(customer=market.tenant, period=MARCH)

    assert invoice.subtotal_micros == subtotal + late.cost_retail_micros


def test_nothing_to_invoice_creates_nothing(market: Market, april: Any) -> None:
    assert invoice_generate(customer=market.tenant, period=MARCH) is None
    assert Invoice.objects.count() == 0
    with pytest.raises(ValidationError):
        invoice_generate(customer=market.platform, period=MARCH)


def test_tax_is_rounded_half_up_in_micro_units(
    market: Market, event: EventFactory, april: Any
) -> None:
    billing_account_create(
        organization=market.direct_tenant, tax_rate_percent=Decimal("12.5"), actor="test"
    )
    # model-a wholesale: 150_000 per 1M input → 1 token costs 0.15 → 0; 4 tokens → 0.6 → 1
    event(tenant=market.direct_tenant, prompt_tokens=4)  # 1 micro-unit
    event(tenant=market.direct_tenant, prompt_tokens=20)  # 3 micro-units
    invoice = invoice_generate(customer=market.direct_tenant, period=MARCH)

    assert invoice.subtotal_micros == 4
    assert invoice.tax_micros == 1  # 0.5 rounds up
    assert invoice.total_micros == 5
    assert invoice.tax_rate_percent == Decimal("12.5")


def test_issue_numbers_per_issuer_and_freezes_the_invoice(
    market: Market, event: EventFactory, april: Any, operator_user: Any
) -> None:
    generate_month(market, count=90)
    tenant_invoice = invoice_generate(customer=market.tenant, period=MARCH)
    reseller_invoice = invoice_generate(customer=market.reseller, period=MARCH)
    other_invoice = invoice_generate(customer=market.other_reseller, period=MARCH)

    invoice_issue(invoice=tenant_invoice, actor=operator_user)
    invoice_issue(invoice=reseller_invoice, actor=operator_user)
    invoice_issue(invoice=other_invoice, actor=operator_user)

    assert tenant_invoice.number == "RESELLER-2026-000001"  # issued by the reseller
    assert reseller_invoice.number == "PLATFORM-2026-000001"
    assert other_invoice.number == "PLATFORM-2026-000002"
    assert tenant_invoice.status == Invoice.Status.ISSUED
    assert AuditEntry.objects.filter(action="invoice.issue").count() == 3
    frozen = invoice_rows(tenant_invoice)

    # New usage in the period, regeneration, the monthly job: the issued invoice is untouched.
    event(model="model-b", prompt_tokens=5000, completion_tokens=500)
    assert invoice_generate(customer=market.tenant, period=MARCH).pk == tenant_invoice.pk
    assert invoice_rows(tenant_invoice) == frozen
    with pytest.raises(ValidationError):
        invoice_issue(invoice=tenant_invoice, actor=operator_user)
    assert invoice_rows(tenant_invoice) == frozen


def test_issue_refuses_a_period_not_over(market: Market, event: EventFactory) -> None:
    with time_machine.travel(datetime(2026, 3, 20, tzinfo=UTC), tick=False):
        event(prompt_tokens=100)
        invoice = invoice_generate(customer=market.tenant, period=MARCH)
        with pytest.raises(ValidationError):
            invoice_issue(invoice=invoice, actor="test")


def test_paid_and_void(market: Market, event: EventFactory, april: Any) -> None:
    account = billing_account_create(
        organization=market.tenant, mode="postpaid", tax_rate_percent=Decimal(20), actor="test"
    )
    event(prompt_tokens=100_000, completion_tokens=10_000)
    invoice = invoice_issue(
        invoice=invoice_generate(customer=market.tenant, period=MARCH), actor="t"
    )
    tax = LedgerEntry.objects.get(kind=LedgerEntry.Kind.INVOICE)
    assert tax.amount_micros == -invoice.tax_micros != 0
    assert tax.reference == f"invoice:{invoice.pk}"

    invoice_mark_paid(invoice=invoice, actor="test")
    payment = LedgerEntry.objects.get(kind=LedgerEntry.Kind.PAYMENT)
    assert payment.amount_micros == invoice.total_micros
    assert invoice.status == Invoice.Status.PAID
    with pytest.raises(ValidationError):
        invoice_void(invoice=invoice, actor="test", reason="too late")
    # Usage charges are not posted in this test: the ledger holds tax and payment only.
    assert account_balance_micros(account) == invoice.total_micros - invoice.tax_micros


def test_void_reverses_tax_and_frees_the_period(
    market: Market, event: EventFactory, april: Any
) -> None:
    billing_account_create(
        organization=market.tenant, mode="postpaid", tax_rate_percent=Decimal(10), actor="t"
    )
    event(prompt_tokens=100_000, completion_tokens=10_000)
    invoice = invoice_issue(
        invoice=invoice_generate(customer=market.tenant, period=MARCH), actor="t"
    )

    invoice_void(invoice=invoice, actor="test", reason="wrong customer details")

    assert invoice.status == Invoice.Status.VOID
    assert sum(LedgerEntry.objects.values_list("amount_micros", flat=True)) == 0
    replacement = invoice_generate(customer=market.tenant, period=MARCH)
    assert replacement.pk != invoice.pk and replacement.is_draft
    invoice_issue(invoice=replacement, actor="t")
    assert replacement.number == "RESELLER-2026-000002"  # numbers are never reused


def test_pdf_contains_the_lines_and_total(market: Market, april: Any) -> None:
    generate_month(market, count=120)
    invoice = invoice_issue(
        invoice=invoice_generate(customer=market.tenant, period=MARCH), actor="t"
    )

    pdf = invoice_pdf(invoice)

    assert pdf.startswith(b"%PDF")
    text = "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages)
    assert invoice.number in text
    assert "Tenant" in text and "Reseller" in text
    for line in invoice.lines.all():
        assert line.model in text
        assert format_micros(line.amount_micros) in text
        assert f"{line.quantity:,}" in text
    assert f"{format_micros(invoice.total_micros)} USD" in text


def test_pdf_survives_names_outside_latin1(market: Market, event: EventFactory, april: Any) -> None:
    Organization.objects.filter(pk=market.tenant.pk).update(name="Société 東京")
    event(prompt_tokens=100)
    invoice = invoice_generate(customer=Organization.objects.get(pk=market.tenant.pk), period=MARCH)
    text = PdfReader(io.BytesIO(invoice_pdf(invoice))).pages[0].extract_text()
    assert "DRAFT INVOICE" in text
    assert "Société" in text


def test_csv_parses_and_adds_up(market: Market, april: Any) -> None:
    generate_month(market, count=120)
    invoice = invoice_generate(customer=market.reseller, period=MARCH)

    rows = list(csv.DictReader(io.StringIO(invoice_csv(invoice).decode())))

    lines = [row for row in rows if row["row_type"] == "line"]
    assert len(lines) == invoice.lines.count()
    assert sum(int(row["amount_micros"]) for row in lines) == invoice.subtotal_micros
    assert sum(Decimal(row["amount"]) for row in lines) * 1_000_000 == invoice.subtotal_micros
    total = next(row for row in rows if row["row_type"] == "total")
    assert int(total["amount_micros"]) == invoice.total_micros
    assert {row["period"] for row in rows} == {"2026-03"}
