"""The billing admin: every page opens with data; changes go through audited services."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine
from django.contrib import admin
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from billing.models import BillingAccount, BudgetAlert, ModelPrice
from billing.services import (
    account_topup,
    billing_account_create,
    invoice_generate,
    key_quota_set,
    redemption_code_create,
    rollups_advance,
    tenant_defaults_set,
    usage_charges_advance,
)
from portal.models import AuditEntry, CatalogModel
from tests.billing.conftest import MARCH, EventFactory, Market

pytestmark = pytest.mark.django_db


def admin_url(model: type[Any], view: str, *args: Any) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


@pytest.fixture
def operator_client(client: Client, operator_user: Any) -> Client:
    client.force_login(operator_user)
    return client


@pytest.fixture
def populated(market: Market, event: EventFactory) -> None:
    with time_machine.travel(datetime(2026, 4, 2, tzinfo=UTC), tick=False):
        account = billing_account_create(
            organization=market.tenant, monthly_budget_micros=1, actor="test"
        )
        event(prompt_tokens=1000)
        account_topup(account=account, amount_micros=5, actor="test")
        redemption_code_create(issuer=market.platform, amount_micros=1, currency="USD", actor="t")
        key_quota_set(api_key=market.keys[market.tenant.pk][0], total_limit_micros=9, actor="t")
        invoice_generate(customer=market.tenant, period=MARCH)
        tenant_defaults_set(
            seller=market.reseller, mode="postpaid", credit_limit_micros=1, actor="test"
        )
    with time_machine.travel(datetime(2026, 4, 2, 1, tzinfo=UTC), tick=False):
        rollups_advance()
        usage_charges_advance()
    BudgetAlert.objects.create(
        account=account,
        period_start=MARCH.start,
        threshold_percent=50,
        spend_micros=1,
        budget_micros=1,
        currency="USD",
    )


def test_every_billing_page_opens(operator_client: Client, populated: None) -> None:
    models = [m for m in admin.site._registry if m._meta.app_label == "billing"]
    for model in models:
        assert operator_client.get(admin_url(model, "changelist")).status_code == 200, model
        obj = model._default_manager.first()
        assert obj is not None, model
        assert operator_client.get(admin_url(model, "change", obj.pk)).status_code == 200, model


def test_a_price_added_in_the_admin_is_audited(
    operator_client: Client, operator_user: Any, market: Market
) -> None:
    start = timezone.now() + timedelta(days=1)
    response = operator_client.post(
        admin_url(ModelPrice, "add"),
        {
            "price_list": market.wholesale.pk,
            "model": CatalogModel.objects.get(public_id="model-b").pk,
            "input_per_mtok": 1,
            "cached_input_per_mtok": 1,
            "output_per_mtok": 2,
            "request_fee_micros": 0,
            "effective_from_0": start.strftime("%Y-%m-%d"),
            "effective_from_1": start.strftime("%H:%M:%S"),
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    entry = AuditEntry.objects.get(action="model_price.set")
    assert entry.actor == operator_user
    price = ModelPrice.objects.get(pk=int(entry.target_id))
    assert operator_client.get(admin_url(ModelPrice, "delete", price.pk)).status_code == 403


def test_an_account_changed_in_the_admin_is_audited(
    operator_client: Client, market: Market
) -> None:
    account = billing_account_create(organization=market.tenant, mode="postpaid", actor="test")
    response = operator_client.post(
        admin_url(BillingAccount, "change", account.pk),
        {
            "mode": "prepaid",
            "currency": "USD",
            "credit_limit_micros": "",
            "price_list": "",
            "monthly_budget_micros": "5000000",
            "alert_thresholds": "[50, 100]",
            "alert_emails": "[]",
            "alert_webhook_url": "",
            "tax_rate_percent": "",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    account.refresh_from_db()
    assert (account.mode, account.monthly_budget_micros) == ("prepaid", 5_000_000)
    changed = AuditEntry.objects.get(action="billing_account.update").data
    assert set(changed) == {"mode", "monthly_budget_micros", "alert_thresholds"}
