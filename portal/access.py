"""Who may see and do what: the one place dashboard views and API querysets get scoped.

A person's reach is resolved once per request into a :class:`Scope`: operators (staff)
see everything; everyone else sees the organisations they belong to, and an owner or
admin of a reseller also sees that reseller's tenants. Every lookup goes through here:
an organisation or object outside the person's reach is a 404 (its existence is not
confirmed), one they can see but lack the role for is a 403.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

from django.core.exceptions import PermissionDenied
from django.db.models import Model, Q, QuerySet
from django.http import Http404

from portal.models import Membership, Organization

M = TypeVar("M", bound=Model)


class Role(StrEnum):
    """A person's effective role in one organisation."""

    OPERATOR = "operator"  # platform staff, everywhere
    RESELLER = "reseller"  # owner/admin of the reseller a tenant sits under
    OWNER = Membership.Role.OWNER.value
    ADMIN = Membership.Role.ADMIN.value
    MEMBER = Membership.Role.MEMBER.value
    BILLING = Membership.Role.BILLING.value


class Need(StrEnum):
    """What a request wants to do in an organisation."""

    VIEW = "view"  # know the organisation and open its overview
    USAGE = "usage"  # usage and request log (a member: their own keys' only)
    KEYS = "keys"  # list, issue and revoke API keys (a member: their own only)
    MEMBERS = "members"  # who has a role here, with their e-mail addresses
    BILLING = "billing"  # balance and invoices
    MANAGE = "manage"  # members, everyone's keys, tenants of a reseller
    AUDIT = "audit"  # the organisation's audit log
    OWNER = "owner"  # grant the owner role
    OPERATE = "operate"  # platform-wide configuration: channels, the model catalog
    # Terms of sale of an organisation, set from above it: its price list, billing mode,
    # credit limit and top-ups. Never granted by a role inside the organisation itself.
    SELL = "sell"


_EVERYTHING_BUT_OPERATE = frozenset(Need) - {Need.OPERATE}
_INSIDE = _EVERYTHING_BUT_OPERATE - {Need.SELL}
_GRANTS: Mapping[Role, frozenset[Need]] = {
    Role.OPERATOR: frozenset(Need),
    Role.RESELLER: _EVERYTHING_BUT_OPERATE,
    Role.OWNER: _INSIDE,
    # Admins run the organisation day to day but cannot make owners. They see the audit
    # log too: it is the record of the key and member changes they make.
    Role.ADMIN: _INSIDE - {Need.OWNER},
    Role.MEMBER: frozenset({Need.VIEW, Need.USAGE, Need.KEYS, Need.MEMBERS}),
    # Billing people see money and nothing else: not even who else works here.
    Role.BILLING: frozenset({Need.VIEW, Need.BILLING}),
}
# Roles that, held in a reseller, reach down into the reseller's tenants.
_MANAGING_ROLES = (Membership.Role.OWNER, Membership.Role.ADMIN)
# Roles limited to their own keys and those keys' usage.
_OWN_ONLY_ROLES = frozenset({Role.MEMBER})
# Which roles a person holding a role may hand out to others.
_ASSIGNABLE: Mapping[Role, tuple[str, ...]] = {
    Role.OPERATOR: tuple(Membership.Role.values),
    Role.RESELLER: tuple(Membership.Role.values),
    Role.OWNER: tuple(Membership.Role.values),
    Role.ADMIN: tuple(r for r in Membership.Role.values if r != Membership.Role.OWNER),
}


def role_grants(role: Role, need: Need) -> bool:
    return need in _GRANTS[role]


def is_operator(user: Any) -> bool:
    """Platform staff: every organisation, plus channels and the model catalog."""
    return bool(user and user.is_authenticated and user.is_active and user.is_staff)


def _is_signed_in(user: Any) -> bool:
    return bool(user and user.is_authenticated and user.is_active)


@dataclass(frozen=True)
class Access:
    """A person's standing in one organisation, as resolved by :func:`get_access`."""

    user: Any
    organization: Organization
    role: Role

    def can(self, need: Need) -> bool:
        return role_grants(self.role, need)

    def require(self, need: Need) -> None:
        if not self.can(need):
            raise PermissionDenied(f"Your role in {self.organization.name} does not allow this.")

    @property
    def own_keys_only(self) -> bool:
        """Whether keys and usage are limited to the keys this person created."""
        return self.role in _OWN_ONLY_ROLES

    def assignable_roles(self) -> tuple[str, ...]:
        """Membership roles this person may give others here (none without MANAGE)."""
        return _ASSIGNABLE.get(self.role, ()) if self.can(Need.MANAGE) else ()


@dataclass(frozen=True)
class Scope:
    """Every organisation one person may see and their role in each, resolved once."""

    user: Any
    is_operator: bool
    roles: Mapping[int, Role]

    def role_for(self, organization_id: int) -> Role | None:
        return Role.OPERATOR if self.is_operator else self.roles.get(organization_id)

    def organization_ids(self, need: Need = Need.VIEW) -> set[int] | None:
        """Ids of the organisations where ``need`` is granted; None means every one."""
        if self.is_operator:
            return None
        return {org_id for org_id, role in self.roles.items() if role_grants(role, need)}

    def organizations(self, need: Need = Need.VIEW) -> QuerySet[Organization]:
        return self.filter(Organization.objects.all(), "pk", need=need)

    def filter(
        self,
        queryset: QuerySet[M],
        organization_field: str,
        *,
        need: Need = Need.VIEW,
        owner_field: str | None = None,
    ) -> QuerySet[M]:
        """Narrow ``queryset`` to rows of organisations where ``need`` is granted.

        ``organization_field`` names the path to the organisation (``"tenant"``,
        ``"organization"``, ``"pk"``). With ``owner_field`` (e.g. ``"created_by"``), rows
        of organisations where the person holds an own-only role are kept only when
        they own them.
        """
        if self.is_operator:
            return queryset
        allowed = self.organization_ids(need) or set()
        key = "pk__in" if organization_field == "pk" else f"{organization_field}_id__in"
        if owner_field is None:
            return queryset.filter(**{key: allowed})
        own_only = {i for i in allowed if self.roles[i] in _OWN_ONLY_ROLES}
        condition = Q(**{key: allowed - own_only})
        if own_only:
            condition |= Q(**{key: own_only, owner_field: self.user})
        return queryset.filter(condition)


def scope_for(user: Any) -> Scope:
    """Resolve ``user``'s reach: no query for operators, two for everyone else."""
    if not _is_signed_in(user):
        return Scope(user=user, is_operator=False, roles={})
    if is_operator(user):
        return Scope(user=user, is_operator=True, roles={})
    roles: dict[int, Role] = {}
    managed_resellers: list[int] = []
    memberships = Membership.objects.filter(user=user).values_list(
        "organization_id", "role", "organization__kind"
    )
    for organization_id, role, kind in memberships:
        roles[organization_id] = Role(role)
        if kind == Organization.Kind.RESELLER and role in _MANAGING_ROLES:
            managed_resellers.append(organization_id)
    if managed_resellers:
        tenants = Organization.objects.filter(parent_id__in=managed_resellers)
        for tenant_id in tenants.values_list("pk", flat=True):
            # A reseller's reach is at least a tenant owner's, whatever their own role there.
            roles[tenant_id] = Role.RESELLER
    return Scope(user=user, is_operator=False, roles=roles)


def request_scope(request: Any) -> Scope:
    """The requesting person's Scope, resolved once per request and kept on it."""
    scope = getattr(request, "_tollgate_scope", None)
    if scope is None or scope.user is not request.user:
        scope = scope_for(request.user)
        request._tollgate_scope = scope
    return scope


def visible_organizations(user: Any) -> QuerySet[Organization]:
    """Every organisation ``user`` may see, as one lazily evaluated query."""
    if not _is_signed_in(user):
        return Organization.objects.none()
    if is_operator(user):
        return Organization.objects.all()
    direct = Membership.objects.filter(user=user).values("organization_id")
    managed = Membership.objects.filter(
        user=user, role__in=_MANAGING_ROLES, organization__kind=Organization.Kind.RESELLER
    ).values("organization_id")
    return Organization.objects.filter(Q(pk__in=direct) | Q(parent_id__in=managed))


def role_in(user: Any, organization: Organization) -> Role | None:
    """``user``'s effective role in ``organization``, or None when they cannot see it."""
    if not _is_signed_in(user):
        return None
    if is_operator(user):
        return Role.OPERATOR
    rows = Membership.objects.filter(
        Q(organization_id=organization.pk)
        | Q(
            organization_id=organization.parent_id,
            organization__kind=Organization.Kind.RESELLER,
            role__in=_MANAGING_ROLES,
        ),
        user=user,
    ).values_list("organization_id", "role")
    direct: Role | None = None
    for organization_id, role in rows:
        if organization_id != organization.pk:
            return Role.RESELLER
        direct = Role(role)
    return direct


def access_to(user: Any, organization: Organization, *, need: Need = Need.VIEW) -> Access:
    """``user``'s Access to an organisation already in hand: Http404 if they cannot see
    it, PermissionDenied if their role does not grant ``need``."""
    role = role_in(user, organization)
    if role is None:
        raise Http404("No such organisation.")
    access = Access(user=user, organization=organization, role=role)
    access.require(need)
    return access


def get_access(user: Any, slug: str, *, need: Need = Need.VIEW) -> Access:
    """Look an organisation up by slug for ``user`` (Http404 / PermissionDenied)."""
    organization = Organization.objects.select_related("parent").filter(slug=slug).first()
    if organization is None:
        raise Http404("No such organisation.")
    return access_to(user, organization, need=need)


def get_organization_for_user(user: Any, slug: str, *, need: Need = Need.VIEW) -> Organization:
    """The organisation ``slug`` if ``user`` may do ``need`` there (Http404 / 403)."""
    return get_access(user, slug, need=need).organization


def get_object_for_user(
    user: Any,
    queryset: QuerySet[M],
    *,
    organization_field: str,
    need: Need,
    owner_field: str | None = None,
    **lookup: Any,
) -> tuple[M, Access]:
    """One object of an organisation, with the person's Access to that organisation.

    Http404 when the object does not exist, belongs to an organisation the person cannot
    see, or (for own-only roles, with ``owner_field``) belongs to someone else;
    PermissionDenied when the person sees the organisation but lacks ``need``.
    """
    obj = queryset.select_related(f"{organization_field}__parent").filter(**lookup).first()
    if obj is None:
        raise Http404("Not found.")
    organization: Organization = getattr(obj, organization_field)
    access = access_to(user, organization, need=Need.VIEW)
    if owner_field is not None and access.own_keys_only:
        owner_id = getattr(obj, f"{owner_field}_id")
        if owner_id != user.pk:
            raise Http404("Not found.")
    access.require(need)
    return obj, access


def membership_for_manager(access: Access, membership_id: int) -> Membership:
    """A membership of ``access.organization`` that this manager may change or remove:
    Http404 if it belongs elsewhere; PermissionDenied without MANAGE, or when it is an
    owner's and the manager cannot make owners (so admins never demote owners)."""
    access.require(Need.MANAGE)
    membership = (
        Membership.objects.select_related("user", "organization")
        .filter(pk=membership_id, organization=access.organization)
        .first()
    )
    if membership is None:
        raise Http404("No such member.")
    if membership.role == Membership.Role.OWNER:
        access.require(Need.OWNER)
    return membership


def require_operator(user: Any) -> None:
    """PermissionDenied unless ``user`` is platform staff."""
    if not is_operator(user):
        raise PermissionDenied("Only operators may do this.")


def roles_by_organization(scope: Scope, organizations: Iterable[Organization]) -> dict[int, Role]:
    """The role ``scope`` holds in each of ``organizations`` (for list pages)."""
    return {org.pk: role for org in organizations if (role := scope.role_for(org.pk)) is not None}
