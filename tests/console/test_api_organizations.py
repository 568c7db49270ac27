"""/api/organizations/ and their members: scoping, creating tenants, no escalation."""

from __future__ import annotations

from typing import Any

import pytest

from portal.models import AuditEntry, Invitation, Membership, Organization
from tests.conftest import make_member, make_user
from tests.console.conftest import api_client_for as client_for

pytestmark = pytest.mark.django_db


def slugs(response: Any) -> set[str]:
    assert response.status_code == 200, response.content
    return {row["slug"] for row in response.json()["results"]}


@pytest.fixture
def tree(tenant_org: Organization, other_tenant_org: Organization) -> None:
    return None


@pytest.mark.parametrize(
    ("persona", "expected"),
    [
        ("operator_user", {"platform", "reseller", "tenant", "other-reseller", "other-tenant"}),
        ("reseller_admin", {"reseller", "tenant"}),
        ("tenant_owner", {"tenant"}),
        ("tenant_member", {"tenant"}),
        ("outsider", {"other-tenant"}),
    ],
)
def test_list_shows_exactly_the_visible_organisations(
    request: pytest.FixtureRequest, tree: None, persona: str, expected: set[str]
) -> None:
    client = client_for(request.getfixturevalue(persona))
    assert slugs(client.get("/api/organizations/")) == expected


def test_list_reports_the_callers_role_and_filters(reseller_admin: Any, tree: None) -> None:
    rows = client_for(reseller_admin).get("/api/organizations/").json()["results"]
    assert {r["slug"]: r["my_role"] for r in rows} == {"reseller": "admin", "tenant": "reseller"}
    filtered = client_for(reseller_admin).get("/api/organizations/?kind=tenant&parent=reseller")
    assert slugs(filtered) == {"tenant"}


def test_retrieve_is_404_for_outsiders(outsider: Any, tenant_owner: Any, tree: None) -> None:
    assert client_for(outsider).get("/api/organizations/tenant/").status_code == 404
    assert client_for(outsider).get("/api/organizations/nope/").status_code == 404
    response = client_for(tenant_owner).get("/api/organizations/tenant/")
    assert response.json()["my_role"] == "owner"
    assert response.json()["parent"] == "reseller"


def test_list_query_count_does_not_grow_with_rows(
    reseller_admin: Any, reseller_org: Organization, django_assert_max_num_queries: Any
) -> None:
    client = client_for(reseller_admin)
    Organization.objects.create(name="T0", slug="t0", kind="tenant", parent=reseller_org)
    with django_assert_max_num_queries(8) as one:
        client.get("/api/organizations/")
    Organization.objects.bulk_create(
        Organization(name=f"T{n}", slug=f"t{n}", kind="tenant", parent=reseller_org)
        for n in range(1, 40)
    )
    with django_assert_max_num_queries(len(one.captured_queries)):
        response = client.get("/api/organizations/")
    assert response.json()["count"] == 41


def test_reseller_admin_creates_a_tenant_under_their_reseller(
    reseller_admin: Any, reseller_org: Organization
) -> None:
    response = client_for(reseller_admin).post(
        "/api/organizations/", {"name": "Acme", "parent": "reseller"}, format="json"
    )
    assert response.status_code == 201, response.content
    assert response.json()["slug"] == "acme"
    acme = Organization.objects.get(slug="acme")
    assert (acme.kind, acme.parent) == ("tenant", reseller_org)
    entry = AuditEntry.objects.get(action="organization.create")
    assert entry.actor == reseller_admin


@pytest.mark.parametrize(
    ("persona", "body", "status"),
    [
        ("reseller_admin", {"name": "X", "parent": "platform"}, 404),  # cannot see platform
        ("reseller_admin", {"name": "X", "parent": "reseller", "kind": "reseller"}, 400),
        ("outsider", {"name": "X", "parent": "reseller"}, 404),
        ("tenant_member", {"name": "X", "parent": "tenant"}, 403),
        ("tenant_owner", {"name": "X", "parent": "tenant"}, 400),  # tenants have no children
    ],
)
def test_creating_organisations_elsewhere_is_refused(
    request: pytest.FixtureRequest,
    tree: None,
    persona: str,
    body: dict[str, str],
    status: int,
) -> None:
    before = Organization.objects.count()
    response = client_for(request.getfixturevalue(persona)).post(
        "/api/organizations/", body, format="json"
    )
    assert response.status_code == status, response.content
    assert Organization.objects.count() == before


def test_platform_admins_who_are_not_staff_cannot_create_resellers(
    platform_org: Organization,
) -> None:
    user = make_member("platform-admin", platform_org, Membership.Role.ADMIN)
    response = client_for(user).post(
        "/api/organizations/",
        {"name": "R", "parent": "platform", "kind": "reseller"},
        format="json",
    )
    assert response.status_code == 403


def test_operator_creates_a_reseller(operator_user: Any, platform_org: Organization) -> None:
    response = client_for(operator_user).post(
        "/api/organizations/",
        {"name": "Big Reseller", "parent": "platform", "kind": "reseller", "slug": "big"},
        format="json",
    )
    assert response.status_code == 201
    assert Organization.objects.get(slug="big").kind == "reseller"


# --- Members --------------------------------------------------------------------------------


def test_members_are_listed_to_insiders_only(
    tenant_owner: Any, tenant_member: Any, outsider: Any, reseller_admin: Any
) -> None:
    for user in (tenant_owner, tenant_member, reseller_admin):
        response = client_for(user).get("/api/organizations/tenant/members/")
        assert response.status_code == 200
        assert {m["username"] for m in response.json()["results"]} == {
            "tenant-owner",
            "tenant-member",
        }
    assert client_for(outsider).get("/api/organizations/tenant/members/").status_code == 404


def test_owner_adds_a_member_by_inviting_them(tenant_owner: Any, tenant_org: Organization) -> None:
    """POST .../members/ invites, as POST .../invitations/ does: the person joins by
    accepting, and the answer never says whether the address has a login."""
    make_user("newcomer")
    response = client_for(tenant_owner).post(
        "/api/organizations/tenant/members/",
        {"email": "NEWCOMER@example.test", "role": "admin"},
        format="json",
    )
    assert response.status_code == 201, response.content
    assert response.json()["status"] == "pending" and response.json()["role"] == "admin"
    assert not Membership.objects.filter(user__username="newcomer").exists()
    assert AuditEntry.objects.filter(action="invitation.create", organization=tenant_org).exists()


def test_a_member_cannot_escalate_to_owner(tenant_member: Any, tenant_org: Organization) -> None:
    client = client_for(tenant_member)
    for role in ("owner", "admin", "member"):
        response = client.post(
            "/api/organizations/tenant/members/",
            {"user": "tenant-member", "role": role},
            format="json",
        )
        assert response.status_code == 403
    # There is no endpoint to edit a membership at all.
    assert client.patch("/api/organizations/tenant/", {"role": "owner"}).status_code == 405
    assert Membership.objects.get(user=tenant_member).role == "member"
    assert not AuditEntry.objects.exists()


def test_an_admin_cannot_make_owners(tenant_org: Organization) -> None:
    admin = make_member("tenant-admin", tenant_org, Membership.Role.ADMIN)
    make_user("friend")
    friend = {"email": "friend@example.test"}
    response = client_for(admin).post(
        "/api/organizations/tenant/members/", {**friend, "role": "owner"}, format="json"
    )
    assert response.status_code == 403
    ok = client_for(admin).post(
        "/api/organizations/tenant/members/", {**friend, "role": "member"}, format="json"
    )
    assert ok.status_code == 201


def test_adding_a_member_needs_an_address_not_a_user_name(tenant_owner: Any) -> None:
    """A user name would have to be looked up, and the answer would tell who exists."""
    client = client_for(tenant_owner)
    by_name = client.post("/api/organizations/tenant/members/", {"user": "tenant-owner"})
    assert by_name.status_code == 400 and "email" in by_name.json()
    assert not Invitation.objects.exists()


def test_outsider_cannot_add_themselves(outsider: Any, tenant_org: Organization) -> None:
    response = client_for(outsider).post(
        "/api/organizations/tenant/members/", {"user": "outsider", "role": "owner"}
    )
    assert response.status_code == 404
    assert not Membership.objects.filter(user=outsider, organization=tenant_org).exists()


def test_members_roles_change_and_members_leave_through_the_api(
    tenant_owner: Any, tenant_member: Any, tenant_org: Organization
) -> None:
    admin_user = make_member("api-admin", tenant_org, Membership.Role.ADMIN)
    member = Membership.objects.get(user=tenant_member)
    owner_row = Membership.objects.get(user=tenant_owner)
    url = f"/api/organizations/tenant/members/{member.pk}/"

    # A member cannot escalate, an admin cannot make or touch owners.
    assert client_for(tenant_member).patch(url, {"role": "owner"}, format="json").status_code == 403
    admin = client_for(admin_user)
    assert admin.patch(url, {"role": "owner"}, format="json").status_code == 403
    owner_url = f"/api/organizations/tenant/members/{owner_row.pk}/"
    assert admin.patch(owner_url, {"role": "member"}, format="json").status_code == 403
    assert admin.delete(owner_url).status_code == 403

    changed = admin.patch(url, {"role": "billing"}, format="json")
    assert changed.status_code == 200 and changed.json()["role"] == "billing"
    # The last owner stays owner.
    last = client_for(tenant_owner).patch(owner_url, {"role": "admin"}, format="json")
    assert last.status_code == 400 and "last owner" in str(last.json())
    assert client_for(tenant_owner).delete(url).status_code == 204
    assert not Membership.objects.filter(pk=member.pk).exists()
    assert Membership.objects.get(pk=owner_row.pk).role == "owner"
    actions = list(
        AuditEntry.objects.filter(action__startswith="membership.").values_list("action", flat=True)
    )
    assert sorted(actions) == ["membership.change_role", "membership.remove"]
