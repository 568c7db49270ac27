"""portal.access: every persona against every organisation, need and lookup helper."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import AnonymousUser
from django.core.exceptions import PermissionDenied
from django.http import Http404

from portal.access import (
    Access,
    Need,
    Role,
    access_to,
    get_access,
    get_object_for_user,
    get_organization_for_user,
    is_operator,
    require_operator,
    role_in,
    scope_for,
    visible_organizations,
)
from portal.models import ApiKey, Membership, Organization
from tests.conftest import make_member, make_user

pytestmark = pytest.mark.django_db

ORGS = ("platform", "reseller", "tenant", "other-reseller", "other-tenant")

# persona → {organisation slug: effective role}; an organisation left out is invisible.
EXPECTED_ROLES: dict[str, dict[str, Role]] = {
    "operator_user": {slug: Role.OPERATOR for slug in ORGS},
    "reseller_admin": {"reseller": Role.ADMIN, "tenant": Role.RESELLER},
    "tenant_owner": {"tenant": Role.OWNER},
    "tenant_member": {"tenant": Role.MEMBER},
    "tenant_billing": {"tenant": Role.BILLING},
    "tenant_admin": {"tenant": Role.ADMIN},
    "outsider": {"other-tenant": Role.OWNER},
}

# role → the needs it is granted (everything else must be refused).
EXPECTED_GRANTS: dict[Role, set[Need]] = {
    Role.OPERATOR: set(Need),
    Role.RESELLER: set(Need) - {Need.OPERATE},
    Role.OWNER: set(Need) - {Need.OPERATE, Need.SELL},
    Role.ADMIN: set(Need) - {Need.OPERATE, Need.OWNER, Need.SELL},
    Role.MEMBER: {Need.VIEW, Need.USAGE, Need.KEYS, Need.MEMBERS},
    # Billing people see money only, not who else works here (issue 11, finding 8e).
    Role.BILLING: {Need.VIEW, Need.BILLING},
}


@pytest.fixture
def world(
    request: pytest.FixtureRequest, tenant_org: Organization, other_tenant_org: Organization
) -> dict[str, Organization]:
    return {org.slug: org for org in Organization.objects.all()}


def persona(request: pytest.FixtureRequest, name: str) -> Any:
    return request.getfixturevalue(name)


@pytest.mark.parametrize("name", sorted(EXPECTED_ROLES))
def test_every_persona_sees_exactly_its_organisations(
    request: pytest.FixtureRequest, world: dict[str, Organization], name: str
) -> None:
    user = persona(request, name)
    expected = EXPECTED_ROLES[name]

    assert set(visible_organizations(user).values_list("slug", flat=True)) == set(expected)
    scope = scope_for(user)
    assert set(scope.organizations().values_list("slug", flat=True)) == set(expected)
    for slug, org in world.items():
        assert role_in(user, org) == expected.get(slug), slug
        assert scope.role_for(org.pk) == expected.get(slug), slug


@pytest.mark.parametrize("name", sorted(EXPECTED_ROLES))
@pytest.mark.parametrize("need", list(Need))
def test_get_access_is_404_outside_and_403_without_the_role(
    request: pytest.FixtureRequest, world: dict[str, Organization], name: str, need: Need
) -> None:
    user = persona(request, name)
    for slug in ORGS:
        role = EXPECTED_ROLES[name].get(slug)
        if role is None:
            with pytest.raises(Http404):
                get_access(user, slug, need=need)
        elif need in EXPECTED_GRANTS[role]:
            access = get_access(user, slug, need=need)
            assert (access.organization.slug, access.role) == (slug, role)
            assert get_organization_for_user(user, slug, need=need).slug == slug
        else:
            with pytest.raises(PermissionDenied):
                get_access(user, slug, need=need)


def test_an_unknown_slug_is_the_same_404_as_a_hidden_one(tenant_owner: Any) -> None:
    with pytest.raises(Http404) as unknown:
        get_access(tenant_owner, "no-such-org")
    with pytest.raises(Http404) as hidden:
        get_access(tenant_owner, "other-tenant")
    assert str(unknown.value) == str(hidden.value)


def test_anonymous_and_inactive_users_see_nothing(world: dict[str, Organization]) -> None:
    inactive = make_member("gone", world["tenant"], Membership.Role.OWNER)
    inactive.is_active = False
    inactive.save()
    inactive_staff = make_user("former-operator", is_staff=True, is_active=False)
    for user in (AnonymousUser(), inactive, inactive_staff):
        assert not visible_organizations(user).exists()
        assert scope_for(user).organizations().count() == 0
        assert role_in(user, world["tenant"]) is None
        with pytest.raises(Http404):
            get_access(user, "tenant")
    assert not is_operator(inactive_staff)


def test_reseller_members_without_a_managing_role_do_not_reach_tenants(
    world: dict[str, Organization],
) -> None:
    for role in (Membership.Role.MEMBER, Membership.Role.BILLING):
        user = make_member(f"reseller-{role}", world["reseller"], role)
        assert set(visible_organizations(user).values_list("slug", flat=True)) == {"reseller"}
        with pytest.raises(Http404):
            get_access(user, "tenant")


def test_platform_membership_without_staff_does_not_reach_down(
    world: dict[str, Organization],
) -> None:
    user = make_member("platform-admin", world["platform"], Membership.Role.ADMIN)
    assert set(visible_organizations(user).values_list("slug", flat=True)) == {"platform"}
    with pytest.raises(Http404):
        get_access(user, "tenant")
    with pytest.raises(PermissionDenied):
        require_operator(user)


def test_a_reseller_admin_who_is_also_a_tenant_member_gets_the_stronger_role(
    world: dict[str, Organization], reseller_admin: Any
) -> None:
    Membership.objects.create(
        user=reseller_admin, organization=world["tenant"], role=Membership.Role.MEMBER
    )
    assert role_in(reseller_admin, world["tenant"]) == Role.RESELLER
    assert scope_for(reseller_admin).role_for(world["tenant"].pk) == Role.RESELLER


def test_only_owners_and_above_may_hand_out_the_owner_role(world: dict[str, Organization]) -> None:
    tenant = world["tenant"]
    assignable = {
        role: Access(user=None, organization=tenant, role=role).assignable_roles() for role in Role
    }
    everything = set(Membership.Role.values)
    assert set(assignable[Role.OPERATOR]) == everything
    assert set(assignable[Role.RESELLER]) == everything
    assert set(assignable[Role.OWNER]) == everything
    assert set(assignable[Role.ADMIN]) == everything - {"owner"}
    assert assignable[Role.MEMBER] == ()
    assert assignable[Role.BILLING] == ()


def test_scope_queries_are_bounded(
    django_assert_num_queries: Any, reseller_admin: Any, operator_user: Any, world: Any
) -> None:
    with django_assert_num_queries(0):
        scope_for(operator_user)
    with django_assert_num_queries(2):  # memberships, then the managed resellers' tenants
        scope_for(reseller_admin)


# --- Object lookups -------------------------------------------------------------------------


def _key(tenant: Organization, creator: Any, name: str) -> ApiKey:
    key = ApiKey(tenant=tenant, name=name, created_by=creator)
    key.set_secret(f"sk-tg-test-{name}")
    key.save()
    return key


@pytest.fixture
def keys(
    tenant_org: Organization,
    other_tenant_org: Organization,
    tenant_owner: Any,
    tenant_member: Any,
    outsider: Any,
) -> dict[str, ApiKey]:
    return {
        "owners": _key(tenant_org, tenant_owner, "owners"),
        "members": _key(tenant_org, tenant_member, "members"),
        "outsiders": _key(other_tenant_org, outsider, "outsiders"),
    }


def _lookup(user: Any, key: ApiKey, need: Need = Need.KEYS) -> ApiKey:
    obj, _ = get_object_for_user(
        user,
        ApiKey.objects.all(),
        organization_field="tenant",
        owner_field="created_by",
        need=need,
        pk=key.pk,
    )
    return obj


def test_object_lookup_scopes_keys_by_persona(
    keys: dict[str, ApiKey],
    operator_user: Any,
    reseller_admin: Any,
    tenant_owner: Any,
    tenant_member: Any,
    tenant_billing: Any,
    outsider: Any,
) -> None:
    for user in (operator_user, reseller_admin, tenant_owner):
        assert _lookup(user, keys["owners"]) == keys["owners"]
        assert _lookup(user, keys["members"]) == keys["members"]
    for user in (reseller_admin, tenant_owner, tenant_member, tenant_billing):
        with pytest.raises(Http404):
            _lookup(user, keys["outsiders"])
    # A member sees their own key, and another member's key not at all.
    assert _lookup(tenant_member, keys["members"]) == keys["members"]
    with pytest.raises(Http404):
        _lookup(tenant_member, keys["owners"])
    # Billing sees the tenant but may not touch keys.
    with pytest.raises(PermissionDenied):
        _lookup(tenant_billing, keys["owners"])
    for key in ("owners", "members"):
        with pytest.raises(Http404):
            _lookup(outsider, keys[key])
    # Insufficient need on an object the person can see is a 403.
    with pytest.raises(PermissionDenied):
        _lookup(tenant_member, keys["members"], need=Need.MANAGE)


def test_object_lookup_of_a_missing_object_is_404(tenant_owner: Any) -> None:
    with pytest.raises(Http404):
        get_object_for_user(
            tenant_owner, ApiKey.objects.all(), organization_field="tenant", need=Need.KEYS, pk=999
        )


def test_scope_filter_keeps_members_to_their_own_rows(
    keys: dict[str, ApiKey], tenant_member: Any, tenant_owner: Any, reseller_admin: Any
) -> None:
    def visible(user: Any) -> set[str]:
        rows = scope_for(user).filter(
            ApiKey.objects.all(), "tenant", need=Need.KEYS, owner_field="created_by"
        )
        return set(rows.values_list("name", flat=True))

    assert visible(tenant_member) == {"members"}
    assert visible(tenant_owner) == {"owners", "members"}
    assert visible(reseller_admin) == {"owners", "members"}


def test_access_to_an_organisation_in_hand(world: dict[str, Organization], outsider: Any) -> None:
    with pytest.raises(Http404):
        access_to(outsider, world["tenant"])
    assert access_to(outsider, world["other-tenant"], need=Need.OWNER).role == Role.OWNER
