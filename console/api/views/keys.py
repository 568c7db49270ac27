"""API keys of tenants, and the caller's own personal access tokens."""

from __future__ import annotations

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status
from rest_framework.decorators import action
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.viewsets import GenericViewSet

from billing import services as billing
from console.api.filters import ApiKeyFilter
from console.api.permissions import SessionOnlyForWrites, TokenScopePermission
from console.api.serializers.keys import (
    AccessTokenCreatedSerializer,
    AccessTokenSerializer,
    ApiKeyCreatedSerializer,
    ApiKeyCreateSerializer,
    ApiKeySerializer,
)
from console.api.views.base import ScopedMixin, service_errors
from console.http import acting_user, two_factor_verified
from portal import selectors, services, tokens
from portal.access import Need, get_access, get_object_for_user
from portal.models import ApiKey, PersonalAccessToken
from portal.services.keys import KEY_LIMITS


class ApiKeyViewSet(ScopedMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, GenericViewSet):
    """Relay keys. Members see and manage only the keys they created."""

    serializer_class = ApiKeySerializer
    filterset_class = ApiKeyFilter
    lookup_value_regex = r"\d+"

    def get_queryset(self) -> QuerySet[ApiKey]:
        if getattr(self, "swagger_fake_view", False):
            return ApiKey.objects.none()
        return selectors.api_keys_scoped(self.scope)

    def get_object(self) -> ApiKey:
        api_key, _ = get_object_for_user(
            self.request.user,
            ApiKey.objects.all(),
            organization_field="tenant",
            owner_field="created_by",
            need=Need.KEYS,
            pk=self.kwargs["pk"],
        )
        return api_key

    @extend_schema(request=ApiKeyCreateSerializer, responses={201: ApiKeyCreatedSerializer})
    def create(self, request: Request) -> Response:
        """Issue a key. The response carries the secret; it cannot be read again."""
        form = ApiKeyCreateSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        data = form.validated_data
        access = get_access(request.user, data["organization"], need=Need.KEYS)
        with service_errors():
            api_key, secret = billing.api_key_issue(
                tenant=access.organization,
                name=data["name"],
                actor=acting_user(request),
                expires_at=data.get("expires_at"),
                allowed_models=data.get("allowed_models", []),
                allowed_surfaces=data.get("allowed_surfaces", []),
                limits={name: data.get(name) for name in KEY_LIMITS},
                period_limit_micros=data.get("spend_limit_micros"),
                period=data["spend_period"],
                total_limit_micros=data.get("spend_total_limit_micros"),
            )
        api_key.secret = secret  # type: ignore[attr-defined]  # for this response only
        return Response(ApiKeyCreatedSerializer(api_key).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses=ApiKeySerializer)
    @action(detail=True, methods=["post"])
    def revoke(self, request: Request, pk: str) -> Response:
        """Revoke the key; the relay refuses it within seconds. Repeating is harmless."""
        api_key = services.api_key_revoke(api_key=self.get_object(), actor=acting_user(request))
        return Response(ApiKeySerializer(api_key).data)


class AccessTokenViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, GenericViewSet):
    """The caller's personal access tokens for this API. Created from a session only."""

    serializer_class = AccessTokenSerializer
    permission_classes = [IsAuthenticated, TokenScopePermission, SessionOnlyForWrites]
    lookup_value_regex = r"\d+"
    filterset_class = None

    def get_queryset(self) -> QuerySet[PersonalAccessToken]:
        if getattr(self, "swagger_fake_view", False):
            return PersonalAccessToken.objects.none()
        return selectors.access_tokens_of(self.request.user)

    @extend_schema(request=AccessTokenSerializer, responses={201: AccessTokenCreatedSerializer})
    def create(self, request: Request) -> Response:
        """Issue a token. The response carries the secret; it cannot be read again."""
        form = AccessTokenSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        with service_errors():
            token, secret = tokens.personal_access_token_create(
                user=acting_user(request),
                actor=acting_user(request),
                two_factor_verified=two_factor_verified(request),
                **form.validated_data,
            )
        token.secret = secret  # type: ignore[attr-defined]  # for this response only
        body = AccessTokenCreatedSerializer(token).data
        return Response(body, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses=AccessTokenSerializer)
    @action(detail=True, methods=["post"])
    def revoke(self, request: Request, pk: str) -> Response:
        token = tokens.personal_access_token_revoke(
            token=self.get_object(), actor=acting_user(request)
        )
        return Response(AccessTokenSerializer(token).data)
