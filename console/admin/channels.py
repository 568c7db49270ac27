"""Admin for the model catalog and channels: secrets write-only, health visible."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import Count, QuerySet
from django.http import HttpRequest

from console.admin.base import AuditedAdmin
from console.http import acting_user
from portal import services
from portal.models import (
    CatalogModel,
    Channel,
    ChannelModel,
)


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
            "provider_settings",
            "native_surfaces",
            "priority",
            "weight",
            "status",
            "status_reason",
        ]

    def clean(self) -> dict[str, Any]:
        super().clean()
        cleaned = self.cleaned_data
        if cleaned.get("secret") and cleaned.get("clear_secret"):
            raise forms.ValidationError("Either type a new secret or remove it, not both.")
        # The model checks the secret against the provider type, so it sees the new one.
        if cleaned.get("clear_secret"):
            self.instance.secret = ""
        elif cleaned.get("secret"):
            self.instance.secret = cleaned["secret"]
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
        (
            None,
            {
                "fields": [
                    "name",
                    "provider_type",
                    "base_url",
                    "provider_settings",
                    "native_surfaces",
                ]
            },
        ),
        ("Secret", {"fields": ["secret_status", "secret", "clear_secret"]}),
        (
            "Routing",
            {"fields": ["priority", "weight", "group", "dedicated", "status", "status_reason"]},
        ),
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
        services.channels_set_status(
            channels=queryset, enabled=enabled, reason=reason, actor=acting_user(request)
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
        # Deferred: the check's HTTP stack, Redis and provider SDKs cost ~0.6 s to import,
        # which every process that loads the admin (all management commands) would pay.
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
