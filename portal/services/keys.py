"""Relay API keys: created with their secret shown once, revoked, never deleted."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from portal import crypto
from portal.models import (
    ApiKey,
    AuditEntry,
    Organization,
)
from portal.models.catalog import SURFACES
from portal.models.limits import DAILY_LIMIT_MAX, LIMIT_MAX, LIMIT_NAMES
from portal.services.common import Actor, user_or_none

# The relay's per-key limits (portal.models.limits.LimitFields); None means no limit.
KEY_LIMITS = LIMIT_NAMES


def _model_ids(allowed_models: Iterable[str]) -> list[str]:
    if isinstance(allowed_models, str):
        # list("gpt-4o") would silently allow nothing useful; a caller bug, not user input.
        raise TypeError("allowed_models must be an iterable of model ids, not a string")
    ids: list[str] = []
    for raw in allowed_models:
        model_id = raw.strip()
        if not model_id:
            raise ValidationError({"allowed_models": "Model ids cannot be blank."})
        if model_id not in ids:
            ids.append(model_id)
    return ids


def _surfaces(allowed: Iterable[str]) -> list[str]:
    chosen = list(dict.fromkeys(allowed))
    unknown = [s for s in chosen if s not in SURFACES]
    if unknown:
        raise ValidationError(
            {
                "allowed_surfaces": f"Unknown APIs: {', '.join(unknown)}; choose from "
                f"{', '.join(SURFACES)}."
            }
        )
    return chosen


def checked_limits(limits: Mapping[str, int | None]) -> dict[str, int | None]:
    """``limits`` by name (``KEY_LIMITS``), each None (no limit) or from 1 to its column's
    largest value on every database."""
    unknown = set(limits) - set(KEY_LIMITS)
    if unknown:
        raise TypeError(f"unknown limits: {sorted(unknown)}")
    for name, value in limits.items():
        if value is not None and value < 1:
            raise ValidationError({name: "A limit is at least 1; leave it empty for none."})
        # The column's range on every database (SQLite would take more than PostgreSQL).
        maximum = DAILY_LIMIT_MAX if name == "daily_token_limit" else LIMIT_MAX
        if value is not None and value > maximum:
            raise ValidationError({name: f"A limit is at most {maximum}."})
    return dict(limits)


@transaction.atomic
def api_key_create(
    *,
    tenant: Organization,
    name: str,
    actor: Actor,
    expires_at: datetime | None = None,
    allowed_models: Iterable[str] = (),
    allowed_surfaces: Iterable[str] = (),
    limits: Mapping[str, int | None] | None = None,
) -> tuple[ApiKey, str]:
    """Issue a relay key for a tenant and return it with its secret.

    ``limits`` caps the key (``KEY_LIMITS``: requests and tokens per minute, concurrent
    requests, tokens per UTC day); a missing or None entry means no limit of that kind.

    The secret exists only in the return value: the database keeps a visible prefix and
    an HMAC digest, so the caller must show it to the person now or never.
    """
    if not tenant.is_tenant:
        raise ValidationError({"tenant": "API keys can only be issued to tenants."})
    if not tenant.is_active:
        raise ValidationError({"tenant": "This tenant is deactivated."})
    if expires_at is not None and expires_at <= timezone.now():
        raise ValidationError({"expires_at": "The expiry must be in the future."})
    secret = crypto.generate_api_key()
    api_key = ApiKey(
        tenant=tenant,
        name=name,
        created_by=user_or_none(actor),
        expires_at=expires_at,
        allowed_models=_model_ids(allowed_models),
        allowed_surfaces=_surfaces(allowed_surfaces),
        **checked_limits(limits or {}),
    )
    api_key.set_secret(secret)
    api_key.full_clean()
    api_key.save()
    AuditEntry.record(
        actor=actor,
        action="api_key.create",
        target=api_key,
        organization=tenant,
        data={
            "name": api_key.name,
            "prefix": api_key.prefix,
            "expires_at": expires_at.isoformat() if expires_at else None,
            "allowed_models": api_key.allowed_models,
            "allowed_surfaces": api_key.allowed_surfaces,
            **{name: getattr(api_key, name) for name in KEY_LIMITS},
        },
    )
    return api_key, secret


@transaction.atomic
def api_key_revoke(*, api_key: ApiKey, actor: Actor) -> ApiKey:
    """Revoke a key for good; revoking a revoked key changes nothing and logs nothing.

    Saved through the model (not a queryset update) so the post_save signal tells every
    relay process to drop the key.
    """
    current = ApiKey.objects.select_for_update().only("status", "revoked_at").get(pk=api_key.pk)
    if current.status == ApiKey.Status.REVOKED:
        api_key.status, api_key.revoked_at = current.status, current.revoked_at
        return api_key
    api_key.status = ApiKey.Status.REVOKED
    api_key.revoked_at = timezone.now()
    api_key.save(update_fields=["status", "revoked_at"])
    AuditEntry.record(
        actor=actor,
        action="api_key.revoke",
        target=api_key,
        organization=api_key.tenant,
        data={"name": api_key.name, "prefix": api_key.prefix},
    )
    return api_key


@transaction.atomic
def api_keys_revoke(*, api_keys: Iterable[ApiKey], actor: Actor) -> int:
    """Revoke several keys at once, all or none; returns how many were active."""
    revoked = 0
    for api_key in api_keys:
        if api_key.status == ApiKey.Status.ACTIVE:
            api_key_revoke(api_key=api_key, actor=actor)
            revoked += 1
    return revoked
