"""Forms of single sign-on: the address that picks a provider, and an organisation's
provider settings."""

from __future__ import annotations

from typing import Any

from django import forms

from portal.models import Membership


class SsoStartForm(forms.Form):
    email = forms.EmailField(
        label="Work e-mail address",
        help_text="Your organisation's identity provider is chosen by its domain.",
        widget=forms.EmailInput(attrs={"autocomplete": "email", "autofocus": True}),
    )


def parse_role_map(text: str) -> dict[str, str]:
    """``claim value = role`` or ``claim value = org-slug:role``, one per line."""
    mapping: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        value, sep, target = line.partition("=")
        if not sep or not value.strip() or not target.strip():
            raise forms.ValidationError(f"Line {number}: write “claim value = role”.")
        mapping[value.strip()] = target.strip()
    return mapping


class SsoProviderForm(forms.Form):
    issuer = forms.URLField(
        max_length=500,
        help_text="The provider's issuer URL; /.well-known/openid-configuration is read from it.",
    )
    client_id = forms.CharField(max_length=255, label="Client ID")
    client_secret = forms.CharField(
        max_length=500,
        required=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
        help_text="Blank keeps the one saved.",
    )
    allowed_domains = forms.CharField(
        max_length=1000,
        help_text="E-mail domains that may sign in, separated by commas.",
    )
    role_claim = forms.CharField(
        max_length=100,
        initial="groups",
        help_text="The claim (in the ID token or userinfo) whose value picks the role.",
    )
    role_map = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 4}),
        label="Role mapping",
        help_text="One per line: “claim value = role” with a role among "
        + ", ".join(Membership.Role.values)
        + "; a reseller may write “claim value = tenant-slug:role”. Someone whose claim "
        "matches no line is refused.",
    )
    enabled = forms.BooleanField(required=False, initial=True)

    def clean_role_map(self) -> dict[str, str]:
        return parse_role_map(self.cleaned_data["role_map"])

    def clean_allowed_domains(self) -> list[str]:
        return [d.strip() for d in self.cleaned_data["allowed_domains"].split(",") if d.strip()]

    @classmethod
    def initial_from(cls, provider: Any) -> dict[str, Any]:
        if provider is None:
            return {"enabled": True, "role_claim": "groups"}
        return {
            "issuer": provider.issuer,
            "client_id": provider.client_id,
            "allowed_domains": ", ".join(provider.allowed_domains),
            "role_claim": provider.role_claim,
            "role_map": "\n".join(f"{k} = {v}" for k, v in provider.role_map.items()),
            "enabled": provider.enabled,
        }
