"""Upstream channels: a provider endpoint, its secret, and the models it serves."""

from __future__ import annotations

from urllib.parse import urlsplit

from django.core.exceptions import ValidationError
from django.db import models

from portal import crypto
from portal.models import provider_settings

_VISIBLE_ASCII = provider_settings.VISIBLE_ASCII


def validate_upstream_url(value: str) -> None:
    """http(s) and a host; unlike URLField, single-label hosts (``http://llm:8000``) pass,
    as service names in Docker or Kubernetes networks are. Only printable ASCII: an
    internationalised host is written in its ``xn--`` form."""
    if not _VISIBLE_ASCII.fullmatch(value or ""):
        raise ValidationError(
            "Enter the URL in printable ASCII, without spaces (an internationalised host "
            "name in its xn-- form)."
        )
    # Deferred: httpx (with rich and pygments under it) would add ~0.2 s to every process
    # that loads the models; only validating a URL needs it.
    import httpx

    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a malformed port
        httpx.URL(value + "/chat/completions")
    except (ValueError, httpx.InvalidURL):
        raise ValidationError("Enter a valid http(s) URL.") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError("Enter an http:// or https:// URL with a host.")
    if parts.query or parts.fragment:
        raise ValidationError("The base URL takes no query string or fragment.")


NATIVE_SURFACE_CHOICES = ("responses", "messages")
# Provider types whose channels may serve surfaces natively: the others speak one protocol
# of their own, which the relay translates every surface to.
NATIVE_SURFACE_PROVIDERS = (provider_settings.OPENAI,)


def validate_native_surfaces(value: object) -> None:
    if not isinstance(value, list) or any(v not in NATIVE_SURFACE_CHOICES for v in value):
        raise ValidationError(
            f"A list of: {', '.join(NATIVE_SURFACE_CHOICES)} (chat, embeddings and "
            "completions are served by every channel)."
        )


class Channel(models.Model):
    class ProviderType(models.TextChoices):
        # Each has a request adapter in relay.providers and rules in provider_settings.
        OPENAI = "openai", "OpenAI-compatible"
        ANTHROPIC = "anthropic", "Anthropic"
        GEMINI = "gemini", "Google Gemini API"
        VERTEX = "vertex", "Google Vertex AI"
        BEDROCK = "bedrock", "AWS Bedrock"
        AZURE = "azure", "Azure OpenAI"

    class Status(models.TextChoices):
        ENABLED = "enabled", "Enabled"
        # Switched off by an operator: stays off until an operator switches it on.
        DISABLED = "disabled", "Disabled"
        # Switched off by Tollgate (the provider refused its credentials); the health
        # check switches it back on once the provider answers again.
        SUSPENDED = "suspended", "Suspended"

    name = models.CharField(max_length=200, unique=True)
    provider_type = models.CharField(
        max_length=32, choices=ProviderType.choices, default=ProviderType.OPENAI
    )
    base_url = models.CharField(
        max_length=500,
        blank=True,
        validators=[validate_upstream_url],
        help_text="Up to and including /v1, e.g. https://api.openai.com/v1; blank for "
        "providers with a well-known endpoint (all but OpenAI-compatible).",
    )
    native_surfaces = models.JSONField(
        default=list,
        blank=True,
        validators=[validate_native_surfaces],
        help_text="APIs the provider serves itself beyond chat, embeddings and completions: "
        '"responses" (OpenAI\'s Responses API), "messages" (Anthropic\'s). Requests on other '
        "surfaces are translated to chat completions.",
    )
    secret_ciphertext = models.TextField(blank=True, editable=False)
    provider_settings = models.JSONField(
        default=dict,
        blank=True,
        help_text='Not secret. Vertex: {"location", "project"}; Bedrock: {"region"}; '
        'Azure: {"resource", "deployments": {model: deployment}, "api_version"}.',
    )
    priority = models.IntegerField(default=0, help_text="Higher priorities are tried first.")
    weight = models.PositiveIntegerField(
        default=1, help_text="Share of traffic among channels of the same priority."
    )
    group = models.SlugField(
        max_length=50,
        default="default",
        help_text="Keys and tenants may be restricted to some groups (e.g. premium).",
    )
    dedicated = models.BooleanField(
        default=False,
        help_text="Only keys and tenants whose channel groups name this channel's group use "
        "it; those with no groups (allowed every group) never do.",
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ENABLED)
    status_reason = models.CharField(max_length=500, blank=True)
    connect_timeout = models.FloatField(
        null=True, blank=True, help_text="Seconds; blank uses RELAY_CONNECT_TIMEOUT."
    )
    first_byte_timeout = models.FloatField(
        null=True,
        blank=True,
        help_text="Seconds to the response headers and between stream reads; "
        "blank uses RELAY_FIRST_BYTE_TIMEOUT.",
    )
    total_timeout = models.FloatField(
        null=True, blank=True, help_text="Seconds for a whole request on this channel."
    )
    last_check_at = models.DateTimeField(null=True, blank=True)
    last_check_ok = models.BooleanField(null=True, blank=True)
    last_check_latency_ms = models.PositiveIntegerField(null=True, blank=True)
    last_check_error = models.CharField(max_length=500, blank=True)
    served_models = models.ManyToManyField(
        "portal.CatalogModel", through="portal.ChannelModel", related_name="channels"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-priority", "name"]

    def __str__(self) -> str:
        return self.name

    @property
    def secret(self) -> str:
        return crypto.decrypt_secret(self.secret_ciphertext)

    @secret.setter
    def secret(self, plain: str) -> None:
        self.secret_ciphertext = crypto.encrypt_secret(plain) if plain else ""

    def clean(self) -> None:
        provider_settings.check_settings(self.provider_type, self.base_url, self.provider_settings)
        if self.native_surfaces and self.provider_type not in NATIVE_SURFACE_PROVIDERS:
            # The relay would ignore them (relay/snapshot.py); storing them would mislead.
            raise ValidationError(
                {
                    "native_surfaces": f"{self.get_provider_type_display()} channels speak "
                    "their own protocol: every surface is translated to it."
                }
            )
        if self.secret_ciphertext or self.provider_type != self.ProviderType.OPENAI:
            provider_settings.check_secret(self.provider_type, self.secret)

    @property
    def is_enabled(self) -> bool:
        return self.status == self.Status.ENABLED

    def surface_url(self, path: str) -> str:
        """The provider's URL for ``path`` (e.g. ``/responses``) under its base URL."""
        return self.base_url.rstrip("/") + path

    def chat_completions_url(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"

    def configuration_problem(self) -> str:
        """Why requests cannot be sent to this channel as it is stored, or "" if they can.

        Input is validated, but a row written some other way (SQL, an old version, a
        restored dump) must not reach the routing table: the relay skips such a channel.
        """
        try:
            secret = self.secret
        except ValueError:
            return (
                "The stored secret cannot be decrypted with TOLLGATE_ENCRYPTION_KEYS; "
                "enter it again."
            )
        try:
            provider_settings.check_settings(
                self.provider_type, self.base_url, self.provider_settings
            )
            if secret or self.provider_type != self.ProviderType.OPENAI:
                provider_settings.check_secret(self.provider_type, secret)
            if self.base_url:
                validate_upstream_url(self.base_url)
        except ValidationError as exc:
            return " ".join(exc.messages)
        return ""


class ChannelModel(models.Model):
    """A model a channel serves, and the name the provider knows it by."""

    channel = models.ForeignKey(Channel, on_delete=models.CASCADE, related_name="served")
    model = models.ForeignKey(
        "portal.CatalogModel", on_delete=models.CASCADE, related_name="served_by"
    )
    upstream_name = models.CharField(
        max_length=200, blank=True, help_text="Name sent to the provider; blank means the same."
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["channel", "model"], name="unique_channel_model"),
        ]

    def __str__(self) -> str:
        return f"{self.channel} serves {self.model}"

    def upstream_model(self) -> str:
        return self.upstream_name or self.model.public_id
