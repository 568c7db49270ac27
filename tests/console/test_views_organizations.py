"""Organisation pages: a reseller's tenants, members and roles, billing, the audit log."""

from __future__ import annotations

from typing import Any

import pytest
from django.urls import reverse

from portal import services
from portal.models import AuditEntry, Invitation, Membership, Organization
from tests.conftest import make_member, make_user
from tests.console.conftest import client_for

pytestmark = pytest.mark.django_db


def test_reseller_creates_a_tenant_then_adds_its_owner(
    reseller_admin: Any, reseller_org: Organization
) -> None:
    client = client_for(reseller_admin)
    assert "No tenants yet." in client.get(reverse("tenants", args=["reseller"])).content.decode()

    response = client.post(reverse("tenants", args=["reseller"]), {"name": "Acme Ltd"})

    assert response.status_code == 302
    assert response["Location"] == reverse("members", args=["acme-ltd"])
    acme = Organization.objects.get(slug="acme-ltd")
    assert (acme.kind, acme.parent) == ("tenant", reseller_org)
    make_user("acme-boss")
    added = client.post(
        reverse("members", args=["acme-ltd"]),
        {"email": "acme-boss@example.test", "role": "owner"},
        follow=True,
    )
    assert "Invitation sent to acme-boss@example.test." in added.content.decode()
    listing = client.get(reverse("tenants", args=["reseller"])).content.decode()
    assert "Acme Ltd" in listing
    assert AuditEntry.objects.filter(action="organization.create", actor=reseller_admin).exists()


def test_tenant_slug_clash_is_an_inline_error(reseller_admin: Any, tenant_org: Any) -> None:
    response = client_for(reseller_admin).post(
        reverse("tenants", args=["reseller"]), {"name": "X", "slug": "tenant"}
    )
    assert response.status_code == 400
    assert "This slug is taken" in response.content.decode()


def test_tenants_list_query_count_is_bounded(
    reseller_admin: Any, reseller_org: Organization, django_assert_max_num_queries: Any
) -> None:
    client = client_for(reseller_admin)
    url = reverse("tenants", args=["reseller"])
    Organization.objects.create(name="T", slug="t", kind="tenant", parent=reseller_org)
    with django_assert_max_num_queries(15) as one:
        client.get(url)
    for n in range(30):
        org = Organization.objects.create(
            name=f"T{n}", slug=f"t{n}", kind="tenant", parent=reseller_org
        )
        make_member(f"u{n}", org, "owner")
    with django_assert_max_num_queries(len(one.captured_queries)):
        assert client.get(url).status_code == 200


def test_only_operators_add_tenants_under_the_platform(platform_org: Organization) -> None:
    admin = make_member("platform-admin", platform_org, Membership.Role.ADMIN)
    response = client_for(admin).post(reverse("tenants", args=["platform"]), {"name": "X"})
    assert response.status_code == 403


# --- Members and roles ----------------------------------------------------------------------


def test_members_page_lists_people_and_hides_the_form_from_members(
    tenant_owner: Any, tenant_member: Any
) -> None:
    owner_view = client_for(tenant_owner).get(reverse("members", args=["tenant"])).content.decode()
    member_view = (
        client_for(tenant_member).get(reverse("members", args=["tenant"])).content.decode()
    )
    for html in (owner_view, member_view):
        assert "tenant-owner" in html and "tenant-member" in html
    assert "Invite someone by e-mail" in owner_view
    assert "Invite someone by e-mail" not in member_view
    # People join only by invitation: no form looks up who already has a login.
    assert "Add someone who already signs in" not in owner_view


def test_a_member_cannot_escalate_to_owner(tenant_member: Any) -> None:
    client = client_for(tenant_member)
    for role in ("owner", "admin"):
        response = client.post(
            reverse("members", args=["tenant"]), {"user": "tenant-member", "role": role}
        )
        assert response.status_code == 403
    assert Membership.objects.get(user=tenant_member).role == "member"


def test_an_admin_may_add_but_not_make_owners(tenant_org: Organization) -> None:
    admin = make_member("tenant-admin", tenant_org, Membership.Role.ADMIN)
    make_user("newbie")
    client = client_for(admin)
    form = client.get(reverse("members", args=["tenant"])).content.decode()
    assert 'value="owner"' not in form and 'value="admin"' in form
    newbie = {"email": "newbie@example.test"}
    url = reverse("members", args=["tenant"])
    assert client.post(url, {**newbie, "role": "owner"}).status_code == 403
    assert client.post(url, {**newbie, "role": "billing"}).status_code == 302
    assert Invitation.objects.get(email="newbie@example.test").role == "billing"


def test_adding_by_user_name_is_refused_for_everyone_alike(tenant_owner: Any) -> None:
    """An address, not a user name: a name would be looked up, and tell who exists."""
    client = client_for(tenant_owner)
    for name in ("ghost", "tenant-member"):
        response = client.post(
            reverse("members", args=["tenant"]), {"user": name, "role": "member"}
        )
        assert response.status_code == 400
        assert "This field is required." in response.content.decode()
    assert not Invitation.objects.exists()


# --- Billing and audit ----------------------------------------------------------------------


def test_billing_page_is_for_billing_roles(tenant_org: Organization, tenant_member: Any) -> None:
    billing = make_member("tenant-billing", tenant_org, Membership.Role.BILLING)
    response = client_for(billing).get(reverse("billing", args=["tenant"]))
    assert response.status_code == 200
    nav = response.content.decode()
    assert "Billing" in nav and "API keys" not in nav and "Usage" not in nav
    assert client_for(tenant_member).get(reverse("billing", args=["tenant"])).status_code == 403


def test_audit_log_for_owners_and_resellers(
    tenant_owner: Any, reseller_admin: Any, tenant_member: Any, tenant_org: Organization
) -> None:
    key = services.api_key_create(tenant=tenant_org, name="audited-key", actor=tenant_owner)[0]
    services.api_key_revoke(api_key=key, actor=tenant_owner)
    html = client_for(tenant_owner).get(reverse("org_audit", args=["tenant"])).content.decode()
    assert "api_key.create" in html and "api_key.revoke" in html
    # The reseller's own log includes its tenants' entries.
    reseller_log = (
        client_for(reseller_admin).get(reverse("org_audit", args=["reseller"])).content.decode()
    )
    assert "api_key.revoke" in reseller_log
    assert client_for(tenant_member).get(reverse("org_audit", args=["tenant"])).status_code == 403


def test_navigation_follows_the_role(
    tenant_owner: Any, tenant_member: Any, operator_user: Any
) -> None:
    owner = client_for(tenant_owner).get(reverse("org", args=["tenant"])).content.decode()
    member = client_for(tenant_member).get(reverse("org", args=["tenant"])).content.decode()
    operator = client_for(operator_user).get(reverse("org", args=["tenant"])).content.decode()
    assert "Audit log" in owner and "Audit log" not in member
    assert "Billing" in owner and "Billing" not in member
    assert 'aria-label="Operator"' in operator and 'aria-label="Operator"' not in owner
    assert 'aria-current="page"' in owner


# --- Changing and removing members ----------------------------------------------------------


def _membership(user: Any) -> Membership:
    return Membership.objects.get(user=user)


def test_owner_changes_a_role_and_removes_a_member(
    tenant_owner: Any, tenant_member: Any, tenant_admin: Any
) -> None:
    page = client_for(tenant_owner)
    member = _membership(tenant_member)
    response = page.post(
        reverse("member_role", args=["tenant", member.pk]), {"role": "billing"}, follow=True
    )
    assert "tenant-member is now billing." in response.content.decode()
    assert _membership(tenant_member).role == Membership.Role.BILLING
    entry = AuditEntry.objects.get(action="membership.change_role")
    assert entry.data == {"user": "tenant-member", "before": "member", "after": "billing"}
    assert entry.actor == tenant_owner

    page.post(reverse("member_remove", args=["tenant", _membership(tenant_admin).pk]))
    assert not Membership.objects.filter(user=tenant_admin).exists()
    assert AuditEntry.objects.filter(action="membership.remove").count() == 1


def test_the_last_owner_can_be_neither_demoted_nor_removed(tenant_owner: Any) -> None:
    page = client_for(tenant_owner)
    own = _membership(tenant_owner)
    response = page.post(
        reverse("member_role", args=["tenant", own.pk]), {"role": "admin"}, follow=True
    )
    assert "This is the last owner" in response.content.decode()
    response = page.post(reverse("member_remove", args=["tenant", own.pk]), follow=True)
    assert "This is the last owner" in response.content.decode()
    assert _membership(tenant_owner).role == Membership.Role.OWNER
    assert not AuditEntry.objects.filter(action__startswith="membership.").exists()

    # With a second owner, the first may step down.
    second = make_member("second-owner", tenant_owner.memberships.get().organization, "owner")
    page.post(reverse("member_role", args=["tenant", own.pk]), {"role": "admin"})
    assert _membership(tenant_owner).role == Membership.Role.ADMIN
    assert _membership(second).role == Membership.Role.OWNER


def test_admins_and_members_cannot_escalate(
    tenant_owner: Any, tenant_admin: Any, tenant_member: Any
) -> None:
    admin = client_for(tenant_admin)
    member_row = _membership(tenant_member)
    # An admin cannot make owners, nor demote or remove an owner.
    url = reverse("member_role", args=["tenant", member_row.pk])
    assert admin.post(url, {"role": "owner"}).status_code == 403
    own = reverse("member_role", args=["tenant", _membership(tenant_admin).pk])
    assert admin.post(own, {"role": "owner"}).status_code == 403
    owner_row = _membership(tenant_owner)
    assert (
        admin.post(reverse("member_role", args=["tenant", owner_row.pk]), {"role": "member"})
    ).status_code == 403
    assert admin.post(reverse("member_remove", args=["tenant", owner_row.pk])).status_code == 403
    # A member cannot change roles at all, their own included.
    member = client_for(tenant_member)
    assert member.post(url, {"role": "owner"}).status_code == 403
    assert member.post(url, {"role": "admin"}).status_code == 403
    assert _membership(tenant_member).role == Membership.Role.MEMBER
    assert _membership(tenant_admin).role == Membership.Role.ADMIN
    assert not AuditEntry.objects.filter(action__startswith="membership.").exists()
    # The admin may still move people between the roles it can grant.
    assert admin.post(url, {"role": "billing"}).status_code == 302
    html = admin.get(reverse("members", args=["tenant"])).content.decode()
    assert 'value="owner"' not in html
    assert f"Remove {tenant_owner.get_username()}" not in html


def test_memberships_of_another_organisation_are_not_found(
    tenant_owner: Any, outsider: Any
) -> None:
    theirs = _membership(outsider)
    page = client_for(tenant_owner)
    assert page.post(reverse("member_remove", args=["tenant", theirs.pk])).status_code == 404
    assert (
        page.post(reverse("member_role", args=["tenant", theirs.pk]), {"role": "member"})
    ).status_code == 404
    assert Membership.objects.filter(pk=theirs.pk, role="owner").exists()


def test_a_reseller_with_one_tenant_reads_1_tenant(
    reseller_admin: Any, tenant_org: Organization
) -> None:
    html = client_for(reseller_admin).get(reverse("org", args=["reseller"])).content.decode()
    assert '<div class="value">1</div><div class="label">tenant</div>' in html
    assert '1</div><div class="label">tenants' not in html
