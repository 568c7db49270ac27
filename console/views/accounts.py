"""Sign-in (throttled), the landing page by role, and the person's access tokens."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.core.cache import cache
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, redirect
from django.urls import reverse
from django.utils.cache import add_never_cache_headers
from django.views.decorators.http import require_POST

from console.forms import AccessTokenForm
from console.http import AuthenticatedHttpRequest, two_factor_verified
from console.views.base import form_errors, render_page
from portal import selectors, tokens
from portal.access import Need, Role, is_operator, request_scope, role_grants
from portal.models import Organization, PersonalAccessToken

LOGIN_FAILURE_LIMIT = 5
LOGIN_LOCKOUT_SECONDS = 15 * 60


def _failure_key(request: HttpRequest, username: str) -> str:
    address = request.META.get("REMOTE_ADDR", "")
    return f"login-failures:{address}:{username.strip().lower()}"


class ThrottledLoginView(auth_views.LoginView):
    """Django's login, refusing a username from an address after repeated failures."""

    redirect_authenticated_user = True

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        key = _failure_key(request, request.POST.get("username", ""))
        if (cache.get(key) or 0) >= LOGIN_FAILURE_LIMIT:
            form = self.get_form()
            form.errors.clear()
            form.add_error(None, "Too many failed attempts. Try again in 15 minutes.")
            return self.render_to_response(self.get_context_data(form=form), status=429)
        return super().post(request, *args, **kwargs)

    def form_invalid(self, form: Any) -> HttpResponse:
        key = _failure_key(self.request, self.request.POST.get("username", ""))
        cache.add(key, 0, timeout=LOGIN_LOCKOUT_SECONDS)
        try:
            cache.incr(key)
        except ValueError:  # evicted between add and incr
            cache.set(key, 1, timeout=LOGIN_LOCKOUT_SECONDS)
        return super().form_invalid(form)

    def form_valid(self, form: Any) -> HttpResponse:
        cache.delete(_failure_key(self.request, form.get_user().get_username()))
        return super().form_valid(form)


@login_required
def home(request: AuthenticatedHttpRequest) -> HttpResponse:
    """Send each person where their work is: operators to the console, people in one
    organisation straight into it, others to a list to choose from."""
    if is_operator(request.user):
        return redirect("operator")
    memberships = selectors.direct_memberships(request.user, limit=2)
    if len(memberships) == 1:
        only = memberships[0]
        return redirect(_landing(only.organization, Role(only.role)))
    scope = request_scope(request)
    organizations = scope.organizations().exclude(kind=Organization.Kind.PLATFORM)
    rows = [(org, scope.role_for(org.pk)) for org in organizations.order_by("kind", "name")]
    return render_page(request, "portal/home.html", {"rows": rows}, section="home")


def _landing(organization: Organization, role: Role) -> str:
    if organization.kind == Organization.Kind.RESELLER and role_grants(role, Need.MANAGE):
        return reverse("tenants", args=[organization.slug])
    if organization.is_tenant and role_grants(role, Need.KEYS):
        return reverse("keys", args=[organization.slug])
    return reverse("org", args=[organization.slug])


@login_required
def access_tokens(request: AuthenticatedHttpRequest) -> HttpResponse:
    """The person's tokens for the management API: list, create (secret shown once)."""
    form = AccessTokenForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        with form_errors(form) as failed:
            token, secret = tokens.personal_access_token_create(
                user=request.user,
                name=form.cleaned_data["name"],
                scope=form.cleaned_data["scope"],
                expires_at=form.expires_at(),
                actor=request.user,
                two_factor_verified=two_factor_verified(request),
            )
        if not failed:
            response = render_page(
                request,
                "portal/token_created.html",
                {"token": token, "secret": secret},
                section="tokens",
            )
            add_never_cache_headers(response)
            return response
    return render_page(
        request,
        "portal/tokens.html",
        {"form": form, "tokens": selectors.access_tokens_of(request.user)},
        section="tokens",
        status=400 if form.errors else 200,
    )


@login_required
@require_POST
def access_token_revoke(request: AuthenticatedHttpRequest, token_id: int) -> HttpResponseRedirect:
    token = get_object_or_404(PersonalAccessToken, pk=token_id, user=request.user)
    tokens.personal_access_token_revoke(token=token, actor=request.user)
    messages.success(request, f"Token “{token.name}” revoked.")
    return redirect("account_tokens")
