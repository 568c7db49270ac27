"""Plans and subscriptions as the API shows them (money in integer micro-units)."""

from __future__ import annotations

from rest_framework import serializers

from billing.models import Plan, PlanWindow
from console.api.serializers.billing import MAX_MICROS
from portal.models import Organization


class PlanWindowSerializer(serializers.ModelSerializer):
    class Meta:
        model = PlanWindow
        fields = ["length", "kind", "cap", "model_ids"]


class PlanSerializer(serializers.ModelSerializer):
    seller: serializers.SlugRelatedField[Organization] = serializers.SlugRelatedField(
        slug_field="slug", read_only=True
    )
    windows = PlanWindowSerializer(many=True, read_only=True)

    class Meta:
        model = Plan
        fields = [
            "id",
            "seller",
            "name",
            "description",
            "currency",
            "monthly_fee_micros",
            "included_credit_micros",
            "is_active",
            "windows",
        ]
        read_only_fields = fields


class PlanCreateSerializer(serializers.Serializer):
    seller = serializers.SlugField(help_text="Slug of the reseller (or the platform).")
    name = serializers.CharField(max_length=100)
    description = serializers.CharField(max_length=500, required=False, default="")
    monthly_fee_micros = serializers.IntegerField(min_value=0, max_value=MAX_MICROS)
    included_credit_micros = serializers.IntegerField(min_value=0, max_value=MAX_MICROS, default=0)
    windows = PlanWindowSerializer(many=True, required=False, default=list)


class WindowLeftSerializer(serializers.Serializer):
    length = serializers.CharField(help_text="5h, 1d or 7d.")
    kind = serializers.CharField(help_text="tokens, or spend (micro-units).")
    cap = serializers.IntegerField()
    model_ids = serializers.ListField(child=serializers.CharField())
    used = serializers.IntegerField()
    remaining = serializers.IntegerField()
    reset_seconds = serializers.FloatField(
        help_text="Until the oldest usage still counted leaves the window."
    )


class SubscriptionSerializer(serializers.Serializer):
    organization = serializers.SlugField()
    plan = PlanSerializer(allow_null=True)
    started_at = serializers.DateTimeField(allow_null=True)
    windows = WindowLeftSerializer(many=True)


class SubscribeSerializer(serializers.Serializer):
    plan = serializers.IntegerField(min_value=1, max_value=2**63 - 1)
