"""Invitations of one organisation: list the pending ones, invite by e-mail, revoke.

The answer to an invitation never says whether the address already has a login, and no
user is looked up to give it. ``POST /organizations/{slug}/members/`` invites too.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from django.core.exceptions import PermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.exceptions import Throttled
from rest_framework.generics import GenericAPIView
from rest_framework.request import Request
from rest_framework.response import Response

from console.api.serializers.invitations import InvitationCreateSerializer, InvitationSerializer
from console.api.views.base import ScopedMixin, service_errors
from console.http import acting_user
from console.views.invitations import accept_link
from portal import selectors, services
from portal.access import Need, get_access
from portal.models import Invitation, Membership


@contextmanager
def invitation_errors() -> Iterator[None]:
    """The hourly limit is a 429; other refusals are 400s with field errors."""
    try:
        with service_errors():
            yield
    except Exception as exc:
        cause = exc.__cause__
        if isinstance(cause, DjangoValidationError) and cause.code == "rate_limited":
            raise Throttled(detail=cause.messages[0]) from cause
        raise


class InvitationListView(ScopedMixin, GenericAPIView):
    serializer_class = InvitationSerializer
    filterset_class = None
    queryset = Invitation.objects.none()  # the schema's model; requests use the selector

    @extend_schema(responses=InvitationSerializer(many=True))
    def get(self, request: Request, slug: str) -> Response:
        """Pending invitations (not accepted, revoked or expired), newest first."""
        access = get_access(request.user, slug, need=Need.MANAGE)
        page = self.paginate_queryset(selectors.invitations_pending(access.organization))
        return self.get_paginated_response(InvitationSerializer(page, many=True).data)

    @extend_schema(request=InvitationCreateSerializer, responses={201: InvitationSerializer})
    def post(self, request: Request, slug: str) -> Response:
        """Invite an address to a role (at most the caller's own); the link goes by mail."""
        return invite(request, slug)


def invite(request: Request, slug: str) -> Response:
    """Invite ``email`` to ``role``: 201 and the invitation, whether or not the address has
    a login (an existing login accepts with it). Asking for a role above the caller's own
    is refused before the body is read, as the dashboard refuses it."""
    access = get_access(request.user, slug, need=Need.MANAGE)
    requested = request.data.get("role") if hasattr(request.data, "get") else None
    if requested in Membership.Role.values and requested not in access.assignable_roles():
        raise PermissionDenied(f"Your role cannot grant the {requested} role.")
    form = InvitationCreateSerializer(data=request.data)
    form.is_valid(raise_exception=True)
    role = form.validated_data["role"]  # a known role, so one the caller may grant
    with invitation_errors():
        invitation = services.invitation_create(
            organization=access.organization,
            email=form.validated_data["email"],
            role=role,
            actor=acting_user(request),
            link=accept_link,
        )
    return Response(InvitationSerializer(invitation).data, status=status.HTTP_201_CREATED)


class InvitationDetailView(ScopedMixin, GenericAPIView):
    serializer_class = InvitationSerializer
    filterset_class = None
    queryset = Invitation.objects.none()  # the schema's model; requests use the selector

    @extend_schema(responses={204: None})
    def delete(self, request: Request, slug: str, invitation_id: int) -> Response:
        """Revoke the invitation: its link stops working. Repeating is harmless."""
        access = get_access(request.user, slug, need=Need.MANAGE)
        invitation = get_object_or_404(
            Invitation, pk=invitation_id, organization=access.organization
        )
        services.invitation_revoke(invitation=invitation, actor=acting_user(request))
        return Response(status=status.HTTP_204_NO_CONTENT)
