"""Single sign-on pages: choose a provider by e-mail domain, and an organisation's own
provider settings (issuer, client, domains, role mapping). The protocol views are in
``console.sso``."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.cache import add_never_cache_headers

from console.forms.sso import SsoProviderForm, SsoStartForm
from console.http import AuthenticatedHttpRequest
from console.views.base import form_errors, render_page
from portal.access import Need, get_access
from portal.models import Organization, SsoProvider
from portal.services.sso import (
    platform_config,
    sso_config_for_email,
    sso_issuer_origins,
    sso_provider_save,
)


def sso_start(request: HttpRequest) -> HttpResponse:
    """The work address picks the provider; the platform's may also be chosen directly."""
    form = SsoStartForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        config = sso_config_for_email(form.cleaned_data["email"])
        if config is not None:
            return redirect("sso_login", key=config.key)
        form.add_error("email", "No single sign-on is set up for this domain.")
    response = render(
        request,
        "registration/sso_start.html",
        {"form": form, "platform": platform_config()},
        status=400 if form.errors else 200,
    )
    # Sending the form redirects to the provider; browsers hold that to form-action.
    response._csp_update = {"form-action": ["'self'", *sso_issuer_origins()]}  # type: ignore[attr-defined]
    return response


@login_required
def sso_settings(request: AuthenticatedHttpRequest, slug: str) -> HttpResponse:
    """An organisation's own identity provider: its owners, its seller and operators."""
    access = get_access(request.user, slug, need=Need.OWNER)
    organization = access.organization
    if organization.kind == Organization.Kind.PLATFORM:
        raise Http404("The platform's provider is set with OIDC_* settings.")
    provider = SsoProvider.objects.filter(organization=organization).first()
    form = SsoProviderForm(request.POST or None, initial=SsoProviderForm.initial_from(provider))
    if request.method == "POST" and form.is_valid():
        with form_errors(form) as failed:
            sso_provider_save(organization=organization, actor=request.user, **form.cleaned_data)
        if not failed:
            messages.success(request, "Single sign-on saved.")
            return redirect("sso_settings", slug=slug)
    callback = settings.TOLLGATE_PUBLIC_URL.rstrip("/") + reverse("sso_callback")
    response = render_page(
        request,
        "portal/sso.html",
        {"form": form, "provider": provider, "callback_url": callback},
        access=access,
        section="sso",
        status=400 if form.errors else 200,
    )
    add_never_cache_headers(response)
    return response
