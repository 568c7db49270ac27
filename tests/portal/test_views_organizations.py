"""Organisation pages: a reseller's tenants, members and roles, billing, the audit log."""

from __future__ import annotations

import sys
from datetime import date
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from portal import services
from portal.models import AuditEntry, Membership, Organization
from tests.conftest import make_member, make_user

pytestmark = pytest.mark.django_db


def client_for(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


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
        reverse("members", args=["acme-ltd"]), {"user": "acme-boss", "role": "owner"}, follow=True
    )
    assert "acme-boss is now owner of Acme Ltd." in added.content.decode()
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
    assert "Add a member" in owner_view and "Add a member" not in member_view


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
    assert (
        client.post(
            reverse("members", args=["tenant"]), {"user": "newbie", "role": "owner"}
        ).status_code
        == 403
    )
    assert (
        client.post(
            reverse("members", args=["tenant"]), {"user": "newbie", "role": "billing"}
        ).status_code
        == 302
    )
    assert Membership.objects.get(user__username="newbie").role == "billing"


def test_adding_an_unknown_user_is_an_inline_error(tenant_owner: Any) -> None:
    response = client_for(tenant_owner).post(
        reverse("members", args=["tenant"]), {"user": "ghost", "role": "member"}
    )
    assert response.status_code == 400
    assert "No single active user" in response.content.decode()


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


def _billing_page(user: Any) -> str:
    response = client_for(user).get(reverse("billing", args=["tenant"]))
    assert response.status_code == 200
    return response.content.decode()


def test_billing_page_without_the_billing_module(
    tenant_owner: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "billing.selectors", None)  # import now fails
    assert "Billing is not set up on this installation yet." in _billing_page(tenant_owner)


def test_billing_page_shows_balance_and_invoices_from_the_billing_module(
    tenant_owner: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    invoice = SimpleNamespace(
        pk=7,
        number="INV-2026-0007",
        period_start=date(2026, 4, 1),
        period_end=date(2026, 5, 1),
        get_status_display=lambda: "Issued",
        currency="EUR",
        total_micros=12_345_678,
    )
    fake = ModuleType("billing.selectors")
    fake.organization_balance = lambda organization: -2_500_000  # type: ignore[attr-defined]
    fake.organization_invoices = lambda organization: [invoice]  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "billing.selectors", fake)
    html = _billing_page(tenant_owner)
    assert "-2.50" in html and "INV-2026-0007" in html and "12.345678 EUR" in html

    fake.organization_balance = lambda organization: None  # type: ignore[attr-defined]
    fake.organization_invoices = lambda organization: []  # type: ignore[attr-defined]
    html = _billing_page(tenant_owner)
    assert "No billing account yet." in html and "Your reseller" in html
    assert "No invoices yet." in html
