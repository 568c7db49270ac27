"""Two-factor for staff: a signed-in operator who enrolled a TOTP device reaches nothing
(dashboard, admin, session API) until the session is verified with a code."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlencode

from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.urls import reverse

from portal.services.two_factor import has_confirmed_device

# Set by console.sso when the platform's identity provider is trusted for the second factor
# (an explicit setting). Defined here, not there: every web process, the relay's workers
# too, loads this middleware, and console.sso brings in mozilla-django-oidc, requests and
# PyJWT, which only a sign-in through SSO needs.
SESSION_TWO_FACTOR_BY_IDP = "tollgate_two_factor_by_idp"

# Where an unverified session may still go: the code form itself and signing out.
_OPEN_NAMES = ("two_factor_verify", "logout")


class StaffTwoFactorMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        user = getattr(request, "user", None)
        if (
            user is not None
            and user.is_authenticated
            and user.is_staff
            and not user.is_verified()
            and not self._is_open(request.path)
            and not request.session.get(SESSION_TWO_FACTOR_BY_IDP)
            and has_confirmed_device(user)
        ):
            if request.path.startswith("/api/"):
                return JsonResponse(
                    {"detail": "Enter your two-factor code on the dashboard first."}, status=403
                )
            query = urlencode({"next": request.get_full_path()})
            return HttpResponseRedirect(f"{reverse('two_factor_verify')}?{query}")
        return self.get_response(request)

    @staticmethod
    def _is_open(path: str) -> bool:
        if path.startswith(settings.STATIC_URL):
            return True
        return any(path == reverse(name) for name in _OPEN_NAMES)
