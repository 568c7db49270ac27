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
from django.db.models import Max, Q, QuerySet
from django.db.models.functions import TruncDate

from billing.models import Invoice, InvoiceLine, PlanCharge, UsageEvent
from billing.periods import Period
from billing.pricing import DIMENSIONS, UNITS
from billing.selectors import BILLABLE
from portal.models import Organization

LINE_FIELDS = (
    "model",
    "dimension",
    "unit",
    "unit_price_micros",
    "service_tier",
    "long_context",
    "quantity",
    "requests",
    "amount_micros",
    "kind",
    "description",
    "usage_date",
)
# Events priced before dimensions were recorded (no ``charges``) make one line per model.
LEGACY_DIMENSION = "usage"
_ORDER = {dimension: index for index, dimension in enumerate((*DIMENSIONS, LEGACY_DIMENSION))}


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
    """The lines of these events and charges, and the currencies they are in: the period's
    usage per model, dimension and unit price (and service and context tier), usage
    carried from earlier the same way per day, and a fee line and a credit line per plan
    month. Each event's cost is the sum of its charges, so the usage lines add up to the
    events' costs exactly. The events are streamed: one query."""
    wholesale = terms.side == "wholesale"
    rows = (
        events.order_by()
        .annotate(day=TruncDate("created_at", tzinfo=UTC))
        .values_list(
            "model",
            "currency",
            "created_at",
            "day",
            "service_tier",
            "long_context",
            "charges",
            f"cost_{terms.side}_micros",
        )
    )
    currencies: set[str] = set()
    found: dict[tuple[Any, ...], list[int]] = {}
    for model, currency, created, day, tier, long, charged, cost in rows.iterator(chunk_size=5000):
        currencies.add(currency)
        used = None if created >= period.start_at else day
        items = charged.items() if charged else [(LEGACY_DIMENSION, [1, 0, cost, 0, cost])]
        for dimension, charge in items:
            if dimension == LEGACY_DIMENSION and not cost:
                continue
            unit_price, micros = (charge[3], charge[4]) if wholesale else (charge[1], charge[2])
            line = found.setdefault((used, model, dimension, unit_price, tier, long), [0, 0, 0])
            line[0] += charge[0]
            line[1] += 1
            line[2] += micros
    lines = [
        {
            "model": model,
            "dimension": dimension,
            "unit": UNITS.get(dimension, "request"),
            "unit_price_micros": unit_price,
            "service_tier": tier,
            "long_context": long,
            "quantity": quantity,
            "requests": requests,
            "amount_micros": amount,
            "kind": InvoiceLine.Kind.CARRIED if used else InvoiceLine.Kind.USAGE,
            "description": f"Used {used:%Y-%m-%d}" if used else "",
            "usage_date": used,
        }
        for (used, model, dimension, unit_price, tier, long), (quantity, requests, amount) in (
            found.items()
        )
    ]
    lines.sort(key=_line_order)
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
    """Period usage first, then carried usage by day; by model, tier and dimension."""
    return (
        line["usage_date"] or date.min,
        line["model"],
        line["long_context"],
        line["service_tier"],
        _ORDER.get(line["dimension"], len(_ORDER)),
        line["unit_price_micros"],
    )


def _plan_line(kind: str, description: str, amount: int) -> dict[str, Any]:
    return {
        "model": "",
        "dimension": "",
        "unit": "",
        "unit_price_micros": 0,
        "service_tier": "",
        "long_context": False,
        "quantity": 0,
        "requests": 0,
        "amount_micros": amount,
        "kind": kind,
        "description": description,
        "usage_date": None,
    }
