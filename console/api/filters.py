"""Query-string filters of the API's list endpoints (django-filter)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import django_filters
from django import forms
from django.db.models import QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field

from billing.models import Invoice, PriceList, UsageEvent
from billing.periods import DEFAULT_PERIOD_DAYS, Period
from portal.models import ApiKey, AuditEntry, Organization
from portal.models.catalog import SURFACES


class _RowIdField(forms.IntegerField):
    """An integer the database can hold: beyond 64 bits it is a 400, not a 500 from the
    driver (SQLite raises OverflowError on such a parameter)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("min_value", -(2**63))
        kwargs.setdefault("max_value", 2**63 - 1)
        super().__init__(*args, **kwargs)


@extend_schema_field(OpenApiTypes.INT)
class IntegerFilter(django_filters.NumberFilter):
    field_class = _RowIdField


class OrganizationFilter(django_filters.FilterSet):
    parent = django_filters.CharFilter(field_name="parent__slug", help_text="Parent's slug.")

    class Meta:
        model = Organization
        fields = ["kind", "is_active", "parent"]


class ApiKeyFilter(django_filters.FilterSet):
    organization = django_filters.CharFilter(
        field_name="tenant__slug", help_text="The tenant's slug."
    )

    class Meta:
        model = ApiKey
        fields = ["organization", "status"]


# Usage periods are whole days within these; beyond them date arithmetic overflows.
EARLIEST_DAY = date(1970, 1, 1)
LATEST_DAY = date(9999, 12, 30)


class UsageFilter(django_filters.FilterSet):
    """Usage of a period (whole UTC days; the last 30 days by default)."""

    start = django_filters.DateFilter(
        method="filter_noop", help_text="First day (UTC), included. Default: 29 days ago."
    )
    end = django_filters.DateFilter(
        method="filter_noop", help_text="Last day (UTC), included. Default: today."
    )
    organization = django_filters.CharFilter(
        field_name="tenant__slug", help_text="The tenant's slug."
    )
    key = IntegerFilter(field_name="api_key_id", help_text="API key id.")
    model = django_filters.CharFilter(field_name="model", help_text="Public model id.")
    surface = django_filters.ChoiceFilter(
        field_name="surface",
        choices=[(s, s) for s in SURFACES],
        help_text="The client API: chat, responses, messages, embeddings or completions.",
    )

    class Meta:
        model = UsageEvent
        fields = ["start", "end", "organization", "key", "model", "surface"]

    def filter_noop(self, queryset: QuerySet[Any], name: str, value: date) -> QuerySet[Any]:
        return queryset  # applied together in filter_queryset, as one period

    def period(self) -> Period | None:
        """The days asked for; None when the start comes after the last day (no days)."""
        default = Period.last_days()
        data = self.form.cleaned_data
        last: date = data.get("end") or default.last_day
        first: date = data.get("start") or last - timedelta(days=DEFAULT_PERIOD_DAYS - 1)
        if first > last:
            return None
        return Period.days_through(first, last)

    def filter_queryset(self, queryset: QuerySet[Any]) -> QuerySet[Any]:
        queryset = super().filter_queryset(queryset)
        period = self.period()
        if period is None:
            return queryset.none()
        return queryset.filter(created_at__gte=period.start_at, created_at__lt=period.end_at)

    def is_valid(self) -> bool:
        if not super().is_valid():
            return False
        data = self.form.cleaned_data
        for name in ("start", "end"):
            value = data.get(name)
            if value is not None and not EARLIEST_DAY <= value <= LATEST_DAY:
                self.form.add_error(name, f"Choose a day from {EARLIEST_DAY} to {LATEST_DAY}.")
        if data.get("start") and data.get("end") and data["start"] > data["end"]:
            self.form.add_error("end", "The end comes before the start.")
        return not self.form.errors


class AuditFilter(django_filters.FilterSet):
    organization = django_filters.CharFilter(field_name="organization__slug")
    since = django_filters.IsoDateTimeFilter(method="filter_since")

    class Meta:
        model = AuditEntry
        fields = ["organization", "action", "target_type", "since"]

    def filter_since(self, queryset: QuerySet[Any], name: str, value: datetime) -> QuerySet[Any]:
        # In UTC: PostgreSQL refuses offsets beyond ±15:59, which ISO 8601 allows.
        return queryset.filter(created_at__gte=value.astimezone(UTC))

    def is_valid(self) -> bool:
        if not super().is_valid():
            return False
        since = self.form.cleaned_data.get("since")
        if since is not None:
            try:
                since.astimezone(UTC)
            except OverflowError:
                self.form.add_error("since", "This moment is out of range.")
        return not self.form.errors


class PriceListFilter(django_filters.FilterSet):
    owner = django_filters.CharFilter(field_name="owner__slug", help_text="Owner's slug.")

    class Meta:
        model = PriceList
        fields = ["owner", "is_default"]


class InvoiceFilter(django_filters.FilterSet):
    customer = django_filters.CharFilter(field_name="customer__slug", help_text="Customer's slug.")
    issuer = django_filters.CharFilter(field_name="issuer__slug", help_text="Issuer's slug.")

    class Meta:
        model = Invoice
        fields = ["status", "kind", "customer", "issuer"]
