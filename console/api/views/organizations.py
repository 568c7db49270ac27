"""Organisations the caller can see, and their members."""

from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.viewsets import GenericViewSet

from console.api.filters import OrganizationFilter
from console.api.serializers.invitations import InvitationCreateSerializer, InvitationSerializer
from console.api.serializers.organizations import (
    LimitValuesSerializer,
    MembershipRoleSerializer,
    MembershipSerializer,
    OrganizationCreateSerializer,
    OrganizationSerializer,
    TenantLimitsSerializer,
)
from console.api.views.base import ScopedMixin, service_errors
from console.api.views.invitations import invite
from console.http import acting_user
from console.views.invitations import accept_link
from portal import selectors, services
from portal.access import Access, Need, get_access, membership_for_manager, require_operator
from portal.models import Organization
from portal.models.limits import LIMIT_NAMES


class OrganizationViewSet(
    ScopedMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, GenericViewSet
):
    """Organisations: operators see all, resellers their tenants, others their own."""

    serializer_class = OrganizationSerializer
    filterset_class = OrganizationFilter
    lookup_field = "slug"

    def get_queryset(self) -> QuerySet[Organization]:
        if getattr(self, "swagger_fake_view", False):
            return Organization.objects.none()
        return selectors.organizations_visible(self.scope)

    def get_object(self) -> Organization:
        return get_access(self.request.user, self.kwargs["slug"]).organization

    @extend_schema(
        request=OrganizationCreateSerializer,
        responses={201: OrganizationSerializer},
        description="Create a tenant under a reseller you manage, or (operators) a reseller "
        "or tenant under the platform; with owner_email, invite its first owner too.",
    )
    def create(self, request: Request) -> Response:
        form = OrganizationCreateSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        data = form.validated_data
        parent = get_access(request.user, data["parent"], need=Need.MANAGE).organization
        if parent.kind == Organization.Kind.PLATFORM:
            require_operator(request.user)
        with service_errors():
            organization, _ = services.organization_create_with_owner(
                name=data["name"],
                kind=data["kind"],
                parent=parent,
                slug=data.get("slug"),
                owner_email=data["owner_email"],
                actor=acting_user(request),
                link=accept_link,
            )
        body = OrganizationSerializer(organization, context=self.get_serializer_context()).data
        return Response(body, status=status.HTTP_201_CREATED)

    @extend_schema(responses=MembershipSerializer(many=True), filters=False)
    @action(detail=True, methods=["get"], filterset_class=None)
    def members(self, request: Request, slug: str) -> Response:
        """People with a role in the organisation."""
        access = get_access(request.user, slug, need=Need.MEMBERS)
        page = self.paginate_queryset(selectors.members_of(access.organization))
        return self.get_paginated_response(MembershipSerializer(page, many=True).data)

    @extend_schema(
        request=InvitationCreateSerializer,
        responses={201: InvitationSerializer},
        filters=False,
    )
    @members.mapping.post
    def add_member(self, request: Request, slug: str) -> Response:
        """Invite an address: the same as ``POST .../invitations/``. People join only by
        accepting an invitation, so the answer never says whether the address has a login."""
        return invite(request, slug)

    @extend_schema(request=MembershipRoleSerializer, responses=MembershipSerializer)
    @action(
        detail=True,
        methods=["patch"],
        url_path=r"members/(?P<membership_id>\d+)",
        filterset_class=None,
    )
    def change_member(self, request: Request, slug: str, membership_id: str) -> Response:
        """Change a member's role (within what the caller may grant; the last owner stays)."""
        access = get_access(request.user, slug, need=Need.MANAGE)
        membership = membership_for_manager(access, int(membership_id))
        form = MembershipRoleSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        role = form.validated_data["role"]
        if role not in access.assignable_roles():
            raise PermissionDenied(f"Your role cannot grant the {role} role.")
        with service_errors():
            services.membership_change_role(
                membership=membership, role=role, actor=acting_user(request)
            )
        return Response(MembershipSerializer(membership).data)

    @extend_schema(responses={204: None})
    @change_member.mapping.delete
    def remove_member(self, request: Request, slug: str, membership_id: str) -> Response:
        """Take the person's role away (never the last owner's)."""
        access = get_access(request.user, slug, need=Need.MANAGE)
        membership = membership_for_manager(access, int(membership_id))
        with service_errors():
            services.membership_remove(membership=membership, actor=acting_user(request))
        return Response(status=status.HTTP_204_NO_CONTENT)

    def _tenant_access(self, slug: str, need: Need) -> Access:
        access = get_access(self.request.user, slug, need=need)
        if not access.organization.is_tenant:
            raise Http404("Not a tenant.")
        return access

    def _limits_answer(self, access: Access) -> Response:
        tenant = access.organization
        sells = access.can(Need.SELL)  # the split is the seller's business, not the tenant's
        body = {
            "organization": tenant.slug,
            "enforced": tenant.enforced_limits(),
            "seller": {n: getattr(tenant, f"seller_{n}") for n in LIMIT_NAMES} if sells else None,
            "platform": {n: getattr(tenant, n) for n in LIMIT_NAMES} if sells else None,
        }
        return Response(TenantLimitsSerializer(body).data)

    @extend_schema(responses=TenantLimitsSerializer, filters=False)
    @action(detail=True, methods=["get"], filterset_class=None)
    def limits(self, request: Request, slug: str) -> Response:
        """A tenant's limits on all its keys together: the tighter of the operator's cap
        and its seller's limit, each kind."""
        return self._limits_answer(self._tenant_access(slug, Need.VIEW))

    @extend_schema(request=LimitValuesSerializer, responses=TenantLimitsSerializer, filters=False)
    @limits.mapping.patch
    def set_limits(self, request: Request, slug: str) -> Response:
        """Set a tenant's limits as its seller (the reseller above it, or an operator for
        the platform's tenants); the kinds named change, null removing one. The operator's
        caps stay, and the lower of the two applies."""
        access = self._tenant_access(slug, Need.SELL)
        form = LimitValuesSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        with service_errors():
            services.tenant_limits_set(
                tenant=access.organization, limits=form.validated_data, actor=acting_user(request)
            )
        return self._limits_answer(access)

    def _set_active(self, request: Request, slug: str, active: bool) -> Response:
        access = self._tenant_access(slug, Need.SELL)
        with service_errors():
            services.tenant_set_active(
                tenant=access.organization, active=active, actor=acting_user(request)
            )
        context = self.get_serializer_context()
        return Response(OrganizationSerializer(access.organization, context=context).data)

    @extend_schema(request=None, responses=OrganizationSerializer, filters=False)
    @action(detail=True, methods=["post"], filterset_class=None)
    def deactivate(self, request: Request, slug: str) -> Response:
        """Deactivate a tenant, as its seller: its keys are refused at once; its people
        can still sign in, see usage and invoices, and pay."""
        return self._set_active(request, slug, active=False)

    @extend_schema(request=None, responses=OrganizationSerializer, filters=False)
    @action(detail=True, methods=["post"], filterset_class=None)
    def reactivate(self, request: Request, slug: str) -> Response:
        """Reactivate a tenant its seller deactivated."""
        return self._set_active(request, slug, active=True)
