"""Plan pages and API: a reseller defines plans and subscribes its tenants; a tenant sees
what is left in each window, from the relay's own counters, and subscribes itself."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse

from billing.models import LedgerEntry, Plan, Subscription
from billing.services import plan_create, subscription_create
from portal.models import Organization
from relay import shared
from relay.limits import Reservation
from relay.snapshot import subscription_windows
from tests.console.conftest import api_client_for, client_for

pytestmark = pytest.mark.django_db(transaction=True)


def count_usage(subscription: Subscription, tokens: int) -> None:
    """Count ``tokens`` into the subscription's windows the way the relay admits a request
    (Redis, or this process's memory in the embedded mode)."""

    windows = tuple(subscription_windows(subscription))

    async def admit() -> None:
        held = Reservation(scopes=(), worst_micros=0, windows=windows)
        admission = await shared.limit_store().acquire([], "req-console", tokens, 30, held)
        assert admission.allowed
        await shared.close()

    asyncio.run(admit())


def test_a_reseller_creates_a_plan_with_windows_and_subscribes_a_tenant(
    reseller_admin: Any, reseller_org: Organization, tenant_org: Organization
) -> None:
    client = client_for(reseller_admin)
    url = reverse("plans", args=[reseller_org.slug])
    response = client.post(
        url,
        {
            "action": "create",
            "name": "Pro",
            "monthly_fee": "20",
            "included_credit": "5",
            "window_1_length": "5h",
            "window_1_tokens": "100000",
            "window_2_length": "7d",
            "window_2_spend": "12.5",
            "window_2_models": "model-a, model-b",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    plan = Plan.objects.get(seller=reseller_org, name="Pro")
    assert plan.monthly_fee_micros == 20_000_000
    assert [(w.length, w.kind, w.cap, w.model_ids) for w in plan.windows.all()] == [
        ("5h", "tokens", 100_000, []),
        ("7d", "spend", 12_500_000, ["model-a", "model-b"]),
    ]
    # A window with both caps, or neither, is refused with the form.
    bad = client.post(
        url,
        {"action": "create", "name": "Bad", "monthly_fee": "1", "window_1_length": "1d"},
    )
    assert bad.status_code == 400
    assert not Plan.objects.filter(name="Bad").exists()

    response = client.post(url, {"action": "subscribe", "tenant": tenant_org.pk, "plan": plan.pk})
    assert response.status_code == 302
    assert Subscription.objects.get(tenant=tenant_org, status="active").plan == plan
    page = client.get(url).content.decode()
    assert "Pro" in page and tenant_org.name in page
    assert "12.5" in page and "model-a, model-b" in page


def test_a_tenant_sees_what_is_left_and_subscribes_itself(
    tenant_owner: Any, tenant_member: Any, reseller_org: Organization, tenant_org: Organization
) -> None:
    plan = plan_create(
        seller=reseller_org,
        name="Starter",
        monthly_fee_micros=3_000_000,
        windows=[{"length": "5h", "cap": 1000}],
        actor="test",
    )
    url = reverse("plan", args=[tenant_org.slug])
    owner = client_for(tenant_owner)
    assert "Starter" in owner.get(url).content.decode()
    # A plain member sees the plan but may not buy one.
    member = client_for(tenant_member)
    assert member.get(url).status_code == 200
    assert member.post(url, {"action": "subscribe", "plan": plan.pk}).status_code == 403
    assert owner.post(url, {"action": "subscribe", "plan": plan.pk}).status_code == 302
    subscription = Subscription.objects.get(tenant=tenant_org, status="active")
    fee = LedgerEntry.objects.get(kind=LedgerEntry.Kind.PLAN_FEE)
    assert fee.amount_micros == -3_000_000

    count_usage(subscription, 400)
    page = owner.get(url).content.decode()
    assert "<strong>600</strong>" in page  # left of 1000
    api = api_client_for(tenant_owner).get(
        reverse("api:subscription", kwargs={"slug": tenant_org.slug})
    )
    assert api.status_code == 200
    window = api.json()["windows"][0]
    assert (window["cap"], window["used"], window["remaining"]) == (1000, 400, 600)
    assert 5 * 3600 <= window["reset_seconds"] <= 5 * 3600 + 300

    assert owner.post(url, {"action": "cancel"}).status_code == 302
    assert not Subscription.objects.filter(tenant=tenant_org, status="active").exists()


def test_the_api_creates_plans_and_subscribes(
    reseller_admin: Any, tenant_billing: Any, reseller_org: Organization, tenant_org: Organization
) -> None:
    reseller = api_client_for(reseller_admin)
    created = reseller.post(
        reverse("api:plan-list"),
        {
            "seller": reseller_org.slug,
            "name": "Team",
            "monthly_fee_micros": 9_000_000,
            "windows": [{"length": "1d", "kind": "tokens", "cap": 50_000}],
        },
        format="json",
    )
    assert created.status_code == 201, created.json()
    plan_id = created.json()["id"]
    bad = reseller.post(
        reverse("api:plan-list"),
        {
            "seller": reseller_org.slug,
            "name": "Bad",
            "monthly_fee_micros": 1,
            "windows": [{"length": "2h", "cap": 5}],
        },
        format="json",
    )
    assert bad.status_code == 400
    billing_person = api_client_for(tenant_billing)
    assert [p["name"] for p in billing_person.get(reverse("api:plan-list")).json()["results"]] == [
        "Team"
    ]
    url = reverse("api:subscription", kwargs={"slug": tenant_org.slug})
    subscribed = billing_person.post(url, {"plan": plan_id}, format="json")
    assert subscribed.status_code == 201
    assert subscribed.json()["plan"]["name"] == "Team"
    assert subscribed.json()["windows"][0]["remaining"] == 50_000
    assert billing_person.delete(url).status_code == 204
    assert billing_person.get(url).json()["plan"] is None


def test_a_reseller_cannot_subscribe_another_resellers_tenant(
    reseller_admin: Any, reseller_org: Organization, other_tenant_org: Organization
) -> None:
    plan = plan_create(seller=reseller_org, name="Mine", monthly_fee_micros=1, actor="test")
    response = client_for(reseller_admin).post(
        reverse("plans", args=[reseller_org.slug]),
        {"action": "subscribe", "tenant": other_tenant_org.pk, "plan": plan.pk},
    )
    assert response.status_code == 400  # not one of its tenants: not a choice
    with pytest.raises(ValidationError):  # the service refuses it too
        subscription_create(tenant=other_tenant_org, plan=plan, actor="test")
    assert not Subscription.objects.exists()


def test_a_deactivated_tenant_sees_its_plan_paused_and_cannot_subscribe(
    tenant_owner: Any, reseller_admin: Any, reseller_org: Organization, tenant_org: Organization
) -> None:
    plan = plan_create(seller=reseller_org, name="Starter", monthly_fee_micros=3, actor="test")
    url = reverse("plan", args=[tenant_org.slug])
    owner = client_for(tenant_owner)
    assert owner.post(url, {"action": "subscribe", "plan": plan.pk}).status_code == 302
    assert 'data-testid="plan-paused"' not in owner.get(url).content.decode()
    deactivate = reverse("tenant_status", args=[tenant_org.slug])
    assert client_for(reseller_admin).post(deactivate, {"action": "deactivate"}).status_code == 302
    page = owner.get(url).content.decode()
    assert 'data-testid="plan-paused"' in page and "not renewed" in page
    other = plan_create(seller=reseller_org, name="Other", monthly_fee_micros=5, actor="test")
    refused = owner.post(url, {"action": "subscribe", "plan": other.pk}, follow=True)
    assert "it can take a plan once it is reactivated" in refused.content.decode()
    api = api_client_for(tenant_owner).post(
        reverse("api:subscription", kwargs={"slug": tenant_org.slug}),
        {"plan": other.pk},
        format="json",
    )
    assert api.status_code == 400 and "reactivated" in str(api.json())
    assert Subscription.objects.get(tenant=tenant_org, status="active").plan == plan
    assert LedgerEntry.objects.filter(kind=LedgerEntry.Kind.PLAN_FEE).count() == 1
