"""What an invoice lists: its period's usage, usage carried from earlier periods, and plan
charges, each on exactly one live invoice.

A draft lists what no issued invoice holds yet: the usage events and plan charges of its
period and, once an earlier period's invoice was issued, whatever of that earlier time was
recorded too late to be on it (a stream that ended after midnight, events held back by an
outage). Issuing marks the events (``UsageEvent.tenant_invoice`` or ``reseller_invoice``)
and the plan charges (``PlanCharge.invoice``) with the invoice, and the issued lines are
computed from those marks, in the same transaction: an event committed a moment later is
not marked, so it is carried to the next invoice rather than lost or listed twice.
Voiding an invoice removes its marks, so its charges are listed again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from typing import Any

from django.core.exceptions import ValidationError
from django.db.models import Count, Max, Q, QuerySet, Sum
from django.db.models.functions import TruncDate

from billing.models import Invoice, InvoiceLine, PlanCharge, UsageEvent
from billing.periods import Period
from billing.selectors import BILLABLE
from portal.models import Organization

PRICE_FIELDS = ("input_per_mtok", "cached_input_per_mtok", "output_per_mtok", "request_fee_micros")
COUNT_FIELDS = ("prompt_tokens", "cached_tokens", "completion_tokens", "reasoning_tokens")
LINE_FIELDS = (
    "model",
    *PRICE_FIELDS,
    "requests",
    *COUNT_FIELDS,
    "amount_micros",
    "kind",
    "description",
    "usage_date",
)


@dataclass(frozen=True, slots=True)
class Terms:
    """Who invoices a customer, for which events, at which side of the price pair."""

    issuer: Organization
    kind: str
    events: Q
    side: str  # "retail" or "wholesale"

    @property
    def mark(self) -> str:
        """The usage event's column that names the issued invoice listing it."""
        return "tenant_invoice" if self.kind == Invoice.Kind.TENANT else "reseller_invoice"


def invoice_terms(customer: Organization) -> Terms:
    if customer.parent is None:
        raise ValidationError("The platform is not invoiced.")
    if customer.kind == Organization.Kind.TENANT:
        return Terms(customer.parent, Invoice.Kind.TENANT, Q(tenant=customer), "retail")
    if customer.kind == Organization.Kind.RESELLER:
        return Terms(customer.parent, Invoice.Kind.RESELLER, Q(reseller=customer), "wholesale")
    raise ValidationError(f"A {customer.kind} is not invoiced.")


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(), UTC)


def _carried_before(terms: Terms, customer: Organization, period: Period) -> date | None:
    """The end of the latest earlier period already invoiced: what is older and on no
    invoice yet was recorded after its invoice was issued, and is carried."""
    ended: date | None = Invoice.objects.filter(
        issuer=terms.issuer,
        customer=customer,
        status__in=(Invoice.Status.ISSUED, Invoice.Status.PAID),
        period_start__lt=period.start,
    ).aggregate(end=Max("period_end"))["end"]
    return ended


def pending(
    terms: Terms, customer: Organization, period: Period
) -> tuple[QuerySet[UsageEvent], QuerySet[PlanCharge]]:
    """The usage events and plan charges a draft of ``period`` lists: on no issued
    invoice, and of the period or carried from before it."""
    carried_before = _carried_before(terms, customer, period)
    own = Q(created_at__gte=period.start_at, created_at__lt=period.end_at)
    own_charges = Q(period_start__gte=period.start, period_start__lt=period.end)
    if carried_before is not None:
        own |= Q(created_at__lt=_midnight(carried_before))
        own_charges |= Q(period_start__lt=carried_before)
    events = UsageEvent.objects.filter(terms.events, BILLABLE, own, **{f"{terms.mark}": None})
    return events, _plan_charges(terms, customer).filter(own_charges, invoice=None)


def listed(
    terms: Terms, customer: Organization, invoice: Invoice
) -> tuple[QuerySet[UsageEvent], QuerySet[PlanCharge]]:
    """The usage events and plan charges an issued invoice holds."""
    events = UsageEvent.objects.filter(**{terms.mark: invoice})
    return events, _plan_charges(terms, customer).filter(invoice=invoice)


def _plan_charges(terms: Terms, customer: Organization) -> QuerySet[PlanCharge]:
    if terms.kind != Invoice.Kind.TENANT:
        return PlanCharge.objects.none()
    return PlanCharge.objects.filter(
        subscription__tenant=customer, subscription__plan__seller=terms.issuer
    )


def mark(terms: Terms, customer: Organization, invoice: Invoice) -> None:
    """Put what the draft lists on ``invoice`` for good (its issue)."""
    events, charges = pending(terms, customer, Period(invoice.period_start, invoice.period_end))
    events.update(**{terms.mark: invoice})
    charges.update(invoice=invoice)


def unmark(terms: Terms, invoice: Invoice) -> None:
    """Free what a voided invoice listed, to be listed again."""
    UsageEvent.objects.filter(**{terms.mark: invoice}).update(**{terms.mark: None})
    PlanCharge.objects.filter(invoice=invoice).update(invoice=None)


def wanted_lines(
    terms: Terms,
    period: Period,
    events: QuerySet[UsageEvent],
    charges: QuerySet[PlanCharge],
) -> tuple[set[str], list[dict[str, Any]]]:
    """The lines of these events and charges, and the currencies they are in: one per
    model and prices for the period's usage, one per day, model and prices for usage
    carried from earlier, and a fee line and a credit line per plan month."""
    side = terms.side
    price_columns = {f"{side}_{name}": name for name in PRICE_FIELDS}
    currencies: set[str] = set()
    lines: list[dict[str, Any]] = []
    groups = (
        (InvoiceLine.Kind.USAGE, events.filter(created_at__gte=period.start_at), ()),
        (
            InvoiceLine.Kind.CARRIED,
            events.filter(created_at__lt=period.start_at).annotate(
                day=TruncDate("created_at", tzinfo=UTC)
            ),
            ("day",),
        ),
    )
    for kind, selection, extra in groups:
        rows = (
            selection.order_by()
            .values("model", "currency", *extra, *price_columns)
            .annotate(
                n_requests=Count("id"),
                **{f"n_{name}": Sum(name) for name in COUNT_FIELDS},
                amount=Sum(f"cost_{side}_micros"),
            )
        )
        found = []
        for row in rows:
            currencies.add(row["currency"])
            line: dict[str, Any] = {"model": row["model"]}
            line.update({short: row[column] for column, short in price_columns.items()})
            line["requests"] = row["n_requests"]
            line.update({name: row[f"n_{name}"] or 0 for name in COUNT_FIELDS})
            line["amount_micros"] = row["amount"] or 0
            line["kind"] = kind
            line["usage_date"] = row.get("day")
            line["description"] = f"Used {row['day']:%Y-%m-%d}" if extra else ""
            found.append(line)
        found.sort(key=_line_order)
        lines += found
    for charge in charges.select_related("subscription__plan").order_by("period_start", "pk"):
        currencies.add(charge.currency)
        name = charge.subscription.plan.name
        month = f"{charge.period_start:%Y-%m}"
        lines.append(_plan_line(InvoiceLine.Kind.PLAN_FEE, f"{name} ({month})", charge.fee_micros))
        if charge.credit_micros:
            lines.append(
                _plan_line(
                    InvoiceLine.Kind.PLAN_CREDIT,
                    f"{name}: included credit ({month})",
                    -charge.credit_micros,
                )
            )
    return currencies, lines


def _line_order(line: dict[str, Any]) -> tuple[Any, ...]:
    return (line["usage_date"] or date.min, *(line[name] for name in ("model", *PRICE_FIELDS)))


def _plan_line(kind: str, description: str, amount: int) -> dict[str, Any]:
    line: dict[str, Any] = {"model": "", "requests": 0, "amount_micros": amount}
    line.update({name: 0 for name in (*PRICE_FIELDS, *COUNT_FIELDS)})
    line.update({"kind": kind, "description": description, "usage_date": None})
    return line
