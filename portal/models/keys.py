"""Relay API keys: shown once, stored as a visible prefix plus an HMAC digest."""

from __future__ import annotations

import ipaddress
from datetime import datetime

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

from portal import crypto
from portal.models.limits import LimitFields


def validate_networks(value: object) -> None:
    if not isinstance(value, list):
        raise ValidationError("Give a list of networks in CIDR notation.")
    for item in value:
        try:
            ipaddress.ip_network(str(item), strict=False)
        except ValueError:
            raise ValidationError(f"{item!r} is not a network in CIDR notation.") from None


class ApiKey(LimitFields):
    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        REVOKED = "revoked", "Revoked"

    tenant = models.ForeignKey(
        "portal.Organization", on_delete=models.PROTECT, related_name="api_keys"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    name = models.CharField(max_length=200)
    prefix = models.CharField(max_length=32, editable=False)
    digest = models.CharField(max_length=64, unique=True, editable=False)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    expires_at = models.DateTimeField(null=True, blank=True)
    allowed_models = models.JSONField(
        default=list, blank=True, help_text="Public model ids this key may use; empty means all."
    )
    allowed_surfaces = models.JSONField(
        default=list,
        blank=True,
        help_text="Client APIs this key may call (chat, responses, messages, embeddings, "
        "completions); empty means all.",
    )
    allowed_networks = models.JSONField(
        default=list,
        blank=True,
        help_text='Source networks allowed to use this key (CIDR, e.g. ["10.0.0.0/8"]); '
        "empty means any.",
        validators=[validate_networks],
    )
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta(LimitFields.Meta):
        ordering = ["-created_at"]
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    def set_secret(self, secret: str) -> None:
        self.prefix = secret[: crypto.API_KEY_VISIBLE_CHARS]
        self.digest = crypto.api_key_digest(secret)

    def matches(self, secret: str) -> bool:
        return crypto.digests_equal(self.digest, crypto.api_key_digest(secret))

    def is_usable(self, now: datetime | None = None) -> bool:
        now = now or timezone.now()
        return self.status == self.Status.ACTIVE and (
            self.expires_at is None or self.expires_at > now
        )

    def allows_model(self, public_id: str) -> bool:
        return not self.allowed_models or public_id in self.allowed_models
