"""Channels: upstream endpoints, their secrets, models, status and health records."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from portal import invalidation, redaction
from portal.models import (
    AuditEntry,
    CatalogModel,
    Channel,
    ChannelModel,
)
from portal.models.provider_settings import check_secret
from portal.services.catalog import catalog_model_upsert, check_public_id
from portal.services.common import Actor, apply_changes

_STATUS_REASON_MAX_LENGTH = Channel._meta.get_field("status_reason").max_length or 500
# Fields of a channel that channel_update may change; the secret and the status have
# their own functions because they are audited differently.
_CHANNEL_UPDATABLE_FIELDS = frozenset(
    {
        "name",
        "base_url",
        "priority",
        "weight",
        "provider_type",
        "provider_settings",
        "native_surfaces",
    }
)


def _upstream_names(models: Mapping[str, str] | Iterable[str]) -> dict[str, str]:
    """Normalise ``models`` to {public id: upstream name}, blank meaning "the same name"."""
    if isinstance(models, str):
        raise TypeError("models must be a mapping or an iterable of model ids, not a string")
    pairs = models.items() if isinstance(models, Mapping) else ((m, m) for m in models)
    names: dict[str, str] = {}
    for raw_public, raw_upstream in pairs:
        public_id = raw_public.strip()
        upstream = (raw_upstream or public_id).strip()
        check_public_id(public_id)
        names[public_id] = "" if upstream == public_id else upstream
    return names


def _channel_models_add(channel: Channel, names: dict[str, str], actor: Actor) -> dict[str, str]:
    """Link the catalog models in ``names`` not yet served by ``channel``; return those added."""
    catalog = {m.public_id: m for m in CatalogModel.objects.filter(public_id__in=names)}
    already = set(channel.served.values_list("model__public_id", flat=True))
    added: dict[str, str] = {}
    for public_id, upstream in names.items():
        if public_id in already:
            continue
        model = catalog.get(public_id) or catalog_model_upsert(public_id=public_id, actor=actor)
        link = ChannelModel(channel=channel, model=model, upstream_name=upstream)
        link.full_clean()
        link.save()
        added[public_id] = link.upstream_model()
    return added


@transaction.atomic
def channel_create(
    *,
    name: str,
    secret: str,
    actor: Actor,
    models: Mapping[str, str] | Iterable[str],
    base_url: str = "",
    priority: int = 0,
    weight: int = 1,
    provider_type: str = Channel.ProviderType.OPENAI,
    provider_settings: Mapping[str, Any] | None = None,
    native_surfaces: Iterable[str] = (),
) -> Channel:
    """Connect an upstream and say which public models it serves.

    ``models`` maps public id → upstream name, or lists public ids the upstream knows
    by the same name. Catalog entries that do not exist yet are created.
    ``provider_settings`` holds what a provider type needs beyond a URL and a secret
    (``portal.models.provider_settings``).
    """
    channel = Channel(
        name=name,
        base_url=base_url,
        priority=priority,
        weight=weight,
        provider_type=provider_type,
        provider_settings=dict(provider_settings or {}),
        native_surfaces=list(native_surfaces),
    )
    channel.secret = secret
    channel.full_clean()
    channel.save()
    served = _channel_models_add(channel, _upstream_names(models), actor)
    AuditEntry.record(
        actor=actor,
        action="channel.create",
        target=channel,
        data={
            "name": channel.name,
            "base_url": channel.base_url,
            "provider_type": channel.provider_type,
            "provider_settings": channel.provider_settings,
            "native_surfaces": channel.native_surfaces,
            "priority": channel.priority,
            "weight": channel.weight,
            "models": served,
            "has_secret": bool(secret),
        },
    )
    return channel


@transaction.atomic
def channel_models_add(
    *, channel: Channel, models: Mapping[str, str] | Iterable[str], actor: Actor
) -> dict[str, str]:
    """Let ``channel`` also serve ``models``; links that exist already are left as they are.

    Returns {public id: upstream name} of the links added (empty when none were missing).
    """
    added = _channel_models_add(channel, _upstream_names(models), actor)
    if added:
        AuditEntry.record(
            actor=actor, action="channel.models_add", target=channel, data={"models": added}
        )
    return added


@transaction.atomic
def channel_update(*, channel: Channel, actor: Actor, **changes: Any) -> Channel:
    """Change a channel's name, base_url, priority, weight, provider_type or settings.

    Unchanged values are ignored; nothing is written or audited when nothing changed.
    """
    unknown = set(changes) - _CHANNEL_UPDATABLE_FIELDS
    if unknown:
        raise TypeError(f"channel_update cannot change: {', '.join(sorted(unknown))}")
    changed = apply_changes(channel, changes)
    if not changed:
        return channel
    try:
        channel.full_clean()
    except ValidationError:
        # Leave the caller's instance as it was, not half-edited.
        for field, change in changed.items():
            setattr(channel, field, change["from"])
        raise
    channel.save(update_fields=[*changed, "updated_at"])
    AuditEntry.record(
        actor=actor, action="channel.update", target=channel, data={"changed": changed}
    )
    return channel


def _redacted(channel: Channel, text: str) -> str:
    """``text`` without the channel's secret: errors and reasons are stored and shown."""
    try:
        secret = channel.secret
    except ValueError:  # undecryptable: nothing of it can be in the text either
        return text
    return redaction.redact(text, (secret,))


@transaction.atomic
def channel_update_secret(*, channel: Channel, secret: str, actor: Actor) -> Channel:
    """Replace the upstream secret (stored encrypted); an empty secret removes it."""
    check_secret(channel.provider_type, secret)
    channel.secret = secret
    channel.save(update_fields=["secret_ciphertext", "updated_at"])
    AuditEntry.record(
        actor=actor,
        action="channel.secret_update",
        target=channel,
        data={"has_secret": bool(secret)},
    )
    return channel


@transaction.atomic
def channel_edit(
    *,
    channel: Channel,
    actor: Actor,
    secret: str | None = None,
    models: Mapping[str, str] | Iterable[str] | None = None,
    **changes: Any,
) -> Channel:
    """One edit of a channel as a person makes it, all or nothing: its settings (as
    ``channel_update``), a new secret when ``secret`` is not None (empty: remove it), and
    more models to serve. Each part is audited as its own service audits it."""
    channel_update(channel=channel, actor=actor, **changes)
    if secret is not None:
        channel_update_secret(channel=channel, secret=secret, actor=actor)
    if models:
        channel_models_add(channel=channel, models=models, actor=actor)
    return channel


@transaction.atomic
def channel_set_status(
    *, channel: Channel, enabled: bool, reason: str = "", actor: Actor
) -> Channel:
    """Take a channel in or out of rotation; a repeat of the current state is a no-op.

    Health checks call this too, so repeats must not flood the audit log.
    """
    status = Channel.Status.ENABLED if enabled else Channel.Status.DISABLED
    # Error messages from health checks can be long; the column is not.
    reason = _redacted(channel, reason)[:_STATUS_REASON_MAX_LENGTH]
    if channel.status == status and channel.status_reason == reason:
        return channel
    previous = channel.status
    channel.status = status
    channel.status_reason = reason
    channel.save(update_fields=["status", "status_reason", "updated_at"])
    AuditEntry.record(
        actor=actor,
        action="channel.enable" if enabled else "channel.disable",
        target=channel,
        data={"previous": previous, "reason": reason},
    )
    return channel


@transaction.atomic
def channels_set_status(
    *, channels: Iterable[Channel], enabled: bool, reason: str = "", actor: Actor
) -> int:
    """Take several channels in or out of rotation at once, all or none; returns how many
    were asked."""
    count = 0
    for channel in channels:
        channel_set_status(channel=channel, enabled=enabled, reason=reason, actor=actor)
        count += 1
    return count


@transaction.atomic
def channel_suspend(*, channel_id: int, reason: str) -> bool:
    """Take an enabled channel out of rotation automatically (its credentials were refused).

    Claimed with a conditional update so that many relay processes seeing the same 401 at
    once write one status change and one audit entry. Returns whether this call did it.
    """
    reason = reason[:_STATUS_REASON_MAX_LENGTH]
    changed = Channel.objects.filter(pk=channel_id, status=Channel.Status.ENABLED).update(
        status=Channel.Status.SUSPENDED, status_reason=reason, updated_at=timezone.now()
    )
    if not changed:
        return False
    channel = Channel.objects.get(pk=channel_id)
    AuditEntry.record(
        actor="relay",
        action="channel.suspend",
        target=channel,
        data={"reason": reason},
    )
    invalidation.bump_on_commit()
    return True


@transaction.atomic
def channel_check_record(
    *, channel: Channel, ok: bool, latency_ms: int | None, error: str = ""
) -> Channel:
    """Store a health check's outcome; a suspended channel that answers again comes back."""
    channel.last_check_at = timezone.now()
    channel.last_check_ok = ok
    channel.last_check_latency_ms = latency_ms
    channel.last_check_error = _redacted(channel, error)[:_STATUS_REASON_MAX_LENGTH]
    fields = ["last_check_at", "last_check_ok", "last_check_latency_ms", "last_check_error"]
    if ok and channel.status == Channel.Status.SUSPENDED:
        previous_reason = channel.status_reason
        channel.status = Channel.Status.ENABLED
        channel.status_reason = ""
        fields += ["status", "status_reason"]
        AuditEntry.record(
            actor="health-check",
            action="channel.resume",
            target=channel,
            data={"previous_reason": previous_reason, "latency_ms": latency_ms},
        )
    channel.save(update_fields=[*fields, "updated_at"])
    return channel
