"""/api/keys/: the secret once, revocation, members limited to their own keys."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from portal import services
from portal.models import ApiKey, AuditEntry, Membership, Organization
from tests.conftest import make_member
from tests.console.conftest import api_client_for as client_for

pytestmark = pytest.mark.django_db


def key_for(tenant: Organization, user: Any, name: str) -> ApiKey:
    return services.api_key_create(tenant=tenant, name=name, actor=user)[0]


@pytest.fixture
def keys(
    tenant_org: Organization,
    other_tenant_org: Organization,
    tenant_owner: Any,
    tenant_member: Any,
    outsider: Any,
) -> dict[str, ApiKey]:
    return {
        "owner": key_for(tenant_org, tenant_owner, "owner-key"),
        "member": key_for(tenant_org, tenant_member, "member-key"),
        "other": key_for(other_tenant_org, outsider, "other-key"),
    }


def names(response: Any) -> set[str]:
    assert response.status_code == 200, response.content
    return {row["name"] for row in response.json()["results"]}


def test_create_returns_the_secret_once(tenant_owner: Any, tenant_org: Organization) -> None:
    client = client_for(tenant_owner)
    expires = (timezone.now() + timedelta(days=3)).isoformat()
    response = client.post(
        "/api/keys/",
        {
            "organization": "tenant",
            "name": "prod",
            "expires_at": expires,
            "allowed_models": ["sim-small"],
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    secret = body["secret"]
    assert secret.startswith("sk-tg-") and body["prefix"] == secret[: len(body["prefix"])]
    assert body["allowed_models"] == ["sim-small"] and body["created_by"] == "tenant-owner"
    key = ApiKey.objects.get(pk=body["id"])
    assert key.matches(secret)

    again = client.get(f"/api/keys/{key.pk}/").json()
    assert "secret" not in again and secret not in str(again)
    assert secret not in str(client.get("/api/keys/").json())
    assert AuditEntry.objects.filter(action="api_key.create", organization=tenant_org).exists()


@pytest.mark.parametrize(
    ("persona", "expected"),
    [
        ("operator_user", {"owner-key", "member-key", "other-key"}),
        ("reseller_admin", {"owner-key", "member-key"}),
        ("tenant_owner", {"owner-key", "member-key"}),
        ("tenant_member", {"member-key"}),
        ("outsider", {"other-key"}),
    ],
)
def test_list_is_scoped_per_persona(
    request: pytest.FixtureRequest, keys: dict[str, ApiKey], persona: str, expected: set[str]
) -> None:
    client = client_for(request.getfixturevalue(persona))
    assert names(client.get("/api/keys/")) == expected
    assert names(client.get("/api/keys/?organization=tenant")) == expected - {"other-key"}


def test_billing_members_see_no_keys(keys: dict[str, ApiKey], tenant_org: Organization) -> None:
    billing = make_member("tenant-billing", tenant_org, Membership.Role.BILLING)
    client = client_for(billing)
    assert names(client.get("/api/keys/")) == set()
    assert client.get(f"/api/keys/{keys['owner'].pk}/").status_code == 403
    response = client.post("/api/keys/", {"organization": "tenant", "name": "x"}, format="json")
    assert response.status_code == 403


@pytest.mark.parametrize(
    ("persona", "key", "status"),
    [
        ("outsider", "owner", 404),
        ("outsider", "member", 404),
        ("tenant_member", "owner", 404),  # another member's key: not theirs to see
        ("tenant_owner", "other", 404),
        ("reseller_admin", "other", 404),
    ],
)
def test_others_keys_are_invisible_and_cannot_be_revoked(
    request: pytest.FixtureRequest, keys: dict[str, ApiKey], persona: str, key: str, status: int
) -> None:
    client = client_for(request.getfixturevalue(persona))
    target = keys[key]
    assert client.get(f"/api/keys/{target.pk}/").status_code == status
    assert client.post(f"/api/keys/{target.pk}/revoke/").status_code == status
    target.refresh_from_db()
    assert target.status == ApiKey.Status.ACTIVE


def test_outsider_cannot_issue_keys_for_another_tenant(outsider: Any, tenant_org: Any) -> None:
    response = client_for(outsider).post(
        "/api/keys/", {"organization": "tenant", "name": "x"}, format="json"
    )
    assert response.status_code == 404
    assert not ApiKey.objects.filter(tenant=tenant_org).exists()


def test_member_issues_and_revokes_own_keys(tenant_member: Any, keys: dict[str, ApiKey]) -> None:
    client = client_for(tenant_member)
    created = client.post("/api/keys/", {"organization": "tenant", "name": "mine"}, format="json")
    assert created.status_code == 201
    response = client.post(f"/api/keys/{keys['member'].pk}/revoke/")
    assert response.status_code == 200
    assert response.json()["status"] == "revoked"


def test_owner_and_reseller_revoke_any_key_of_the_tenant(
    tenant_owner: Any, reseller_admin: Any, keys: dict[str, ApiKey]
) -> None:
    assert (
        client_for(tenant_owner).post(f"/api/keys/{keys['member'].pk}/revoke/").status_code == 200
    )
    assert (
        client_for(reseller_admin).post(f"/api/keys/{keys['owner'].pk}/revoke/").status_code == 200
    )
    assert AuditEntry.objects.filter(action="api_key.revoke").count() == 2


def test_invalid_input_is_400_with_field_errors(tenant_owner: Any, tenant_org: Any) -> None:
    client = client_for(tenant_owner)
    past = (timezone.now() - timedelta(days=1)).isoformat()
    response = client.post(
        "/api/keys/", {"organization": "tenant", "name": "x", "expires_at": past}, format="json"
    )
    assert response.status_code == 400
    assert "expires_at" in response.json()
    assert client.post("/api/keys/", {"organization": "tenant"}, format="json").status_code == 400
    assert client.get("/api/keys/abc/").status_code == 404


def test_keys_cannot_be_issued_to_resellers(reseller_admin: Any, reseller_org: Any) -> None:
    response = client_for(reseller_admin).post(
        "/api/keys/", {"organization": "reseller", "name": "x"}, format="json"
    )
    assert response.status_code == 400


def test_list_query_count_does_not_grow_with_keys(
    tenant_owner: Any, tenant_org: Organization, django_assert_max_num_queries: Any
) -> None:
    client = client_for(tenant_owner)
    key_for(tenant_org, tenant_owner, "first")
    with django_assert_max_num_queries(10) as one:
        client.get("/api/keys/")
    for n in range(30):
        key = ApiKey(tenant=tenant_org, name=f"k{n}", created_by=tenant_owner)
        key.set_secret(f"sk-tg-bulk-{n}")
        key.save()
    with django_assert_max_num_queries(len(one.captured_queries)):
        response = client.get("/api/keys/")
    assert response.json()["count"] == 31
