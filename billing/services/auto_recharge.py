"""Auto-recharge: a saved card charged off-session when a prepaid balance falls below its
threshold, once per crossing and at most ``max_per_day`` times a UTC day. The charge is
credited by its webhook (``billing.services.stripe_events``), like every card payment."""

from __future__ import annotations

from datetime import datetime, time

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from billing import stripe_gateway as gateway
from billing.models import AutoRecharge, BillingAccount, Payment, StripeAccount
from billing.selectors.balances import account_balance_micros
from billing.services.payments import (
    amount_checked,
    payment_failure_record,
    payment_open,
    seller_stripe_account,
)
from portal.models import AuditEntry
from portal.services.common import Actor


@transaction.atomic
def auto_recharge_set(
    *,
    account: BillingAccount,
    enabled: bool,
    threshold_micros: int,
    amount_micros: int,
    max_per_day: int,
    actor: Actor,
) -> AutoRecharge:
    rule, _ = AutoRecharge.objects.select_for_update().get_or_create(account=account)
    if enabled and not rule.has_card:
        raise ValidationError("Save a card first: top up once with “save this card” ticked.")
    if enabled:
        amount_checked(amount_micros, account.currency)
    if not 1 <= max_per_day <= 24:
        raise ValidationError({"max_per_day": "Between 1 and 24 a day."})
    rule.enabled, rule.threshold_micros = enabled, threshold_micros
    rule.amount_micros, rule.max_per_day, rule.armed = amount_micros, max_per_day, True
    rule.save()
    AuditEntry.record(
        actor=actor,
        action="auto_recharge.set",
        target=rule,
        organization=account.organization,
        data={
            "enabled": enabled,
            "threshold_micros": threshold_micros,
            "amount_micros": amount_micros,
            "max_per_day": max_per_day,
        },
    )
    return rule


def auto_recharge_accounts() -> list[int]:
    return list(
        AutoRecharge.objects.filter(enabled=True)
        .exclude(payment_method_id="")
        .values_list("account_id", flat=True)
    )


def _start_of_day(now: datetime) -> datetime:
    return datetime.combine(now.date(), time.min, tzinfo=now.tzinfo)


@transaction.atomic
def _auto_recharge_claim(account_id: int) -> tuple[Payment | None, StripeAccount | None]:
    """Under a lock on the rule: re-arm above the threshold; below it, fire once (disarm
    and open a payment) unless today's cap is reached. Two workers never both fire."""
    rule = (
        AutoRecharge.objects.select_for_update(of=("self",))
        .select_related("account__organization")
        .filter(account_id=account_id, enabled=True)
        .first()
    )
    if rule is None or not rule.has_card:
        return None, None
    account = rule.account
    balance = account_balance_micros(account, include_unposted=True)
    if balance >= rule.threshold_micros:
        if not rule.armed:
            rule.armed = True
            rule.save(update_fields=["armed", "updated_at"])
        return None, None
    if not rule.armed:
        return None, None
    now = timezone.now()
    fired_today = Payment.objects.filter(
        account=account,
        purpose=Payment.Purpose.AUTO_RECHARGE,
        created_at__gte=_start_of_day(now),
    ).count()
    if fired_today >= rule.max_per_day:
        return None, None  # stays armed: it fires tomorrow if still below
    stripe_account = seller_stripe_account(account.organization.parent)
    if stripe_account is None:
        return None, None
    rule.armed = False
    rule.save(update_fields=["armed", "updated_at"])
    payment = payment_open(
        account=account,
        stripe_account=stripe_account,
        purpose=Payment.Purpose.AUTO_RECHARGE,
        amount_micros=rule.amount_micros,
        currency=account.currency,
    )
    return payment, stripe_account


def auto_recharge_check(*, account_id: int) -> Payment | None:
    """Charge the saved card if the balance crossed below the threshold; the payment it
    returns is credited by its webhook. A declined card is reported to the payers."""
    payment, stripe_account = _auto_recharge_claim(account_id)
    if payment is None or stripe_account is None:
        return None
    rule = AutoRecharge.objects.get(account_id=account_id)
    try:
        intent = gateway.off_session_charge(
            stripe_account,
            payment_id=payment.pk,
            amount_micros=payment.amount_micros,
            currency=payment.currency,
            customer=rule.stripe_customer_id,
            payment_method=rule.payment_method_id,
        )
    except gateway.StripeError as exc:
        intent_id = getattr(getattr(exc, "error", None), "payment_intent", None)
        Payment.objects.filter(pk=payment.pk).update(
            payment_intent_id=getattr(intent_id, "id", "") or ""
        )
        payment_failure_record(payment=payment, message=str(exc.user_message or exc))
        return payment
    Payment.objects.filter(pk=payment.pk).update(stripe_id=intent.id, payment_intent_id=intent.id)
    payment.refresh_from_db()
    return payment
