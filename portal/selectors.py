"""Reads shared by the dashboard and the management API, each already scoped.

Functions take an :class:`portal.access.Access` (one organisation) or a
:class:`portal.access.Scope` (everything a person sees) and never widen it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from django.db.models import (
    Avg,
    BigIntegerField,
    Count,
    Exists,
    IntegerField,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Sum,
)
from django.db.models.functions import Coalesce, TruncDate
from django.utils import timezone

from billing.models import LedgerEntry, UsageEvent
from portal.access import Access, Need, Scope
from portal.models import (
    ApiKey,
    AuditEntry,
    CatalogModel,
    Channel,
    ChannelModel,
    Membership,
    Organization,
    PersonalAccessToken,
)

DEFAULT_PERIOD_DAYS = 30
# Groupings the usage API offers, and the UsageEvent fields behind them.
USAGE_GROUPS: dict[str, str] = {
    "day": "day",
    "model": "model",
    "key": "api_key_id",
    "organization": "tenant__slug",
    "surface": "surface",
}


# --- Periods --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Period:
    """Whole UTC days from ``first`` to ``last``, both included."""

    first: date
    last: date

    @classmethod
    def last_days(cls, days: int = DEFAULT_PERIOD_DAYS, *, today: date | None = None) -> Period:
        today = today or timezone.now().astimezone(UTC).date()
        return cls(first=today - timedelta(days=days - 1), last=today)

    @property
    def start(self) -> datetime:
        return datetime.combine(self.first, time.min, tzinfo=UTC)

    @property
    def end(self) -> datetime:
        """Exclusive: midnight after the last day."""
        return datetime.combine(self.last + timedelta(days=1), time.min, tzinfo=UTC)

    def days(self) -> list[date]:
        return [self.first + timedelta(days=n) for n in range((self.last - self.first).days + 1)]


# --- Organisations and people ---------------------------------------------------------------


def organizations_visible(scope: Scope, *, need: Need = Need.VIEW) -> QuerySet[Organization]:
    return scope.organizations(need).select_related("parent").order_by("kind", "name")


def tenants_of(parent: Organization) -> QuerySet[Organization]:
    """A reseller's (or the platform's) tenants with their key and member counts."""
    active_keys = (
        ApiKey.objects.filter(tenant=OuterRef("pk"), status=ApiKey.Status.ACTIVE)
        .order_by()
        .values("tenant")
        .annotate(n=Count("pk"))
        .values("n")
    )
    members = (
        Membership.objects.filter(organization=OuterRef("pk"))
        .order_by()
        .values("organization")
        .annotate(n=Count("pk"))
        .values("n")
    )
    # Posted ledger entries only: the list stays one query however much usage there is
    # (each tenant's own billing page adds the charges not posted yet).
    posted = (
        LedgerEntry.objects.filter(account__organization=OuterRef("pk"))
        .order_by()
        .values("account")
        .annotate(total=Sum("amount_micros"))
        .values("total")
    )
    return (
        Organization.objects.filter(parent=parent, kind=Organization.Kind.TENANT)
        .select_related("billing_account__price_list")
        .annotate(
            active_key_count=Coalesce(Subquery(active_keys, output_field=IntegerField()), 0),
            member_count=Coalesce(Subquery(members, output_field=IntegerField()), 0),
            posted_balance_micros=Subquery(posted, output_field=BigIntegerField()),
        )
        .order_by("name")
    )


def members_of(organization: Organization) -> QuerySet[Membership]:
    return (
        Membership.objects.filter(organization=organization)
        .select_related("user", "organization")
        .order_by("user__username")
    )


def direct_memberships(user: Any, *, limit: int) -> list[Membership]:
    """Up to ``limit`` of the person's own memberships outside the platform organisation."""
    return list(
        Membership.objects.filter(user=user)
        .exclude(organization__kind=Organization.Kind.PLATFORM)
        .select_related("organization")[:limit]
    )


def memberships_scoped(scope: Scope) -> QuerySet[Membership]:
    return scope.filter(Membership.objects.all(), "organization").select_related(
        "user", "organization"
    )


# --- API keys and tokens --------------------------------------------------------------------


def api_keys_for(access: Access) -> QuerySet[ApiKey]:
    """The keys of one organisation this person may see (a member: their own)."""
    keys = ApiKey.objects.filter(tenant=access.organization)
    if access.own_keys_only:
        keys = keys.filter(created_by=access.user)
    return keys.select_related("created_by").order_by("-created_at", "-id")


def api_keys_scoped(scope: Scope) -> QuerySet[ApiKey]:
    """Every key this person may see, across organisations."""
    return (
        scope.filter(ApiKey.objects.all(), "tenant", need=Need.KEYS, owner_field="created_by")
        .select_related("tenant", "created_by")
        .order_by("-created_at", "-id")
    )


def access_tokens_of(user: Any) -> QuerySet[PersonalAccessToken]:
    return PersonalAccessToken.objects.filter(user=user).order_by("-created_at", "-id")


# --- Usage ----------------------------------------------------------------------------------


def usage_events_for(access: Access) -> QuerySet[UsageEvent]:
    events = UsageEvent.objects.filter(tenant=access.organization)
    if access.own_keys_only:
        events = events.filter(api_key__created_by=access.user)
    return events


def usage_events_scoped(scope: Scope) -> QuerySet[UsageEvent]:
    return scope.filter(
        UsageEvent.objects.all(), "tenant", need=Need.USAGE, owner_field="api_key__created_by"
    )


def _usage_measures() -> dict[str, Any]:
    return {
        "requests": Count("pk"),
        "prompt_tokens": Coalesce(Sum("prompt_tokens"), 0),
        "completion_tokens": Coalesce(Sum("completion_tokens"), 0),
        "cached_tokens": Coalesce(Sum("cached_tokens"), 0),
        "reasoning_tokens": Coalesce(Sum("reasoning_tokens"), 0),
        "errors": Count("pk", filter=Q(status_code__gte=400)),
        "avg_latency_ms": Avg("total_latency_ms"),
        # What the tenant is charged (retail, micro-units of its price list's currency).
        "spend_micros": Coalesce(Sum("cost_retail_micros"), 0),
    }


def in_period(events: QuerySet[UsageEvent], period: Period) -> QuerySet[UsageEvent]:
    return events.filter(created_at__gte=period.start, created_at__lt=period.end)


def usage_grouped(events: QuerySet[UsageEvent], group_by: Sequence[str]) -> QuerySet[Any]:
    """One row per combination of ``group_by`` (names from USAGE_GROUPS) with totals."""
    unknown = [g for g in group_by if g not in USAGE_GROUPS]
    if unknown:
        raise ValueError(f"Cannot group usage by: {', '.join(unknown)}")
    fields = [USAGE_GROUPS[g] for g in group_by]
    rows = events.order_by()
    if "day" in group_by:
        rows = rows.annotate(day=TruncDate("created_at", tzinfo=UTC))
    ordering = [f"-{f}" if f == "day" else f for f in fields]
    return rows.values(*fields).annotate(**_usage_measures()).order_by(*ordering)


def usage_totals(events: QuerySet[UsageEvent]) -> dict[str, Any]:
    return events.order_by().aggregate(**_usage_measures())


@dataclass(frozen=True)
class DailyUsage:
    day: date
    requests: int
    prompt_tokens: int
    completion_tokens: int
    errors: int
    avg_latency_ms: int | None
    spend_micros: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def usage_by_day(events: QuerySet[UsageEvent], period: Period) -> list[DailyUsage]:
    """Every day of ``period`` in order, days without requests as zeros."""
    rows = {row["day"]: row for row in usage_grouped(in_period(events, period), ["day"])}
    series = []
    for day in period.days():
        row = rows.get(day, {})
        latency = row.get("avg_latency_ms")
        series.append(
            DailyUsage(
                day=day,
                requests=row.get("requests", 0),
                prompt_tokens=row.get("prompt_tokens", 0),
                completion_tokens=row.get("completion_tokens", 0),
                errors=row.get("errors", 0),
                avg_latency_ms=round(latency) if latency is not None else None,
                spend_micros=row.get("spend_micros", 0),
            )
        )
    return series


def usage_by_model(events: QuerySet[UsageEvent], period: Period) -> list[dict[str, Any]]:
    rows = list(usage_grouped(in_period(events, period), ["model"]))
    for row in rows:
        row["total_tokens"] = row["prompt_tokens"] + row["completion_tokens"]
    return sorted(rows, key=lambda r: (-r["total_tokens"], r["model"]))


def recent_requests(events: QuerySet[UsageEvent], *, limit: int = 50) -> QuerySet[UsageEvent]:
    return events.select_related("api_key").order_by("-created_at", "-id")[:limit]


# --- Catalog and channels -------------------------------------------------------------------


def _served_by_enabled_channel() -> Exists:
    return Exists(
        ChannelModel.objects.filter(model=OuterRef("pk"), channel__status=Channel.Status.ENABLED)
    )


def _priced_for_anyone() -> Exists:
    """A price in any list, in force now. Prices live in billing, a layer above: reached
    through the catalog's reverse relation rather than an import."""
    prices = CatalogModel._meta.get_field("prices").related_model
    return Exists(prices.objects.filter(model=OuterRef("pk"), effective_from__lte=timezone.now()))


def catalog_with_availability(*, include_inactive: bool = False) -> QuerySet[CatalogModel]:
    """Catalog models annotated ``served`` (by an enabled channel) and ``priced`` (in some
    price list): available means active, served and priced."""
    models = CatalogModel.objects.all()
    if not include_inactive:
        models = models.filter(is_active=True)
    enabled_links = (
        ChannelModel.objects.filter(model=OuterRef("pk"), channel__status=Channel.Status.ENABLED)
        .order_by()
        .values("model")
        .annotate(n=Count("pk"))
        .values("n")
    )
    return models.annotate(
        served=_served_by_enabled_channel(),
        priced=_priced_for_anyone(),
        enabled_channel_count=Coalesce(Subquery(enabled_links, output_field=IntegerField()), 0),
    ).order_by("public_id")


def availability_reason(model: CatalogModel) -> str:
    """What the catalog pages say about a model annotated by catalog_with_availability."""
    if not model.is_active:
        return "unavailable: withdrawn from the catalog"
    if not getattr(model, "served", False):
        return "unavailable: no active channel"
    if not getattr(model, "priced", False):
        return "unpriced"
    return "available"


def channels_overview() -> QuerySet[Channel]:
    return Channel.objects.prefetch_related("served__model").order_by("-priority", "name")


# --- Audit ----------------------------------------------------------------------------------


def audit_entries_scoped(scope: Scope) -> QuerySet[AuditEntry]:
    """Operators see every entry; others those of organisations whose log they may read."""
    return scope.filter(AuditEntry.objects.all(), "organization", need=Need.AUDIT).select_related(
        "actor", "organization"
    )


def audit_entries_for(access: Access) -> QuerySet[AuditEntry]:
    """One organisation's entries; a reseller's also include its tenants'."""
    organization = access.organization
    entries = AuditEntry.objects.filter(
        Q(organization=organization) | Q(organization__parent=organization)
        if organization.kind == Organization.Kind.RESELLER
        else Q(organization=organization)
    )
    return entries.select_related("actor", "organization").order_by("-created_at", "-id")
