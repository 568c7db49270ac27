"""A tenant's own prices: what its requests cost now, model by model, through its
reseller's price list (the relay's own price table, never recomputed here)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework.generics import GenericAPIView
from rest_framework.request import Request
from rest_framework.response import Response

from billing import pricing
from console.api.views.base import ScopedMixin
from portal.access import Need, get_access
from portal.models import Organization


class TenantPricesView(ScopedMixin, GenericAPIView):
    queryset = Organization.objects.none()  # for the schema; requests go through access
    filterset_class = None
    pagination_class = None

    @extend_schema(
        responses=OpenApiTypes.OBJECT,
        description="Each model the tenant can be served, with its price: micro-units per "
        "million tokens for each priced dimension, and request_fee per request.",
    )
    def get(self, request: Request, slug: str) -> Response:
        access = get_access(request.user, slug, need=Need.VIEW)
        rows: list[dict[str, Any]] = []
        if access.organization.is_tenant:
            table = pricing.tenant_price_table(access.organization.pk)
            rows = [
                {"model": model, **asdict(pair.retail)} for model, pair in sorted(table.items())
            ]
        return Response({"organization": access.organization.slug, "prices": rows})
