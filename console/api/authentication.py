"""Personal access tokens on the management API: ``Authorization: Bearer tg-pat-...``."""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.request import Request

from portal.models import PersonalAccessToken
from portal.models.tokens import TOKEN_PREFIX
from portal.tokens import personal_access_token_authenticate


class PersonalAccessTokenAuthentication(BaseAuthentication):
    """Authenticates as the token's user; ``request.auth`` is the token itself.

    A header that is not a Tollgate token is left to the next class, so sessions keep
    working; a Tollgate token that is unknown, revoked or expired is a 401.
    """

    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[Any, PersonalAccessToken] | None:
        parts = get_authorization_header(request).split()
        if len(parts) != 2 or parts[0].lower() != self.keyword.lower().encode():
            return None
        try:
            secret = parts[1].decode("ascii")
        except UnicodeDecodeError:
            raise exceptions.AuthenticationFailed("Invalid token.") from None
        if not secret.startswith(TOKEN_PREFIX):
            return None
        token = personal_access_token_authenticate(secret)
        if token is None:
            raise exceptions.AuthenticationFailed("Invalid, revoked or expired token.")
        return token.user, token

    def authenticate_header(self, request: Request) -> str:
        return f'{self.keyword} realm="api"'


class PersonalAccessTokenScheme(OpenApiAuthenticationExtension):
    target_class = "console.api.authentication.PersonalAccessTokenAuthentication"
    name = "personalAccessToken"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "A personal access token (tg-pat-...), read-only or read-write.",
        }
