"""Channels and the model catalog: the operator's configuration."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from portal.models import CatalogModel, Channel
from portal.models.catalog import SURFACES
from portal.models.channels import NATIVE_SURFACE_CHOICES
from portal.selectors import availability_reason


class ServedModelSerializer(serializers.Serializer):
    public_id = serializers.CharField(max_length=200)
    upstream_name = serializers.CharField(
        max_length=200,
        required=False,
        allow_blank=True,
        default="",
        help_text="Name the provider knows the model by; blank means the public id.",
    )


class ChannelSerializer(serializers.ModelSerializer):
    """The secret is write-only: it is encrypted at rest and never returned."""

    secret = serializers.CharField(
        write_only=True,
        required=False,
        allow_blank=True,
        style={"input_type": "password"},
        help_text="Upstream API key. Write-only; send it again to replace it.",
    )
    has_secret = serializers.SerializerMethodField()
    models = serializers.SerializerMethodField()
    native_surfaces = serializers.ListField(
        child=serializers.ChoiceField(choices=NATIVE_SURFACE_CHOICES),
        required=False,
        help_text="APIs the provider serves itself beyond chat, embeddings and completions; "
        "requests on other surfaces are translated to chat completions.",
    )

    class Meta:
        model = Channel
        fields = [
            "id",
            "name",
            "provider_type",
            "base_url",
            "provider_settings",
            "native_surfaces",
            "priority",
            "weight",
            "status",
            "status_reason",
            "last_check_at",
            "last_check_ok",
            "last_check_latency_ms",
            "last_check_error",
            "secret",
            "has_secret",
            "models",
            "created_at",
            "updated_at",
        ]
        read_only_fields = [
            "id",
            "status",
            "status_reason",
            "last_check_at",
            "last_check_ok",
            "last_check_latency_ms",
            "last_check_error",
            "created_at",
            "updated_at",
        ]

    def get_has_secret(self, channel: Channel) -> bool:
        return bool(channel.secret_ciphertext)

    @extend_schema_field(ServedModelSerializer(many=True))
    def get_models(self, channel: Channel) -> list[dict[str, str]]:
        return [
            {"public_id": link.model.public_id, "upstream_name": link.upstream_model()}
            for link in channel.served.all()
        ]


class ChannelCreateSerializer(ChannelSerializer):
    models = ServedModelSerializer(many=True, required=False, default=list)  # type: ignore[assignment]

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        values = super().to_internal_value(data)
        values["models"] = {m["public_id"]: m["upstream_name"] for m in values.get("models", [])}
        return values


class ChannelStatusSerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=500, required=False, allow_blank=True, default="")


class ChannelTestSerializer(serializers.Serializer):
    ok = serializers.BooleanField()
    status = serializers.IntegerField(allow_null=True, help_text="The upstream's HTTP status.")
    latency_ms = serializers.IntegerField()
    error = serializers.CharField(allow_blank=True)


class ChannelDiscoverySerializer(serializers.Serializer):
    ok = serializers.BooleanField()
    models = serializers.ListField(
        child=serializers.CharField(), help_text="Names the provider lists, sorted."
    )
    new = serializers.ListField(
        child=serializers.CharField(), help_text="Those the channel does not serve yet."
    )
    error = serializers.CharField(allow_blank=True)
    latency_ms = serializers.IntegerField()


class ChannelModelsAddSerializer(serializers.Serializer):
    models = ServedModelSerializer(many=True)


class CatalogModelSerializer(serializers.ModelSerializer):
    surfaces = serializers.ListField(
        child=serializers.ChoiceField(choices=SURFACES),
        required=False,
        help_text="Client APIs this model is offered on; omitted: unchanged (new models: "
        "every text API).",
    )
    available = serializers.SerializerMethodField(
        help_text="Whether an enabled channel serves this model now and a price list prices it."
    )
    availability = serializers.SerializerMethodField(
        help_text='"available", "unpriced" (no price list prices it), or "unavailable: ..." '
        "with the reason."
    )

    class Meta:
        model = CatalogModel
        fields = [
            "public_id",
            "owned_by",
            "description",
            "capabilities",
            "context_window",
            "max_output_tokens",
            "surfaces",
            "is_active",
            "available",
            "availability",
        ]
        read_only_fields = ["is_active", "available", "availability"]
        # Uniqueness is the upsert's business: posting an existing id updates it.
        extra_kwargs: dict[str, dict[str, Any]] = {"public_id": {"validators": []}}

    def get_available(self, model: CatalogModel) -> bool:
        return bool(
            model.is_active and getattr(model, "served", False) and getattr(model, "priced", False)
        )

    def get_availability(self, model: CatalogModel) -> str:
        return availability_reason(model)

    def validate_capabilities(self, value: Any) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise serializers.ValidationError("Give a list of strings.")
        return value
