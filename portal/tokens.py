"""Personal access token workflows: issue, revoke and authenticate.

Kept apart from ``portal.services`` because tokens belong to a person, not to an
organisation; like every service here, each write is audited in its own transaction.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta
from typing import Any

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from portal import crypto
from portal.models import AuditEntry, PersonalAccessToken
from portal.models.tokens import TOKEN_PREFIX
from portal.services.two_factor import has_confirmed_device

# last_used_at is a hint for people, not an access log: refresh it at most this often.
LAST_USED_RESOLUTION = timedelta(minutes=1)


def generate_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


@transaction.atomic
def personal_access_token_create(
    *,
    user: Any,
    name: str,
    scope: str = PersonalAccessToken.Scope.READ,
    expires_at: datetime | None = None,
    actor: Any,
    two_factor_verified: bool = False,
) -> tuple[PersonalAccessToken, str]:
    """Issue a token for ``user``; the secret exists only in the return value.

    A token outlives the session that made it and skips the code at every use, so a person
    with two-factor on gets one only from a session that entered its code
    (``two_factor_verified``); otherwise a stolen password alone would mint one.
    """
    if not two_factor_verified and has_confirmed_device(user):
        raise PermissionDenied("Enter your two-factor code before creating an access token.")
    if expires_at is not None and expires_at <= timezone.now():
        raise ValidationError({"expires_at": "The expiry must be in the future."})
    secret = generate_token()
    token = PersonalAccessToken(user=user, name=name.strip(), scope=scope, expires_at=expires_at)
    token.set_secret(secret)
    token.full_clean()
    token.save()
    AuditEntry.record(
        actor=actor,
        action="access_token.create",
        target=token,
        data={
            "name": token.name,
            "prefix": token.prefix,
            "scope": token.scope,
            "user": user.get_username(),
            "expires_at": expires_at.isoformat() if expires_at else None,
        },
    )
    return token, secret


@transaction.atomic
def personal_access_token_revoke(*, token: PersonalAccessToken, actor: Any) -> PersonalAccessToken:
    """Revoke a token for good; revoking it again changes and logs nothing."""
    claimed = PersonalAccessToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(
        revoked_at=timezone.now()
    )
    token.refresh_from_db(fields=["revoked_at"])
    if claimed:
        AuditEntry.record(
            actor=actor,
            action="access_token.revoke",
            target=token,
            data={"name": token.name, "prefix": token.prefix},
        )
    return token


def personal_access_token_authenticate(secret: str) -> PersonalAccessToken | None:
    """The usable token whose secret this is, with its user loaded; None otherwise."""
    if not secret.startswith(TOKEN_PREFIX):
        return None
    digest = crypto.api_key_digest(secret)
    token = PersonalAccessToken.objects.select_related("user").filter(digest=digest).first()
    if token is None or not crypto.digests_equal(token.digest, digest):
        return None
    now = timezone.now()
    if not token.is_usable(now) or not token.user.is_active:
        return None
    if token.last_used_at is None or now - token.last_used_at >= LAST_USED_RESOLUTION:
        # A conditional update, so concurrent requests write it once per interval.
        PersonalAccessToken.objects.filter(
            Q(last_used_at__isnull=True) | Q(last_used_at__lte=now - LAST_USED_RESOLUTION),
            pk=token.pk,
        ).update(last_used_at=now)
        token.last_used_at = now
    return token
