"""Django admin for the portal: the operator's first UI for organisations, keys and channels.

Secrets stay write-only here: an API key's secret is shown once on the page that
answers its creation, a channel's secret can be replaced but never displayed, and
neither digest nor ciphertext is rendered. Every change made here writes an AuditEntry
inside the admin's own transaction.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.db import models, transaction
from django.db.models import Count, QuerySet
from django.http import HttpRequest, HttpResponse
from django.template import engines
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.cache import add_never_cache_headers

from portal import services
from portal.models import (
    ApiKey,
    AuditEntry,
    CatalogModel,
    Channel,
    ChannelModel,
    Membership,
    Organization,
)

admin.site.site_header = "Tollgate administration"
admin.site.site_title = "Tollgate"
admin.site.index_title = "Operator console"

REDACTED = "[redacted]"


def _jsonable(value: Any) -> Any:
    """Turn a form value into something AuditEntry.data (a JSONField) can store."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, models.Model):
        return {"id": value.pk, "repr": str(value)}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, Iterable):
        return [_jsonable(v) for v in value]
    return str(value)


class AuditedAdmin(admin.ModelAdmin):
    """Writes an AuditEntry for every add, change and delete made through the admin.

    The admin runs each form submission in a transaction, so the entry commits with the
    change. Values of password inputs and of fields named in ``audit_redacted_fields``
    are never logged, only the fact that they changed.
    """

    audit_name = ""
    audit_add_verb = "create"
    audit_redacted_fields: tuple[str, ...] = ()

    def audit_organization(self, obj: Any) -> Organization | None:
        return None

    def _is_secret(self, form: forms.ModelForm, name: str) -> bool:
        # Password inputs are redacted even when nobody remembered to list them.
        field = form.fields.get(name)
        return name in self.audit_redacted_fields or (
            field is not None and isinstance(field.widget, forms.PasswordInput)
        )

    def _audit(self, request: HttpRequest, obj: Any, verb: str, data: dict[str, Any]) -> None:
        AuditEntry.record(
            actor=request.user,
            action=f"{self.audit_name}.{verb}",
            target=obj,
            organization=self.audit_organization(obj),
            data={**data, "via": "admin"},
        )

    def save_model(
        self, request: HttpRequest, obj: Any, form: forms.ModelForm, change: bool
    ) -> None:
        super().save_model(request, obj, form, change)
        changed = {
            name: REDACTED
            if self._is_secret(form, name)
            else _jsonable(form.cleaned_data.get(name))
            for name in form.changed_data
        }
        if change and not changed:
            return
        self._audit(request, obj, "update" if change else self.audit_add_verb, {"changed": changed})

    def save_related(
        self, request: HttpRequest, form: forms.ModelForm, formsets: list[Any], change: bool
    ) -> None:
        super().save_related(request, form, formsets, change)
        for formset in formsets:
            if not formset.has_changed():
                continue
            self._audit(
                request,
                form.instance,
                "update",
                {
                    "inline": str(formset.model._meta.verbose_name_plural),
                    "added": [str(o) for o in formset.new_objects],
                    "changed": [
                        {"object": str(o), "fields": fields}
                        for o, fields in formset.changed_objects
                    ],
                    "deleted": [str(o) for o in formset.deleted_objects],
                },
            )

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        self._audit(request, obj, "delete", {"repr": str(obj)})
        super().delete_model(request, obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        for obj in queryset:
            self._audit(request, obj, "delete", {"repr": str(obj)})
        super().delete_queryset(request, queryset)


# --- Organisations and memberships ----------------------------------------------------------


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
        super()._post_clean()


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
    ) -> dict[str, list[str]]:
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


# --- API keys -------------------------------------------------------------------------------


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
            self.fields["tenant"].queryset = Organization.objects.filter(
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


_KEY_CREATED_TEMPLATE = """{% extends "admin/base_site.html" %}
{% block content %}
<p>This is the secret of <strong>{{ key.name }}</strong> for {{ key.tenant.name }}.
Copy it now: it is shown only this once, and Tollgate keeps only a digest of it.</p>
<p><input type="text" readonly size="64" value="{{ secret }}" aria-label="API key secret"
  style="font-family: monospace"></p>
<p>Use it with any OpenAI SDK: base URL <code>{{ base_url }}</code>, API key as above.</p>
<p><a href="{{ change_url }}">Continue to the key</a>
 · <a href="{{ changelist_url }}">All API keys</a>
 · <a href="{{ add_url }}">Create another</a></p>
{% endblock %}
"""

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

    def get_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> list[str]:
        # Listed explicitly so the digest can never appear, even on read-only pages.
        if obj is None:
            return ["tenant", "name", "expires_at", "allowed_models"]
        return [
            "tenant",
            "name",
            "prefix",
            "status",
            "expires_at",
            "allowed_models",
            "created_by",
            "created_at",
            "revoked_at",
        ]

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
            actor=request.user,
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
        template = engines["django"].from_string(_KEY_CREATED_TEMPLATE)
        response = TemplateResponse(request, template, context)
        add_never_cache_headers(response)
        return response

    @admin.action(description="Revoke selected keys", permissions=["change"])
    def revoke_selected(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        revoked = 0
        with transaction.atomic():
            for key in queryset.filter(status=ApiKey.Status.ACTIVE).select_related("tenant"):
                services.api_key_revoke(api_key=key, actor=request.user)
                revoked += 1
        self.message_user(request, f"Revoked {revoked} key(s).", messages.SUCCESS)


# --- Model catalog --------------------------------------------------------------------------


@admin.register(CatalogModel)
class CatalogModelAdmin(AuditedAdmin):
    audit_name = "catalog_model"
    list_display = [
        "public_id",
        "owned_by",
        "is_active",
        "context_window",
        "max_output_tokens",
        "channel_count",
        "created_at",
    ]
    list_filter = ["is_active", "owned_by"]
    search_fields = ["public_id", "description"]
    readonly_fields = ["created_at"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[CatalogModel]:
        return super().get_queryset(request).annotate(_channel_count=Count("served_by"))

    @admin.display(description="channels", ordering="_channel_count")
    def channel_count(self, obj: CatalogModel) -> int:
        return obj._channel_count  # type: ignore[attr-defined]


# --- Channels -------------------------------------------------------------------------------


class ChannelModelInline(admin.TabularInline):
    model = ChannelModel
    extra = 1
    fields = ["model", "upstream_name"]
    autocomplete_fields = ["model"]
    verbose_name = "served model"
    verbose_name_plural = "served models"


class ChannelForm(forms.ModelForm):
    secret = forms.CharField(
        required=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Write-only: stored encrypted, never shown. Leave blank to keep the current one.",
    )
    clear_secret = forms.BooleanField(required=False, label="Remove the stored secret")

    class Meta:
        model = Channel
        fields = [
            "name",
            "provider_type",
            "base_url",
            "priority",
            "weight",
            "status",
            "status_reason",
        ]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        if cleaned.get("secret") and cleaned.get("clear_secret"):
            raise forms.ValidationError("Either type a new secret or remove it, not both.")
        return cleaned


@admin.register(Channel)
class ChannelAdmin(AuditedAdmin):
    audit_name = "channel"
    audit_redacted_fields = ("secret",)
    form = ChannelForm
    inlines = [ChannelModelInline]
    list_display = [
        "name",
        "provider_type",
        "base_url",
        "priority",
        "weight",
        "status",
        "status_reason",
        "last_check_ok",
        "models_served",
        "has_secret",
        "updated_at",
    ]
    list_filter = ["status", "provider_type", "group"]
    search_fields = ["name", "base_url", "served__model__public_id"]
    readonly_fields = [
        "secret_status",
        "last_check_at",
        "last_check_ok",
        "last_check_latency_ms",
        "last_check_error",
        "created_at",
        "updated_at",
    ]
    fieldsets = [
        (None, {"fields": ["name", "provider_type", "base_url"]}),
        ("Secret", {"fields": ["secret_status", "secret", "clear_secret"]}),
        ("Routing", {"fields": ["priority", "weight", "group", "status", "status_reason"]}),
        ("Timeouts", {"fields": ["connect_timeout", "first_byte_timeout", "total_timeout"]}),
        (
            "Health",
            {
                "fields": [
                    "last_check_at",
                    "last_check_ok",
                    "last_check_latency_ms",
                    "last_check_error",
                ]
            },
        ),
        (None, {"fields": ["created_at", "updated_at"]}),
    ]
    actions = ["enable_selected", "disable_selected", "test_selected"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Channel]:
        return super().get_queryset(request).prefetch_related("served__model")

    @admin.display(description="models")
    def models_served(self, obj: Channel) -> str:
        return ", ".join(sorted(link.model.public_id for link in obj.served.all()))

    @admin.display(description="secret", boolean=True)
    def has_secret(self, obj: Channel) -> bool:
        return bool(obj.secret_ciphertext)

    @admin.display(description="stored secret")
    def secret_status(self, obj: Channel) -> str:
        # Says whether one is set without decrypting it, so nothing of it reaches the page.
        return "set (encrypted)" if obj.secret_ciphertext else "none"

    def save_model(
        self, request: HttpRequest, obj: Channel, form: forms.ModelForm, change: bool
    ) -> None:
        if form.cleaned_data.get("clear_secret"):
            obj.secret = ""
        elif form.cleaned_data.get("secret"):
            obj.secret = form.cleaned_data["secret"]
        super().save_model(request, obj, form, change)

    def _set_status(self, request: HttpRequest, queryset: QuerySet[Channel], enabled: bool) -> None:
        reason = "" if enabled else f"Disabled by {request.user.get_username()} in admin"
        with transaction.atomic():
            for channel in queryset:
                services.channel_set_status(
                    channel=channel, enabled=enabled, reason=reason, actor=request.user
                )
        verb = "Enabled" if enabled else "Disabled"
        self.message_user(request, f"{verb} {queryset.count()} channel(s).", messages.SUCCESS)

    @admin.action(description="Enable selected channels", permissions=["change"])
    def enable_selected(self, request: HttpRequest, queryset: QuerySet[Channel]) -> None:
        self._set_status(request, queryset, enabled=True)

    @admin.action(description="Disable selected channels", permissions=["change"])
    def disable_selected(self, request: HttpRequest, queryset: QuerySet[Channel]) -> None:
        self._set_status(request, queryset, enabled=False)

    @admin.action(description="Test selected channels now", permissions=["change"])
    def test_selected(self, request: HttpRequest, queryset: QuerySet[Channel]) -> None:
        from relay.health import channel_check

        for channel in queryset:
            result = channel_check(channel)
            if result.ok:
                self.message_user(
                    request, f"{channel}: OK in {result.latency_ms} ms.", messages.SUCCESS
                )
            else:
                self.message_user(
                    request,
                    f"{channel}: failed after {result.latency_ms} ms: {result.error}",
                    messages.ERROR,
                )


# --- Audit log ------------------------------------------------------------------------------


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
