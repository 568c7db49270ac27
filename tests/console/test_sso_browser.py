"""Single sign-on end to end: Chromium signs in through a real OpenID Connect provider
(panva's oidc-provider on loopback), and Tollgate provisions the person into the
organisation and role the claim maps to; a refused domain gets nothing; a changed claim
changes the role at the next sign-in."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.asgi import get_asgi_application

from portal.models import AuditEntry, Membership, SsoIdentity
from portal.services.sso import sso_provider_save
from tests.browser import ARTIFACTS, browser_marks
from tests.oidc_provider import Idp, running_provider
from tests.servers import serve_in_thread

CLIENT_ID = "tollgate-tenant"
CLIENT_SECRET = "tenant-client-secret-9d1f0c"

pytestmark = browser_marks

ACCOUNTS = {
    "alice": {
        "email": "alice@acme.test",
        "email_verified": True,
        "name": "Alice Example",
        "groups": ["everyone", "acme-devs"],
    },
    "mallory": {
        "email": "mallory@elsewhere.test",
        "email_verified": True,
        "name": "Mallory",
        "groups": ["acme-admins"],
    },
}


@pytest.fixture
def site(transactional_db: None, settings: Any) -> Iterator[str]:
    base_url, stop = serve_in_thread(get_asgi_application())
    settings.TOLLGATE_PUBLIC_URL = base_url
    yield base_url
    stop()


@pytest.fixture
def idp(site: str, tmp_path: Path, tenant_org: Any) -> Iterator[Idp]:
    client = {
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "redirect_uris": [f"{site}/account/sso/callback/"],
    }
    with running_provider(tmp_path, [client], ACCOUNTS) as provider:
        sso_provider_save(
            organization=tenant_org,
            issuer=provider.issuer,
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            allowed_domains=["acme.test"],
            role_claim="groups",
            role_map={"acme-admins": "admin", "acme-devs": "member"},
            enabled=True,
            actor="test",
        )
        yield provider


def through_provider(page: Any, site: str, idp: Idp, login: str) -> None:
    """The provider's pages: its login form, then consent (skipped once given); back."""
    for _ in range(6):
        if not page.url.startswith(idp.issuer):
            break
        before = page.url
        if page.locator("input[name=login]").count():
            page.fill("input[name=login]", login)
            page.fill("input[name=password]", "any password will do")
        page.locator("button[type=submit]").first.click()
        page.wait_for_url(lambda url, before=before: url != before)
        page.wait_for_load_state()
    assert page.url.startswith(site), page.url


def sso_sign_in(page: Any, site: str, idp: Idp, *, email: str, login: str) -> None:
    """From Tollgate's sign-in page through the provider's login and consent, and back."""
    page.goto(f"{site}/account/login/")
    page.get_by_role("link", name="Sign in with single sign-on").click()
    page.get_by_label("Work e-mail address").fill(email)
    page.get_by_role("button", name="Continue").click()
    page.wait_for_url(lambda url: not url.startswith(f"{site}/account/sso/"))
    page.wait_for_load_state()
    through_provider(page, site, idp, login)


def test_sign_in_provisions_into_the_mapped_role_and_follows_the_claim(
    site: str, idp: Idp, browser: Any, tenant_org: Any
) -> None:
    page = browser.new_context().new_page()
    sso_sign_in(page, site, idp, email="alice@acme.test", login="alice")
    assert "/o/tenant/" in page.url  # a member of one organisation lands in it
    page.screenshot(path=str(ARTIFACTS / "sso-signed-in.png"), full_page=True)
    identity = SsoIdentity.objects.select_related("user").get(provider_key="tenant")
    alice = identity.user
    assert identity.subject == "alice" and alice.email == "alice@acme.test"
    assert not alice.has_usable_password() and not alice.is_staff
    assert Membership.objects.get(user=alice, organization=tenant_org).role == "member"
    assert AuditEntry.objects.filter(action="sso.provision").count() == 1

    # The provider now puts her in the admins' group: her role follows at the next sign-in.
    idp.set_accounts({**ACCOUNTS, "alice": {**ACCOUNTS["alice"], "groups": ["acme-admins"]}})
    page.context.close()
    page = browser.new_context().new_page()  # a new session, here and at the provider
    sso_sign_in(page, site, idp, email="alice@acme.test", login="alice")
    assert Membership.objects.get(user=alice, organization=tenant_org).role == "admin"
    assert SsoIdentity.objects.count() == 1  # the same person, not a second account
    assert page.get_by_role("link", name="Members").count()  # an admin's navigation


def test_a_domain_that_is_not_allowed_is_refused(
    site: str, idp: Idp, browser: Any, tenant_org: Any
) -> None:
    page = browser.new_context().new_page()
    # Tollgate knows no provider for the domain.
    page.goto(f"{site}/account/sso/")
    page.get_by_label("Work e-mail address").fill("mallory@elsewhere.test")
    page.get_by_role("button", name="Continue").click()
    assert "No single sign-on is set up for this domain" in page.content()
    # Going to the tenant's provider directly: it vouches for her, Tollgate refuses.
    page.goto(f"{site}/account/sso/tenant/")
    page.wait_for_load_state()
    through_provider(page, site, idp, "mallory")
    assert page.url.startswith(f"{site}/account/login/"), page.url
    assert "Addresses at elsewhere.test may not sign in here" in page.content()
    page.screenshot(path=str(ARTIFACTS / "sso-refused.png"), full_page=True)
    assert not SsoIdentity.objects.exists()
    assert not Membership.objects.filter(user__email="mallory@elsewhere.test").exists()
    page.goto(f"{site}/o/tenant/")
    assert "/account/login/" in page.url  # not signed in
