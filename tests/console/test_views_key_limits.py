"""What a tenant sees of its own money: its price of each model (page and API), its keys'
limits and spend caps, and what is left of its budget."""

from __future__ import annotations

from typing import Any

import pytest
from django.urls import reverse
from django.utils import timezone

from billing.models import BillingAccount, KeyQuota
from portal.models import ApiKey, AuditEntry
from tests.billing.conftest import record_event
from tests.console.conftest import api_client_for, client_for

pytestmark = pytest.mark.django_db


def test_the_models_page_shows_the_tenants_own_price(market: Any, tenant_owner: Any) -> None:
    html = client_for(tenant_owner).get(reverse("tenant_models", args=["tenant"])).content.decode()
    assert "Your price" in html
    # model-a: wholesale 0.15 / 0.075 / 0.60 plus the reseller's 50 % markup.
    row_a = html.split('data-testid="price-model-a"', 1)[1].split("</td>", 1)[0]
    assert "input 0.225 · cached 0.1125 · output 0.90 USD" in row_a
    # model-c: the reseller's explicit price, with its fee per request.
    row_c = html.split('data-testid="price-model-c"', 1)[1].split("</td>", 1)[0]
    assert "input 1.333333" in row_c and "0.00025 USD per request" in row_c


def test_an_outsider_sees_no_prices_of_the_tenant(market: Any, outsider: Any) -> None:
    response = client_for(outsider).get(reverse("tenant_models", args=["tenant"]))
    assert response.status_code == 404
    api = api_client_for(outsider).get(reverse("api:tenant-prices", args=["tenant"]))
    assert api.status_code == 404


def test_the_api_lists_the_tenants_prices(market: Any, tenant_member: Any) -> None:
    body = api_client_for(tenant_member).get(reverse("api:tenant-prices", args=["tenant"])).json()
    prices = {row["model"]: row for row in body["prices"]}
    assert prices["model-a"]["input"] == 225_000 and prices["model-a"]["currency"] == "USD"
    assert prices["model-c"]["request_fee"] == 250


def test_a_key_is_created_with_limits_and_a_spend_cap(market: Any, tenant_owner: Any) -> None:
    client = client_for(tenant_owner)
    response = client.post(
        reverse("keys", args=["tenant"]),
        {
            "name": "capped",
            "rpm_limit": "60",
            "tpm_limit": "10000",
            "concurrency_limit": "4",
            "daily_token_limit": "1000000",
            "spend_limit": "5",
            "spend_period": "day",
            "spend_total_limit": "50",
        },
    )
    assert response.status_code == 200, response.content.decode()[-2000:]
    key = ApiKey.objects.get(name="capped")
    assert (key.rpm_limit, key.tpm_limit, key.concurrency_limit, key.daily_token_limit) == (
        60,
        10_000,
        4,
        1_000_000,
    )
    quota = KeyQuota.objects.get(api_key=key)
    assert (quota.period, quota.period_limit_micros, quota.total_limit_micros) == (
        "day",
        5_000_000,
        50_000_000,
    )
    assert AuditEntry.objects.filter(action="api_key.set_quota").count() == 1
    record_event(
        tenant=market.tenant,
        api_key=key,
        model="model-b",
        created_at=timezone.now(),
        prompt_tokens=100_000,
        completion_tokens=0,
    )  # 0.375 USD at retail (2.5 per 1M wholesale plus 50 %)
    html = client.get(reverse("keys", args=["tenant"])).content.decode()
    row = html.split("capped", 1)[1].split("</tr>", 1)[0]
    assert "60 requests/min" in row and "10000 tokens/min" in row and "4 at once" in row
    assert "4.625 left of 5.00 per day" in row and "<progress" in row
    assert "49.625 left of 50.00 in total" in row


def test_bad_limits_are_refused_on_the_form(market: Any, tenant_owner: Any) -> None:
    response = client_for(tenant_owner).post(
        reverse("keys", args=["tenant"]), {"name": "x", "rpm_limit": "0"}
    )
    assert response.status_code == 400 and not ApiKey.objects.filter(name="x").exists()


def test_the_api_creates_a_key_with_limits(market: Any, tenant_owner: Any) -> None:
    response = api_client_for(tenant_owner).post(
        reverse("api:key-list"),
        {"organization": "tenant", "name": "api", "rpm_limit": 5, "spend_limit_micros": 1000},
        format="json",
    )
    assert response.status_code == 201, response.content
    assert response.json()["rpm_limit"] == 5
    assert KeyQuota.objects.get(api_key__name="api").period_limit_micros == 1000


def test_the_keys_page_shows_what_is_left_of_the_budget(market: Any, tenant_owner: Any) -> None:
    BillingAccount.objects.update_or_create(
        organization=market.tenant, defaults={"monthly_budget_micros": 10_000_000}
    )
    record_event(
        tenant=market.tenant,
        api_key=market.keys[market.tenant.pk][0],
        model="model-b",
        created_at=timezone.now(),
        prompt_tokens=1_000_000,
        completion_tokens=0,
    )  # 3.75 USD at retail
    html = client_for(tenant_owner).get(reverse("keys", args=["tenant"])).content.decode()
    bar = html.split('data-testid="budget-remaining"', 1)[1].split("</div>", 1)[0]
    assert "6.25 USD</strong> left of this month's budget of 10.00 USD" in bar
    assert '<progress id="budget-progress" max="10000000" value="3750000">' in bar
