"""Invoice workflows: generate drafts from usage events, issue, mark paid, void.

A line is one model's charges in one price dimension at one unit price, and its amount
is the sum of its events' charges in that dimension (each rounded once when the event was
priced); an event's cost is the sum of its charges, so an invoice's subtotal equals the
sum of its priced usage events to the micro-unit. Drafts are regenerated idempotently;
issued invoices are never regenerated or edited, only marked paid or void.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from billing.models import (
    BillingAccount,
    BillingWatermark,
    Invoice,
    InvoiceLine,
    InvoiceSequence,
    LedgerEntry,
    PlanCharge,
    UsageEvent,
)
from billing.money import percent_of
from billing.periods import Period
from billing.selectors import BILLABLE, watermark_position
from billing.services import invoice_lines
from billing.services.common import account_for, tell_relay
from billing.services.invoice_lines import LINE_FIELDS, invoice_terms
from portal.models import AuditEntry, Organization
from portal.services.common import Actor, user_or_none


def _check_not_pruned(period: Period) -> None:
    pruned_before = watermark_position(BillingWatermark.PRUNED_BEFORE)
    if pruned_before is not None and period.start_at < pruned_before:
        raise ValidationError("The usage events of this period were pruned.")


@transaction.atomic
def invoice_generate(*, customer: Organization, period: Period) -> Invoice | None:
    """Create or refresh the customer's draft for ``period`` from its usage events.

    Returns None when there is nothing to invoice and no draft yet. A rerun with the same
    events writes nothing (same rows, same ids). An issued, paid or void invoice is
    returned untouched: from issue on, an invoice never changes.
    """
    terms = invoice_terms(customer)
    _check_not_pruned(period)
    existing = BillingAccount.objects.filter(organization=customer).first()
    account = existing or account_for(customer)
    # Serialises generation, issue and payment for this customer.
    account = BillingAccount.objects.select_for_update().get(pk=account.pk)
    invoice = (
        Invoice.objects.filter(issuer=terms.issuer, customer=customer, period_start=period.start)
        .exclude(status=Invoice.Status.VOID)
        .first()
    )
    if invoice is not None and not invoice.is_draft:
        return invoice
    return _refresh(invoice, customer, period, account)


def _refresh(
    invoice: Invoice | None, customer: Organization, period: Period, account: BillingAccount
) -> Invoice | None:
    """Write the lines of a draft (what is pending) or of an invoice being issued (what
    it was just marked with), and its totals; None if there is nothing and no invoice."""
    terms = invoice_terms(customer)
    if invoice is not None and invoice.number:
        events, charges = invoice_lines.listed(terms, customer, invoice)
    else:
        events, charges = invoice_lines.pending(terms, customer, period)
    currencies, lines = invoice_lines.wanted_lines(terms, period, events, charges)
    if len(currencies) > 1:
        raise ValidationError(f"Usage in several currencies: {sorted(currencies)}.")
    if invoice is None and not lines:
        return None
    subtotal = sum(line["amount_micros"] for line in lines)
    rate = account.tax_rate_percent
    tax = percent_of(subtotal, rate) if rate is not None else 0
    header = {
        "kind": terms.kind,
        "period_end": period.end,
        "currency": currencies.pop() if currencies else account.currency,
        "subtotal_micros": subtotal,
        "tax_rate_percent": rate,
        "tax_micros": tax,
        "total_micros": subtotal + tax,
    }
    now = timezone.now()
    if invoice is None:
        invoice = Invoice.objects.create(
            issuer=terms.issuer,
            customer=customer,
            period_start=period.start,
            generated_at=now,
            **header,
        )
        stored: list[dict[str, Any]] = []
    else:
        stored = [
            {name: getattr(line, name) for name in LINE_FIELDS} for line in invoice.lines.all()
        ]
    header_changed = any(getattr(invoice, name) != value for name, value in header.items())
    if stored != lines:
        invoice.lines.all().delete()
        InvoiceLine.objects.bulk_create(
            InvoiceLine(invoice=invoice, position=index, **line)
            for index, line in enumerate(lines, start=1)
        )
    if header_changed or stored != lines:
        for name, value in header.items():
            setattr(invoice, name, value)
        invoice.generated_at = now
        invoice.save(update_fields=[*header, "generated_at"])
    return invoice


def _next_number(issuer: Organization, year: int) -> str:
    InvoiceSequence.objects.get_or_create(issuer=issuer, year=year)
    sequence = InvoiceSequence.objects.select_for_update().get(issuer=issuer, year=year)
    sequence.last_number += 1
    sequence.save(update_fields=["last_number"])
    return f"{issuer.slug.upper()}-{year}-{sequence.last_number:06d}"


def _locked(invoice: Invoice) -> Invoice:
    return (
        Invoice.objects.select_for_update().select_related("issuer", "customer").get(pk=invoice.pk)
    )


@transaction.atomic
def invoice_issue(*, invoice: Invoice, actor: Actor) -> Invoice:
    """Refresh the draft one last time, number it and freeze it.

    The number is the issuer's next in the year of issue (``ISSUER-2026-000001``), taken
    under a lock on the issuer's counter, so numbers are unique and gapless. Tax, which no
    usage charge covers, is posted to the customer's ledger as an invoice entry.
    """
    current = _locked(invoice)
    if not current.is_draft:
        raise ValidationError(f"Only a draft can be issued; this invoice is {current.status}.")
    now = timezone.now()
    if not current.is_issuable:
        raise ValidationError("The billing period is not over yet.")
    # Marked first, then listed from the marks: what commits meanwhile is on neither and
    # goes on the next invoice (``billing.services.invoice_lines``).
    customer = current.customer
    invoice_lines.mark(invoice_terms(customer), customer, current)
    current.number = _next_number(current.issuer, now.year)
    current.status = Invoice.Status.ISSUED
    current.issued_at = now
    current.save(update_fields=["number", "status", "issued_at"])
    period = Period(current.period_start, current.period_end)
    current = _refresh(current, customer, period, account_for(customer)) or current
    if current.tax_micros:
        LedgerEntry.objects.create(
            account=account_for(current.customer),
            kind=LedgerEntry.Kind.INVOICE,
            amount_micros=-current.tax_micros,
            reference=f"invoice:{current.pk}",
            memo=f"Tax on invoice {current.number}",
            created_at=now,
            created_by=user_or_none(actor),
        )
        tell_relay()
    _audit(current, actor, "invoice.issue")
    invoice.refresh_from_db()
    return current


@transaction.atomic
def invoice_mark_paid(*, invoice: Invoice, actor: Actor, memo: str = "") -> Invoice:
    """Record payment of an issued invoice. A postpaid customer's ledger is credited with
    the total; a prepaid one paid as it went (usage and tax came off its balance)."""
    current = _locked(invoice)
    if current.status != Invoice.Status.ISSUED:
        raise ValidationError(f"Only an issued invoice can be paid; this one is {current.status}.")
    now = timezone.now()
    current.status, current.paid_at = Invoice.Status.PAID, now
    current.save(update_fields=["status", "paid_at"])
    account = account_for(current.customer)
    if not account.is_prepaid and current.total_micros:
        LedgerEntry.objects.create(
            account=account,
            kind=LedgerEntry.Kind.PAYMENT,
            amount_micros=current.total_micros,
            reference=f"invoice:{current.pk}",
            memo=memo or f"Payment of invoice {current.number}",
            created_at=now,
            created_by=user_or_none(actor),
        )
        tell_relay()
    _audit(current, actor, "invoice.mark_paid")
    invoice.refresh_from_db()
    return current


@transaction.atomic
def invoice_void(*, invoice: Invoice, actor: Actor, reason: str) -> Invoice:
    """Cancel a draft or an issued (unpaid) invoice; its number stays used. The usage it
    listed stays charged in the ledger, and goes on the next draft of the period (its
    marks are removed); only the tax it posted is reversed."""
    current = _locked(invoice)
    if current.status not in (Invoice.Status.DRAFT, Invoice.Status.ISSUED):
        raise ValidationError(f"A {current.status} invoice cannot be voided.")
    if not reason.strip():
        raise ValidationError({"reason": "Say why the invoice is voided."})
    was_issued = current.status == Invoice.Status.ISSUED
    now = timezone.now()
    current.status, current.voided_at = Invoice.Status.VOID, now
    current.save(update_fields=["status", "voided_at"])
    invoice_lines.unmark(invoice_terms(current.customer), current)
    if was_issued and current.tax_micros:
        LedgerEntry.objects.create(
            account=account_for(current.customer),
            kind=LedgerEntry.Kind.ADJUSTMENT,
            amount_micros=current.tax_micros,
            reference=f"invoice-void:{current.pk}",
            memo=f"Tax reversed: invoice {current.number} voided",
            created_at=now,
            created_by=user_or_none(actor),
        )
        tell_relay()
    _audit(current, actor, "invoice.void", reason=reason)
    invoice.refresh_from_db()
    return current


def _audit(invoice: Invoice, actor: Actor, action: str, **extra: Any) -> None:
    AuditEntry.record(
        actor=actor,
        action=action,
        target=invoice,
        organization=invoice.customer,
        data={
            "number": invoice.number,
            "issuer": invoice.issuer.slug,
            "customer": invoice.customer.slug,
            "period": Period(invoice.period_start, invoice.period_end).label,
            "total_micros": invoice.total_micros,
            "currency": invoice.currency,
            **extra,
        },
    )


def invoice_customers(*, period: Period) -> list[int]:
    """Every organisation with something to invoice in ``period``, or a draft for it."""
    events = UsageEvent.objects.filter(
        BILLABLE, created_at__gte=period.start_at, created_at__lt=period.end_at
    ).order_by()
    # Usage of earlier periods recorded during this one, perhaps after its invoice.
    late = UsageEvent.objects.filter(
        BILLABLE, created_at__lt=period.start_at, recorded_at__gte=period.start_at
    ).order_by()
    tenants = set(events.values_list("tenant_id", flat=True).distinct())
    tenants |= set(late.filter(tenant_invoice=None).values_list("tenant_id", flat=True).distinct())
    tenants |= set(
        PlanCharge.objects.filter(
            period_start__gte=period.start, period_start__lt=period.end
        ).values_list("subscription__tenant_id", flat=True)
    )
    resellers = set(events.exclude(reseller=None).values_list("reseller_id", flat=True).distinct())
    resellers |= set(
        late.filter(reseller_invoice=None)
        .exclude(reseller=None)
        .values_list("reseller_id", flat=True)
        .distinct()
    )
    drafts = set(
        Invoice.objects.filter(period_start=period.start, status=Invoice.Status.DRAFT).values_list(
            "customer_id", flat=True
        )
    )
    return sorted(tenants | resellers | drafts)


def invoice_drafts_refresh(*, issuer: Organization | None, actor: Actor) -> list[Invoice]:
    """Create or refresh this month's drafts now, for ``issuer``'s customers (None: every
    issuer's), rather than waiting for the nightly job; returns the drafts."""
    period = Period.current()
    customers = Organization.objects.filter(pk__in=invoice_customers(period=period))
    if issuer is not None:
        customers = customers.filter(parent=issuer)
    drafts = []
    for customer in customers.select_related("parent").order_by("pk"):
        invoice = invoice_generate(customer=customer, period=period)
        if invoice is not None:
            drafts.append(invoice)
    audited = issuer or Organization.objects.filter(kind=Organization.Kind.PLATFORM).first()
    if audited is not None:
        AuditEntry.record(
            actor=actor,
            action="invoice.drafts_refresh",
            target=audited,
            organization=audited,
            data={"period": period.label, "drafts": [invoice.pk for invoice in drafts]},
        )
    return drafts
