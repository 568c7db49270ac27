"""Plans (a seller's offer) and an organisation's subscription, with what is left in
each of its windows. Changes go through ``billing.services``; access through
``portal.access``, as on the dashboard."""

from __future__ import annotations

from typing import Any

from django.db.models import Q, QuerySet
from django.http import Http404
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework.viewsets import GenericViewSet

from billing import services as billing
from billing.models import Plan
from billing.selectors import plans as reads
from console.api.serializers.plans import (
    PlanCreateSerializer,
    PlanSerializer,
    SubscribeSerializer,
    SubscriptionSerializer,
)
from console.api.views.base import ScopedMixin, service_errors
from console.http import acting_user
from portal.access import Need, get_access, require_operator
from portal.models import Organization


class PlanViewSet(ScopedMixin, mixins.ListModelMixin, GenericViewSet):
    """Plans the caller sells (organisations it manages) or may subscribe to (the
    sellers of the tenants it sees)."""

    serializer_class = PlanSerializer

    def get_queryset(self) -> QuerySet[Plan]:
        if getattr(self, "swagger_fake_view", False):
            return Plan.objects.none()
        plans = Plan.objects.select_related("seller").prefetch_related("windows")
        managed = self.scope.organization_ids(Need.MANAGE)
        seen = self.scope.organization_ids(Need.VIEW)
        if managed is not None and seen is not None:
            sellers = Organization.objects.filter(
                pk__in=seen, kind=Organization.Kind.TENANT
            ).values("parent_id")
            plans = plans.filter(Q(seller_id__in=managed) | Q(seller_id__in=sellers))
        return plans.order_by("seller__name", "name")

    @extend_schema(request=PlanCreateSerializer, responses={201: PlanSerializer})
    def create(self, request: Request) -> Response:
        form = PlanCreateSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        data = form.validated_data
        seller = get_access(request.user, data["seller"], need=Need.MANAGE).organization
        if seller.is_tenant:
            raise Http404("Tenants sell no plans.")
        if seller.kind == Organization.Kind.PLATFORM:
            require_operator(request.user)
        with service_errors():
            plan = billing.plan_create(
                seller=seller,
                name=data["name"],
                description=data["description"],
                monthly_fee_micros=data["monthly_fee_micros"],
                included_credit_micros=data["included_credit_micros"],
                windows=[dict(w) for w in data["windows"]],
                actor=acting_user(request),
            )
        return Response(PlanSerializer(plan).data, status=status.HTTP_201_CREATED)


class SubscriptionView(APIView):
    """A tenant's plan and what is left in each window (GET); subscribing it to one of
    its seller's plans (POST, billing rights: it costs the month's fee at once) or
    ending it (DELETE)."""

    def _tenant(self, request: Request, slug: str, need: Need) -> Organization:
        tenant = get_access(request.user, slug, need=need).organization
        if not tenant.is_tenant:
            raise Http404("Only tenants subscribe to plans.")
        return tenant

    def _answer(self, tenant: Organization, code: int = status.HTTP_200_OK) -> Response:
        # On use, as in console.views.plans.plan.
        from relay.plan_usage import windows_left
        from relay.snapshot import subscription_windows

        current = reads.active_subscription(tenant)
        windows: list[dict[str, Any]] = []
        if current is not None:
            for left in windows_left(subscription_windows(current)):
                window = left.window
                windows.append(
                    {
                        "length": window.length,
                        "kind": window.kind,
                        "cap": window.cap,
                        "model_ids": sorted(window.models),
                        "used": left.used,
                        "remaining": left.remaining,
                        "reset_seconds": round(left.reset_seconds, 3),
                    }
                )
        body = {
            "organization": tenant.slug,
            "plan": current.plan if current else None,
            "started_at": current.started_at if current else None,
            "windows": windows,
        }
        return Response(SubscriptionSerializer(body).data, status=code)

    @extend_schema(responses=SubscriptionSerializer)
    def get(self, request: Request, slug: str) -> Response:
        return self._answer(self._tenant(request, slug, Need.VIEW))

    @extend_schema(request=SubscribeSerializer, responses={201: SubscriptionSerializer})
    def post(self, request: Request, slug: str) -> Response:
        tenant = self._tenant(request, slug, Need.BILLING)
        form = SubscribeSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        plan = reads.plans_offered_to(tenant).filter(pk=form.validated_data["plan"]).first()
        if plan is None:
            return Response({"plan": ["No such plan on offer."]}, status=400)
        with service_errors():
            billing.subscription_create(tenant=tenant, plan=plan, actor=acting_user(request))
        return self._answer(tenant, status.HTTP_201_CREATED)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, slug: str) -> Response:
        tenant = self._tenant(request, slug, Need.BILLING)
        current = reads.active_subscription(tenant)
        if current is not None:  # none: already ended, and the answer is the same
            with service_errors():
                billing.subscription_cancel(subscription=current, actor=acting_user(request))
        return Response(status=status.HTTP_204_NO_CONTENT)
