"""A tenant's limits as its seller sets them: beneath the operator's caps, on the page and
in the API, and never by the tenant's own people."""

from __future__ import annotations

from typing import Any

import pytest
from django.urls import reverse

from console.admin.organizations import OrganizationForm
from portal import services
from portal.models import AuditEntry, Organization
from portal.models.limits import LIMIT_MAX
from tests.console.conftest import api_client_for, client_for

pytestmark = pytest.mark.django_db

SELLER_FIELDS = (
    "seller_rpm_limit",
    "seller_tpm_limit",
    "seller_concurrency_limit",
    "seller_daily_token_limit",
)


def _limits_form(**values: Any) -> dict[str, Any]:
    return {
        name: values.get(name, "")
        for name in ("rpm_limit", "tpm_limit", "concurrency_limit", "daily_token_limit")
    }


def _seller_limits(tenant: Organization) -> tuple[Any, ...]:
    tenant.refresh_from_db()
    return tuple(getattr(tenant, name) for name in SELLER_FIELDS)


def test_a_reseller_limits_its_tenant_and_the_operators_cap_stays(
    tenant_org: Organization, reseller_admin: Any
) -> None:
    tenant_org.rpm_limit = 30  # the operator's cap, set in the admin
    tenant_org.save()
    page = client_for(reseller_admin)

    response = page.post(
        reverse("tenant_limits", args=["tenant"]),
        _limits_form(rpm_limit=60, concurrency_limit=4, daily_token_limit=1_000_000),
    )

    assert response.status_code == 302
    assert _seller_limits(tenant_org) == (60, None, 4, 1_000_000)
    assert tenant_org.rpm_limit == 30  # untouched
    assert tenant_org.enforced_limits() == {
        "rpm_limit": 30,  # the cap is lower than the reseller's 60
        "tpm_limit": None,
        "concurrency_limit": 4,
        "daily_token_limit": 1_000_000,
    }
    entry = AuditEntry.objects.get(action="organization.limits")
    assert entry.organization == tenant_org and entry.actor == reseller_admin
    assert entry.data["changed"]["seller_rpm_limit"] == {"from": None, "to": 60}
    assert set(entry.data["changed"]) == {
        "seller_rpm_limit",
        "seller_concurrency_limit",
        "seller_daily_token_limit",
    }

    shown = page.get(reverse("tenant_limits", args=["tenant"])).content.decode()
    enforced = [cell.split("<")[0] for cell in shown.split('data-testid="enforced">')[1:]]
    assert enforced == ["30", "none", "4", "1000000"]

    # Clearing a limit removes it; saving the same values again logs nothing.
    page.post(
        reverse("tenant_limits", args=["tenant"]),
        _limits_form(rpm_limit=60, concurrency_limit=4),
    )
    page.post(
        reverse("tenant_limits", args=["tenant"]),
        _limits_form(rpm_limit=60, concurrency_limit=4),
    )
    assert _seller_limits(tenant_org) == (60, None, 4, None)
    assert AuditEntry.objects.filter(action="organization.limits").count() == 2


@pytest.mark.parametrize(
    "values",
    [
        {"rpm_limit": 0},
        {"tpm_limit": -5},
        {"concurrency_limit": LIMIT_MAX + 1},
        {"daily_token_limit": 2**63},
        {"rpm_limit": "many"},
    ],
)
def test_a_limit_out_of_range_is_refused_and_nothing_changes(
    tenant_org: Organization, reseller_admin: Any, values: dict[str, Any]
) -> None:
    response = client_for(reseller_admin).post(
        reverse("tenant_limits", args=["tenant"]), _limits_form(**values)
    )
    assert response.status_code == 400
    assert _seller_limits(tenant_org) == (None, None, None, None)
    assert not AuditEntry.objects.filter(action="organization.limits").exists()


def test_the_service_keeps_a_value_past_the_column_out_of_the_database(
    tenant_org: Organization, reseller_admin: Any
) -> None:
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError) as caught:
        services.tenant_limits_set(
            tenant=tenant_org, limits={"rpm_limit": LIMIT_MAX + 1}, actor=reseller_admin
        )
    assert "rpm_limit" in caught.value.message_dict
    assert tenant_org.seller_rpm_limit is None
    assert _seller_limits(tenant_org) == (None, None, None, None)
    with pytest.raises(ValidationError):
        services.tenant_limits_set(tenant=tenant_org.parent, limits={}, actor=reseller_admin)


def test_only_the_seller_sets_them_and_only_on_a_tenant(
    tenant_org: Organization,
    reseller_org: Organization,
    reseller_admin: Any,
    tenant_owner: Any,
    other_reseller_admin: Any,
    operator: Any,
) -> None:
    url = reverse("tenant_limits", args=["tenant"])
    assert client_for(tenant_owner).post(url, _limits_form(rpm_limit=10**6)).status_code == 403
    assert client_for(other_reseller_admin).post(url, _limits_form(rpm_limit=1)).status_code == 404
    assert _seller_limits(tenant_org) == (None, None, None, None)
    # A reseller has no limits page of its own: nobody sells to it from inside, and even
    # the operator, who sells to it, finds none.
    reseller_page = reverse("tenant_limits", args=["reseller"])
    assert client_for(reseller_admin).get(reseller_page).status_code == 403
    assert operator.get(reseller_page).status_code == 404


def test_the_navigation_and_tenant_list_lead_the_seller_there(
    tenant_org: Organization, reseller_admin: Any, tenant_owner: Any
) -> None:
    url = reverse("tenant_limits", args=["tenant"])
    assert url in client_for(reseller_admin).get(reverse("terms", args=["tenant"])).content.decode()
    listed = client_for(reseller_admin).get(reverse("tenants", args=["reseller"]))
    assert url in listed.content.decode()
    own_page = client_for(tenant_owner).get(reverse("keys", args=["tenant"]))
    assert url not in own_page.content.decode()


def test_the_tenant_sees_what_is_enforced_on_its_keys_page(
    tenant_org: Organization, tenant_owner: Any
) -> None:
    tenant_org.tpm_limit = 5_000
    tenant_org.seller_tpm_limit = 9_000
    tenant_org.seller_rpm_limit = 12
    tenant_org.save()
    page = client_for(tenant_owner).get(reverse("keys", args=["tenant"])).content.decode()
    together = page.split("keys together:")[1].split("</div>")[0]
    assert "12 requests/min" in together and "5000 tokens/min" in together
    assert "9000" not in together


def test_the_operators_admin_keeps_its_caps_apart_from_the_sellers(
    tenant_org: Organization,
) -> None:
    tenant_org.seller_rpm_limit = 7
    tenant_org.save()
    data = {"name": "Tenant", "slug": "tenant", "kind": "tenant", "is_active": "on"}
    form = OrganizationForm(
        data={**data, "parent": tenant_org.parent_id, "rpm_limit": "100"}, instance=tenant_org
    )
    assert form.is_valid(), form.errors
    form.save()
    tenant_org.refresh_from_db()
    assert (tenant_org.rpm_limit, tenant_org.seller_rpm_limit) == (100, 7)
    assert tenant_org.enforced_limit("rpm_limit") == 7


# --- The API ---------------------------------------------------------------------------------


def test_the_api_shows_the_split_to_the_seller_and_only_the_result_to_the_tenant(
    tenant_org: Organization, reseller_admin: Any, tenant_owner: Any
) -> None:
    tenant_org.concurrency_limit = 3
    tenant_org.save()
    url = "/api/organizations/tenant/limits/"
    seller = api_client_for(reseller_admin)

    response = seller.patch(url, {"concurrency_limit": 8, "rpm_limit": 100}, format="json")

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["organization"] == "tenant"
    assert body["enforced"] == {
        "rpm_limit": 100,
        "tpm_limit": None,
        "concurrency_limit": 3,
        "daily_token_limit": None,
    }
    assert body["seller"]["concurrency_limit"] == 8 and body["platform"]["concurrency_limit"] == 3

    # A kind not named stays; null removes one.
    seller.patch(url, {"rpm_limit": None}, format="json")
    assert _seller_limits(tenant_org) == (None, None, 8, None)

    own = api_client_for(tenant_owner)
    shown = own.get(url).json()
    assert shown["enforced"]["concurrency_limit"] == 3
    assert shown["seller"] is None and shown["platform"] is None
    assert own.patch(url, {"concurrency_limit": 1000}, format="json").status_code == 403
    assert _seller_limits(tenant_org) == (None, None, 8, None)


def test_the_api_refuses_bad_values_and_strangers(
    tenant_org: Organization, reseller_admin: Any, other_reseller_admin: Any
) -> None:
    url = "/api/organizations/tenant/limits/"
    seller = api_client_for(reseller_admin)
    assert seller.patch(url, {"rpm_limit": 0}, format="json").status_code == 400
    assert seller.patch(url, {"tpm_limit": LIMIT_MAX + 1}, format="json").status_code == 400
    assert seller.patch(url, {"rpm_limit": "x"}, format="json").status_code == 400
    stranger = api_client_for(other_reseller_admin)
    assert stranger.get(url).status_code == 404
    assert stranger.patch(url, {"rpm_limit": 1}, format="json").status_code == 404
    assert seller.get("/api/organizations/reseller/limits/").status_code == 404
    assert _seller_limits(tenant_org) == (None, None, None, None)


# --- Deactivating a tenant --------------------------------------------------------------------


def test_a_reseller_deactivates_and_reactivates_its_tenant(
    tenant_org: Organization, reseller_admin: Any, tenant_owner: Any
) -> None:
    page = client_for(reseller_admin)
    url = reverse("tenant_status", args=["tenant"])

    response = page.post(url, {"action": "deactivate"}, follow=True)
    assert "Tenant is deactivated: its keys are refused." in response.content.decode()
    tenant_org.refresh_from_db()
    assert not tenant_org.is_active
    assert 'data-testid="status">deactivated' in response.content.decode()
    # Its people still sign in and see their billing; they cannot issue keys.
    own = client_for(tenant_owner)
    assert own.get(reverse("billing", args=["tenant"])).status_code == 200
    assert own.post(reverse("keys", args=["tenant"]), {"name": "new"}).status_code == 400

    page.post(url, {"action": "deactivate"})  # again: nothing more happens
    page.post(url, {"action": "reactivate"})
    tenant_org.refresh_from_db()
    assert tenant_org.is_active
    actions = list(
        AuditEntry.objects.filter(organization=tenant_org)
        .order_by("pk")
        .values_list("action", flat=True)
    )
    assert actions == ["organization.deactivate", "organization.reactivate"]


def test_only_the_seller_deactivates_and_only_a_tenant(
    tenant_org: Organization,
    reseller_admin: Any,
    tenant_owner: Any,
    other_reseller_admin: Any,
    operator: Any,
) -> None:
    url = reverse("tenant_status", args=["tenant"])
    assert client_for(tenant_owner).post(url, {"action": "deactivate"}).status_code == 403
    assert client_for(other_reseller_admin).post(url, {"action": "deactivate"}).status_code == 404
    assert client_for(reseller_admin).get(url).status_code == 405
    odd = client_for(reseller_admin).post(url, {"action": "delete"})
    assert odd.status_code == 302
    tenant_org.refresh_from_db()
    assert tenant_org.is_active
    reseller_url = reverse("tenant_status", args=["reseller"])
    assert operator.post(reseller_url, {"action": "deactivate"}).status_code == 404
    assert Organization.objects.filter(is_active=False).count() == 0


def test_the_api_deactivates_for_the_seller_only(
    tenant_org: Organization, reseller_admin: Any, tenant_owner: Any
) -> None:
    own = api_client_for(tenant_owner)
    assert own.post("/api/organizations/tenant/deactivate/").status_code == 403
    seller = api_client_for(reseller_admin)
    response = seller.post("/api/organizations/tenant/deactivate/")
    assert response.status_code == 200 and response.json()["is_active"] is False
    tenant_org.refresh_from_db()
    assert not tenant_org.is_active
    assert own.post("/api/organizations/tenant/reactivate/").status_code == 403
    response = seller.post("/api/organizations/tenant/reactivate/")
    assert response.status_code == 200 and response.json()["is_active"] is True


def _admin_save(tenant: Organization, **changes: Any) -> None:
    """Save ``tenant`` through the operator's admin form with ``changes``."""
    data = {
        "name": tenant.name,
        "slug": tenant.slug,
        "kind": tenant.kind,
        "parent": tenant.parent_id,
        "is_active": "on" if tenant.is_active else "",
        "rpm_limit": tenant.rpm_limit or "",
        **changes,
    }
    form = OrganizationForm(data=data, instance=tenant)
    assert form.is_valid(), form.errors
    form.save()
    tenant.refresh_from_db()


def test_a_seller_cannot_lift_the_operators_deactivation(
    tenant_org: Organization, reseller_admin: Any
) -> None:
    _admin_save(tenant_org, is_active="")  # the operator deactivates it
    page = client_for(reseller_admin)

    shown = page.get(reverse("tenant_limits", args=["tenant"])).content.decode()
    refused = page.post(
        reverse("tenant_status", args=["tenant"]), {"action": "reactivate"}, follow=True
    )
    api = api_client_for(reseller_admin).post("/api/organizations/tenant/reactivate/")

    assert "deactivated by the platform" in shown and "Reactivate Tenant" not in shown
    assert "only they can reactivate it" in refused.content.decode()
    assert api.status_code == 400
    tenant_org.refresh_from_db()
    assert not tenant_org.is_active
    assert not AuditEntry.objects.filter(action="organization.reactivate").exists()


def test_the_sellers_deactivation_is_the_sellers_until_the_operator_takes_it_over(
    tenant_org: Organization, reseller_admin: Any
) -> None:
    seller = api_client_for(reseller_admin)
    seller.post("/api/organizations/tenant/deactivate/")
    tenant_org.refresh_from_db()
    assert (tenant_org.is_active, tenant_org.deactivated_by_seller) == (False, True)
    # The operator changing something else leaves it the seller's to lift.
    _admin_save(tenant_org, rpm_limit="50")
    assert (tenant_org.is_active, tenant_org.deactivated_by_seller) == (False, True)
    assert seller.post("/api/organizations/tenant/reactivate/").status_code == 200
    seller.post("/api/organizations/tenant/deactivate/")
    # The operator reactivating and deactivating it again makes it the operator's.
    _admin_save(tenant_org, is_active="on")
    assert (tenant_org.is_active, tenant_org.deactivated_by_seller) == (True, False)
    _admin_save(tenant_org, is_active="")
    assert seller.post("/api/organizations/tenant/reactivate/").status_code == 400


def test_a_platform_tenants_page_says_which_limit_is_whose(
    platform_org: Organization, operator: Any
) -> None:
    Organization.objects.create(
        name="Direct", slug="direct", kind=Organization.Kind.TENANT, parent=platform_org
    )
    response = operator.post(reverse("tenant_limits", args=["direct"]), _limits_form(rpm_limit=9))
    assert response.status_code == 302
    page = operator.get(reverse("tenant_limits", args=["direct"])).content.decode()
    assert "Platform cap (admin)" in page and "Limit set here" in page
    assert Organization.objects.get(slug="direct").seller_rpm_limit == 9


def test_the_page_says_when_the_resellers_deactivation_refuses_the_keys(
    tenant_org: Organization, reseller_org: Organization, operator: Any
) -> None:
    url = reverse("tenant_limits", args=["tenant"])
    assert "every key under it is refused" not in operator.get(url).content.decode()
    reseller_org.is_active = False
    reseller_org.save()
    assert "Reseller is deactivated by the platform" in operator.get(url).content.decode()
