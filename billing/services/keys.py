"""Issuing an API key with its spend caps: the key (portal) and its quota (billing) in one
transaction, so a key never exists for a moment without the caps asked for."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime

from django.db import transaction

from billing.models import KeyQuota
from billing.services.prices import key_quota_set
from portal.models import ApiKey, Organization
from portal.services import Actor, api_key_create


@transaction.atomic
def api_key_issue(
    *,
    tenant: Organization,
    name: str,
    actor: Actor,
    expires_at: datetime | None = None,
    allowed_models: Iterable[str] = (),
    allowed_surfaces: Iterable[str] = (),
    limits: Mapping[str, int | None] | None = None,
    total_limit_micros: int | None = None,
    period_limit_micros: int | None = None,
    period: str = KeyQuota.Period.MONTH,
) -> tuple[ApiKey, str]:
    """Issue a key with its rate limits and, when given, a spend cap (retail micro-units:
    in total, and per UTC day or month). Returns the key and its secret (shown once)."""
    api_key, secret = api_key_create(
        tenant=tenant,
        name=name,
        actor=actor,
        expires_at=expires_at,
        allowed_models=allowed_models,
        allowed_surfaces=allowed_surfaces,
        limits=limits,
    )
    if total_limit_micros is not None or period_limit_micros is not None:
        key_quota_set(
            api_key=api_key,
            actor=actor,
            total_limit_micros=total_limit_micros,
            period_limit_micros=period_limit_micros,
            period=period,
        )
    return api_key, secret
