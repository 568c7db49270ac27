"""Organisations and memberships as the API shows them."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from portal.access import Role, Scope
from portal.models import Membership, Organization
from portal.models.limits import DAILY_LIMIT_MAX, LIMIT_MAX


class OrganizationSerializer(serializers.ModelSerializer):
    # The metaclass moves declared fields off the class: no clash with Field.parent.
    parent: serializers.SlugRelatedField[Organization] = serializers.SlugRelatedField(  # type: ignore[assignment]
        slug_field="slug", read_only=True, allow_null=True
    )
    my_role = serializers.SerializerMethodField(
        help_text="The caller's effective role here: operator, reseller, owner, admin, "
        "member or billing."
    )

    class Meta:
        model = Organization
        fields = ["slug", "name", "kind", "parent", "is_active", "created_at", "my_role"]
        read_only_fields = fields

    @extend_schema_field(serializers.ChoiceField(choices=[r.value for r in Role]))
    def get_my_role(self, organization: Organization) -> str | None:
        scope: Scope | None = self.context.get("scope")
        role = scope.role_for(organization.pk) if scope else None
        return role.value if role else None


class OrganizationCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    kind = serializers.ChoiceField(
        choices=[Organization.Kind.TENANT, Organization.Kind.RESELLER],
        default=Organization.Kind.TENANT,
    )
    parent = serializers.SlugField(  # type: ignore[assignment]  # a field, not Field.parent
        help_text="Slug of the reseller (or the platform) the new organisation sits under."
    )
    slug = serializers.SlugField(
        max_length=80, required=False, help_text="Derived from the name when omitted."
    )
    owner_email = serializers.EmailField(
        required=False,
        default="",
        help_text="Invite this address as the new organisation's first owner, in one step.",
    )

    def validate_slug(self, value: str) -> str:
        if Organization.objects.filter(slug=value).exists():
            raise serializers.ValidationError("This slug is taken.")
        return value


class MembershipSerializer(serializers.ModelSerializer):
    username = serializers.CharField(source="user.username", read_only=True)
    email = serializers.EmailField(source="user.email", read_only=True)
    organization: serializers.SlugRelatedField[Organization] = serializers.SlugRelatedField(
        slug_field="slug", read_only=True
    )

    class Meta:
        model = Membership
        fields = ["id", "organization", "username", "email", "role", "created_at"]
        read_only_fields = fields


class MembershipRoleSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=Membership.Role.choices)


class LimitValuesSerializer(serializers.Serializer):
    """Rate, concurrency and daily token limits; null (or absent) is no limit."""

    rpm_limit = serializers.IntegerField(
        min_value=1, max_value=LIMIT_MAX, required=False, allow_null=True
    )
    tpm_limit = serializers.IntegerField(
        min_value=1, max_value=LIMIT_MAX, required=False, allow_null=True
    )
    concurrency_limit = serializers.IntegerField(
        min_value=1, max_value=LIMIT_MAX, required=False, allow_null=True
    )
    daily_token_limit = serializers.IntegerField(
        min_value=1, max_value=DAILY_LIMIT_MAX, required=False, allow_null=True
    )


class TenantLimitsSerializer(serializers.Serializer):
    organization = serializers.SlugField(read_only=True)
    enforced = LimitValuesSerializer(
        read_only=True, help_text="What the relay enforces on all the tenant's keys together."
    )
    seller = LimitValuesSerializer(
        read_only=True,
        allow_null=True,
        help_text="The limits the tenant's seller set; shown to the seller only.",
    )
    platform = LimitValuesSerializer(
        read_only=True,
        allow_null=True,
        help_text="The operator's caps on the tenant; shown to the seller only.",
    )
