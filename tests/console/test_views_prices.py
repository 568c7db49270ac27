"""The price pages show what each dimension costs, as charged (markups applied), mark
prices below the seller's cost, and let the operator import the shipped catalog."""

from __future__ import annotations

from typing import Any

import pytest
from django.urls import reverse

from billing import services as billing
from billing.models import ModelPrice
from portal.models import AuditEntry, CatalogModel
from tests.billing.conftest import Market
from tests.console.conftest import client_for

pytestmark = pytest.mark.django_db


def _page(client: Any, owner: str, list_id: int) -> str:
    response = client.get(reverse("price_list", args=[owner, list_id]))
    assert response.status_code == 200
    return response.content.decode()


def test_a_markup_list_shows_the_resulting_price_of_every_dimension(
    market: Market, reseller_admin: Any, operator_user: Any
) -> None:
    billing.model_price_set(
        price_list=market.wholesale,
        model=CatalogModel.objects.get(public_id="model-a"),
        input_per_mtok=2_000_000,
        output_per_mtok=8_000_000,
        cache_write_1h_per_mtok=4_000_000,
        audio_output_per_mtok=60_000_000,
        long_context_above_tokens=100_000,
        long_context_prices={"input": 3_000_000},
        priority_percent=175,
        web_search_micros=10_000,
        actor=operator_user,
    )
    html = _page(client_for(reseller_admin), "reseller", market.reseller_list.pk)
    # The reseller's list is wholesale + 50 %: each dimension shows its resulting price.
    assert "3.00</td>" in html and "12.00</td>" in html
    assert "Cache writes, 1 hour: 6.00" in html
    assert "Audio output tokens: 90.00" in html
    assert "Input tokens, above 100,000 prompt tokens: 4.50" in html
    assert "Priority tier: 175 %" in html
    assert "Web searches: 0.015 per search" in html
    assert "below cost" not in html
    # Sold at an explicit price without one, web search is not offered: not below cost.
    billing.model_price_set(
        price_list=market.reseller_list,
        model=CatalogModel.objects.get(public_id="model-a"),
        input_per_mtok=3_000_000,
        output_per_mtok=12_000_000,
        cache_write_1h_per_mtok=6_000_000,
        audio_output_per_mtok=90_000_000,
        long_context_above_tokens=100_000,
        long_context_prices={"input": 4_500_000},
        priority_percent=175,
        actor=reseller_admin,
    )
    html = _page(client_for(reseller_admin), "reseller", market.reseller_list.pk)
    assert "Web searches" not in html and "below cost" not in html


def test_prices_below_cost_are_marked(
    market: Market, reseller_admin: Any, operator_user: Any
) -> None:
    # The reseller sells model-c explicitly below what wholesale charges for output.
    billing.model_price_set(
        price_list=market.reseller_list,
        model=CatalogModel.objects.get(public_id="model-c"),
        input_per_mtok=2_000_000,
        output_per_mtok=1_000_000,
        actor=reseller_admin,
    )
    html = _page(client_for(reseller_admin), "reseller", market.reseller_list.pk)
    assert html.count(">below cost</span>") == 1 and "Output tokens" in html
    # The operator sells gpt-5.4 under the provider's list price in the shipped catalog.
    model = CatalogModel.objects.create(public_id="gpt-5.4")
    billing.model_price_set(
        price_list=market.wholesale,
        model=model,
        input_per_mtok=2_000_000,
        output_per_mtok=12_000_000,
        actor=operator_user,
    )
    html = _page(client_for(operator_user), "platform", market.wholesale.pk)
    assert html.count(">below cost</span>") == 1
    # The list price says when it was checked against the provider's page.
    assert "the provider's list price (checked 2026-11-30)" in html
    checked = CatalogModel.objects.create(public_id="claude-opus-5")
    billing.model_price_set(
        price_list=market.wholesale,
        model=checked,
        input_per_mtok=5_000_000,
        output_per_mtok=20_000_000,
        actor=operator_user,
    )
    html = _page(client_for(operator_user), "platform", market.wholesale.pk)
    assert html.count(">below cost</span>") == 2
    assert "list price (checked 2026-11-30)" in html


def test_the_operator_imports_the_catalog_with_one_click(
    market: Market, operator_user: Any, reseller_admin: Any
) -> None:
    operator = client_for(operator_user)
    url = reverse("price_list", args=["platform", market.wholesale.pk])
    page = _page(operator, "platform", market.wholesale.pk)
    assert "Import price catalog" in page and "unverified" not in page
    assert "read through a copy held elsewhere" in page
    response = operator.post(url, {"action": "catalog"}, follow=True)
    assert "Price catalog imported" in response.content.decode()
    priced = ModelPrice.objects.count()
    assert CatalogModel.objects.filter(public_id="claude-sonnet-4-5").exists()
    response = operator.post(url, {"action": "catalog"}, follow=True)
    assert "nothing changed" in response.content.decode()
    assert ModelPrice.objects.count() == priced
    assert AuditEntry.objects.filter(action="price_catalog.import").count() == 1
    # A reseller's list has no catalog button, and posting the action does nothing.
    reseller = client_for(reseller_admin)
    reseller_url = reverse("price_list", args=["reseller", market.reseller_list.pk])
    assert "Import price catalog" not in reseller.get(reseller_url).content.decode()
    assert reseller.post(reseller_url, {"action": "catalog"}).status_code == 200
    assert ModelPrice.objects.count() == priced
