"""Stripe webhook events, the only source of truth for money received or given back.

Each event is handled once: its id is inserted into ``StripeEvent`` (unique) in the same
transaction as the ledger entry it causes, so a replay finds the id and changes nothing.
Reordering is harmless too: a payment moves from pending to succeeded by a conditional
UPDATE, and every ledger entry names its Stripe cause (``stripe:<session or intent>``,
``stripe-refund:<refund>``, ``stripe-dispute:<dispute>``) under the ledger's
one-entry-per-cause constraint. A failed refund and a won dispute post a second entry of
their own that gives the amount back.
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


def _payment_by_intent(stripe_account: StripeAccount, intent_id: str) -> Payment | None:
    """The payment of a card charge that a refund or dispute names by its intent."""
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
    return payment


def _post_once(
    payment: Payment, *, kind: str, amount: int, reference: str, memo: str, action: str
) -> bool:
    """One ledger entry for ``reference`` (the ledger allows one per cause); False if it
    was already posted."""
    if LedgerEntry.objects.filter(account=payment.account, reference=reference).exists():
        return False
    entry = LedgerEntry.objects.create(
        account=payment.account,
        kind=kind,
        amount_micros=amount,
        reference=reference,
        memo=memo,
        created_at=timezone.now(),
    )
    _audit(entry, action, payment, reference)
    return True


def _refund(stripe_account: StripeAccount, refund: Any) -> tuple[Payment | None, str]:
    """A refund debits the balance once when it succeeds. One that fails afterwards (Stripe
    could not return the money) is credited back; one seen failed first gets both entries,
    so a late "succeeded" copy of it finds them and posts nothing."""
    status = refund.get("status")
    if status not in ("succeeded", "failed"):
        return None, f"refund {status}: nothing yet"
    payment = _payment_by_intent(stripe_account, str(refund.get("payment_intent") or ""))
    if payment is None:
        return None, "not a Tollgate payment"
    amount = gateway.to_micros(int(refund.get("amount") or 0), payment.currency)
    posted = _post_once(
        payment,
        kind=LedgerEntry.Kind.CARD_REFUND,
        amount=-amount,
        reference=f"stripe-refund:{refund['id']}",
        memo=f"Card refund of payment {payment.pk}",
        action="ledger.card_refund",
    )
    if status == "succeeded":
        if not posted:
            return payment, "already posted"
        Payment.objects.filter(pk=payment.pk).update(
            refunded_micros=payment.refunded_micros + amount
        )
        return payment, "refund posted"
    reversed_now = _post_once(
        payment,
        kind=LedgerEntry.Kind.CARD_REFUND,
        amount=amount,
        reference=f"stripe-refund-failed:{refund['id']}",
        memo=f"Card refund of payment {payment.pk} failed: the amount is given back",
        action="ledger.card_refund_failed",
    )
    if reversed_now and not posted:  # the refund had counted as given back: no longer
        Payment.objects.filter(pk=payment.pk).update(
            refunded_micros=max(payment.refunded_micros - amount, 0)
        )
    return payment, "refund failure posted" if reversed_now else "already posted"


def _dispute_withdrawn(stripe_account: StripeAccount, dispute: Any) -> tuple[Payment | None, str]:
    """The cardholder disputed a payment and Stripe took the money back from the seller:
    the balance it bought is debited, once."""
    payment = _payment_by_intent(stripe_account, str(dispute.get("payment_intent") or ""))
    if payment is None:
        return None, "not a Tollgate payment"
    posted = _withdraw(payment, dispute)
    return payment, "dispute debit posted" if posted else "already posted"


def _dispute_reinstated(stripe_account: StripeAccount, dispute: Any) -> tuple[Payment | None, str]:
    """The seller won the dispute and Stripe returned the money: the debit is given back.
    Seen before its withdrawal (events out of order), both entries are posted, so the late
    withdrawal finds its entry and debits nothing."""
    payment = _payment_by_intent(stripe_account, str(dispute.get("payment_intent") or ""))
    if payment is None:
        return None, "not a Tollgate payment"
    _withdraw(payment, dispute)
    posted = _post_once(
        payment,
        kind=LedgerEntry.Kind.CARD_DISPUTE,
        amount=gateway.to_micros(int(dispute.get("amount") or 0), payment.currency),
        reference=f"stripe-dispute-won:{dispute['id']}",
        memo=f"Dispute of payment {payment.pk} won: the amount is given back",
        action="ledger.card_dispute_won",
    )
    return payment, "dispute credit posted" if posted else "already posted"


def _withdraw(payment: Payment, dispute: Any) -> bool:
    return _post_once(
        payment,
        kind=LedgerEntry.Kind.CARD_DISPUTE,
        amount=-gateway.to_micros(int(dispute.get("amount") or 0), payment.currency),
        reference=f"stripe-dispute:{dispute['id']}",
        memo=f"Dispute of payment {payment.pk}: the amount was taken back",
        action="ledger.card_dispute",
    )


Handler = Callable[[StripeAccount, Any], tuple[Payment | None, str]]

HANDLERS: dict[str, Handler] = {
    "checkout.session.completed": _checkout_completed,
    "checkout.session.async_payment_succeeded": _checkout_completed,
    "payment_intent.succeeded": _intent_succeeded,
    "payment_intent.payment_failed": _intent_failed,
    "refund.created": _refund,
    "refund.updated": _refund,
    "refund.failed": _refund,
    "charge.dispute.funds_withdrawn": _dispute_withdrawn,
    "charge.dispute.funds_reinstated": _dispute_reinstated,
}
