"""Usage aggregates and audit entries."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from portal.models import AuditEntry, Organization


class UsageRowSerializer(serializers.Serializer):
    """One group of usage; only the grouping fields named in ``group_by`` are present
    (DRF skips a non-required field whose source the row lacks)."""

    day = serializers.DateField(required=False)
    model = serializers.CharField(required=False)
    key = serializers.IntegerField(source="api_key_id", required=False)
    organization = serializers.CharField(source="tenant__slug", required=False)
    surface = serializers.CharField(required=False)
    requests = serializers.IntegerField()
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    cached_tokens = serializers.IntegerField()
    reasoning_tokens = serializers.IntegerField()
    total_tokens = serializers.SerializerMethodField()
    # The metaclass moves declared fields off the class, so this never hides .errors.
    errors = serializers.IntegerField(  # type: ignore[assignment]
        help_text="Requests answered with a 4xx or 5xx status."
    )
    avg_latency_ms = serializers.SerializerMethodField()
    spend_micros = serializers.IntegerField(
        help_text="What the tenant is charged (retail), in micro-units of its currency."
    )

    def get_total_tokens(self, row: dict[str, Any]) -> int:
        return int(row["prompt_tokens"]) + int(row["completion_tokens"])

    def get_avg_latency_ms(self, row: dict[str, Any]) -> int | None:
        value = row.get("avg_latency_ms")
        return round(value) if value is not None else None


class AuditEntrySerializer(serializers.ModelSerializer):
    actor = serializers.CharField(source="actor_label", read_only=True)
    organization: serializers.SlugRelatedField[Organization] = serializers.SlugRelatedField(
        slug_field="slug", read_only=True, allow_null=True
    )

    class Meta:
        model = AuditEntry
        fields = [
            "id",
            "created_at",
            "actor",
            "organization",
            "action",
            "target_type",
            "target_id",
            "data",
        ]
        read_only_fields = fields
