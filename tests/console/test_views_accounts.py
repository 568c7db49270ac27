"""Sign-in and out, throttling, password change and reset, landing pages, access tokens."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.contrib.auth.hashers import make_password
from django.core import mail
from django.core.cache import cache
from django.test import Client
from django.urls import reverse

from portal.models import AuditEntry, Membership, Organization, PersonalAccessToken
from tests.conftest import make_member
from tests.console.conftest import client_for

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery staple 42"


@pytest.fixture(autouse=True)
def _fresh_cache() -> None:
    cache.clear()  # login failure counters live in the cache


@pytest.fixture
def fast_hashing(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def owner_with_password(tenant_owner: Any, fast_hashing: None) -> Any:
    tenant_owner.password = make_password(PASSWORD)
    tenant_owner.save()
    return tenant_owner


def test_pages_need_a_login(db: None) -> None:
    response = Client().get(reverse("keys", args=["tenant"]))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


def test_login_lands_on_the_role_page_and_logout_needs_post(owner_with_password: Any) -> None:
    client = Client()
    page = client.get(reverse("login")).content.decode()
    assert 'autocomplete="current-password"' in page and "Forgot your password?" in page
    response = client.post(
        reverse("login"), {"username": "tenant-owner", "password": PASSWORD}, follow=True
    )
    assert response.redirect_chain[-1][0] == reverse("keys", args=["tenant"])
    assert client.get(reverse("logout")).status_code == 405
    assert client.post(reverse("logout")).status_code == 302
    assert client.get(reverse("keys", args=["tenant"])).status_code == 302


def test_wrong_password_shows_an_error_and_repeated_failures_lock_out(
    owner_with_password: Any,
) -> None:
    client = Client()
    for _ in range(5):
        response = client.post(reverse("login"), {"username": "tenant-owner", "password": "no"})
        assert response.status_code == 200
        assert "Please enter a correct username and password" in response.content.decode()
    locked = client.post(reverse("login"), {"username": "tenant-owner", "password": PASSWORD})
    assert locked.status_code == 429
    assert "Too many failed attempts" in locked.content.decode()
    assert "_auth_user_id" not in client.session


def test_a_successful_login_resets_the_failure_count(owner_with_password: Any) -> None:
    client = Client()
    for _ in range(4):
        client.post(reverse("login"), {"username": "tenant-owner", "password": "no"})
    assert (
        client.post(
            reverse("login"), {"username": "tenant-owner", "password": PASSWORD}
        ).status_code
        == 302
    )
    client.post(reverse("logout"))
    for _ in range(4):
        client.post(reverse("login"), {"username": "tenant-owner", "password": "no"})
    assert (
        client.post(
            reverse("login"), {"username": "tenant-owner", "password": PASSWORD}
        ).status_code
        == 302
    )


def test_password_change(owner_with_password: Any) -> None:
    client = client_for(owner_with_password)
    response = client.post(
        reverse("password_change"),
        {
            "old_password": PASSWORD,
            "new_password1": "a fresh long pass 91",
            "new_password2": "a fresh long pass 91",
        },
        follow=True,
    )
    assert "Password changed" in response.content.decode()
    owner_with_password.refresh_from_db()
    assert owner_with_password.check_password("a fresh long pass 91")


def test_password_reset_by_console_email(owner_with_password: Any) -> None:
    client = Client()
    client.post(reverse("password_reset"), {"email": "tenant-owner@example.test"})
    assert len(mail.outbox) == 1
    assert mail.outbox[0].subject == "Reset your Tollgate password"
    link = re.search(r"http://testserver(/account/password/reset/\S+/)", mail.outbox[0].body)
    assert link is not None
    form = client.get(link.group(1), follow=True)
    assert "Choose a new password" in form.content.decode()
    done = client.post(
        form.redirect_chain[-1][0],
        {"new_password1": "another long pass 77", "new_password2": "another long pass 77"},
        follow=True,
    )
    assert "Password set" in done.content.decode()
    owner_with_password.refresh_from_db()
    assert owner_with_password.check_password("another long pass 77")


def test_home_sends_each_role_to_its_page(
    operator_user: Any, reseller_admin: Any, tenant_org: Organization
) -> None:
    billing = make_member("billing-person", tenant_org, Membership.Role.BILLING)
    assert client_for(operator_user).get("/")["Location"] == reverse("operator")
    assert client_for(reseller_admin).get("/")["Location"] == reverse("tenants", args=["reseller"])
    assert client_for(billing).get("/")["Location"] == reverse("org", args=["tenant"])


def test_home_lists_several_organisations_or_explains_none(
    tenant_owner: Any, other_tenant_org: Organization, db: None
) -> None:
    Membership.objects.create(user=tenant_owner, organization=other_tenant_org, role="member")
    html = client_for(tenant_owner).get("/").content.decode()
    assert "Other Tenant" in html and ">Tenant<" in html
    nobody = make_member("lonely", Organization.objects.get(slug="platform"), "member")
    Membership.objects.filter(user=nobody).delete()
    assert "not a member of any organisation" in client_for(nobody).get("/").content.decode()


def test_access_token_page_creates_shows_once_and_revokes(tenant_owner: Any, outsider: Any) -> None:
    client = client_for(tenant_owner)
    assert "No tokens yet." in client.get(reverse("account_tokens")).content.decode()
    response = client.post(
        reverse("account_tokens"), {"name": "export", "scope": "read", "expires_in": "30"}
    )
    html = response.content.decode()
    secret = re.search(r'value="(tg-pat-[^"]+)"', html).group(1)  # type: ignore[union-attr]
    token = PersonalAccessToken.objects.get()
    assert token.matches(secret) and token.expires_at is not None
    assert secret not in client.get(reverse("account_tokens")).content.decode()
    # Someone else cannot revoke it; its owner can.
    assert client_for(outsider).post(reverse("token_revoke", args=[token.pk])).status_code == 404
    client.post(reverse("token_revoke", args=[token.pk]))
    token.refresh_from_db()
    assert token.revoked_at is not None
    assert AuditEntry.objects.filter(action="access_token.revoke").count() == 1


def test_access_token_form_errors_are_inline(tenant_owner: Any) -> None:
    response = client_for(tenant_owner).post(reverse("account_tokens"), {"scope": "admin"})
    assert response.status_code == 400
    html = response.content.decode()
    assert 'id="id_name_error"' in html and 'id="id_scope_error"' in html
