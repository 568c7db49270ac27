"""The one authenticated-request type of the console, and the person acting behind it.

Views behind ``login_required`` take an :class:`AuthenticatedHttpRequest`, whose ``user``
is a person, never the anonymous user: that is what lets ``request.user`` be passed as a
service's ``Actor``. Code whose signature Django or DRF fixes (admin methods, API views)
asks :func:`acting_user` instead.
"""

from __future__ import annotations

from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest
from rest_framework.request import Request


class AuthenticatedHttpRequest(HttpRequest):
    """An ``HttpRequest`` whose user signed in (for type checking only)."""

    user: User


def acting_user(request: HttpRequest) -> User:
    """The signed-in person making ``request``; refuses anyone else."""
    user = request.user
    if not isinstance(user, User) or not user.is_authenticated:
        raise PermissionDenied("Sign in first.")
    return user


def two_factor_verified(request: HttpRequest | Request) -> bool:
    """Whether this session entered a two-factor code (django-otp's verification), or
    signed in through a provider trusted for the second factor (OIDC_DELEGATE_TWO_FACTOR)."""
    if request.session.get("tollgate_two_factor_by_idp"):
        return True
    is_verified = getattr(request.user, "is_verified", None)
    return bool(is_verified and is_verified())
