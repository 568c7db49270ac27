"""Admin for organisations and memberships."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django import forms
from django.contrib import admin
from django.core.validators import MinValueValidator, slug_re
from django.http import HttpRequest

from console.admin.base import AuditedAdmin
from portal.models import (
    Channel,
    Membership,
    Organization,
)
from portal.models.limits import LIMIT_NAMES

# What the relay enforces on a tenant (and on each key, which has its own), never on a
# reseller or the platform, which hold no keys. These are the operator's caps; the
# tenant's seller sets its own limits beneath them on the tenant's Limits page (the
# seller_* fields), and the relay enforces the tighter of the two.
LIMIT_FIELDS = list(LIMIT_NAMES)
TENANT_FIELDS = [*LIMIT_FIELDS, "channel_groups"]


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    fields = ["user", "role", "created_at"]
    readonly_fields = ["created_at"]
    autocomplete_fields = ["user"]


class OrganizationForm(forms.ModelForm):
    # Typed as a comma-separated list, as a key's models are.
    channel_groups = forms.CharField(
        required=False,
        help_text="Tenants only: comma-separated channel groups its keys may use (a key's own "
        "groups, where set, replace these); blank allows every group.",
    )

    class Meta:
        model = Organization
        fields = ["name", "slug", "kind", "parent", "is_active", *TENANT_FIELDS]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.initial["channel_groups"] = ", ".join(self.instance.channel_groups or [])
        for name in LIMIT_FIELDS:  # blank is no limit; 0 would refuse every request
            self.fields[name].validators.append(MinValueValidator(1))

    def clean_channel_groups(self) -> list[str]:
        typed = self.cleaned_data["channel_groups"].split(",")
        groups = [name for name in dict.fromkeys(part.strip() for part in typed) if name]
        malformed = [name for name in groups if not slug_re.match(name)]
        if malformed:
            raise forms.ValidationError(f"Not a group name: {', '.join(malformed)}")
        # A misspelt group would leave the tenant no channel at all, and every request
        # of its keys refused: only groups some channel is in are taken.
        known = set(Channel.objects.filter(group__in=groups).values_list("group", flat=True))
        unknown = [name for name in groups if name not in known]
        if unknown:
            raise forms.ValidationError(f"No channel is in the group: {', '.join(unknown)}")
        return groups

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        kind = data.get("kind") or self.instance.kind  # read-only once created
        if kind and kind != Organization.Kind.TENANT:
            for name in TENANT_FIELDS:
                if data.get(name) not in (None, []):
                    self.add_error(name, "Only a tenant has limits and channel groups.")
        return data

    def save(self, commit: bool = True) -> Organization:
        # The operator's own (de)activation: no longer the seller's to lift or keep.
        if "is_active" in self.changed_data:
            self.instance.deactivated_by_seller = False
        return super().save(commit)

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
        # The seller's own limits (the tenant's Limits page) are shown beside the caps.
        sellers = (
            [*(f"seller_{name}" for name in LIMIT_NAMES), "deactivated_by_seller"]
            if obj and obj.is_tenant
            else []
        )
        return ["kind", "parent", "created_at", *sellers] if obj else ["created_at"]

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
