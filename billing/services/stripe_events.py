"""Stripe webhook events, the only source of truth for money received or given back.

Each event is handled once: its id is inserted into ``StripeEvent`` (unique) in the same
transaction as the ledger entry it causes, so a replay finds the id and changes nothing.
Reordering is harmless too: a payment moves from pending to succeeded by a conditional
UPDATE, and every ledger entry names its Stripe cause (``stripe:<session or intent>``,
``stripe-refund:<refund>``) under the ledger's one-entry-per-cause constraint.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from billing import stripe_gateway as gateway
from billing.models import AutoRecharge, LedgerEntry, Payment, StripeAccount, StripeEvent
from billing.services.common import tell_relay
from billing.services.invoices import invoice_mark_paid
from billing.services.payments import payment_failure_record
from portal.models import AuditEntry

log = logging.getLogger(__name__)

ACTOR = "stripe"


def stripe_event_handle(*, stripe_account: StripeAccount, event: Any) -> str:
    """Apply a verified event once; returns what was done (kept on the event row)."""
    try:
        with transaction.atomic():
            record = StripeEvent.objects.create(
                event_id=str(event["id"]),
                stripe_account=stripe_account,
                type=str(event["type"]),
                outcome="handling",
            )
            handler = HANDLERS.get(record.type)
            payment, outcome = (
                handler(stripe_account, event["data"]["object"]) if handler else (None, "ignored")
            )
            record.payment, record.outcome = payment, outcome
            record.save(update_fields=["payment", "outcome"])
            return outcome
    except IntegrityError:
        if StripeEvent.objects.filter(event_id=str(event["id"])).exists():
            return "duplicate"
        raise


def _payment_of(stripe_account: StripeAccount, obj: Any) -> Payment | None:
    """The payment an object belongs to, by the id Tollgate put in its metadata; only if
    it was started on this seller's account (another seller cannot credit it)."""
    metadata = obj.get("metadata") or {}
    raw = str(metadata.get("tollgate_payment") or obj.get("client_reference_id") or "")
    if not raw.isdigit():
        return None
    return (
        Payment.objects.select_for_update(of=("self",))
        .select_related("account__organization", "invoice")
        .filter(pk=int(raw), stripe_account=stripe_account)
        .first()
    )


def _amount_matches(payment: Payment, amount: Any, currency: Any) -> bool:
    return (
        str(currency or "").upper() == payment.currency
        and gateway.to_micros(int(amount or 0), payment.currency) == payment.amount_micros
    )


def _succeed(payment: Payment, intent_id: str) -> bool:
    """pending (or failed, when the customer completed it later) -> succeeded, once."""
    claimed = Payment.objects.filter(
        pk=payment.pk, status__in=[Payment.Status.PENDING, Payment.Status.FAILED]
    ).update(
        status=Payment.Status.SUCCEEDED,
        completed_at=timezone.now(),
        failure_message="",
        payment_intent_id=intent_id or payment.payment_intent_id,
    )
    payment.refresh_from_db()
    return claimed == 1


def _credit(payment: Payment, *, reference: str, memo: str) -> None:
    entry = LedgerEntry.objects.create(
        account=payment.account,
        kind=LedgerEntry.Kind.TOPUP,
        amount_micros=payment.amount_micros,
        reference=reference,
        memo=memo,
        created_at=timezone.now(),
    )
    _audit(entry, "ledger.card_payment", payment, reference)


def _audit(entry: LedgerEntry, action: str, payment: Payment, reference: str) -> None:
    AuditEntry.record(
        actor=ACTOR,
        action=action,
        target=entry,
        organization=payment.account.organization,
        data={
            "payment": payment.pk,
            "amount_micros": entry.amount_micros,
            "currency": payment.currency,
            "reference": reference,
        },
    )
    tell_relay()


def _checkout_completed(stripe_account: StripeAccount, session: Any) -> tuple[Payment | None, str]:
    payment = _payment_of(stripe_account, session)
    if payment is None:
        return None, "not a Tollgate payment"
    if session.get("payment_status") != "paid":
        return payment, "awaiting payment"  # async methods: a later event settles it
    if not _amount_matches(payment, session.get("amount_total"), session.get("currency")):
        log.error("stripe session %s: amount differs from payment %s", session["id"], payment.pk)
        return payment, "amount mismatch: not credited"
    intent_id = str(session.get("payment_intent") or "")
    if not _succeed(payment, intent_id):
        return payment, "already credited"
    reference = f"stripe:{session['id']}"
    if payment.purpose == Payment.Purpose.INVOICE and payment.invoice is not None:
        try:
            memo = f"Card payment {reference}"
            invoice_mark_paid(invoice=payment.invoice, actor=ACTOR, memo=memo)
        except ValidationError:
            # Paid twice, or voided meanwhile: the money is the customer's, as credit.
            _credit(payment, reference=reference, memo=f"Overpayment of {payment.invoice}")
            return payment, "invoice not payable: credited instead"
        return payment, "invoice paid"
    _credit(payment, reference=reference, memo="Card top-up")
    if payment.save_card and intent_id:
        _remember_card(stripe_account, payment, intent_id, session)
    return payment, "credited"


def _remember_card(
    stripe_account: StripeAccount, payment: Payment, intent_id: str, session: Any
) -> None:
    try:
        intent = gateway.payment_intent_retrieve(stripe_account, intent_id)
    except gateway.StripeError as exc:
        log.warning("could not read payment intent %s: %s", intent_id, exc)
        return
    method = str(intent.get("payment_method") or "")
    customer = str(session.get("customer") or intent.get("customer") or "")
    if method and customer:
        AutoRecharge.objects.update_or_create(
            account=payment.account,
            defaults={"stripe_customer_id": customer, "payment_method_id": method},
        )


def _intent_succeeded(stripe_account: StripeAccount, intent: Any) -> tuple[Payment | None, str]:
    payment = _payment_of(stripe_account, intent)
    if payment is None or payment.purpose != Payment.Purpose.AUTO_RECHARGE:
        return payment, "ignored (settled by its checkout session)"
    if not _amount_matches(payment, intent.get("amount_received"), intent.get("currency")):
        return payment, "amount mismatch: not credited"
    if not _succeed(payment, str(intent["id"])):
        return payment, "already credited"
    _credit(payment, reference=f"stripe:{intent['id']}", memo="Auto-recharge")
    return payment, "credited"


def _intent_failed(stripe_account: StripeAccount, intent: Any) -> tuple[Payment | None, str]:
    payment = _payment_of(stripe_account, intent)
    if payment is None or payment.purpose != Payment.Purpose.AUTO_RECHARGE:
        return payment, "ignored"
    error = intent.get("last_payment_error") or {}
    if payment_failure_record(payment=payment, message=str(error.get("message") or "declined")):
        return payment, "failed: payers told"
    return payment, "already settled"


def _refund(stripe_account: StripeAccount, refund: Any) -> tuple[Payment | None, str]:
    if refund.get("status") != "succeeded":
        return None, f"refund {refund.get('status')}: nothing yet"
    intent_id = str(refund.get("payment_intent") or "")
    payment = (
        Payment.objects.select_for_update(of=("self",))
        .select_related("account__organization")
        .filter(stripe_account=stripe_account, payment_intent_id=intent_id)
        .first()
    )
    if payment is None and intent_id:
        # Not seen yet (events out of order): the intent's metadata names the payment.
        try:
            payment = _payment_of(
                stripe_account, gateway.payment_intent_retrieve(stripe_account, intent_id)
            )
        except gateway.StripeError as exc:
            raise RuntimeError(f"cannot read payment intent {intent_id}") from exc
    if payment is None:
        return None, "not a Tollgate payment"
    reference = f"stripe-refund:{refund['id']}"
    if LedgerEntry.objects.filter(account=payment.account, reference=reference).exists():
        return payment, "already posted"
    amount = gateway.to_micros(int(refund.get("amount") or 0), payment.currency)
    entry = LedgerEntry.objects.create(
        account=payment.account,
        kind=LedgerEntry.Kind.CARD_REFUND,
        amount_micros=-amount,
        reference=reference,
        memo=f"Card refund of payment {payment.pk}",
        created_at=timezone.now(),
    )
    Payment.objects.filter(pk=payment.pk).update(refunded_micros=payment.refunded_micros + amount)
    _audit(entry, "ledger.card_refund", payment, reference)
    return payment, "refund posted"


Handler = Callable[[StripeAccount, Any], tuple[Payment | None, str]]

HANDLERS: dict[str, Handler] = {
    "checkout.session.completed": _checkout_completed,
    "checkout.session.async_payment_succeeded": _checkout_completed,
    "payment_intent.succeeded": _intent_succeeded,
    "payment_intent.payment_failed": _intent_failed,
    "refund.created": _refund,
    "refund.updated": _refund,
}
