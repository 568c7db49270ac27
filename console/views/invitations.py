"""An invitation's mailed link: its holder accepts with a new login, or with the one they
sign in with. (Managers invite and revoke on the members page: console.views.organizations.)"""

from __future__ import annotations

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.forms import SetPasswordMixin
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.cache import never_cache

from console.views.base import form_errors, render_page
from portal import services
from portal.models import Invitation


def accept_link(token: str) -> str:
    """The absolute link mailed with an invitation, on the configured public URL (never
    the request's Host header, which a caller could set)."""
    base = settings.TOLLGATE_PUBLIC_URL.rstrip("/")
    return base + reverse("invitation_accept", args=[token])


class NewLoginForm(SetPasswordMixin, forms.Form):
    """A username and a password typed twice, checked by the password validators."""

    username = forms.CharField(max_length=150, label="Username")
    password1, password2 = SetPasswordMixin.create_password_fields()

    def clean(self) -> dict[str, object]:
        cleaned = super().clean() or {}
        self.validate_passwords()
        return cleaned


@never_cache
def invitation_accept(request: HttpRequest, token: str) -> HttpResponse:
    """The mailed link: join with the signed-in login, or create a login for the address."""
    invitation = services.invitation_for_token(token)
    if invitation is None:
        return render(request, "portal/invitation_invalid.html", status=404)
    form = None
    if request.user.is_authenticated:
        if request.method == "POST":
            services.invitation_accept(invitation=invitation, user=request.user)
            return _joined(request, invitation)
    else:
        form = NewLoginForm(request.POST or None, initial={"username": invitation.email})
        if request.method == "POST" and form.is_valid():
            with form_errors(form) as failed:
                membership = services.invitation_accept_new_user(
                    invitation=invitation,
                    username=form.cleaned_data["username"],
                    password=form.cleaned_data["password1"],
                )
            if not failed:
                login(request, membership.user, backend="django.contrib.auth.backends.ModelBackend")
                return _joined(request, invitation)
    return render_page(
        request,
        "portal/invitation_accept.html",
        {
            "invitation": invitation,
            "form": form,
            "login_url": reverse("login") + "?next=" + request.path,
        },
        status=400 if form is not None and form.errors else 200,
    )


def _joined(request: HttpRequest, invitation: Invitation) -> HttpResponseRedirect:
    organization = invitation.organization
    messages.success(request, f"Welcome to {organization.name}.")
    return redirect("org", slug=organization.slug)
