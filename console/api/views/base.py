"""What every API view shares: the caller's scope and service errors as 400s."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import serializers
from rest_framework.generics import GenericAPIView

from portal.access import Scope, request_scope


@contextmanager
def service_errors() -> Iterator[None]:
    """Turn a service's ValidationError into the API's 400 with field errors."""
    try:
        yield
    except DjangoValidationError as exc:
        detail: Any = exc.message_dict if hasattr(exc, "error_dict") else exc.messages
        raise serializers.ValidationError(detail) from exc


if TYPE_CHECKING:
    _ApiView = GenericAPIView
else:
    _ApiView = object


class ScopedMixin(_ApiView):
    """Gives a view the caller's :class:`portal.access.Scope` and passes it to serializers."""

    @property
    def scope(self) -> Scope:
        return request_scope(self.request)

    def get_serializer_context(self) -> dict[str, Any]:
        context = dict(super().get_serializer_context())
        if getattr(self, "swagger_fake_view", False):
            return context
        context["scope"] = self.scope
        return context
