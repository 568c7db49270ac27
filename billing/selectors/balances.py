"""Balances, spend and reseller margin: the money arithmetic shared by billing's services,
tasks, the relay and the dashboard."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db.models import Exists, OuterRef, Q, QuerySet, Sum
from django.db.models.functions import Coalesce

from billing.models import (
    BillingAccount,
    BillingWatermark,
    Invoice,
    LedgerEntry,
    UsageEvent,
    UsageRollup,
)
from billing.periods import Period
from portal.models import Organization

# Events that are charged: priced ones that succeeded, or that failed after consuming
# tokens (a stream cut short). Every other event costs zero anyway.
BILLABLE = ~Q(currency="") & (
    Q(status_code__lt=400) | Q(cost_retail_micros__gt=0) | Q(cost_wholesale_micros__gt=0)
)


def watermark_margin() -> timedelta:
    """How far before a watermark periodic jobs look again, for events whose rows were
    built before the job ran but committed after it."""
    return timedelta(seconds=settings.BILLING_WATERMARK_MARGIN_SECONDS)


def watermark_position(name: str) -> datetime | None:
    return BillingWatermark.objects.filter(name=name).values_list("position", flat=True).first()


def floor_hour(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


@dataclass(frozen=True, slots=True)
class UsageScope:
    """Which usage events an account pays for, and at which side of the price pair."""

    events: Q
    rollups: Q
    cost_field: str


def usage_scope(account: BillingAccount) -> UsageScope | None:
    """Tenants pay retail for their own events; resellers wholesale for those they sold."""
    kind = account.organization.kind
    if kind == Organization.Kind.TENANT:
        org = Q(tenant_id=account.organization_id)
        return UsageScope(org, org, "cost_retail_micros")
    if kind == Organization.Kind.RESELLER:
        org = Q(reseller_id=account.organization_id)
        return UsageScope(org, org, "cost_wholesale_micros")
    return None


# --- Balances -------------------------------------------------------------------------------


def account_balance_micros(account: BillingAccount, *, include_unposted: bool = False) -> int:
    """The sum of the account's ledger entries (positive: credit; negative: owed).

    With ``include_unposted``, usage events not yet posted as ledger charges are
    subtracted too, so the figure is current although posting runs every few minutes.
    """
    posted = LedgerEntry.objects.filter(account=account).aggregate(
        total=Coalesce(Sum("amount_micros"), 0)
    )["total"]
    if not include_unposted:
        return posted
    return posted - unposted_usage_micros(account)


def unposted_usage_micros(account: BillingAccount) -> int:
    """The cost of billable events the usage-charge job has not posted yet.

    Every event recorded before the job's watermark (less the margin) is posted, so only
    the newer ones are checked for a ledger entry.
    """
    scope = usage_scope(account)
    if scope is None:
        return 0
    events = UsageEvent.objects.filter(scope.events, BILLABLE)
    position = watermark_position(BillingWatermark.USAGE_CHARGES)
    if position is not None:
        events = events.filter(recorded_at__gt=position - watermark_margin())
    posted = LedgerEntry.objects.filter(
        account=account, kind=LedgerEntry.Kind.USAGE, reference=OuterRef("request_id")
    )
    return events.filter(~Exists(posted)).aggregate(total=Coalesce(Sum(scope.cost_field), 0))[
        "total"
    ]


def settled_before(rollups_position: datetime) -> datetime:
    """Hours before this are complete in the rollups, but for events written later than
    a request can last (plus the margin): those wait for the next rollup run."""
    request_seconds = getattr(settings, "RELAY_TOTAL_TIMEOUT", 600) + 60
    return floor_hour(rollups_position - watermark_margin() - timedelta(seconds=request_seconds))


def period_spend_micros(*, account: BillingAccount, period: Period) -> int:
    """What the account spent in ``period`` (its side of the price pair)."""
    scope = usage_scope(account)
    if scope is None:
        return 0
    return spend_micros(
        events=scope.events, cost_field=scope.cost_field, start=period.start_at, end=period.end_at
    )


def spend_micros(
    *, events: Q, cost_field: str, start: datetime | None, end: datetime | None = None
) -> int:
    """The cost of the matching events in ``[start, end)`` (None: unbounded): hourly
    rollups for the settled hours, raw events for the rest, split by request time so
    nothing is counted twice. Two queries, three with the watermark."""
    position = watermark_position(BillingWatermark.ROLLUPS)
    boundary = start
    if position is not None:
        boundary = settled_before(position)
        if start is not None:
            boundary = max(boundary, start)
        if end is not None:
            boundary = min(boundary, end)
    rolled = 0
    if boundary is not None and (start is None or boundary > start):
        rollups = UsageRollup.objects.filter(
            events, granularity=UsageRollup.Granularity.HOUR, bucket_start__lt=boundary
        )
        if start is not None:
            rollups = rollups.filter(bucket_start__gte=start)
        rolled = rollups.aggregate(total=Coalesce(Sum(cost_field), 0))["total"]
    recent = UsageEvent.objects.filter(events)
    if boundary is not None:
        recent = recent.filter(created_at__gte=boundary)
    if end is not None:
        recent = recent.filter(created_at__lt=end)
    return rolled + recent.aggregate(total=Coalesce(Sum(cost_field), 0))["total"]


# --- For the dashboard ----------------------------------


def organization_balance(organization: Organization) -> int | None:
    """The organisation's current balance in micro-units, or None without an account."""
    account = BillingAccount.objects.filter(organization=organization).first()
    if account is None:
        return None
    return account_balance_micros(account, include_unposted=True)


def organization_invoices(organization: Organization) -> QuerySet[Invoice]:
    """Invoices the organisation received, newest period first (drafts excluded)."""
    return (
        Invoice.objects.filter(customer=organization)
        .exclude(status=Invoice.Status.DRAFT)
        .select_related("issuer")
        .order_by("-period_start", "-id")
    )


# --- Reseller margin ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MarginRow:
    tenant_id: int
    tenant_name: str
    model: str
    currency: str
    requests: int
    retail_micros: int
    wholesale_micros: int

    @property
    def margin_micros(self) -> int:
        return self.retail_micros - self.wholesale_micros


def reseller_margin(*, reseller: Organization, period: Period) -> list[MarginRow]:
    """Retail revenue, wholesale cost and margin per tenant and model, from the daily
    rollups of the events the reseller sold in ``period``."""
    rows = (
        UsageRollup.objects.filter(
            reseller=reseller,
            granularity=UsageRollup.Granularity.DAY,
            bucket_start__gte=period.start_at,
            bucket_start__lt=period.end_at,
        )
        .values("tenant_id", "tenant__name", "model", "currency")
        .annotate(
            requests_sum=Sum("requests"),
            retail=Sum("cost_retail_micros"),
            wholesale=Sum("cost_wholesale_micros"),
        )
        .order_by("tenant__name", "tenant_id", "model", "currency")
    )
    return [
        MarginRow(
            tenant_id=row["tenant_id"],
            tenant_name=row["tenant__name"],
            model=row["model"],
            currency=row["currency"],
            requests=row["requests_sum"],
            retail_micros=row["retail"],
            wholesale_micros=row["wholesale"],
        )
        for row in rows
    ]
