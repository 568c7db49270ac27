"""Usage aggregates, the audit log, and who the caller is."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import mixins, serializers
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework.viewsets import GenericViewSet

from billing.models import UsageEvent
from billing.selectors import usage as usage_reads
from console.api.filters import AuditFilter, UsageFilter
from console.api.serializers.activity import AuditEntrySerializer, UsageRowSerializer
from console.api.views.base import ScopedMixin
from portal import selectors
from portal.access import is_operator
from portal.models import AuditEntry

DEFAULT_GROUP_BY = "day,model"


def _group_by(raw: str) -> list[str]:
    groups = list(dict.fromkeys(g.strip() for g in raw.split(",") if g.strip()))
    unknown = [g for g in groups if g not in usage_reads.USAGE_GROUPS]
    if not groups or unknown:
        choices = ", ".join(usage_reads.USAGE_GROUPS)
        raise ValidationError({"group_by": f"Choose one or more of: {choices}."})
    return groups


class UsageViewSet(ScopedMixin, GenericViewSet):
    """Usage of the caller's tenants, summed per group (members: their own keys only)."""

    serializer_class = UsageRowSerializer
    filterset_class = UsageFilter

    def get_queryset(self) -> QuerySet[UsageEvent]:
        if getattr(self, "swagger_fake_view", False):
            return UsageEvent.objects.none()
        return usage_reads.usage_events_scoped(self.scope)

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "group_by",
                OpenApiTypes.STR,
                description="Comma-separated groups from "
                f"{', '.join(usage_reads.USAGE_GROUPS)}; default {DEFAULT_GROUP_BY}.",
            )
        ]
    )
    def list(self, request: Request) -> Response:
        group_by = _group_by(request.query_params.get("group_by", DEFAULT_GROUP_BY))
        events = self.filter_queryset(self.get_queryset())
        page = self.paginate_queryset(usage_reads.usage_grouped(events, group_by))
        return self.get_paginated_response(self.get_serializer(page, many=True).data)


class AuditEntryViewSet(ScopedMixin, mixins.ListModelMixin, GenericViewSet):
    """Who changed what, newest first: operators see all, owners and resellers their own."""

    serializer_class = AuditEntrySerializer
    filterset_class = AuditFilter

    def get_queryset(self) -> QuerySet[AuditEntry]:
        if getattr(self, "swagger_fake_view", False):
            return AuditEntry.objects.none()
        return selectors.audit_entries_scoped(self.scope).order_by("-created_at", "-id")


class MeView(ScopedMixin, APIView):
    """The caller and their roles."""

    @extend_schema(
        responses=inline_serializer(
            "Me",
            {
                "username": serializers.CharField(),
                "email": serializers.EmailField(),
                "is_operator": serializers.BooleanField(),
                "memberships": inline_serializer(
                    "MeMembership",
                    {"organization": serializers.CharField(), "role": serializers.CharField()},
                    many=True,
                ),
            },
        )
    )
    def get(self, request: Request) -> Response:
        user: Any = request.user
        memberships = selectors.memberships_scoped(self.scope).filter(user=user)
        return Response(
            {
                "username": user.get_username(),
                "email": user.email,
                "is_operator": is_operator(user),
                "memberships": [
                    {"organization": m.organization.slug, "role": m.role} for m in memberships
                ],
            }
        )
