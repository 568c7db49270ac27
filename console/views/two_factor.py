"""Staff two-factor pages: enrol an authenticator app (QR code as inline SVG), verify a
session with a code after signing in, and turn two-factor off."""

from __future__ import annotations

import io
from base64 import b32encode

import django_otp
import segno
from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import redirect, render
from django.utils.cache import add_never_cache_headers
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.safestring import mark_safe
from django_otp.middleware import is_verified
from django_otp.plugins.otp_totp.models import TOTPDevice

from console.http import AuthenticatedHttpRequest
from console.views.base import form_errors, render_page
from portal.services import two_factor


class TokenForm(forms.Form):
    token = forms.CharField(
        max_length=12,
        label="Code",
        help_text="The six digits your authenticator app shows now.",
        widget=forms.TextInput(
            attrs={"autocomplete": "one-time-code", "inputmode": "numeric", "autofocus": True}
        ),
    )


def _require_staff(request: HttpRequest) -> None:
    if not request.user.is_staff:
        raise PermissionDenied("Two-factor sign-in is offered to staff.")


def _qr_svg(url: str) -> str:
    buffer = io.BytesIO()
    segno.make(url, error="m").save(
        buffer, kind="svg", scale=4, xmldecl=False, svgns=True, title="Scan with your app"
    )
    return buffer.getvalue().decode()


def _spaced_secret(device: TOTPDevice) -> str:
    secret = b32encode(device.bin_key).decode()
    return " ".join(secret[i : i + 4] for i in range(0, len(secret), 4))


@login_required
def two_factor_setup(request: AuthenticatedHttpRequest) -> HttpResponse:
    """Status, enrolment (scan, then confirm with a code) and removal."""
    _require_staff(request)
    user = request.user
    action = request.POST.get("action") if request.method == "POST" else None
    form = TokenForm(request.POST if action in ("confirm", "remove") else None)
    enrolled = two_factor.has_confirmed_device(user)
    if action == "start" and not enrolled:
        two_factor.totp_device_start(user=user)
    device = None if enrolled else two_factor.pending_device(user)
    if action == "confirm" and device is not None and form.is_valid():
        with form_errors(form) as failed:
            two_factor.totp_device_confirm(
                device=device, token=form.cleaned_data["token"], actor=user
            )
        if not failed:
            django_otp.login(request, device)  # this session already proved it
            messages.success(request, "Two-factor sign-in is on. Keep the app at hand.")
            return redirect("two_factor_setup")
    if action == "remove" and enrolled and form.is_valid():
        confirmed = TOTPDevice.objects.filter(user=user, confirmed=True).first()
        token = "".join(form.cleaned_data["token"].split())
        if confirmed is not None and confirmed.verify_token(token):
            two_factor.totp_device_remove(user=user, actor=user)
            messages.success(request, "Two-factor sign-in is off.")
            return redirect("two_factor_setup")
        form.add_error("token", "This code is not right.")
    response = render_page(
        request,
        "portal/two_factor.html",
        {
            "enrolled": enrolled,
            "device": device,
            "qr": mark_safe(_qr_svg(device.config_url)) if device is not None else "",  # noqa: S308
            "secret": _spaced_secret(device) if device is not None else "",
            "form": form,
        },
        section="two_factor",
        status=400 if form.errors else 200,
    )
    add_never_cache_headers(response)
    return response


@login_required
def two_factor_verify(request: AuthenticatedHttpRequest) -> HttpResponse:
    """After the password: the code from the app, before anything else opens."""
    target = request.POST.get("next") or request.GET.get("next") or "/"
    if not url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}):
        target = "/"
    if is_verified(request.user) or not two_factor.has_confirmed_device(request.user):
        return HttpResponseRedirect(target)
    form = TokenForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        device = TOTPDevice.objects.filter(user=request.user, confirmed=True).first()
        if device is not None and device.verify_token("".join(form.cleaned_data["token"].split())):
            django_otp.login(request, device)
            return HttpResponseRedirect(target)
        form.add_error("token", "This code is not right. Try the next one the app shows.")
    # Plain render: no navigation, since nothing else opens before the code.
    return render(
        request,
        "registration/two_factor_verify.html",
        {"form": form, "next": target},
        status=400 if form.errors else 200,
    )
