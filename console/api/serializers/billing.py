"""Price lists, invoices, balances and top-ups as the API shows them (money in integer
micro-units, like everywhere in Tollgate)."""

from __future__ import annotations

from decimal import Decimal

from rest_framework import serializers

from billing.models import Invoice, ModelPrice, PriceList
from billing.services import OPTIONAL_PRICE_FIELDS
from portal.models import CatalogModel, Organization

# A billion currency units: far above any real amount, far below 64-bit overflow.
MAX_MICROS = 10**15


class ModelPriceSerializer(serializers.ModelSerializer):
    model: serializers.SlugRelatedField[CatalogModel] = serializers.SlugRelatedField(
        slug_field="public_id", read_only=True
    )

    class Meta:
        model = ModelPrice
        fields = [
            "model",
            "input_per_mtok",
            "cached_input_per_mtok",
            "output_per_mtok",
            "request_fee_micros",
            *OPTIONAL_PRICE_FIELDS,
            "long_context_prices",
            "effective_from",
        ]
        read_only_fields = fields


class PriceListSerializer(serializers.ModelSerializer):
    owner: serializers.SlugRelatedField[Organization] = serializers.SlugRelatedField(
        slug_field="slug", read_only=True
    )
    prices = ModelPriceSerializer(many=True, read_only=True)

    class Meta:
        model = PriceList
        fields = ["id", "owner", "name", "currency", "is_default", "markup_percent", "prices"]
        read_only_fields = fields


class PriceListCreateSerializer(serializers.Serializer):
    owner = serializers.SlugField(help_text="Slug of the reseller (or the platform).")
    name = serializers.CharField(max_length=200)
    is_default = serializers.BooleanField(default=False)
    markup_percent = serializers.DecimalField(
        max_digits=9,
        decimal_places=4,
        required=False,
        allow_null=True,
        min_value=Decimal("-100"),
        help_text="Models without an explicit price cost wholesale plus this percentage.",
    )


class ModelPriceSetSerializer(serializers.Serializer):
    model = serializers.CharField(help_text="Public model id.")
    input_per_mtok = serializers.IntegerField(min_value=0, max_value=MAX_MICROS)
    output_per_mtok = serializers.IntegerField(min_value=0, max_value=MAX_MICROS)
    cached_input_per_mtok = serializers.IntegerField(
        min_value=0,
        max_value=MAX_MICROS,
        required=False,
        allow_null=True,
        help_text="Defaults to the input price.",
    )
    request_fee_micros = serializers.IntegerField(min_value=0, max_value=MAX_MICROS, default=0)
    effective_from = serializers.DateTimeField(
        required=False, allow_null=True, help_text="Default: now. Never in the past."
    )
    long_context_prices = serializers.DictField(
        child=serializers.IntegerField(min_value=0, max_value=MAX_MICROS),
        required=False,
        allow_null=True,
        help_text="Prices above long_context_above_tokens, by dimension (input, output...).",
    )

    def get_fields(self) -> dict[str, serializers.Field]:
        fields = super().get_fields()
        for name in OPTIONAL_PRICE_FIELDS:  # each blank: the text price (see ModelPrice)
            fields[name] = serializers.IntegerField(
                min_value=0, max_value=MAX_MICROS, required=False, allow_null=True
            )
        return fields


class InvoiceSerializer(serializers.ModelSerializer):
    issuer: serializers.SlugRelatedField[Organization] = serializers.SlugRelatedField(
        slug_field="slug", read_only=True
    )
    customer: serializers.SlugRelatedField[Organization] = serializers.SlugRelatedField(
        slug_field="slug", read_only=True
    )

    class Meta:
        model = Invoice
        fields = [
            "id",
            "number",
            "issuer",
            "customer",
            "kind",
            "status",
            "period_start",
            "period_end",
            "currency",
            "subtotal_micros",
            "tax_micros",
            "total_micros",
            "issued_at",
            "paid_at",
        ]
        read_only_fields = fields


class BalanceSerializer(serializers.Serializer):
    organization = serializers.SlugField()
    currency = serializers.CharField(allow_null=True)
    mode = serializers.CharField(allow_null=True)
    balance_micros = serializers.IntegerField(
        allow_null=True, help_text="Including usage not yet posted; null without an account."
    )
    credit_limit_micros = serializers.IntegerField(allow_null=True)
    monthly_budget_micros = serializers.IntegerField(allow_null=True)
    month_spend_micros = serializers.IntegerField(allow_null=True)


class TopUpSerializer(serializers.Serializer):
    amount_micros = serializers.IntegerField(min_value=1, max_value=MAX_MICROS)
    memo = serializers.CharField(max_length=500, required=False, default="", allow_blank=True)


class LedgerEntrySerializer(serializers.Serializer):
    id = serializers.IntegerField()
    kind = serializers.CharField()
    amount_micros = serializers.IntegerField()
    memo = serializers.CharField()
    created_at = serializers.DateTimeField()
