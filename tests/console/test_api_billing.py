"""The management API's money endpoints: price lists, invoices with PDF and CSV,
balances and top-ups, scoped and audited like the dashboard."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from billing import services as billing
from billing.models import BillingAccount, Invoice, LedgerEntry, ModelPrice, PriceList
from billing.selectors import account_balance_micros
from portal import tokens
from portal.models import AuditEntry, CatalogModel
from tests.billing.conftest import MARCH, Market, generate_month
from tests.console.conftest import api_client_for

pytestmark = pytest.mark.django_db


def token_client(user: Any, scope: str) -> APIClient:
    _, secret = tokens.personal_access_token_create(user=user, name=scope, scope=scope, actor=user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


def test_reseller_manages_its_price_lists(market: Market, reseller_admin: Any) -> None:
    api = api_client_for(reseller_admin)
    listed = api.get("/api/price-lists/").json()["results"]
    assert [p["name"] for p in listed] == ["Reseller retail"]  # not the other reseller's

    created = api.post(
        "/api/price-lists/",
        {"owner": "reseller", "name": "Enterprise", "markup_percent": "12.5"},
        format="json",
    )
    assert created.status_code == 201, created.content
    list_id = created.json()["id"]
    priced = api.post(
        f"/api/price-lists/{list_id}/prices/",
        {"model": "model-a", "input_per_mtok": 200_000, "output_per_mtok": 800_000},
        format="json",
    )
    assert priced.status_code == 201, priced.content
    assert priced.json()["cached_input_per_mtok"] == 200_000
    detail = api.get(f"/api/price-lists/{list_id}/").json()
    assert detail["markup_percent"] == "12.5000" and detail["prices"][0]["model"] == "model-a"
    assert ModelPrice.objects.filter(price_list_id=list_id).count() == 1
    assert AuditEntry.objects.filter(action="model_price.set", actor=reseller_admin).exists()

    unknown = api.post(
        f"/api/price-lists/{list_id}/prices/",
        {"model": "no-such", "input_per_mtok": 1, "output_per_mtok": 1},
        format="json",
    )
    assert unknown.status_code == 400
    assert (
        api.post(
            "/api/price-lists/", {"owner": "platform", "name": "Mine"}, format="json"
        ).status_code
        == 404
    )
    other = api.get(f"/api/price-lists/{market.other_list.pk}/")
    assert other.status_code == 404


def test_topups_by_the_seller_only(
    market: Market, reseller_admin: Any, tenant_owner: Any, tenant_billing: Any
) -> None:
    response = api_client_for(reseller_admin).post(
        "/api/organizations/tenant/topups/",
        {"amount_micros": 12_000_000, "memo": "invoice 7"},
        format="json",
    )
    assert response.status_code == 201, response.content
    account = BillingAccount.objects.get(organization=market.tenant)
    assert account_balance_micros(account) == 12_000_000

    balance = api_client_for(tenant_billing).get("/api/organizations/tenant/balance/").json()
    assert balance["balance_micros"] == 12_000_000 and balance["currency"] == "USD"
    entries = api_client_for(tenant_billing).get("/api/organizations/tenant/topups/").json()
    assert [(e["kind"], e["amount_micros"]) for e in entries] == [("topup", 12_000_000)]

    for client in (api_client_for(tenant_owner), api_client_for(tenant_billing)):
        refused = client.post(
            "/api/organizations/tenant/topups/", {"amount_micros": 5}, format="json"
        )
        assert refused.status_code == 403
    read_only = token_client(reseller_admin, "read")
    assert (
        read_only.post(
            "/api/organizations/tenant/topups/", {"amount_micros": 5}, format="json"
        ).status_code
        == 403
    )
    assert read_only.get("/api/organizations/tenant/balance/").status_code == 200
    bad = api_client_for(reseller_admin).post(
        "/api/organizations/tenant/topups/", {"amount_micros": 0}, format="json"
    )
    assert bad.status_code == 400
    assert LedgerEntry.objects.count() == 1


def test_invoices_are_listed_and_downloaded_by_whoever_may_see_them(
    market: Market, reseller_admin: Any, tenant_billing: Any, tenant_member: Any, outsider: Any
) -> None:
    generate_month(market, count=60)
    draft = billing.invoice_generate(customer=market.tenant, period=MARCH)
    assert draft is not None
    tenant = api_client_for(tenant_billing)
    reseller = api_client_for(reseller_admin)
    assert tenant.get("/api/invoices/").json()["count"] == 0  # drafts are the issuer's
    assert tenant.get(f"/api/invoices/{draft.pk}/").status_code == 404
    assert [i["id"] for i in reseller.get("/api/invoices/").json()["results"]] == [draft.pk]

    billing.invoice_issue(invoice=draft, actor=reseller_admin)
    listed = tenant.get("/api/invoices/", {"status": "issued"}).json()["results"]
    assert [(i["number"], i["total_micros"]) for i in listed] == [
        ("RESELLER-2026-000001", Invoice.objects.get().total_micros)
    ]
    pdf = tenant.get(f"/api/invoices/{draft.pk}/pdf/")
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")
    csv = tenant.get(f"/api/invoices/{draft.pk}/csv/")
    assert csv.content.decode().splitlines()[-1].startswith("total,RESELLER-2026-000001")
    assert api_client_for(tenant_member).get(f"/api/invoices/{draft.pk}/").status_code == 403
    assert api_client_for(tenant_member).get("/api/invoices/").json()["count"] == 0
    assert api_client_for(outsider).get(f"/api/invoices/{draft.pk}/pdf/").status_code == 404


def test_money_lists_make_a_bounded_number_of_queries(
    market: Market, reseller_admin: Any, operator_user: Any
) -> None:
    api = api_client_for(reseller_admin)

    def count(url: str) -> int:
        with CaptureQueriesContext(connection) as queries:
            assert api.get(url).status_code == 200
        return len(queries)

    generate_month(market, count=40)
    billing.invoice_generate(customer=market.tenant, period=MARCH)
    few = {url: count(url) for url in ("/api/invoices/", "/api/price-lists/")}
    for n in range(5):
        price_list = PriceList.objects.create(owner=market.reseller, name=f"More {n}")
        for model in CatalogModel.objects.values_list("pk", flat=True):
            ModelPrice.objects.create(
                price_list=price_list,
                model_id=model,
                input_per_mtok=1,
                cached_input_per_mtok=1,
                output_per_mtok=1,
                effective_from=MARCH.start_at,
            )
        billing.invoice_generate(customer=market.tenant, period=MARCH.previous())
        Invoice.objects.create(
            issuer=market.reseller,
            customer=market.tenant,
            kind="tenant",
            period_start=MARCH.start.replace(year=2010 + n),
            period_end=MARCH.end.replace(year=2010 + n),
            currency="USD",
        )
    assert {url: count(url) for url in few} == few
    assert max(few.values()) <= 8


def test_a_price_sets_every_dimension_through_the_api(market: Market, reseller_admin: Any) -> None:
    api = api_client_for(reseller_admin)
    priced = api.post(
        f"/api/price-lists/{market.reseller_list.pk}/prices/",
        {
            "model": "model-b",
            "input_per_mtok": 3_000_000,
            "output_per_mtok": 15_000_000,
            "cache_write_5m_per_mtok": 3_750_000,
            "audio_output_per_mtok": 80_000_000,
            "output_image_micros": 40_000,
            "long_context_above_tokens": 200_000,
            "long_context_prices": {"input": 6_000_000},
            "priority_percent": 175,
        },
        format="json",
    )
    assert priced.status_code == 201, priced.content
    body = priced.json()
    assert body["cache_write_5m_per_mtok"] == 3_750_000 and body["audio_input_per_mtok"] is None
    assert body["long_context_prices"] == {"input": 6_000_000}
    price = ModelPrice.objects.get(price_list=market.reseller_list, model__public_id="model-b")
    assert (price.output_image_micros, price.priority_percent) == (40_000, 175)
    wrong = api.post(
        f"/api/price-lists/{market.reseller_list.pk}/prices/",
        {
            "model": "model-b",
            "input_per_mtok": 1,
            "output_per_mtok": 1,
            "long_context_prices": {"input": 5},
        },
        format="json",
    )
    assert wrong.status_code == 400  # a tier needs its threshold
