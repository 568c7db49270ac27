"""API keys and personal access tokens: both shown once, never readable again."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rest_framework import serializers

from console.api.serializers.organizations import LimitValuesSerializer
from portal.models import ApiKey, Organization, PersonalAccessToken
from portal.models.catalog import SURFACES

if TYPE_CHECKING:
    from django.contrib.auth.models import User


class ApiKeySerializer(serializers.ModelSerializer):
    organization: serializers.SlugRelatedField[Organization] = serializers.SlugRelatedField(
        source="tenant", slug_field="slug", read_only=True
    )
    created_by: serializers.SlugRelatedField[User] = serializers.SlugRelatedField(
        slug_field="username", read_only=True, allow_null=True
    )

    class Meta:
        model = ApiKey
        fields = [
            "id",
            "organization",
            "name",
            "prefix",
            "status",
            "allowed_models",
            "allowed_surfaces",
            "rpm_limit",
            "tpm_limit",
            "concurrency_limit",
            "daily_token_limit",
            "expires_at",
            "created_by",
            "created_at",
            "revoked_at",
        ]
        read_only_fields = fields


class ApiKeyCreateSerializer(LimitValuesSerializer):
    # The key's limits are declared on the base.

    organization = serializers.SlugField(help_text="Slug of the tenant the key is for.")
    name = serializers.CharField(max_length=200)
    expires_at = serializers.DateTimeField(required=False, allow_null=True)
    allowed_models = serializers.ListField(
        child=serializers.CharField(max_length=200),
        required=False,
        default=list,
        help_text="Public model ids the key may use; empty allows every model.",
    )
    allowed_surfaces = serializers.ListField(
        child=serializers.ChoiceField(choices=list(SURFACES)),
        required=False,
        default=list,
        help_text="APIs the key may call (chat, responses, messages, embeddings, "
        "completions); empty allows every one.",
    )
    spend_limit_micros = serializers.IntegerField(
        min_value=0,
        max_value=10**15,
        required=False,
        allow_null=True,
        help_text="Spend cap per spend_period at retail prices, in micro-units.",
    )
    spend_period = serializers.ChoiceField(choices=["day", "month"], default="month")
    spend_total_limit_micros = serializers.IntegerField(
        min_value=0, max_value=10**15, required=False, allow_null=True
    )


class ApiKeyCreatedSerializer(ApiKeySerializer):
    secret = serializers.CharField(
        read_only=True, help_text="The key itself. Shown in this response only."
    )

    class Meta(ApiKeySerializer.Meta):
        fields = [*ApiKeySerializer.Meta.fields, "secret"]
        read_only_fields = fields


class AccessTokenSerializer(serializers.ModelSerializer):
    class Meta:
        model = PersonalAccessToken
        fields = [
            "id",
            "name",
            "prefix",
            "scope",
            "expires_at",
            "created_at",
            "last_used_at",
            "revoked_at",
        ]
        read_only_fields = ["id", "prefix", "created_at", "last_used_at", "revoked_at"]


class AccessTokenCreatedSerializer(AccessTokenSerializer):
    secret = serializers.CharField(
        read_only=True, help_text="The token itself. Shown in this response only."
    )

    class Meta(AccessTokenSerializer.Meta):
        fields = [*AccessTokenSerializer.Meta.fields, "secret"]
