"""Usage reads the dashboard and the management API share: usage events scoped to what a
person may see, totals, per-day and per-model series, and tenant lists with balances.

Functions take a :class:`portal.access.Access` (one organisation) or a
:class:`portal.access.Scope` (everything a person sees) and never widen it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from django.db.models import (
    Avg,
    BigIntegerField,
    Count,
    IntegerField,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Sum,
)
from django.db.models.functions import Coalesce, TruncDate

from billing.models import LedgerEntry, UsageEvent
from billing.periods import Period
from portal.access import Access, Need, Scope
from portal.models import ApiKey, Membership, Organization

# Groupings the usage API offers, and the UsageEvent fields behind them.
USAGE_GROUPS: dict[str, str] = {
    "day": "day",
    "model": "model",
    "key": "api_key_id",
    "organization": "tenant__slug",
    "surface": "surface",
}


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
    return events.filter(created_at__gte=period.start_at, created_at__lt=period.end_at)


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


# --- Tenants ---------------------------------------------------------------------------------


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


@dataclass(frozen=True)
class ChannelTraffic:
    """One channel's recent traffic, for the operator: requests it answered, how many
    failed upstream (5xx), and how often the relay moved on from it to another channel."""

    requests: int = 0
    errors: int = 0
    failovers: int = 0

    @property
    def error_percent(self) -> float | None:
        return self.errors * 100 / self.requests if self.requests else None


def channel_traffic(since: datetime) -> dict[int, ChannelTraffic]:
    """Traffic per channel id since ``since``, from the usage events the relay already
    writes (nothing added to its hot path). Failovers are read from the few events that
    tried more than one channel: every attempt but the last moved on from its channel."""
    recent = UsageEvent.objects.filter(created_at__gte=since)
    counts = (
        recent.filter(channel__isnull=False)
        .order_by()
        .values("channel_id")
        .annotate(requests=Count("pk"), errors=Count("pk", filter=Q(status_code__gte=500)))
    )
    failovers: dict[int, int] = {}
    retried = recent.filter(attempts__1__isnull=False).values_list("attempts", flat=True)
    for attempts in retried.iterator(chunk_size=2000):
        for attempt in attempts[:-1]:
            channel_id = attempt.get("channel") if isinstance(attempt, dict) else None
            if isinstance(channel_id, int):
                failovers[channel_id] = failovers.get(channel_id, 0) + 1
    traffic = {
        row["channel_id"]: ChannelTraffic(
            row["requests"], row["errors"], failovers.get(row["channel_id"], 0)
        )
        for row in counts
    }
    for channel_id, moved in failovers.items():
        traffic.setdefault(channel_id, ChannelTraffic(failovers=moved))
    return traffic
