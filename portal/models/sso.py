"""Single sign-on (OpenID Connect) configured by an organisation, and the identities it
signed in. The platform's own provider comes from settings (``OIDC_*``), not from here.

A provider places people only in its organisation and the organisations below it; the
role mapping names, for each value of one claim, a role (and optionally which of those
organisations, as ``slug:role``)."""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models

from portal import crypto


def validate_role_map(value: object) -> None:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and k and v for k, v in value.items()
    ):
        raise ValidationError('Give claim values mapped to roles, e.g. {"admins": "admin"}.')


class SsoProvider(models.Model):
    organization = models.OneToOneField(
        "portal.Organization", on_delete=models.CASCADE, related_name="sso_provider"
    )
    # The name in the sign-in URL (/account/sso/<key>/); defaults to the organisation's slug.
    key = models.SlugField(max_length=60, unique=True)
    issuer = models.URLField(max_length=500, help_text="e.g. https://login.example.com")
    client_id = models.CharField(max_length=255)
    client_secret_ciphertext = models.TextField(editable=False)
    allowed_domains = models.JSONField(
        default=list, help_text='E-mail domains that may sign in, e.g. ["example.com"].'
    )
    role_claim = models.CharField(max_length=100, default="groups")
    role_map = models.JSONField(default=dict, validators=[validate_role_map])
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"SSO of {self.organization} ({self.issuer})"

    @property
    def client_secret(self) -> str:
        return crypto.decrypt_secret(self.client_secret_ciphertext)

    @client_secret.setter
    def client_secret(self, plain: str) -> None:
        self.client_secret_ciphertext = crypto.encrypt_secret(plain)


class SsoIdentity(models.Model):
    """Who an identity provider's subject is here: matched on (provider, subject), never
    on a claimed e-mail address alone."""

    provider_key = models.CharField(max_length=60)
    subject = models.CharField(max_length=255)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="sso_identities"
    )
    last_login_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["provider_key", "subject"], name="one_user_per_sso_subject"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.provider_key}:{self.subject}"
