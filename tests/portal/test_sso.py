"""What verified OpenID Connect claims mean here: who signs in, into which organisation
and role, and what a provider may never do (link staff, reach outside its organisation)."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse
from django_otp.plugins.otp_totp.models import TOTPDevice

from portal.models import Membership, SsoIdentity, SsoProvider
from portal.services.sso import (
    PLATFORM_KEY,
    SsoRefused,
    platform_config,
    sso_config,
    sso_config_for_email,
    sso_provider_save,
    sso_sign_in,
)
from tests.console.conftest import client_for

pytestmark = pytest.mark.django_db

SECRET = "reseller-sso-client-secret-41aa"


@pytest.fixture
def reseller_sso(reseller_org: Any, tenant_org: Any) -> SsoProvider:
    return sso_provider_save(
        organization=reseller_org,
        issuer="https://id.reseller.test/",
        client_id="tollgate",
        client_secret=SECRET,
        allowed_domains=["reseller.test", "@Tenant.Test"],
        role_claim="groups",
        role_map={"sales": "admin", "tenant-devs": "tenant:member", "tenant-pay": "tenant:billing"},
        enabled=True,
        actor="test",
    )


def claims(sub: str, email: str, *groups: str, **extra: Any) -> dict[str, Any]:
    return {"sub": sub, "email": email, "email_verified": True, "groups": list(groups), **extra}


def test_the_client_secret_is_encrypted_at_rest(reseller_sso: SsoProvider) -> None:
    row = SsoProvider.objects.values().get(pk=reseller_sso.pk)
    assert SECRET not in str(row) and reseller_sso.client_secret == SECRET
    assert reseller_sso.allowed_domains == ["reseller.test", "tenant.test"]
    assert sso_config_for_email("bob@TENANT.test").key == "reseller"  # type: ignore[union-attr]


def test_a_reseller_places_people_in_itself_and_its_tenants_without_a_seat_cap(
    reseller_sso: SsoProvider, reseller_org: Any, tenant_org: Any
) -> None:
    config = sso_config("reseller")
    assert config is not None
    people = [
        sso_sign_in(config=config, claims=claims(f"dev-{n}", f"dev{n}@tenant.test", "tenant-devs"))
        for n in range(30)
    ]
    assert Membership.objects.filter(organization=tenant_org, role="member").count() == 30
    boss = sso_sign_in(
        config=config, claims=claims("boss", "boss@reseller.test", "sales", "tenant-pay")
    )
    assert Membership.objects.get(user=boss, organization=reseller_org).role == "admin"
    assert Membership.objects.get(user=boss, organization=tenant_org).role == "billing"
    # The claim loses a group: that membership goes at the next sign-in.
    sso_sign_in(config=config, claims=claims("boss", "boss@reseller.test", "sales"))
    assert not Membership.objects.filter(user=boss, organization=tenant_org).exists()
    assert len({p.pk for p in people}) == 30


def test_refusals(reseller_sso: SsoProvider, operator_user: Any, outsider: Any) -> None:
    config = sso_config("reseller")
    assert config is not None
    with pytest.raises(SsoRefused, match="may not sign in"):
        sso_sign_in(config=config, claims=claims("x", "x@evil.test", "sales"))
    with pytest.raises(SsoRefused, match="not verified"):
        sso_sign_in(
            config=config, claims=claims("x", "x@tenant.test", "sales", email_verified=False)
        )
    with pytest.raises(SsoRefused, match="no role"):
        sso_sign_in(config=config, claims=claims("x", "x@tenant.test", "unknown-group"))
    # An organisation's provider never signs in staff, nor someone who belongs elsewhere.
    operator_user.email = "ops@tenant.test"
    operator_user.save()
    with pytest.raises(SsoRefused, match="sign in with its password"):
        sso_sign_in(config=config, claims=claims("ops", "ops@tenant.test", "sales"))
    outsider.email = "out@tenant.test"
    outsider.save()
    with pytest.raises(SsoRefused, match="sign in with its password"):
        sso_sign_in(config=config, claims=claims("out", "out@tenant.test", "sales"))
    assert not SsoIdentity.objects.exists()


def test_a_mapping_cannot_reach_outside_the_organisation(
    reseller_org: Any, other_tenant_org: Any, platform_org: Any
) -> None:
    for target in ("other-tenant:owner", "platform:owner", "tenant:operator"):
        with pytest.raises(ValidationError):
            sso_provider_save(
                organization=reseller_org,
                issuer="https://id.reseller.test",
                client_id="c",
                client_secret="s",
                allowed_domains=["reseller.test"],
                role_claim="groups",
                role_map={"g": target},
                enabled=True,
                actor="test",
            )
    assert not SsoProvider.objects.exists()


def test_the_platform_provider_links_staff_who_still_enter_their_code(
    settings: Any, operator_user: Any, tenant_org: Any
) -> None:
    settings.OIDC_ISSUER = "https://id.platform.test"
    settings.OIDC_CLIENT_ID = "tollgate"
    settings.OIDC_CLIENT_SECRET = "s"
    settings.OIDC_ALLOWED_DOMAINS = ["platform.test"]
    settings.OIDC_ROLE_MAP = {"ops": "tenant:admin"}
    config = platform_config()
    assert config is not None and config.key == PLATFORM_KEY and not config.delegate_two_factor
    operator_user.email = "ops@platform.test"
    operator_user.save()
    user = sso_sign_in(config=config, claims=claims("ops-1", "ops@platform.test", "ops"))
    assert user == operator_user and user.is_staff
    assert Membership.objects.get(user=user, organization=tenant_org).role == "admin"
    TOTPDevice.objects.create(user=operator_user, name="app", confirmed=True)
    page = client_for(operator_user)
    assert page.get(reverse("operator")).status_code == 302  # staff two-factor applies
    session = page.session
    session["tollgate_two_factor_by_idp"] = True  # set only with OIDC_DELEGATE_TWO_FACTOR
    session.save()
    assert page.get(reverse("operator")).status_code == 200


def test_the_settings_page_keeps_the_secret_and_shows_the_redirect_uri(
    reseller_sso: SsoProvider, operator_user: Any, reseller_admin: Any, tenant_owner: Any
) -> None:
    # The owner's setting: an admin of the reseller may not change who signs in.
    assert (
        client_for(reseller_admin).get(reverse("sso_settings", args=["reseller"])).status_code
        == 403
    )
    page = client_for(operator_user)
    html = page.get(reverse("sso_settings", args=["reseller"])).content.decode()
    assert "/account/sso/callback/" in html and SECRET not in html
    assert (
        client_for(tenant_owner).get(reverse("sso_settings", args=["reseller"])).status_code == 404
    )
