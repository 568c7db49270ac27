"""Single sign-on through mozilla-django-oidc: a provider per organisation (or the
platform's), chosen at the start of a sign-in and kept in the session until its callback.

mozilla-django-oidc runs the protocol (state, nonce, PKCE, code exchange, ID token
signature against the provider's JWKS); these subclasses only feed it the chosen
provider's settings, add the issuer and audience checks it leaves out, and hand verified
claims to ``portal.services.sso``.
"""

from __future__ import annotations

import logging
from typing import Any

from django.contrib import messages
from django.core.cache import cache
from django.core.exceptions import ImproperlyConfigured, SuspiciousOperation
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse
from mozilla_django_oidc.auth import OIDCAuthenticationBackend
from mozilla_django_oidc.utils import import_from_settings
from mozilla_django_oidc.views import (
    OIDCAuthenticationCallbackView,
    OIDCAuthenticationRequestView,
)

from console.middleware import SESSION_TWO_FACTOR_BY_IDP
from portal.services.sso import SsoConfig, SsoRefused, sso_config, sso_sign_in

logger = logging.getLogger(__name__)

SESSION_PROVIDER = "tollgate_sso_provider"
DISCOVERY_SECONDS = 3600


def discovery(config: SsoConfig) -> dict[str, Any]:
    """The provider's OpenID configuration (its endpoints), cached for an hour."""
    import httpx  # on use: every process loads this module with the URLconf

    key = f"sso-discovery:{config.issuer}"
    found = cache.get(key)
    if found is None:
        response = httpx.get(f"{config.issuer}/.well-known/openid-configuration", timeout=10)
        response.raise_for_status()
        found = response.json()
        if str(found.get("issuer", "")).rstrip("/") != config.issuer:
            raise ImproperlyConfigured(f"{config.issuer} publishes another issuer.")
        cache.set(key, found, DISCOVERY_SECONDS)
    return dict(found)


class _ProviderSettings:
    """``get_settings`` answered from the chosen provider first, then Django settings."""

    overrides: dict[str, Any]

    def get_settings(self, attr: str, *args: Any) -> Any:
        if attr in getattr(self, "overrides", {}):
            return self.overrides[attr]
        return import_from_settings(attr, *args)


def _unreachable() -> tuple[type[Exception], ...]:
    """What a provider that is down, misconfigured or answering nonsense raises here: its
    discovery document or token endpoint failed (httpx here, requests inside
    mozilla-django-oidc), or a document lacked what a provider must publish. The person gets
    the sign-in page with a message, never a server error."""
    import httpx  # on use, as in discovery()
    import requests

    return (httpx.HTTPError, requests.RequestException, ValueError, KeyError, ImproperlyConfigured)


def _overrides(config: SsoConfig) -> dict[str, Any]:
    found = discovery(config)
    return {
        "OIDC_OP_AUTHORIZATION_ENDPOINT": found["authorization_endpoint"],
        "OIDC_OP_TOKEN_ENDPOINT": found["token_endpoint"],
        "OIDC_OP_USER_ENDPOINT": found["userinfo_endpoint"],
        "OIDC_OP_JWKS_ENDPOINT": found["jwks_uri"],
        "OIDC_RP_CLIENT_ID": config.client_id,
        "OIDC_RP_CLIENT_SECRET": config.client_secret,
        "OIDC_RP_SCOPES": config.scopes,
    }


class SsoRequestView(_ProviderSettings, OIDCAuthenticationRequestView):
    """/account/sso/<key>/: off to the provider's sign-in page."""

    def __init__(self, **kwargs: Any) -> None:
        # The parent reads the endpoint and client id from settings here; ours come later.
        super(OIDCAuthenticationRequestView, self).__init__(**kwargs)

    def get(self, request: HttpRequest, key: str) -> HttpResponse:
        config = sso_config(key)
        if config is None:
            raise Http404("No such single sign-on.")
        try:
            self.overrides = _overrides(config)
        except _unreachable() as exc:
            logger.warning("sso %s: discovery failed: %s", config.key, exc)
            messages.error(request, "The identity provider cannot be reached. Try again later.")
            return HttpResponseRedirect(reverse("login"))
        self.OIDC_OP_AUTH_ENDPOINT = self.overrides["OIDC_OP_AUTHORIZATION_ENDPOINT"]
        self.OIDC_RP_CLIENT_ID = config.client_id
        request.session[SESSION_PROVIDER] = config.key
        return super().get(request)


class SsoCallbackView(_ProviderSettings, OIDCAuthenticationCallbackView):
    """/account/sso/callback/: the provider sends the person back with a code."""

    @property
    def failure_url(self) -> str:
        return reverse("login")

    def login_success(self) -> HttpResponse:
        key = self.request.session.get(SESSION_PROVIDER, "")
        response = super().login_success()
        config = sso_config(key)
        if config is not None and config.delegate_two_factor:
            self.request.session[SESSION_TWO_FACTOR_BY_IDP] = True
        return response


class SsoBackend(_ProviderSettings, OIDCAuthenticationBackend):
    """Authenticates the callback of a sign-in started by ``SsoRequestView``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Settings are per provider, read in authenticate().
        from django.contrib.auth import get_user_model

        self.UserModel = get_user_model()
        self.overrides = {}

    def authenticate(self, request: HttpRequest | None, **kwargs: Any) -> Any:
        if request is None or "nonce" not in kwargs:
            return None  # a password sign-in, not ours
        config = sso_config(request.session.get(SESSION_PROVIDER, ""))
        if config is None:
            return None
        self.config = config
        try:
            return self._authenticate(request, config, **kwargs)
        except _unreachable() as exc:
            logger.warning("sso %s: sign-in failed at the provider: %s", config.key, exc)
            messages.error(request, "The identity provider cannot be reached. Try again later.")
            return None  # the callback then sends the person back to the sign-in page

    def _authenticate(self, request: HttpRequest, config: SsoConfig, **kwargs: Any) -> Any:
        self.overrides = _overrides(config)
        self.OIDC_OP_TOKEN_ENDPOINT = self.overrides["OIDC_OP_TOKEN_ENDPOINT"]
        self.OIDC_OP_USER_ENDPOINT = self.overrides["OIDC_OP_USER_ENDPOINT"]
        self.OIDC_OP_JWKS_ENDPOINT = self.overrides["OIDC_OP_JWKS_ENDPOINT"]
        self.OIDC_RP_CLIENT_ID = config.client_id
        self.OIDC_RP_CLIENT_SECRET = config.client_secret
        self.OIDC_RP_SIGN_ALGO = import_from_settings("OIDC_RP_SIGN_ALGO", "RS256")
        self.OIDC_RP_IDP_SIGN_KEY = None
        return super().authenticate(request, **kwargs)

    def verify_token(self, token: str, **kwargs: Any) -> Any:
        payload = super().verify_token(token, **kwargs)
        if str(payload.get("iss", "")).rstrip("/") != self.config.issuer:
            raise SuspiciousOperation("The ID token comes from another issuer.")
        audience = payload.get("aud")
        audiences = audience if isinstance(audience, list) else [audience]
        if self.config.client_id not in audiences:
            raise SuspiciousOperation("The ID token is meant for another client.")
        self.id_claims = payload
        return payload

    def get_or_create_user(self, access_token: str, id_token: str, payload: Any) -> Any:
        userinfo = self.get_userinfo(access_token, id_token, payload)
        if userinfo.get("sub") != payload.get("sub"):
            raise SuspiciousOperation("The userinfo describes someone else.")
        try:
            return sso_sign_in(config=self.config, claims={**payload, **userinfo})
        except SsoRefused as exc:
            messages.error(self.request, f"Single sign-on refused: {exc}")
            return None
