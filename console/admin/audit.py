"""The audit log in the admin: read-only."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from portal.models import (
    AuditEntry,
)


@admin.register(AuditEntry)
class AuditEntryAdmin(admin.ModelAdmin):
    """The audit log, read-only: entries are written by services, never edited."""

    list_display = [
        "created_at",
        "actor_label",
        "action",
        "target_type",
        "target_id",
        "organization",
    ]
    list_filter = ["action", "target_type", "created_at"]
    list_select_related = ["organization", "actor"]
    search_fields = ["actor_label", "action", "target_id", "organization__slug"]
    date_hierarchy = "created_at"
    show_full_result_count = False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: AuditEntry | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: AuditEntry | None = None) -> bool:
        return False
