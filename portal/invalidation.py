"""Tells every relay process that keys, models, channels or organisations changed.

Relay processes keep what they need in memory and poll one shared counter (in the
Django cache: Redis in production) about once a second; any committed change to those
tables bumps it, so an edit or a revocation reaches every process within seconds while
the hot path itself makes no query. When the notice cannot be given (Redis away), the
relay catches up by itself (``relay.cache``).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from django.core.cache import cache
from django.db import transaction

logger = logging.getLogger(__name__)

GENERATION_KEY = "relay:generation"


def current_generation() -> int:
    return int(cache.get(GENERATION_KEY) or 0)


async def acurrent_generation() -> int:
    return int(await cache.aget(GENERATION_KEY) or 0)


def bump_generation() -> None:
    """Tell the relay processes; never raises: the change is committed whatever happens.

    A notice lost here (Redis away) is made up for by the relay itself: a process that
    could not read the counter re-reads what it holds once it can, and every process
    re-reads everything on a schedule (``relay.cache``).
    """
    try:
        try:
            cache.incr(GENERATION_KEY)
        except ValueError:  # not set yet, or lost with a Redis restart: start it again
            # From the clock, in microseconds, not from 1: a counter restarted at 1 could
            # come back to the very value a relay process last saw and hide this change.
            # (Below 2**53, so Redis's Lua scripts, which use doubles, keep it exact.)
            cache.add(GENERATION_KEY, int(time.time() * 1_000_000), timeout=None)
            cache.incr(GENERATION_KEY)
    except Exception as exc:  # Redis away: the caller's change stands, answer normally
        logger.warning(
            "could not tell relay processes about a change (%s: %s); they will re-read it",
            type(exc).__name__,
            exc,
        )


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
