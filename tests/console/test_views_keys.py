"""Dashboard API-key pages: list, create with the secret shown once, revoke, quick start."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from django.test import override_settings
from django.urls import reverse
from django.utils import timezone

from portal import services
from portal.models import ApiKey, AuditEntry, CatalogModel, Organization
from tests.conftest import price_models
from tests.console.conftest import client_for

pytestmark = pytest.mark.django_db

KEYS_URL = reverse("keys", args=["tenant"])


def test_empty_state_says_what_to_do(tenant_owner: Any) -> None:
    html = client_for(tenant_owner).get(KEYS_URL).content.decode()
    assert "No keys yet." in html and "Create a key" in html


def test_creating_a_key_shows_the_secret_once_with_a_copy_button(
    tenant_owner: Any, tenant_org: Organization
) -> None:
    CatalogModel.objects.create(public_id="sim-small")
    client = client_for(tenant_owner)
    expires = (timezone.now() + timedelta(days=7)).strftime("%Y-%m-%dT%H:%M")

    response = client.post(
        KEYS_URL, {"name": "prod", "expires_at": expires, "allowed_models": ["sim-small"]}
    )

    assert response.status_code == 200
    html = response.content.decode()
    secret = re.search(r'value="(sk-tg-[^"]+)"', html).group(1)  # type: ignore[union-attr]
    assert 'data-copy-target="secret-value"' in html
    assert "shown only this once" in html
    assert "no-store" in response["Cache-Control"]
    key = ApiKey.objects.get()
    assert key.matches(secret) and key.allowed_models == ["sim-small"]
    assert key.created_by == tenant_owner and key.expires_at is not None
    assert AuditEntry.objects.filter(action="api_key.create", organization=tenant_org).exists()
    listing = client.get(KEYS_URL).content.decode()
    assert "prod" in listing and key.prefix in listing and secret not in listing


def test_invalid_input_is_shown_inline_and_accessibly(tenant_owner: Any) -> None:
    past = (timezone.now() - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")
    response = client_for(tenant_owner).post(KEYS_URL, {"name": "", "expires_at": past})
    assert response.status_code == 400
    html = response.content.decode()
    assert 'role="alert"' in html
    assert 'id="id_name_error"' in html and 'aria-invalid="true"' in html
    assert 'aria-describedby="id_expires_at_helptext id_expires_at_error"' in html
    assert "Choose a moment in the future." in html
    assert not ApiKey.objects.exists()


def test_service_errors_land_on_the_form(tenant_owner: Any, tenant_org: Organization) -> None:
    tenant_org.is_active = False
    tenant_org.save()
    response = client_for(tenant_owner).post(KEYS_URL, {"name": "x"})
    assert response.status_code == 400
    assert "This tenant is deactivated." in response.content.decode()


def test_members_see_and_revoke_only_their_own_keys(
    tenant_owner: Any, tenant_member: Any, tenant_org: Organization
) -> None:
    owners = services.api_key_create(tenant=tenant_org, name="owners-key", actor=tenant_owner)[0]
    mine = services.api_key_create(tenant=tenant_org, name="members-key", actor=tenant_member)[0]
    client = client_for(tenant_member)

    html = client.get(KEYS_URL).content.decode()
    assert "members-key" in html and "owners-key" not in html
    assert client.post(reverse("key_revoke", args=["tenant", owners.pk])).status_code == 404
    response = client.post(reverse("key_revoke", args=["tenant", mine.pk]), follow=True)
    assert "revoked" in response.content.decode()
    owners.refresh_from_db()
    mine.refresh_from_db()
    assert (owners.status, mine.status) == ("active", "revoked")


def test_revoking_through_another_tenants_url_is_404(
    tenant_owner: Any, outsider: Any, other_tenant_org: Organization, tenant_org: Organization
) -> None:
    theirs = services.api_key_create(tenant=other_tenant_org, name="t", actor=outsider)[0]
    ours = services.api_key_create(tenant=tenant_org, name="o", actor=tenant_owner)[0]
    client = client_for(tenant_owner)
    # Our slug with their key id, and their slug with their key id.
    assert client.post(reverse("key_revoke", args=["tenant", theirs.pk])).status_code == 404
    assert client.post(reverse("key_revoke", args=["other-tenant", theirs.pk])).status_code == 404
    # Their slug with our key id: the key is not in that tenant.
    assert (
        client_for(outsider).post(reverse("key_revoke", args=["other-tenant", ours.pk])).status_code
        == 404
    )
    assert not ApiKey.objects.filter(status="revoked").exists()


def test_revoke_needs_post(tenant_owner: Any, tenant_org: Organization) -> None:
    key = services.api_key_create(tenant=tenant_org, name="k", actor=tenant_owner)[0]
    assert (
        client_for(tenant_owner).get(reverse("key_revoke", args=["tenant", key.pk])).status_code
        == 405
    )


def test_reseller_admin_manages_the_tenants_keys(
    reseller_admin: Any, tenant_org: Organization
) -> None:
    response = client_for(reseller_admin).post(KEYS_URL, {"name": "for-the-customer"})
    assert response.status_code == 200
    assert ApiKey.objects.get().created_by == reseller_admin


def test_keys_page_is_only_for_tenants(reseller_admin: Any) -> None:
    assert client_for(reseller_admin).get(reverse("keys", args=["reseller"])).status_code == 404


def test_keys_list_query_count_does_not_grow(
    tenant_owner: Any, tenant_org: Organization, django_assert_max_num_queries: Any
) -> None:
    client = client_for(tenant_owner)
    services.api_key_create(tenant=tenant_org, name="first", actor=tenant_owner)
    with django_assert_max_num_queries(15) as one:
        assert client.get(KEYS_URL).status_code == 200
    for n in range(40):
        key = ApiKey(tenant=tenant_org, name=f"k{n}", created_by=tenant_owner)
        key.set_secret(f"sk-tg-bulk-{n}")
        key.save()
    with django_assert_max_num_queries(len(one.captured_queries)):
        assert client.get(KEYS_URL).status_code == 200


@override_settings(TOLLGATE_PUBLIC_URL="https://llm.example.test/")
def test_quickstart_shows_base_url_and_snippets(
    tenant_member: Any, tenant_org: Organization
) -> None:
    price_models("sim-small")
    services.channel_create(
        name="c",
        base_url="http://u.test/v1",
        secret="s",
        models=["sim-small", "sim-unpriced"],
        actor="test",
    )
    CatalogModel.objects.create(public_id="no-channel")
    html = client_for(tenant_member).get(reverse("quickstart", args=["tenant"])).content.decode()
    assert 'value="https://llm.example.test/v1"' in html
    assert 'model="sim-small"' in html  # Python, with a model that works now
    assert "new OpenAI({ baseURL" in html and "curl https://llm.example.test/v1/chat" in html
    assert "no-channel" not in html and "sim-unpriced" not in html
    assert html.count("data-copy-target") == 4


def test_quickstart_without_models_says_so(tenant_owner: Any) -> None:
    html = client_for(tenant_owner).get(reverse("quickstart", args=["tenant"])).content.decode()
    assert "No model is available right now" in html
