"""The dashboard's channel form: the fields each provider type needs.

An operator sees only the fields of the provider type chosen (``portal.js`` hides the
others; each carries ``data-providers``). On submit the form assembles the channel's
secret (an API key, a Vertex service-account JSON key file, or Bedrock's key pair) and its
``provider_settings``, and checks both with ``portal.models.provider_settings``, the one
set of rules every way in uses; the services check them again when they save.
"""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.core.exceptions import ValidationError

from portal.models import Channel
from portal.models import provider_settings as rules
from portal.models.channels import (
    NATIVE_SURFACE_CHOICES,
    NATIVE_SURFACE_PROVIDERS,
    validate_upstream_url,
)

_KEY_PROVIDERS = (rules.OPENAI, rules.ANTHROPIC, rules.GEMINI, rules.AZURE)
# Form field -> the provider types that show it (fields not listed show for every type).
PROVIDER_FIELDS: dict[str, tuple[str, ...]] = {
    "native_surfaces": NATIVE_SURFACE_PROVIDERS,
    "secret": _KEY_PROVIDERS,
    "service_account": (rules.VERTEX,),
    "location": (rules.VERTEX,),
    "project": (rules.VERTEX,),
    "access_key_id": (rules.BEDROCK,),
    "secret_access_key": (rules.BEDROCK,),
    "session_token": (rules.BEDROCK,),
    "region": (rules.BEDROCK,),
    "resource": (rules.AZURE,),
    "api_version": (rules.AZURE,),
    "deployments": (rules.AZURE,),
}
# Where a provider's secret and settings errors are shown.
_SECRET_FIELD = {rules.VERTEX: "service_account", rules.BEDROCK: "secret_access_key"}
_SETTINGS_FIELD = {rules.VERTEX: "location", rules.BEDROCK: "region", rules.AZURE: "api_version"}
_WRITE_ONLY = forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"})


def _parse_served_models(text: str) -> dict[str, str]:
    """``public-id`` or ``public-id = upstream-name``, one per line."""
    models: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        public_id, _, upstream = (part.strip() for part in line.partition("="))
        if not public_id or public_id != "".join(public_id.split()):
            raise forms.ValidationError(
                f"Line {number}: “{line}” is not a model id (no spaces allowed)."
            )
        models[public_id] = upstream
    return models


def _parse_deployments(text: str) -> dict[str, str]:
    deployments: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        model, sep, deployment = (part.strip() for part in line.partition("="))
        if not sep or not model or not deployment:
            raise forms.ValidationError(f"Line {number}: write “model = deployment”.")
        deployments[model] = deployment
    return deployments


class ChannelForm(forms.Form):
    name = forms.CharField(max_length=200)
    provider_type = forms.ChoiceField(
        choices=Channel.ProviderType.choices, initial=Channel.ProviderType.OPENAI
    )
    base_url = forms.CharField(
        max_length=500,
        required=False,
        label="Base URL",
        validators=[validate_upstream_url],
        help_text="Up to and including /v1, e.g. https://api.openai.com/v1. Optional for "
        "providers with a well-known endpoint (all but OpenAI-compatible).",
    )
    native_surfaces = forms.MultipleChoiceField(
        required=False,
        label="APIs the provider serves itself",
        choices=[(s, s) for s in NATIVE_SURFACE_CHOICES],
        widget=forms.CheckboxSelectMultiple,
        help_text="Requests on the others are translated to chat completions.",
    )
    secret = forms.CharField(
        required=False,
        widget=_WRITE_ONLY,
        label="Upstream API key",
        help_text="Stored encrypted and never shown again.",
    )
    service_account = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 4, "autocomplete": "off", "spellcheck": "false"}),
        label="Service-account JSON key",
        help_text="Paste the key file. Stored encrypted and never shown again.",
    )
    location = forms.CharField(
        required=False, max_length=50, help_text="e.g. us-central1 or global (default us-central1)."
    )
    project = forms.CharField(
        required=False, max_length=63, help_text="Blank: the service account's own project."
    )
    access_key_id = forms.CharField(required=False, max_length=128, label="Access key id")
    secret_access_key = forms.CharField(
        required=False, widget=_WRITE_ONLY, label="Secret access key"
    )
    session_token = forms.CharField(
        required=False,
        widget=_WRITE_ONLY,
        label="Session token",
        help_text="Only for temporary credentials.",
    )
    region = forms.CharField(required=False, max_length=50, help_text="e.g. us-east-1.")
    resource = forms.CharField(
        required=False,
        max_length=63,
        label="Azure resource",
        help_text="The name in https://<resource>.openai.azure.com (or give a base URL).",
    )
    api_version = forms.CharField(
        required=False,
        max_length=30,
        label="API version",
        help_text="e.g. 2024-10-21 (2024-09-01-preview or later).",
    )
    deployments = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 3}),
        label="Deployments",
        help_text="One “model = deployment” per line.",
    )
    priority = forms.IntegerField(initial=0, help_text="Higher priorities are tried first.")
    weight = forms.IntegerField(
        min_value=0, initial=1, help_text="Share of traffic among channels of equal priority."
    )
    models = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 4}),
        label="Models served",
        help_text="One public model id per line; write “public-id = upstream-name” when the "
        "provider uses another name.",
    )

    def __init__(self, *args: Any, editing: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.editing = editing
        for name, providers in PROVIDER_FIELDS.items():
            self.fields[name].widget.attrs["data-providers"] = " ".join(providers)
        self.fields["provider_type"].widget.attrs["data-provider-select"] = ""
        if editing:
            for name in ("secret", "service_account", "secret_access_key"):
                self.fields[name].help_text = "Leave empty to keep the stored one."
            self.fields["access_key_id"].help_text = "Leave the key fields empty to keep them."
            self.fields["models"].label = "Add models"
            self.fields[
                "models"
            ].help_text = "Models listed here are added; models already served stay as they are."

    @classmethod
    def initial_for(cls, channel: Channel) -> dict[str, Any]:
        settings = channel.provider_settings or {}
        deployments = settings.get("deployments") or {}
        return {
            "name": channel.name,
            "provider_type": channel.provider_type,
            "base_url": channel.base_url,
            "native_surfaces": channel.native_surfaces,
            "priority": channel.priority,
            "weight": channel.weight,
            "location": settings.get("location", ""),
            "project": settings.get("project", ""),
            "region": settings.get("region", ""),
            "resource": settings.get("resource", ""),
            "api_version": settings.get("api_version", ""),
            "deployments": "\n".join(f"{m} = {d}" for m, d in deployments.items()),
        }

    def clean_models(self) -> dict[str, str]:
        return _parse_served_models(self.cleaned_data.get("models") or "")

    def clean_deployments(self) -> dict[str, str]:
        return _parse_deployments(self.cleaned_data.get("deployments") or "")

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        kind = cleaned.get("provider_type")
        if kind is None or self.errors:
            return cleaned
        cleaned["provider_settings"] = self._settings(kind, cleaned)
        if kind not in NATIVE_SURFACE_PROVIDERS:  # the field was hidden: ticks left over
            cleaned["native_surfaces"] = []
        cleaned["new_secret"] = self._secret(kind, cleaned)
        try:
            rules.check_settings(kind, cleaned.get("base_url", ""), cleaned["provider_settings"])
            if cleaned["new_secret"] is not None:
                rules.check_secret(kind, cleaned["new_secret"])
        except ValidationError as exc:
            for key, messages in exc.message_dict.items():
                field = {
                    "secret": _SECRET_FIELD.get(kind, "secret"),
                    "provider_settings": _SETTINGS_FIELD.get(kind),
                }.get(key, key)
                self.add_error(field if field in self.fields else None, messages)
        return cleaned

    @staticmethod
    def _settings(kind: str, cleaned: dict[str, Any]) -> dict[str, Any]:
        def given(*names: str) -> dict[str, Any]:
            return {name: cleaned[name] for name in names if cleaned.get(name)}

        if kind == rules.VERTEX:
            return given("location", "project")
        if kind == rules.BEDROCK:
            return {"region": cleaned.get("region", "")}
        if kind == rules.AZURE:
            return {
                **given("resource"),
                "api_version": cleaned.get("api_version", ""),
                "deployments": cleaned.get("deployments") or {},
            }
        return {}

    def _secret(self, kind: str, cleaned: dict[str, Any]) -> str | None:
        """The secret to store, or None to keep the stored one (editing, left blank)."""
        if kind == rules.VERTEX:
            secret = cleaned.get("service_account", "").strip()
        elif kind == rules.BEDROCK:
            keys = {
                name: cleaned[name]
                for name in ("access_key_id", "secret_access_key", "session_token")
                if cleaned.get(name)
            }
            secret = json.dumps(keys) if keys else ""
        else:
            secret = cleaned.get("secret", "")
        if not secret and self.editing:
            return None
        return secret
