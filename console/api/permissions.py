"""API permissions: token scopes and operator-only endpoints.

Organisation-level rights are not decided here but by ``portal.access`` inside each
view, so that an outsider gets a 404 and an insider without the role a 403.
"""

from __future__ import annotations

from typing import Any

from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.request import Request

from portal.access import is_operator
from portal.models import PersonalAccessToken


def _token(request: Request) -> PersonalAccessToken | None:
    auth = request.auth
    return auth if isinstance(auth, PersonalAccessToken) else None


class TokenScopePermission(BasePermission):
    """A read-only token may only read."""

    message = "This access token is read-only."

    def has_permission(self, request: Request, view: Any) -> bool:
        token = _token(request)
        return token is None or request.method in SAFE_METHODS or token.can_write


class IsOperator(BasePermission):
    message = "Only operators may use this endpoint."

    def has_permission(self, request: Request, view: Any) -> bool:
        return is_operator(request.user)


class IsOperatorOrReadOnly(BasePermission):
    message = "Only operators may change this."

    def has_permission(self, request: Request, view: Any) -> bool:
        return request.method in SAFE_METHODS or is_operator(request.user)


class SessionOnlyForWrites(BasePermission):
    """Tokens cannot mint or revoke tokens: a leaked token must not outlive its revocation."""

    message = "Manage access tokens from a signed-in session, not with a token."

    def has_permission(self, request: Request, view: Any) -> bool:
        return request.method in SAFE_METHODS or _token(request) is None
