"""Management API authentication: sessions and personal access tokens, scopes, expiry."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import time_machine
from django.core.exceptions import ValidationError
from django.utils import timezone
from rest_framework.test import APIClient

from portal import tokens
from portal.models import ApiKey, AuditEntry, Organization, PersonalAccessToken

pytestmark = pytest.mark.django_db


def bearer(secret: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


def issue(user: Any, scope: str = "read", **extra: Any) -> tuple[PersonalAccessToken, str]:
    return tokens.personal_access_token_create(
        user=user, name="script", scope=scope, actor=user, **extra
    )


def test_anonymous_calls_get_401_with_a_bearer_challenge(db: None) -> None:
    response = APIClient().get("/api/keys/")
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_a_token_is_stored_as_prefix_and_digest_only(tenant_owner: Any) -> None:
    token, secret = issue(tenant_owner)

    assert secret.startswith("tg-pat-")
    row = PersonalAccessToken.objects.values().get(pk=token.pk)
    assert secret not in str(row)
    assert row["prefix"] == secret[: len(row["prefix"])]
    assert token.matches(secret) and not token.matches(secret + "x")
    entry = AuditEntry.objects.get(action="access_token.create")
    assert secret not in str(entry.data)
    assert entry.actor == tenant_owner


def test_read_token_reads_as_its_user(tenant_owner: Any, tenant_org: Organization) -> None:
    _, secret = issue(tenant_owner)
    response = bearer(secret).get("/api/me/")
    assert response.status_code == 200
    assert response.json()["username"] == tenant_owner.username
    assert response.json()["memberships"] == [{"organization": "tenant", "role": "owner"}]


def test_read_only_token_cannot_write(tenant_owner: Any, tenant_org: Organization) -> None:
    _, secret = issue(tenant_owner, scope="read")
    client = bearer(secret)

    response = client.post("/api/keys/", {"organization": "tenant", "name": "x"}, format="json")

    assert response.status_code == 403
    assert "read-only" in response.json()["detail"]
    assert not ApiKey.objects.exists()
    # Every unsafe method is refused, whatever the endpoint.
    assert client.patch("/api/channels/1/", {}, format="json").status_code == 403
    assert client.post("/api/organizations/tenant/members/", {}).status_code == 403


def test_read_write_token_can_write(tenant_owner: Any, tenant_org: Organization) -> None:
    _, secret = issue(tenant_owner, scope="read_write")
    response = bearer(secret).post(
        "/api/keys/", {"organization": "tenant", "name": "ci"}, format="json"
    )
    assert response.status_code == 201
    assert ApiKey.objects.get().created_by == tenant_owner


def test_a_token_has_no_more_rights_than_its_user(
    tenant_member: Any, tenant_org: Organization, other_tenant_org: Organization
) -> None:
    _, secret = issue(tenant_member, scope="read_write")
    client = bearer(secret)
    assert client.get("/api/organizations/other-tenant/").status_code == 404
    assert client.get("/api/channels/").status_code == 403
    response = client.post(
        "/api/organizations/tenant/members/", {"user": "x", "role": "owner"}, format="json"
    )
    assert response.status_code == 403


@pytest.mark.parametrize("state", ["revoked", "expired", "unknown", "inactive-user"])
def test_unusable_tokens_are_401(tenant_owner: Any, state: str) -> None:
    token, secret = issue(tenant_owner, expires_at=timezone.now() + timedelta(days=1))
    if state == "revoked":
        tokens.personal_access_token_revoke(token=token, actor=tenant_owner)
    elif state == "unknown":
        secret = secret[:-4] + "AAAA"
    elif state == "inactive-user":
        tenant_owner.is_active = False
        tenant_owner.save()
    if state == "expired":
        with time_machine.travel(timezone.now() + timedelta(days=2)):
            response = bearer(secret).get("/api/me/")
    else:
        response = bearer(secret).get("/api/me/")
    assert response.status_code == 401


def test_other_bearer_values_fall_through_to_the_session(tenant_owner: Any) -> None:
    client = APIClient()
    client.force_login(tenant_owner)
    # A relay key is not a management credential; it is ignored, not accepted.
    client.credentials(HTTP_AUTHORIZATION="Bearer sk-tg-not-a-token")
    assert client.get("/api/me/").status_code == 200
    anonymous = bearer("sk-tg-not-a-token")
    assert anonymous.get("/api/me/").status_code == 401


def test_tokens_cannot_mint_or_revoke_tokens(tenant_owner: Any) -> None:
    token, secret = issue(tenant_owner, scope="read_write")
    client = bearer(secret)
    assert client.post("/api/tokens/", {"name": "child"}, format="json").status_code == 403
    assert client.post(f"/api/tokens/{token.pk}/revoke/").status_code == 403
    assert client.get("/api/tokens/").status_code == 200
    assert PersonalAccessToken.objects.count() == 1


def test_session_manages_own_tokens_and_sees_the_secret_once(
    tenant_owner: Any, outsider: Any
) -> None:
    client = APIClient()
    client.force_login(tenant_owner)
    created = client.post("/api/tokens/", {"name": "ci", "scope": "read_write"}, format="json")
    assert created.status_code == 201
    secret = created.json()["secret"]
    token_id = created.json()["id"]
    assert bearer(secret).get("/api/me/").status_code == 200

    listed = client.get("/api/tokens/").json()["results"]
    assert [t["id"] for t in listed] == [token_id]
    assert "secret" not in listed[0] and secret not in str(listed)

    other = APIClient()
    other.force_login(outsider)
    assert other.get(f"/api/tokens/{token_id}/").status_code == 404
    assert other.post(f"/api/tokens/{token_id}/revoke/").status_code == 404

    assert client.post(f"/api/tokens/{token_id}/revoke/").status_code == 200
    assert bearer(secret).get("/api/me/").status_code == 401
    assert AuditEntry.objects.filter(action="access_token.revoke").count() == 1
    client.post(f"/api/tokens/{token_id}/revoke/")  # again: nothing more is logged
    assert AuditEntry.objects.filter(action="access_token.revoke").count() == 1


def test_expiry_must_be_in_the_future(tenant_owner: Any) -> None:
    with pytest.raises(ValidationError):
        issue(tenant_owner, expires_at=timezone.now() - timedelta(seconds=1))


def test_last_used_is_written_at_most_once_a_minute(
    tenant_owner: Any, django_assert_num_queries: Any
) -> None:
    token, secret = issue(tenant_owner)
    assert tokens.personal_access_token_authenticate(secret) is not None
    first = PersonalAccessToken.objects.get(pk=token.pk).last_used_at
    assert first is not None
    with django_assert_num_queries(1):  # the lookup only, no write
        tokens.personal_access_token_authenticate(secret)
    with time_machine.travel(timezone.now() + timedelta(minutes=2)):
        tokens.personal_access_token_authenticate(secret)
    assert PersonalAccessToken.objects.get(pk=token.pk).last_used_at > first
