"""Personal access tokens: how scripts call the management API as a person.

Distinct from relay keys: a token acts as its user (with at most the user's rights) on
``/api/``, never on ``/v1/``. Stored like an API key: a visible prefix and an HMAC digest.
"""

from __future__ import annotations

from datetime import datetime

from django.conf import settings
from django.db import models
from django.utils import timezone

from portal import crypto

TOKEN_PREFIX = "tg-pat-"  # noqa: S105 - a public marker, not a secret
# Enough of the token kept in clear for people to tell theirs apart.
TOKEN_VISIBLE_CHARS = 14


class PersonalAccessToken(models.Model):
    class Scope(models.TextChoices):
        READ = "read", "Read only"
        READ_WRITE = "read_write", "Read and write"

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="access_tokens"
    )
    name = models.CharField(max_length=200)
    prefix = models.CharField(max_length=32, editable=False)
    digest = models.CharField(max_length=64, unique=True, editable=False)
    scope = models.CharField(max_length=16, choices=Scope.choices, default=Scope.READ)
    expires_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "personal access token"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    def set_secret(self, secret: str) -> None:
        self.prefix = secret[:TOKEN_VISIBLE_CHARS]
        self.digest = crypto.api_key_digest(secret)

    def matches(self, secret: str) -> bool:
        return crypto.digests_equal(self.digest, crypto.api_key_digest(secret))

    def is_usable(self, now: datetime | None = None) -> bool:
        now = now or timezone.now()
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)

    @property
    def can_write(self) -> bool:
        return self.scope == self.Scope.READ_WRITE
