"""Tells every relay process that keys, models, channels or organisations changed.

Relay processes keep what they need in memory and poll one shared counter (in the
Django cache: Redis in production) about once a second; any committed change to those
tables bumps it, so an edit or a revocation reaches every process within seconds while
the hot path itself makes no query.
"""

from __future__ import annotations

from typing import Any

from django.core.cache import cache
from django.db import transaction

GENERATION_KEY = "relay:generation"


def current_generation() -> int:
    return int(cache.get(GENERATION_KEY) or 0)


async def acurrent_generation() -> int:
    return int(await cache.aget(GENERATION_KEY) or 0)


def bump_generation() -> None:
    try:
        cache.incr(GENERATION_KEY)
    except ValueError:  # not set yet (or evicted): start it
        cache.add(GENERATION_KEY, 1, timeout=None)
        cache.incr(GENERATION_KEY)


# Columns the relay does not read: saving only these changes nothing it has cached.
RELAY_BLIND_FIELDS = frozenset(
    {"last_check_at", "last_check_ok", "last_check_latency_ms", "last_check_error", "updated_at"}
)


def bump_on_commit(update_fields: frozenset[str] | None = None, **_: Any) -> None:
    if update_fields and set(update_fields) <= RELAY_BLIND_FIELDS:
        return
    transaction.on_commit(bump_generation)


def connect() -> None:
    from django.db.models.signals import post_delete, post_save

    from portal.models import ApiKey, CatalogModel, Channel, ChannelModel, Organization

    for model in (ApiKey, CatalogModel, Channel, ChannelModel, Organization):
        post_save.connect(bump_on_commit, sender=model, dispatch_uid=f"relay-gen-save-{model}")
        post_delete.connect(bump_on_commit, sender=model, dispatch_uid=f"relay-gen-del-{model}")
