"""Admin for organisations and memberships."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django import forms
from django.contrib import admin
from django.http import HttpRequest

from console.admin.base import AuditedAdmin
from portal.models import (
    Membership,
    Organization,
)


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    fields = ["user", "role", "created_at"]
    readonly_fields = ["created_at"]
    autocomplete_fields = ["user"]


class OrganizationForm(forms.ModelForm):
    class Meta:
        model = Organization
        fields = ["name", "slug", "kind", "parent", "is_active"]

    def _post_clean(self) -> None:
        # Organization.clean() looks the kind up in a dict and raises KeyError when it is
        # blank or unknown; the field error already tells the operator what is wrong.
        if self.has_error("kind"):
            return
        super()._post_clean()  # type: ignore[misc]  # Django's, missing from its stubs


@admin.register(Organization)
class OrganizationAdmin(AuditedAdmin):
    audit_name = "organization"
    form = OrganizationForm
    list_display = ["name", "slug", "kind", "parent", "is_active", "created_at"]
    list_filter = ["kind", "is_active"]
    list_select_related = ["parent"]
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}
    inlines = [MembershipInline]

    def audit_organization(self, obj: Organization) -> Organization | None:
        return obj

    def get_readonly_fields(
        self, request: HttpRequest, obj: Organization | None = None
    ) -> list[str]:
        # Changing kind or parent would move keys, prices and invoices across the tree;
        # that needs a workflow of its own, not a form field.
        return ["kind", "parent", "created_at"] if obj else ["created_at"]

    def get_prepopulated_fields(
        self, request: HttpRequest, obj: Organization | None = None
    ) -> dict[str, Sequence[str]]:
        # Slugs appear in URLs and scripts: derive them once, never rewrite them silently.
        return {} if obj else dict(self.prepopulated_fields)

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "parent":
            kwargs["queryset"] = Organization.objects.exclude(kind=Organization.Kind.TENANT)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)


@admin.register(Membership)
class MembershipAdmin(AuditedAdmin):
    audit_name = "membership"
    audit_add_verb = "add"
    list_display = ["user", "organization", "role", "created_at"]
    list_filter = ["role", "organization__kind"]
    list_select_related = ["user", "organization"]
    search_fields = ["user__username", "user__email", "organization__name", "organization__slug"]
    autocomplete_fields = ["user", "organization"]

    def audit_organization(self, obj: Membership) -> Organization | None:
        return obj.organization
