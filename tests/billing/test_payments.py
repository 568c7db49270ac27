"""Card payments through the stripe library against a loopback stand-in of Stripe:
Checkout top-ups and invoice links credited only by signed webhooks, once each."""

from __future__ import annotations

import time
from datetime import date
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from billing.documents import payment_link
from billing.models import Invoice, LedgerEntry, Payment, StripeAccount, StripeEvent
from billing.services import payments as pay
from portal.models import AuditEntry
from tests.billing.payments_fixtures import (
    OTHER_WHSEC,
    RESELLER_KEY,
    RESELLER_WHSEC,
    USD,
    Shop,
)
from tests.console.conftest import client_for
from tests.stripe_fake import signed

pytestmark = pytest.mark.django_db


def _start_topup(page: Client, amount: str, **extra: str) -> Payment:
    response = page.post(
        reverse("payments", args=["tenant"]), {"action": "topup", "amount": amount, **extra}
    )
    assert response.status_code == 303, response.content.decode()[:500]
    payment = Payment.objects.latest("id")
    assert response["Location"] == payment.checkout_url
    return payment


def test_keys_are_encrypted_at_rest_and_each_seller_has_its_webhook(shop: Shop) -> None:
    row = StripeAccount.objects.values().get(pk=shop.stripe.pk)
    assert RESELLER_KEY not in str(row) and RESELLER_WHSEC not in str(row)
    assert shop.stripe.secret_key == RESELLER_KEY and shop.stripe.is_test_mode
    assert shop.stripe.public_id != shop.other_stripe.public_id
    entry = AuditEntry.objects.filter(action="stripe_account.connect").first()
    assert entry is not None and RESELLER_KEY not in str(entry.data)


def test_checkout_topup_credits_once_however_often_and_in_whatever_order(
    shop: Shop, tenant_owner: Any
) -> None:
    page = client_for(tenant_owner)
    first = _start_topup(page, "25")
    second = _start_topup(page, "10.50")
    # The reseller's tenant pays the reseller: its key made the session, in cents.
    sessions = shop.fake.calls("POST", "/v1/checkout/sessions")
    assert [c["key"] for c in sessions] == [RESELLER_KEY, RESELLER_KEY]
    assert sessions[0]["params"]["line_items"][0]["price_data"]["unit_amount"] == "2500"
    assert sessions[0]["idem"] == f"tollgate-payment-{first.pk}"

    # Coming back from Checkout credits nothing.
    back = page.get(reverse("payments", args=["tenant"]) + "?checkout=done")
    assert back.status_code == 200 and "Stripe is confirming" in back.content.decode()
    assert shop.balance() == 0

    one = shop.fake.event(
        "checkout.session.completed", shop.fake.complete_checkout(first.stripe_id)
    )
    two = shop.fake.event(
        "checkout.session.completed", shop.fake.complete_checkout(second.stripe_id)
    )
    intent = shop.fake.objects[shop.fake.objects[first.stripe_id]["payment_intent"]]
    early = shop.fake.event("payment_intent.succeeded", intent)
    outcomes = [shop.deliver(e).json()["outcome"] for e in (two, early, one, two, one, one)]
    assert outcomes[0] == "credited" and outcomes[2] == "credited"
    assert outcomes[1].startswith("ignored")
    assert set(outcomes[3:]) == {"duplicate"}

    assert shop.balance() == 35_500_000
    topups = LedgerEntry.objects.filter(account=shop.account, kind=LedgerEntry.Kind.TOPUP)
    assert sorted(topups.values_list("reference", flat=True)) == sorted(
        [f"stripe:{first.stripe_id}", f"stripe:{second.stripe_id}"]
    )
    assert StripeEvent.objects.count() == 3
    first.refresh_from_db()
    assert first.status == Payment.Status.SUCCEEDED and first.payment_intent_id == intent["id"]
    assert AuditEntry.objects.filter(action="ledger.card_payment").count() == 2


def test_webhooks_refuse_unsigned_or_wrongly_signed_bodies(shop: Shop, tenant_owner: Any) -> None:
    payment = _start_topup(client_for(tenant_owner), "5")
    event = shop.fake.event(
        "checkout.session.completed", shop.fake.complete_checkout(payment.stripe_id)
    )
    url = reverse("stripe_webhook", args=[shop.stripe.public_id])
    body, header = signed(event, RESELLER_WHSEC)
    client = Client()

    def post(data: bytes, signature: str | None) -> int:
        extra = {"HTTP_STRIPE_SIGNATURE": signature} if signature is not None else {}
        return client.post(url, data=data, content_type="application/json", **extra).status_code

    assert post(body, None) == 400  # unsigned
    assert post(body, signed(event, "whsec_guess")[1]) == 400  # another secret
    assert post(body, signed(event, OTHER_WHSEC)[1]) == 400  # another seller's secret
    assert post(body.replace(b'"paid"', b'"PAID"'), header) == 400  # altered body
    stale = signed(event, RESELLER_WHSEC, timestamp=int(time.time()) - 3600)
    assert post(stale[0], stale[1]) == 400  # replayed from long ago
    assert post(b"not json", header) == 400
    assert client.get(url).status_code == 405
    unknown = reverse("stripe_webhook", args=["00000000-0000-0000-0000-000000000000"])
    assert (
        client.post(
            unknown, data=body, content_type="application/json", HTTP_STRIPE_SIGNATURE=header
        ).status_code
        == 404
    )
    assert not StripeEvent.objects.exists() and shop.balance() == 0
    payment.refresh_from_db()
    assert payment.status == Payment.Status.PENDING
    assert post(body, header) == 200 and shop.balance() == 5 * USD


def test_another_seller_cannot_credit_this_sellers_payment(shop: Shop, tenant_owner: Any) -> None:
    payment = _start_topup(client_for(tenant_owner), "5")
    event = shop.fake.event(
        "checkout.session.completed", shop.fake.complete_checkout(payment.stripe_id)
    )
    response = shop.deliver(event, to=shop.other_stripe)
    assert response.status_code == 200 and response.json()["outcome"] == "not a Tollgate payment"
    assert shop.balance() == 0


def test_an_amount_that_differs_from_the_payment_is_not_credited(
    shop: Shop, tenant_owner: Any
) -> None:
    payment = _start_topup(client_for(tenant_owner), "5")
    session = shop.fake.complete_checkout(payment.stripe_id)
    session["amount_total"] = 500_000
    assert (
        shop.deliver(shop.fake.event("checkout.session.completed", session))
        .json()["outcome"]
        .startswith("amount mismatch")
    )
    assert shop.balance() == 0


def test_a_payment_link_pays_the_invoice(shop: Shop, tenant_owner: Any, reseller_org: Any) -> None:
    shop.account.mode = "postpaid"
    shop.account.save()
    invoice = Invoice.objects.create(
        issuer=reseller_org,
        customer=shop.account.organization,
        kind="tenant",
        period_start=date(2026, 10, 1),
        period_end=date(2026, 11, 1),
        currency="USD",
        status=Invoice.Status.ISSUED,
        number="RESELLER-2026-000007",
        subtotal_micros=42_000_000,
        total_micros=42_000_000,
    )
    # The issued invoice carries its payment link, in the PDF too.
    assert payment_link(invoice).endswith(reverse("payments", args=["tenant"]))
    page = client_for(tenant_owner)
    listing = page.get(reverse("payments", args=["tenant"])).content.decode()
    pay_url = reverse("invoice_pay", args=["tenant", invoice.pk])
    assert "RESELLER-2026-000007" in listing and pay_url in listing
    response = page.post(pay_url)
    assert response.status_code == 303
    payment = Payment.objects.get(invoice=invoice)
    assert response["Location"] == payment.checkout_url
    assert payment.purpose == Payment.Purpose.INVOICE and payment.amount_micros == 42_000_000
    assert invoice.status == Invoice.Status.ISSUED

    event = shop.fake.event(
        "checkout.session.completed", shop.fake.complete_checkout(payment.stripe_id)
    )
    assert shop.deliver(event).json()["outcome"] == "invoice paid"
    assert shop.deliver(event).json()["outcome"] == "duplicate"
    invoice.refresh_from_db()
    assert invoice.status == Invoice.Status.PAID and invoice.paid_at is not None
    assert payment_link(invoice) == ""
    entry = LedgerEntry.objects.get(account=shop.account, kind=LedgerEntry.Kind.PAYMENT)
    assert entry.amount_micros == 42_000_000 and entry.reference == f"invoice:{invoice.pk}"
    billing_page = page.get(reverse("billing", args=["tenant"])).content.decode()
    assert "paid" in billing_page
    assert pay_url not in page.get(reverse("payments", args=["tenant"])).content.decode()
    # Paying it again is refused before Stripe is asked.
    again = page.post(pay_url)
    assert again.status_code == 302 and Payment.objects.filter(invoice=invoice).count() == 1


def test_a_refund_posts_a_negative_entry_once(shop: Shop, tenant_owner: Any) -> None:
    payment = _start_topup(client_for(tenant_owner), "30")
    session = shop.fake.complete_checkout(payment.stripe_id)
    shop.deliver(shop.fake.event("checkout.session.completed", session))
    refund = shop.fake.refund(session["payment_intent"], 1250)
    event = shop.fake.event("refund.created", refund)
    assert shop.deliver(event).json()["outcome"] == "refund posted"
    assert shop.deliver(event).json()["outcome"] == "duplicate"
    # Stripe may also send refund.updated for the same refund: still one entry.
    assert shop.deliver(shop.fake.event("refund.updated", refund)).json()["outcome"] == (
        "already posted"
    )
    entry = LedgerEntry.objects.get(kind=LedgerEntry.Kind.CARD_REFUND)
    assert entry.amount_micros == -12_500_000 and entry.reference == f"stripe-refund:{refund['id']}"
    assert shop.balance() == 30 * USD - 12_500_000
    payment.refresh_from_db()
    assert payment.refunded_micros == 12_500_000


def test_a_refund_arriving_before_its_payment_still_finds_it(shop: Shop, tenant_owner: Any) -> None:
    payment = _start_topup(client_for(tenant_owner), "30")
    session = shop.fake.complete_checkout(payment.stripe_id)
    refund = shop.fake.refund(session["payment_intent"], 3000)
    assert shop.deliver(shop.fake.event("refund.created", refund)).json()["outcome"] == (
        "refund posted"
    )
    shop.deliver(shop.fake.event("checkout.session.completed", session))
    assert shop.balance() == 0


def _paid_topup(shop: Shop, tenant_owner: Any, amount: str) -> dict[str, Any]:
    payment = _start_topup(client_for(tenant_owner), amount)
    session = shop.fake.complete_checkout(payment.stripe_id)
    assert shop.deliver(shop.fake.event("checkout.session.completed", session)).json()[
        "outcome"
    ] == ("credited")
    return session


def test_a_refund_that_fails_afterwards_is_given_back(shop: Shop, tenant_owner: Any) -> None:
    session = _paid_topup(shop, tenant_owner, "30")
    refund = shop.fake.refund(session["payment_intent"], 1250)
    shop.deliver(shop.fake.event("refund.created", refund))
    assert shop.balance() == 30 * USD - 12_500_000
    failed = {**refund, "status": "failed", "failure_reason": "expired_or_canceled_card"}

    assert shop.deliver(shop.fake.event("refund.failed", failed)).json()["outcome"] == (
        "refund failure posted"
    )
    assert shop.balance() == 30 * USD
    assert shop.deliver(shop.fake.event("refund.updated", failed)).json()["outcome"] == (
        "already posted"
    )
    assert shop.balance() == 30 * USD
    payment = Payment.objects.get(payment_intent_id=session["payment_intent"])
    assert payment.refunded_micros == 0
    assert AuditEntry.objects.filter(action="ledger.card_refund_failed").count() == 1


def test_a_refund_seen_failed_first_is_not_debited_by_a_late_success(
    shop: Shop, tenant_owner: Any
) -> None:
    session = _paid_topup(shop, tenant_owner, "30")
    refund = shop.fake.refund(session["payment_intent"], 3000)
    failed = {**refund, "status": "failed"}
    shop.deliver(shop.fake.event("refund.failed", failed))
    assert shop.balance() == 30 * USD
    # The "succeeded" copy Stripe sent before the failure, delivered late.
    assert shop.deliver(shop.fake.event("refund.created", refund)).json()["outcome"] == (
        "already posted"
    )
    assert shop.balance() == 30 * USD


def _dispute(session: dict[str, Any], amount: int) -> dict[str, Any]:
    return {
        "id": f"dp_{session['payment_intent'][-12:]}",
        "object": "dispute",
        "amount": amount,
        "currency": "usd",
        "payment_intent": session["payment_intent"],
        "reason": "fraudulent",
        "status": "needs_response",
    }


def test_a_dispute_debits_once_and_a_won_dispute_gives_it_back(
    shop: Shop, tenant_owner: Any
) -> None:
    session = _paid_topup(shop, tenant_owner, "30")
    dispute = _dispute(session, 3000)
    withdrawn = shop.fake.event("charge.dispute.funds_withdrawn", dispute)

    assert shop.deliver(withdrawn).json()["outcome"] == "dispute debit posted"
    assert shop.deliver(withdrawn).json()["outcome"] == "duplicate"
    again = shop.fake.event("charge.dispute.funds_withdrawn", dispute)
    assert shop.deliver(again).json()["outcome"] == "already posted"
    assert shop.balance() == 0
    entry = LedgerEntry.objects.get(kind=LedgerEntry.Kind.CARD_DISPUTE)
    assert entry.amount_micros == -30 * USD and entry.reference == f"stripe-dispute:{dispute['id']}"

    won = {**dispute, "status": "won"}
    reinstated = shop.fake.event("charge.dispute.funds_reinstated", won)
    assert shop.deliver(reinstated).json()["outcome"] == "dispute credit posted"
    assert shop.balance() == 30 * USD


def test_a_won_dispute_seen_first_debits_nothing_later(shop: Shop, tenant_owner: Any) -> None:
    session = _paid_topup(shop, tenant_owner, "30")
    dispute = _dispute(session, 3000)
    shop.deliver(shop.fake.event("charge.dispute.funds_reinstated", {**dispute, "status": "won"}))
    assert shop.balance() == 30 * USD
    late = shop.fake.event("charge.dispute.funds_withdrawn", dispute)
    assert shop.deliver(late).json()["outcome"] == "already posted"
    assert shop.balance() == 30 * USD
    assert LedgerEntry.objects.filter(kind=LedgerEntry.Kind.CARD_DISPUTE).count() == 2


def test_a_dispute_on_another_sellers_payment_changes_nothing(
    shop: Shop, tenant_owner: Any
) -> None:
    session = _paid_topup(shop, tenant_owner, "30")
    # A charge on the seller's Stripe account that Tollgate did not make: no payment of ours.
    with shop.fake.lock:
        other = shop.fake._intent({"amount": 3000, "currency": "usd"}, "sk_test_other")
    foreign = {**_dispute(session, 3000), "payment_intent": other["id"]}
    outcome = shop.deliver(shop.fake.event("charge.dispute.funds_withdrawn", foreign)).json()
    assert outcome["outcome"] == "not a Tollgate payment"
    assert shop.balance() == 30 * USD


def test_who_may_pay_and_who_may_connect(
    shop: Shop,
    tenant_owner: Any,
    tenant_member: Any,
    outsider: Any,
    reseller_admin: Any,
    operator_user: Any,
) -> None:
    assert client_for(outsider).get(reverse("payments", args=["tenant"])).status_code == 404
    assert client_for(tenant_member).get(reverse("payments", args=["tenant"])).status_code == 403
    assert (
        client_for(tenant_owner).get(reverse("seller_stripe", args=["tenant"])).status_code == 404
    )
    seller_page = client_for(reseller_admin).get(reverse("seller_stripe", args=["reseller"]))
    html = seller_page.content.decode()
    assert seller_page.status_code == 200 and str(shop.stripe.public_id) in html
    assert RESELLER_KEY not in html and RESELLER_WHSEC not in html
    assert client_for(outsider).get(reverse("seller_stripe", args=["reseller"])).status_code == 404
    operator = client_for(operator_user)
    assert operator.get(reverse("operator_stripe")).status_code == 302
    connect = operator.post(
        reverse("seller_stripe", args=["platform"]),
        {"action": "connect", "secret_key": "pk_test_wrong", "webhook_secret": "whsec_x"},
    )
    assert connect.status_code == 400
    connect = operator.post(
        reverse("seller_stripe", args=["platform"]),
        {"action": "connect", "secret_key": "sk_test_platform", "webhook_secret": "whsec_p"},
    )
    assert connect.status_code == 302 and StripeAccount.objects.count() == 3


def test_no_card_payments_without_the_sellers_stripe(
    fake_stripe: Any, tenant_owner: Any, tenant_org: Any
) -> None:
    page = client_for(tenant_owner)
    html = page.get(reverse("payments", args=["tenant"])).content.decode()
    assert "Card payments are not available" in html
    response = page.post(reverse("payments", args=["tenant"]), {"action": "topup", "amount": "5"})
    assert response.status_code == 400 and not Payment.objects.exists()
    assert not fake_stripe.requests


def test_disconnecting_refuses_later_webhooks(shop: Shop, tenant_owner: Any) -> None:
    payment = _start_topup(client_for(tenant_owner), "5")
    event = shop.fake.event(
        "checkout.session.completed", shop.fake.complete_checkout(payment.stripe_id)
    )
    pay.stripe_account_disconnect(account=shop.stripe, actor="t")
    assert shop.deliver(event, secret=RESELLER_WHSEC).status_code == 400
    assert shop.balance() == 0


def test_a_key_without_its_signing_secret_credits_nothing(
    shop: Shop, tenant_owner: Any, platform_org: Any
) -> None:
    account = pay.stripe_account_connect(
        seller=platform_org, secret_key="sk_test_platform", webhook_secret="", actor="t"
    )
    event = shop.fake.event(
        "checkout.session.completed", {"id": "cs_x", "object": "checkout.session"}
    )
    assert shop.deliver(event, to=account, secret="whsec_anything").status_code == 400
    # The secret added later makes it work, and the URL did not change.
    again = pay.stripe_account_connect(
        seller=platform_org, secret_key="sk_test_platform", webhook_secret="whsec_p", actor="t"
    )
    assert again.public_id == account.public_id
    assert shop.deliver(event, to=again).json()["outcome"] == "not a Tollgate payment"
