"""Admin for relay API keys: the secret is shown once, on the page answering its creation."""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.cache import add_never_cache_headers

from console.admin.base import AuditedAdmin
from console.http import acting_user
from portal import services
from portal.models import (
    ApiKey,
    CatalogModel,
    Organization,
)


class ApiKeyForm(forms.ModelForm):
    # Typed as a comma-separated list: the JSON editor a JSONField gets by default is
    # easy to get wrong for a simple list of ids.
    allowed_models = forms.CharField(
        required=False,
        help_text="Comma-separated public model ids this key may use; blank allows every model.",
    )

    class Meta:
        model = ApiKey
        fields = ["tenant", "name", "expires_at", "allowed_models"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if "allowed_models" in self.fields:
            self.initial["allowed_models"] = ", ".join(self.instance.allowed_models or [])
        if "tenant" in self.fields:
            tenant = cast(forms.ModelChoiceField, self.fields["tenant"])
            tenant.queryset = Organization.objects.filter(
                kind=Organization.Kind.TENANT, is_active=True
            )

    def clean_allowed_models(self) -> list[str]:
        ids = list(dict.fromkeys(p.strip() for p in self.cleaned_data["allowed_models"].split(",")))
        ids = [i for i in ids if i]
        known = set(
            CatalogModel.objects.filter(public_id__in=ids).values_list("public_id", flat=True)
        )
        unknown = [i for i in ids if i not in known]
        if unknown:
            raise forms.ValidationError(f"Not in the model catalog: {', '.join(unknown)}")
        return ids

    def clean_expires_at(self) -> datetime | None:
        expires_at = self.cleaned_data.get("expires_at")
        if self.instance.pk is None and expires_at and expires_at <= timezone.now():
            raise forms.ValidationError("The expiry must be in the future.")
        return expires_at


# Where save_model leaves the new secret for response_add; only on the in-memory object.
_NEW_KEY_ATTR = "_tollgate_new_key_plaintext"


@admin.register(ApiKey)
class ApiKeyAdmin(AuditedAdmin):
    audit_name = "api_key"
    form = ApiKeyForm
    list_display = [
        "name",
        "tenant",
        "prefix",
        "state",
        "expires_at",
        "created_by",
        "created_at",
        "revoked_at",
    ]
    list_filter = ["status", ("tenant", admin.RelatedOnlyFieldListFilter), "created_at"]
    list_select_related = ["tenant", "created_by"]
    search_fields = ["name", "prefix", "tenant__name", "tenant__slug"]
    actions = ["revoke_selected"]

    @admin.display(description="state")
    def state(self, obj: ApiKey) -> str:
        if obj.status == ApiKey.Status.REVOKED:
            return "revoked"
        return "active" if obj.is_usable() else "expired"

    def get_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> tuple[str, ...]:
        # Listed explicitly so the digest can never appear, even on read-only pages.
        if obj is None:
            return ("tenant", "name", "expires_at", "allowed_models")
        return (
            "tenant",
            "name",
            "prefix",
            "status",
            "expires_at",
            "allowed_models",
            "created_by",
            "created_at",
            "revoked_at",
        )

    def get_readonly_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> list[str]:
        if obj is None:
            return []
        # A key stays with its tenant (usage and invoices point at both); status changes
        # only through the revoke action so it is audited and never undone.
        return ["tenant", "prefix", "status", "created_by", "created_at", "revoked_at"]

    def has_change_permission(self, request: HttpRequest, obj: ApiKey | None = None) -> bool:
        if obj is not None and obj.status == ApiKey.Status.REVOKED:
            return False
        return super().has_change_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: ApiKey | None = None) -> bool:
        # Revoke instead: usage events and the audit log keep pointing at the key.
        return False

    def audit_organization(self, obj: ApiKey) -> Organization | None:
        return obj.tenant

    def save_model(
        self, request: HttpRequest, obj: ApiKey, form: forms.ModelForm, change: bool
    ) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        key, secret = services.api_key_create(
            tenant=obj.tenant,
            name=obj.name,
            actor=acting_user(request),
            expires_at=obj.expires_at,
            allowed_models=obj.allowed_models,
        )
        # The admin goes on with the object it built (log entry, redirect), so it must
        # become the saved key.
        for field in ApiKey._meta.concrete_fields:
            setattr(obj, field.attname, getattr(key, field.attname))
        obj._state.adding = False
        obj._state.db = key._state.db
        setattr(obj, _NEW_KEY_ATTR, secret)

    def response_add(
        self, request: HttpRequest, obj: ApiKey, post_url_continue: str | None = None
    ) -> HttpResponse:
        secret = obj.__dict__.pop(_NEW_KEY_ATTR, None)
        if secret is None:
            return super().response_add(request, obj, post_url_continue)
        # Rendered in the answer to the POST rather than passed through messages, which
        # would put the secret in a cookie or the session table on its way to the page.
        opts = self.opts
        context = {
            **self.admin_site.each_context(request),
            "title": "API key created",
            "subtitle": str(obj),
            "opts": opts,
            "key": obj,
            "secret": secret,
            "base_url": settings.TOLLGATE_PUBLIC_URL.rstrip("/") + "/v1",
            "change_url": reverse(
                f"admin:{opts.app_label}_{opts.model_name}_change", args=[obj.pk]
            ),
            "changelist_url": reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist"),
            "add_url": reverse(f"admin:{opts.app_label}_{opts.model_name}_add"),
        }
        response = TemplateResponse(request, "admin/portal/apikey/key_created.html", context)
        add_never_cache_headers(response)
        return response

    @admin.action(description="Revoke selected keys", permissions=["change"])
    def revoke_selected(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        active = queryset.filter(status=ApiKey.Status.ACTIVE).select_related("tenant")
        revoked = services.api_keys_revoke(api_keys=active, actor=acting_user(request))
        self.message_user(request, f"Revoked {revoked} key(s).", messages.SUCCESS)
