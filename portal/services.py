"""Portal workflows: organisations, memberships, API keys, the model catalog and channels.

Every function is keyword-only and runs in one transaction that also writes the
AuditEntry describing the change, so a change and its audit row commit (or vanish)
together. Secrets never reach an audit entry.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeAlias

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone
from django.utils.text import slugify

from portal import crypto, invalidation
from portal.models import (
    ApiKey,
    AuditEntry,
    CatalogModel,
    Channel,
    ChannelModel,
    Membership,
    Organization,
)

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

# A person, or a label naming the script or command that acts on its own ("cli", "seed").
Actor: TypeAlias = "AbstractBaseUser | str"

_SLUG_MAX_LENGTH = Organization._meta.get_field("slug").max_length or 80
_STATUS_REASON_MAX_LENGTH = Channel._meta.get_field("status_reason").max_length or 500
# Fields of a channel that channel_update may change; the secret and the status have
# their own functions because they are audited differently.
_CHANNEL_UPDATABLE_FIELDS = frozenset({"name", "base_url", "priority", "weight", "provider_type"})


def _user_or_none(actor: Actor) -> AbstractBaseUser | None:
    return None if isinstance(actor, str) else actor


# --- Organisations and memberships ----------------------------------------------------------


def _unique_slug(name: str) -> str:
    base = slugify(name)[:_SLUG_MAX_LENGTH].strip("-") or "org"
    candidate, n = base, 1
    while Organization.objects.filter(slug=candidate).exists():
        n += 1
        suffix = f"-{n}"
        candidate = base[: _SLUG_MAX_LENGTH - len(suffix)].rstrip("-") + suffix
    return candidate


@transaction.atomic
def organization_create(
    *,
    name: str,
    kind: str,
    parent: Organization | None = None,
    slug: str | None = None,
    actor: Actor,
) -> Organization:
    """Create an organisation in the tree (platform → resellers → tenants).

    Without a slug one is derived from the name and made unique. Raises ValidationError
    when the kind may not sit under ``parent`` or a second platform is asked for.
    """
    if kind not in Organization.Kind.values:
        # Checked here because Organization.clean() raises KeyError on an unknown kind.
        raise ValidationError({"kind": f"Unknown kind {kind!r}."})
    if kind == Organization.Kind.PLATFORM and Organization.objects.filter(kind=kind).exists():
        # Everything hangs off one platform; a second root would split the tree.
        raise ValidationError({"kind": "There is already a platform organisation."})
    organization = Organization(
        name=name, kind=kind, parent=parent, slug=slug or _unique_slug(name)
    )
    organization.full_clean()
    organization.save()
    AuditEntry.record(
        actor=actor,
        action="organization.create",
        target=organization,
        organization=organization,
        data={
            "name": organization.name,
            "slug": organization.slug,
            "kind": organization.kind,
            "parent": parent.slug if parent else None,
        },
    )
    return organization


@transaction.atomic
def membership_add(
    *, organization: Organization, user: AbstractBaseUser, role: str, actor: Actor
) -> Membership:
    """Give ``user`` a role in ``organization``; ValidationError if they already have one."""
    membership = Membership(organization=organization, user=user, role=role)
    membership.full_clean()
    membership.save()
    AuditEntry.record(
        actor=actor,
        action="membership.add",
        target=membership,
        organization=organization,
        data={"user": user.get_username(), "role": role},
    )
    return membership


# --- API keys -------------------------------------------------------------------------------


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


@transaction.atomic
def api_key_create(
    *,
    tenant: Organization,
    name: str,
    actor: Actor,
    expires_at: datetime | None = None,
    allowed_models: Iterable[str] = (),
) -> tuple[ApiKey, str]:
    """Issue a relay key for a tenant and return it with its secret.

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
        created_by=_user_or_none(actor),
        expires_at=expires_at,
        allowed_models=_model_ids(allowed_models),
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


# --- Model catalog --------------------------------------------------------------------------


def _check_public_id(public_id: str) -> None:
    # Clients type these ids; one with a space in it could never be requested.
    if not public_id or public_id != "".join(public_id.split()):
        raise ValidationError({"public_id": "A model id cannot be blank or contain spaces."})


@transaction.atomic
def catalog_model_upsert(
    *,
    public_id: str,
    actor: Actor,
    owned_by: str = "tollgate",
    capabilities: Iterable[str] = (),
    context_window: int | None = None,
    max_output_tokens: int | None = None,
    description: str = "",
) -> CatalogModel:
    """Create the catalog entry ``public_id`` or bring it to the given values.

    Audited only when something changed, so re-running a seed leaves no noise.
    """
    _check_public_id(public_id)
    values: dict[str, Any] = {
        "owned_by": owned_by,
        "capabilities": list(capabilities),
        "context_window": context_window,
        "max_output_tokens": max_output_tokens,
        "description": description,
    }
    # Validate before get_or_create, which would otherwise insert unchecked values.
    CatalogModel(public_id=public_id, **values).full_clean(
        validate_unique=False, validate_constraints=False
    )
    model, created = CatalogModel.objects.select_for_update().get_or_create(
        public_id=public_id, defaults=values
    )
    if created:
        AuditEntry.record(
            actor=actor,
            action="catalog_model.create",
            target=model,
            data={"public_id": public_id, **values},
        )
        return model
    changed = {field: value for field, value in values.items() if getattr(model, field) != value}
    if changed:
        before = {field: getattr(model, field) for field in changed}
        for field, value in changed.items():
            setattr(model, field, value)
        model.save(update_fields=list(changed))
        AuditEntry.record(
            actor=actor,
            action="catalog_model.update",
            target=model,
            data={
                "public_id": public_id,
                "changed": {f: {"from": before[f], "to": v} for f, v in changed.items()},
            },
        )
    return model


# --- Channels -------------------------------------------------------------------------------


def _upstream_names(models: Mapping[str, str] | Iterable[str]) -> dict[str, str]:
    """Normalise ``models`` to {public id: upstream name}, blank meaning "the same name"."""
    if isinstance(models, str):
        raise TypeError("models must be a mapping or an iterable of model ids, not a string")
    pairs = models.items() if isinstance(models, Mapping) else ((m, m) for m in models)
    names: dict[str, str] = {}
    for raw_public, raw_upstream in pairs:
        public_id = raw_public.strip()
        upstream = (raw_upstream or public_id).strip()
        _check_public_id(public_id)
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
    base_url: str,
    secret: str,
    actor: Actor,
    models: Mapping[str, str] | Iterable[str],
    priority: int = 0,
    weight: int = 1,
    provider_type: str = Channel.ProviderType.OPENAI,
) -> Channel:
    """Connect an upstream and say which public models it serves.

    ``models`` maps public id → upstream name, or lists public ids the upstream knows
    by the same name. Catalog entries that do not exist yet are created.
    """
    channel = Channel(
        name=name,
        base_url=base_url,
        priority=priority,
        weight=weight,
        provider_type=provider_type,
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
    """Change a channel's name, base_url, priority, weight or provider_type.

    Unchanged values are ignored; nothing is written or audited when nothing changed.
    """
    unknown = set(changes) - _CHANNEL_UPDATABLE_FIELDS
    if unknown:
        raise TypeError(f"channel_update cannot change: {', '.join(sorted(unknown))}")
    before = {field: getattr(channel, field) for field in changes}
    changed = {field: value for field, value in changes.items() if before[field] != value}
    if not changed:
        return channel
    for field, value in changed.items():
        setattr(channel, field, value)
    try:
        channel.full_clean()
    except ValidationError:
        # Leave the caller's instance as it was, not half-edited.
        for field in changed:
            setattr(channel, field, before[field])
        raise
    channel.save(update_fields=[*changed, "updated_at"])
    AuditEntry.record(
        actor=actor,
        action="channel.update",
        target=channel,
        data={"changed": {f: {"from": before[f], "to": v} for f, v in changed.items()}},
    )
    return channel


@transaction.atomic
def channel_update_secret(*, channel: Channel, secret: str, actor: Actor) -> Channel:
    """Replace the upstream secret (stored encrypted); an empty secret removes it."""
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
def channel_set_status(
    *, channel: Channel, enabled: bool, reason: str = "", actor: Actor
) -> Channel:
    """Take a channel in or out of rotation; a repeat of the current state is a no-op.

    Health checks call this too, so repeats must not flood the audit log.
    """
    status = Channel.Status.ENABLED if enabled else Channel.Status.DISABLED
    # Error messages from health checks can be long; the column is not.
    reason = reason[:_STATUS_REASON_MAX_LENGTH]
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
    channel.last_check_error = error[:_STATUS_REASON_MAX_LENGTH]
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
