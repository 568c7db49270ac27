"""Organisations and memberships: the tree of platform, resellers and tenants."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils.text import slugify

from portal.models import (
    AuditEntry,
    Membership,
    Organization,
)
from portal.services.common import Actor, apply_changes
from portal.services.keys import checked_limits

if TYPE_CHECKING:
    from django.contrib.auth.models import User

_SLUG_MAX_LENGTH = Organization._meta.get_field("slug").max_length or 80


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
    *, organization: Organization, user: User, role: str, actor: Actor
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


def _owner_ids_locked(organization: Organization) -> list[int]:
    """The organisation's owner memberships, locked until the transaction ends, so two
    concurrent demotions cannot both see another owner left."""
    return list(
        Membership.objects.select_for_update()
        .filter(organization=organization, role=Membership.Role.OWNER)
        .order_by("pk")
        .values_list("pk", flat=True)
    )


def _check_not_last_owner(membership: Membership) -> None:
    if membership.role != Membership.Role.OWNER:
        return
    owners = _owner_ids_locked(membership.organization)
    if owners == [membership.pk]:
        raise ValidationError(
            "This is the last owner: make someone else owner first.", code="last_owner"
        )


@transaction.atomic
def membership_change_role(*, membership: Membership, role: str, actor: Actor) -> Membership:
    """Give a member another role; the last owner of an organisation stays owner."""
    if role not in Membership.Role.values:
        raise ValidationError({"role": f"Unknown role {role!r}."})
    before = membership.role
    if before == role:
        return membership
    _check_not_last_owner(membership)
    membership.role = role
    membership.save(update_fields=["role"])
    AuditEntry.record(
        actor=actor,
        action="membership.change_role",
        target=membership,
        organization=membership.organization,
        data={"user": membership.user.get_username(), "before": before, "after": role},
    )
    return membership


@transaction.atomic
def membership_remove(*, membership: Membership, actor: Actor) -> None:
    """Take a person's role away; their keys stay (an owner or admin can revoke them)."""
    _check_not_last_owner(membership)
    data = {"user": membership.user.get_username(), "role": membership.role}
    AuditEntry.record(
        actor=actor,
        action="membership.remove",
        target=membership,
        organization=membership.organization,
        data=data,
    )
    membership.delete()


@transaction.atomic
def tenant_limits_set(
    *, tenant: Organization, limits: Mapping[str, int | None], actor: Actor
) -> Organization:
    """Set the limits a tenant's seller puts on it; names not given stay as they are.

    ``limits`` names ``KEY_LIMITS`` (requests and tokens per minute, concurrent requests,
    tokens per UTC day); None is no limit of that kind. They sit beneath the operator's
    caps (the tenant's own limit fields, set in the admin): the relay enforces the lower
    of each pair, so a seller cannot lift a cap and the operator cannot lift a limit.
    """
    if not tenant.is_tenant:
        raise ValidationError({"tenant": "Only a tenant has limits."})
    wanted = checked_limits(limits)
    current = Organization.objects.select_for_update().get(pk=tenant.pk)
    changed = apply_changes(current, {f"seller_{name}": v for name, v in wanted.items()})
    if not changed:
        return tenant
    # Saved through the model: the post_save signal tells every relay process.
    current.save(update_fields=list(changed))
    AuditEntry.record(
        actor=actor,
        action="organization.limits",
        target=current,
        organization=current,
        data={"changed": changed},
    )
    for field, change in changed.items():
        setattr(tenant, field, change["to"])
    return tenant


@transaction.atomic
def tenant_set_active(*, tenant: Organization, active: bool, actor: Actor) -> Organization:
    """Deactivate a tenant as its seller (its keys stop working at once; its people can
    still sign in, see usage and invoices, and pay), or reactivate one its seller
    deactivated. A tenant the operator deactivated in the admin stays so: only the operator
    lifts that. Setting what already holds changes and logs nothing."""
    if not tenant.is_tenant:
        raise ValidationError({"tenant": "Only a tenant is deactivated here."})
    current = Organization.objects.select_for_update().get(pk=tenant.pk)
    tenant.is_active, tenant.deactivated_by_seller = (
        current.is_active,
        current.deactivated_by_seller,
    )
    if current.is_active == active:
        return tenant
    if active and not current.deactivated_by_seller:
        raise ValidationError(
            {
                "tenant": "The platform's operator deactivated this tenant; only they can "
                "reactivate it (in the admin)."
            }
        )
    tenant.is_active, tenant.deactivated_by_seller = active, not active
    # Saved through the model: the post_save signal tells every relay process.
    tenant.save(update_fields=["is_active", "deactivated_by_seller"])
    AuditEntry.record(
        actor=actor,
        action="organization.reactivate" if active else "organization.deactivate",
        target=tenant,
        organization=tenant,
        data={"name": tenant.name},
    )
    return tenant
