"""Django admin for billing: usage events, ledger, invoices and rollups read-only (they are
the evidence bills rest on); prices and accounts change through the audited services."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from billing.models import (
    BillingAccount,
    BillingWatermark,
    BudgetAlert,
    Invoice,
    InvoiceLine,
    KeyQuota,
    LedgerEntry,
    ModelPrice,
    PriceList,
    RedemptionCode,
    TenantDefaults,
    UsageEvent,
    UsageRollup,
)
from billing.services import prices
from console.http import acting_user


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
        "cost_retail_micros",
        "currency",
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


# --- Prices, accounts, ledger, invoices, rollups --------------------------------------------
# Money changes go through billing.services (audited); the admin shows, and creates only
# through those services.


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


PRICE_COLUMNS = [
    "input_per_mtok",
    "cached_input_per_mtok",
    "output_per_mtok",
    "request_fee_micros",
    "effective_from",
]


class ModelPriceInline(admin.TabularInline):
    model = ModelPrice
    extra = 0
    fields = ["model", *PRICE_COLUMNS, "created_by"]
    readonly_fields = ["model", *PRICE_COLUMNS, "created_by"]
    can_delete = False
    show_change_link = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(PriceList)
class PriceListAdmin(admin.ModelAdmin):
    list_display = ["name", "owner", "currency", "is_default", "markup_percent", "created_at"]
    list_select_related = ["owner"]
    inlines = [ModelPriceInline]

    def get_readonly_fields(self, request: HttpRequest, obj: PriceList | None = None) -> Any:
        return ["owner", "currency", "is_default"] if obj else []

    def save_model(self, request: HttpRequest, obj: PriceList, form: Any, change: bool) -> None:
        if change:
            prices.price_list_set_markup(
                price_list=obj, markup_percent=obj.markup_percent, actor=acting_user(request)
            )
            return
        created = prices.price_list_create(
            owner=obj.owner,
            name=obj.name,
            currency=obj.currency,
            is_default=obj.is_default,
            markup_percent=obj.markup_percent,
            actor=acting_user(request),
        )
        obj.pk = created.pk


@admin.register(ModelPrice)
class ModelPriceAdmin(admin.ModelAdmin):
    """Prices are append-only: a change is a new price with a later effective date."""

    list_display = ["model", "price_list", *PRICE_COLUMNS]
    list_filter = [("price_list", admin.RelatedOnlyFieldListFilter)]
    list_select_related = ["model", "price_list"]
    fields = [
        "price_list",
        "model",
        *PRICE_COLUMNS,
        *prices.OPTIONAL_PRICE_FIELDS,
        "long_context_prices",
    ]

    def has_change_permission(self, request: HttpRequest, obj: ModelPrice | None = None) -> bool:
        return obj is None and super().has_change_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: ModelPrice | None = None) -> bool:
        return False

    def save_model(self, request: HttpRequest, obj: ModelPrice, form: Any, change: bool) -> None:
        created = prices.model_price_set(
            price_list=obj.price_list,
            model=obj.model,
            input_per_mtok=obj.input_per_mtok,
            cached_input_per_mtok=obj.cached_input_per_mtok,
            output_per_mtok=obj.output_per_mtok,
            request_fee_micros=obj.request_fee_micros,
            effective_from=obj.effective_from,
            long_context_prices=obj.long_context_prices or None,
            actor=acting_user(request),
            **{name: getattr(obj, name) for name in prices.OPTIONAL_PRICE_FIELDS},
        )
        obj.pk = created.pk


@admin.register(BillingAccount)
class BillingAccountAdmin(admin.ModelAdmin):
    list_display = [
        "organization",
        "mode",
        "currency",
        "credit_limit_micros",
        "price_list",
        "monthly_budget_micros",
        "budget_hard_stop",
    ]
    list_select_related = ["organization", "price_list"]
    search_fields = ["organization__name", "organization__slug"]

    def get_readonly_fields(self, request: HttpRequest, obj: BillingAccount | None = None) -> Any:
        return ["organization"] if obj else []

    def save_model(
        self, request: HttpRequest, obj: BillingAccount, form: Any, change: bool
    ) -> None:
        fields = {name: form.cleaned_data[name] for name in form.changed_data}
        fields.pop("organization", None)
        if change:
            prices.billing_account_update(
                account=BillingAccount.objects.get(pk=obj.pk), actor=acting_user(request), **fields
            )
        else:
            created = prices.billing_account_create(
                organization=obj.organization, actor=acting_user(request), **fields
            )
            obj.pk = created.pk


@admin.register(LedgerEntry)
class LedgerEntryAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "account", "kind", "amount_micros", "reference", "memo"]
    list_filter = ["kind", ("account", admin.RelatedOnlyFieldListFilter)]
    list_select_related = ["account__organization"]
    search_fields = ["reference", "memo"]
    show_full_result_count = False


@admin.register(RedemptionCode)
class RedemptionCodeAdmin(ReadOnlyAdmin):
    list_display = ["prefix", "issuer", "amount_micros", "currency", "created_at", "redeemed_at"]
    list_select_related = ["issuer"]
    exclude = ["digest"]


class InvoiceLineInline(admin.TabularInline):
    model = InvoiceLine
    extra = 0
    can_delete = False
    readonly_fields = [field.name for field in InvoiceLine._meta.fields]

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Invoice)
class InvoiceAdmin(ReadOnlyAdmin):
    list_display = [
        "__str__",
        "issuer",
        "customer",
        "period_start",
        "status",
        "total_micros",
        "currency",
    ]
    list_filter = ["status", "kind", "period_start"]
    list_select_related = ["issuer", "customer"]
    search_fields = ["number", "customer__name", "customer__slug"]
    inlines = [InvoiceLineInline]


@admin.register(UsageRollup)
class UsageRollupAdmin(ReadOnlyAdmin):
    list_display = [
        "granularity",
        "bucket_start",
        "tenant",
        "model",
        "requests",
        "errors",
        "cost_retail_micros",
        "cost_wholesale_micros",
    ]
    list_filter = ["granularity", ("tenant", admin.RelatedOnlyFieldListFilter)]
    list_select_related = ["tenant"]
    show_full_result_count = False


@admin.register(BudgetAlert)
class BudgetAlertAdmin(ReadOnlyAdmin):
    list_display = ["account", "period_start", "threshold_percent", "spend_micros", "notified_at"]
    list_select_related = ["account__organization"]


@admin.register(KeyQuota)
class KeyQuotaAdmin(admin.ModelAdmin):
    list_display = ["api_key", "total_limit_micros", "period", "period_limit_micros"]
    list_select_related = ["api_key__tenant"]
    raw_id_fields = ["api_key"]

    def save_model(self, request: HttpRequest, obj: KeyQuota, form: Any, change: bool) -> None:
        saved = prices.key_quota_set(
            api_key=obj.api_key,
            total_limit_micros=obj.total_limit_micros,
            period_limit_micros=obj.period_limit_micros,
            period=obj.period,
            actor=acting_user(request),
        )
        if saved is not None:
            obj.pk = saved.pk

    def delete_model(self, request: HttpRequest, obj: KeyQuota) -> None:
        prices.key_quota_set(api_key=obj.api_key, actor=acting_user(request))


admin.site.register(BillingWatermark, ReadOnlyAdmin)


@admin.register(TenantDefaults)
class TenantDefaultsAdmin(admin.ModelAdmin):
    """What a seller's new tenants start on; saved through the audited service."""

    list_display = ["seller", "mode", "credit_limit_micros", "updated_at"]
    list_select_related = ["seller"]
    search_fields = ["seller__name", "seller__slug"]

    def get_readonly_fields(self, request: HttpRequest, obj: TenantDefaults | None = None) -> Any:
        return ["seller"] if obj else []

    def save_model(
        self, request: HttpRequest, obj: TenantDefaults, form: Any, change: bool
    ) -> None:
        saved = prices.tenant_defaults_set(
            seller=obj.seller,
            mode=obj.mode,
            credit_limit_micros=obj.credit_limit_micros,
            actor=acting_user(request),
        )
        obj.pk = saved.pk
