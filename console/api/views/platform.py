"""The operator's configuration: channels (operators only) and the model catalog."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status
from rest_framework.decorators import action
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.viewsets import GenericViewSet

from console.api.permissions import IsOperator, IsOperatorOrReadOnly, TokenScopePermission
from console.api.serializers.platform import (
    CatalogModelSerializer,
    ChannelCreateSerializer,
    ChannelDiscoverySerializer,
    ChannelModelsAddSerializer,
    ChannelSerializer,
    ChannelStatusSerializer,
    ChannelTestSerializer,
)
from console.api.views.base import service_errors
from console.http import acting_user
from portal import selectors, services
from portal.models import CatalogModel, Channel

# Settings channel_edit takes beside the secret.
_CHANNEL_FIELDS = (
    "name",
    "base_url",
    "priority",
    "weight",
    "provider_type",
    "provider_settings",
    "native_surfaces",
)


class ChannelViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.UpdateModelMixin, GenericViewSet
):
    """Upstream channels. Operators only; secrets can be written, never read."""

    permission_classes = [IsAuthenticated, TokenScopePermission, IsOperator]
    serializer_class = ChannelSerializer
    filterset_fields = ["status", "provider_type"]
    http_method_names = ["get", "post", "patch", "head", "options"]
    lookup_value_regex = r"\d+"

    def get_queryset(self) -> QuerySet[Channel]:
        return selectors.channels_overview()

    @extend_schema(request=ChannelCreateSerializer, responses={201: ChannelSerializer})
    def create(self, request: Request) -> Response:
        form = ChannelCreateSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        data = form.validated_data
        with service_errors():
            channel = services.channel_create(
                actor=acting_user(request),
                secret=data.get("secret", ""),
                models=data["models"],
                **{field: data[field] for field in _CHANNEL_FIELDS if field in data},
            )
        return Response(self._show(channel.pk), status=status.HTTP_201_CREATED)

    def perform_update(self, serializer: Any) -> None:
        data = serializer.validated_data
        channel = serializer.instance
        with service_errors():
            services.channel_edit(
                channel=channel,
                actor=acting_user(self.request),
                secret=data.get("secret"),  # absent: unchanged; empty: removed
                **{field: data[field] for field in _CHANNEL_FIELDS if field in data},
            )

    def update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        super().update(request, *args, **kwargs)
        return Response(self._show(self.kwargs["pk"]))

    @extend_schema(request=ChannelStatusSerializer, responses=ChannelSerializer)
    @action(detail=True, methods=["post"])
    def enable(self, request: Request, pk: str) -> Response:
        return self._set_status(request, enabled=True)

    @extend_schema(request=ChannelStatusSerializer, responses=ChannelSerializer)
    @action(detail=True, methods=["post"])
    def disable(self, request: Request, pk: str) -> Response:
        return self._set_status(request, enabled=False)

    @extend_schema(request=ChannelModelsAddSerializer, responses=ChannelSerializer)
    @action(detail=True, methods=["post"], url_path="models")
    def add_models(self, request: Request, pk: str) -> Response:
        """Let the channel also serve these models (links that exist are kept as they are)."""
        form = ChannelModelsAddSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        models = {m["public_id"]: m["upstream_name"] for m in form.validated_data["models"]}
        with service_errors():
            services.channel_models_add(
                channel=self.get_object(), models=models, actor=acting_user(request)
            )
        return Response(self._show(pk))

    @extend_schema(request=None, responses=ChannelTestSerializer)
    @action(detail=True, methods=["post"], url_path="test")
    def check(self, request: Request, pk: str) -> Response:
        """Send the channel one tiny request now; the outcome is also stored on it."""
        from relay import health  # on use, as in console.views.operator

        result = health.channel_check(self.get_object())
        return Response(ChannelTestSerializer(result).data)

    @extend_schema(request=None, responses=ChannelDiscoverySerializer)
    @action(detail=True, methods=["post"], url_path="discover")
    def discover(self, request: Request, pk: str) -> Response:
        """Ask the provider which models it lists, with the channel's credentials (every
        provider type; see docs/providers.md for what each offers). Nothing is saved: add
        the ones to sell with ``POST .../models/``."""
        from relay import discovery  # on use, as in console.views.operator

        channel = self.get_object()
        found = discovery.channel_models_discover(channel)
        served = {link.upstream_model() for link in channel.served.all()}
        body = {
            "ok": found.ok,
            "models": found.models,
            "new": [name for name in found.models if name not in served],
            "error": found.error,
            "latency_ms": found.latency_ms,
        }
        return Response(ChannelDiscoverySerializer(body).data)

    def _set_status(self, request: Request, *, enabled: bool) -> Response:
        form = ChannelStatusSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        channel = services.channel_set_status(
            channel=self.get_object(),
            enabled=enabled,
            reason=form.validated_data["reason"],
            actor=acting_user(request),
        )
        return Response(self._show(channel.pk))

    def _show(self, pk: Any) -> dict[str, Any]:
        return ChannelSerializer(self.get_queryset().get(pk=pk)).data


class CatalogModelViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, GenericViewSet):
    """The model catalog with live availability; operators may add and edit entries."""

    permission_classes = [IsAuthenticated, TokenScopePermission, IsOperatorOrReadOnly]
    serializer_class = CatalogModelSerializer
    lookup_field = "public_id"
    lookup_value_regex = r"[^/]+"
    filterset_fields = ["is_active", "owned_by"]

    def get_queryset(self) -> QuerySet[CatalogModel]:
        return selectors.catalog_with_availability(include_inactive=True)

    @extend_schema(
        responses={200: CatalogModelSerializer, 201: CatalogModelSerializer},
        description="Create the model, or update it when the public id exists already.",
    )
    def create(self, request: Request) -> Response:
        form = CatalogModelSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        data = form.validated_data
        existed = CatalogModel.objects.filter(public_id=data["public_id"]).exists()
        with service_errors():
            model = services.catalog_model_upsert(actor=acting_user(request), **data)
        body = CatalogModelSerializer(self.get_queryset().get(pk=model.pk)).data
        return Response(body, status=status.HTTP_200_OK if existed else status.HTTP_201_CREATED)
