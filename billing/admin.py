"""Django admin for billing: usage events, read-only (they are the evidence bills rest on)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from billing.models import UsageEvent


class OutcomeFilter(admin.SimpleListFilter):
    """Success or failure by status class: a range test, unlike a DISTINCT over the column."""

    title = "outcome"
    parameter_name = "outcome"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("2xx", "Success (2xx)"), ("4xx", "Client error (4xx)"), ("5xx", "Error (5xx)")]

    def queryset(
        self, request: HttpRequest, queryset: QuerySet[UsageEvent]
    ) -> QuerySet[UsageEvent]:
        value = self.value()
        if value in {"2xx", "4xx", "5xx"}:
            low = int(value[0]) * 100
            return queryset.filter(status_code__gte=low, status_code__lt=low + 100)
        return queryset


@admin.register(UsageEvent)
class UsageEventAdmin(admin.ModelAdmin):
    list_display = [
        "created_at",
        "request_id",
        "tenant",
        "api_key",
        "model",
        "channel",
        "prompt_tokens",
        "completion_tokens",
        "cached_tokens",
        "status_code",
        "stream",
        "estimated",
        "completed",
        "total_latency_ms",
    ]
    # No filter that needs a DISTINCT over the whole (large) table, such as on model.
    list_filter = [
        "created_at",
        OutcomeFilter,
        "stream",
        "estimated",
        "completed",
        ("tenant", admin.RelatedOnlyFieldListFilter),
        ("channel", admin.RelatedOnlyFieldListFilter),
    ]
    list_select_related = ["tenant", "api_key", "channel"]
    search_fields = ["request_id", "model", "upstream_model", "tenant__slug", "api_key__prefix"]
    show_full_result_count = False
    list_per_page = 100

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: UsageEvent | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: UsageEvent | None = None) -> bool:
        return False
