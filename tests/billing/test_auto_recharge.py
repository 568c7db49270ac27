"""Auto-recharge: a saved card is charged once per fall below the threshold, at most the
daily cap, credited by its webhook; a declined charge is e-mailed to the payers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine
from django.core import mail
from django.urls import reverse

from billing.models import AutoRecharge, LedgerEntry, Payment
from billing.services import account_adjust
from billing.services import auto_recharge as recharge
from portal.models import Membership
from tests.billing.payments_fixtures import (
    USD,
    Shop,
)
from tests.conftest import make_member
from tests.console.conftest import client_for

pytestmark = pytest.mark.django_db


def save_card(shop: Shop, owner: Any, amount: str = "20") -> None:
    """Top up once with the card saved, as a customer would, and have Stripe confirm."""
    response = client_for(owner).post(
        reverse("payments", args=["tenant"]),
        {"action": "topup", "amount": amount, "save_card": "on"},
    )
    assert response.status_code == 303
    payment = Payment.objects.latest("id")
    session = shop.fake.complete_checkout(payment.stripe_id, payment_method="pm_card_saved")
    assert shop.deliver(shop.fake.event("checkout.session.completed", session)).status_code == 200


def spend(shop: Shop, micros: int) -> None:
    account_adjust(account=shop.account, amount_micros=-micros, actor="test", memo="usage")


def confirm_charges(shop: Shop) -> int:
    """Deliver payment_intent.succeeded for every off-session charge Stripe made."""
    credited = 0
    for call in shop.fake.calls("POST", "/v1/payment_intents"):
        intent = next(
            o
            for o in shop.fake.objects.values()
            if o.get("_key") == call["key"]
            and o["object"] == "payment_intent"
            and o["metadata"] == call["params"]["metadata"]
        )
        outcome = shop.deliver(shop.fake.event("payment_intent.succeeded", intent)).json()
        credited += outcome["outcome"] == "credited"
    return credited


def test_the_saved_card_recharges_once_per_crossing_up_to_the_daily_cap(
    shop: Shop, tenant_owner: Any
) -> None:
    save_card(shop, tenant_owner)
    rule = AutoRecharge.objects.get(account=shop.account)
    assert rule.payment_method_id == "pm_card_saved" and rule.stripe_customer_id.startswith("cus_")
    page = client_for(tenant_owner)
    saved = page.post(
        reverse("payments", args=["tenant"]),
        {
            "action": "auto_recharge",
            "enabled": "on",
            "threshold": "10",
            "amount": "50",
            "max_per_day": "2",
        },
    )
    assert saved.status_code == 302

    start = datetime.now(UTC).replace(hour=8)
    with time_machine.travel(start, tick=False) as clock:
        assert recharge.auto_recharge_check(account_id=shop.account.pk) is None  # 20 >= 10
        spend(shop, 15 * USD)  # 5 left: below
        first = recharge.auto_recharge_check(account_id=shop.account.pk)
        assert first is not None and first.amount_micros == 50 * USD
        for _ in range(3):  # still below, not confirmed yet: no second charge
            assert recharge.auto_recharge_check(account_id=shop.account.pk) is None
        charges = shop.fake.calls("POST", "/v1/payment_intents")
        assert len(charges) == 1
        params = charges[0]["params"]
        assert params["off_session"] == "true" and params["payment_method"] == "pm_card_saved"
        assert params["amount"] == "5000" and charges[0]["idem"] == f"tollgate-payment-{first.pk}"
        assert shop.balance() == 5 * USD  # nothing credited before the webhook
        assert confirm_charges(shop) == 1
        assert shop.balance() == 55 * USD

        assert recharge.auto_recharge_check(account_id=shop.account.pk) is None  # re-armed
        spend(shop, 50 * USD)
        assert recharge.auto_recharge_check(account_id=shop.account.pk) is not None  # 2nd today
        confirm_charges(shop)
        assert recharge.auto_recharge_check(account_id=shop.account.pk) is None
        spend(shop, 50 * USD)
        assert recharge.auto_recharge_check(account_id=shop.account.pk) is None  # cap of 2 reached
        assert len(shop.fake.calls("POST", "/v1/payment_intents")) == 2

        clock.shift(timedelta(days=1))
        assert recharge.auto_recharge_check(account_id=shop.account.pk) is not None  # a new day
    assert confirm_charges(shop) == 1
    credits = LedgerEntry.objects.filter(account=shop.account, memo="Auto-recharge")
    assert credits.count() == 3


def test_a_declined_charge_is_reported_to_owners_and_billing_once(
    shop: Shop,
    tenant_owner: Any,
    tenant_member: Any,
    tenant_org: Any,
    django_capture_on_commit_callbacks: Any,
) -> None:
    payer = make_member("payer", tenant_org, Membership.Role.BILLING)
    save_card(shop, tenant_owner)
    recharge.auto_recharge_set(
        account=shop.account,
        enabled=True,
        threshold_micros=10 * USD,
        amount_micros=25 * USD,
        max_per_day=3,
        actor="t",
    )
    spend(shop, 15 * USD)
    shop.fake.decline_off_session = True
    mail.outbox.clear()
    with django_capture_on_commit_callbacks(execute=True):
        payment = recharge.auto_recharge_check(account_id=shop.account.pk)
    assert payment is not None and payment.status == Payment.Status.FAILED
    assert "insufficient funds" in payment.failure_message
    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert sorted(message.to) == sorted([tenant_owner.email, payer.email])
    assert tenant_member.email not in message.to
    assert (
        "auto-recharge of 25.00 USD failed"
        in message.subject.lower().replace("25 usd", "25.00 usd")
        or "failed" in message.subject
    )
    # Stripe's own failure webhook for the same charge tells no one again.
    intent = next(
        o for o in shop.fake.objects.values() if o.get("status") == "requires_payment_method"
    )
    with django_capture_on_commit_callbacks(execute=True):
        event = shop.fake.event("payment_intent.payment_failed", intent)
        outcome = shop.deliver(event).json()
    assert outcome["outcome"] == "already settled" and len(mail.outbox) == 1
    # Disarmed: no retry hammering the card while the balance stays low.
    assert recharge.auto_recharge_check(account_id=shop.account.pk) is None
    assert shop.balance() == 5 * USD


def test_auto_recharge_needs_a_saved_card(shop: Shop, tenant_owner: Any) -> None:
    response = client_for(tenant_owner).post(
        reverse("payments", args=["tenant"]),
        {
            "action": "auto_recharge",
            "enabled": "on",
            "threshold": "10",
            "amount": "50",
            "max_per_day": "1",
        },
    )
    # The form is only offered with a card; posting anyway is refused.
    assert response.status_code == 400
    assert not AutoRecharge.objects.filter(enabled=True).exists()
