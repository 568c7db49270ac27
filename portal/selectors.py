"""Reads shared by the dashboard and the management API, each already scoped.

Functions take an :class:`portal.access.Access` (one organisation) or a
:class:`portal.access.Scope` (everything a person sees) and never widen it.
"""

from __future__ import annotations

from typing import Any

from django.db.models import (
    Count,
    Exists,
    IntegerField,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
)
from django.db.models.functions import Coalesce
from django.utils import timezone

from portal.access import Access, Need, Scope
from portal.models import (
    ApiKey,
    AuditEntry,
    CatalogModel,
    Channel,
    ChannelModel,
    Invitation,
    Membership,
    Organization,
    PersonalAccessToken,
)

# --- Organisations and people ---------------------------------------------------------------


def organizations_visible(scope: Scope, *, need: Need = Need.VIEW) -> QuerySet[Organization]:
    return scope.organizations(need).select_related("parent").order_by("kind", "name")


def members_of(organization: Organization) -> QuerySet[Membership]:
    return (
        Membership.objects.filter(organization=organization)
        .select_related("user", "organization")
        .order_by("user__username")
    )


def invitations_pending(organization: Organization) -> QuerySet[Invitation]:
    """Invitations to ``organization`` still waiting: not accepted, revoked or expired."""
    return (
        Invitation.objects.filter(
            organization=organization,
            accepted_at__isnull=True,
            revoked_at__isnull=True,
            expires_at__gt=timezone.now(),
        )
        .select_related("invited_by", "organization")
        .order_by("-created_at", "-id")
    )


def invitations_scoped(scope: Scope) -> QuerySet[Invitation]:
    """Invitations of every organisation where ``scope`` may manage members."""
    return scope.filter(
        Invitation.objects.select_related("invited_by", "organization"),
        "organization",
        need=Need.MANAGE,
    )


def direct_memberships(user: Any, *, limit: int) -> list[Membership]:
    """Up to ``limit`` of the person's own memberships outside the platform organisation."""
    return list(
        Membership.objects.filter(user=user)
        .exclude(organization__kind=Organization.Kind.PLATFORM)
        .select_related("organization")[:limit]
    )


def memberships_scoped(scope: Scope) -> QuerySet[Membership]:
    return scope.filter(Membership.objects.all(), "organization").select_related(
        "user", "organization"
    )


# --- API keys and tokens --------------------------------------------------------------------


def api_keys_for(access: Access) -> QuerySet[ApiKey]:
    """The keys of one organisation this person may see (a member: their own)."""
    keys = ApiKey.objects.filter(tenant=access.organization)
    if access.own_keys_only:
        keys = keys.filter(created_by=access.user)
    return keys.select_related("created_by").order_by("-created_at", "-id")


def api_keys_scoped(scope: Scope) -> QuerySet[ApiKey]:
    """Every key this person may see, across organisations."""
    return (
        scope.filter(ApiKey.objects.all(), "tenant", need=Need.KEYS, owner_field="created_by")
        .select_related("tenant", "created_by")
        .order_by("-created_at", "-id")
    )


def access_tokens_of(user: Any) -> QuerySet[PersonalAccessToken]:
    return PersonalAccessToken.objects.filter(user=user).order_by("-created_at", "-id")


# --- Catalog and channels -------------------------------------------------------------------


def _served_by_enabled_channel() -> Exists:
    return Exists(
        ChannelModel.objects.filter(model=OuterRef("pk"), channel__status=Channel.Status.ENABLED)
    )


def _priced_for_anyone() -> Exists:
    """A price in any list, in force now. Prices live in billing, a layer above: reached
    through the catalog's reverse relation rather than an import."""
    prices = CatalogModel._meta.get_field("prices").related_model
    return Exists(
        prices._default_manager.filter(model=OuterRef("pk"), effective_from__lte=timezone.now())
    )


def catalog_with_availability(*, include_inactive: bool = False) -> QuerySet[CatalogModel]:
    """Catalog models annotated ``served`` (by an enabled channel) and ``priced`` (in some
    price list): available means active, served and priced."""
    models = CatalogModel.objects.all()
    if not include_inactive:
        models = models.filter(is_active=True)
    enabled_links = (
        ChannelModel.objects.filter(model=OuterRef("pk"), channel__status=Channel.Status.ENABLED)
        .order_by()
        .values("model")
        .annotate(n=Count("pk"))
        .values("n")
    )
    return models.annotate(
        served=_served_by_enabled_channel(),
        priced=_priced_for_anyone(),
        enabled_channel_count=Coalesce(Subquery(enabled_links, output_field=IntegerField()), 0),
    ).order_by("public_id")


def availability_reason(model: CatalogModel) -> str:
    """What the catalog pages say about a model annotated by catalog_with_availability."""
    if not model.is_active:
        return "unavailable: withdrawn from the catalog"
    if not getattr(model, "served", False):
        return "unavailable: no active channel"
    if not getattr(model, "priced", False):
        return "unpriced"
    return "available"


def channels_overview() -> QuerySet[Channel]:
    return Channel.objects.prefetch_related("served__model").order_by("-priority", "name")


# --- Audit ----------------------------------------------------------------------------------


def audit_entries_scoped(scope: Scope) -> QuerySet[AuditEntry]:
    """Operators see every entry; others those of organisations whose log they may read."""
    return scope.filter(AuditEntry.objects.all(), "organization", need=Need.AUDIT).select_related(
        "actor", "organization"
    )


def audit_entries_for(access: Access) -> QuerySet[AuditEntry]:
    """One organisation's entries; a reseller's also include its tenants'."""
    organization = access.organization
    entries = AuditEntry.objects.filter(
        Q(organization=organization) | Q(organization__parent=organization)
        if organization.kind == Organization.Kind.RESELLER
        else Q(organization=organization)
    )
    return entries.select_related("actor", "organization").order_by("-created_at", "-id")
