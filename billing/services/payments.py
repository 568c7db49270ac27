"""Card payment workflows: a seller connects its Stripe account, a customer starts a
Checkout top-up or pays an invoice through its link, auto-recharge charges a saved card.

Nothing here credits a balance: only a signed webhook does (``billing.services.
stripe_events``). These functions record what was asked of Stripe, each write in its own
transaction, and call Stripe outside any transaction so no lock waits on the network.
"""

from __future__ import annotations

import logging

from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.db import transaction
from django.utils import timezone

from billing import stripe_gateway as gateway
from billing.models import AutoRecharge, BillingAccount, Invoice, Payment, StripeAccount
from billing.money import format_micros
from billing.services.common import account_for, new_account_fields
from portal.models import AuditEntry, Membership, Organization
from portal.services.common import Actor, user_or_none

log = logging.getLogger(__name__)

# Who hears about a failed auto-recharge: the people who pay.
PAYMENT_ROLES = (Membership.Role.OWNER, Membership.Role.BILLING)


# --- Connecting a seller's account ---------------------------------------------------------


@transaction.atomic
def stripe_account_connect(
    *, seller: Organization, secret_key: str, webhook_secret: str, actor: Actor
) -> StripeAccount:
    """Store (or replace) the seller's Stripe keys, encrypted; its webhook URL stays.

    The signing secret may come later (blank keeps the one stored): the webhook URL to
    register in Stripe exists once the account does. Until then the webhook refuses all."""
    if seller.kind == Organization.Kind.TENANT:
        raise ValidationError("Only the platform and resellers collect payments.")
    secret_key, webhook_secret = secret_key.strip(), webhook_secret.strip()
    if not secret_key.startswith(("sk_", "rk_")):
        raise ValidationError({"secret_key": "A Stripe secret key starts with sk_ (or rk_)."})
    if webhook_secret and not webhook_secret.startswith("whsec_"):
        raise ValidationError({"webhook_secret": "A webhook signing secret starts with whsec_."})
    account = StripeAccount.objects.filter(seller=seller).first() or StripeAccount(seller=seller)
    account.secret_key = secret_key
    if webhook_secret:
        account.webhook_secret = webhook_secret
    account.save()
    AuditEntry.record(
        actor=actor,
        action="stripe_account.connect",
        target=account,
        organization=seller,
        data={
            "key": account.key_hint,
            "webhook": str(account.public_id),
            "signing_secret_set": bool(account.webhook_secret_ciphertext),
        },
    )
    return account


@transaction.atomic
def stripe_account_disconnect(*, account: StripeAccount, actor: Actor) -> None:
    """Forget the keys. Payments already made stay; their webhooks are then refused."""
    seller = account.seller
    AuditEntry.record(
        actor=actor,
        action="stripe_account.disconnect",
        target=account,
        organization=seller,
        data={"key": account.key_hint},
    )
    if account.payments.exists():
        # Keep the row (payments reference it) but make its keys unusable.
        account.secret_key_ciphertext = ""
        account.webhook_secret_ciphertext = ""
        account.key_hint = "disconnected"
        account.save(
            update_fields=[
                "secret_key_ciphertext",
                "webhook_secret_ciphertext",
                "key_hint",
                "updated_at",
            ]
        )
    else:
        account.delete()


def seller_stripe_account(seller: Organization | None) -> StripeAccount | None:
    if seller is None:
        return None
    account = StripeAccount.objects.filter(seller=seller).first()
    if account is None or not account.secret_key_ciphertext:
        return None
    return account


# --- Checkout: top-ups and invoices ---------------------------------------------------------


def amount_checked(amount_micros: int, currency: str) -> None:
    if not isinstance(amount_micros, int) or amount_micros <= 0:
        raise ValidationError({"amount_micros": "Give a positive amount."})
    try:
        gateway.to_minor_units(amount_micros, currency)
    except ValueError as exc:
        raise ValidationError({"amount_micros": str(exc)}) from exc


@transaction.atomic
def payment_open(**fields: object) -> Payment:
    payment = Payment.objects.create(**fields)
    AuditEntry.record(
        actor=fields.get("created_by") or "billing",
        action="payment.start",
        target=payment,
        organization=payment.account.organization,
        data={
            "purpose": payment.purpose,
            "amount_micros": payment.amount_micros,
            "currency": payment.currency,
            "invoice": payment.invoice_id,
        },
    )
    return payment


def _failed(payment: Payment, message: str) -> None:
    Payment.objects.filter(pk=payment.pk, status=Payment.Status.PENDING).update(
        status=Payment.Status.FAILED, failure_message=message[:500], completed_at=timezone.now()
    )
    payment.refresh_from_db()


def _customer_for(account: BillingAccount, stripe_account: StripeAccount) -> str:
    rule, _ = AutoRecharge.objects.get_or_create(account=account)
    if rule.stripe_customer_id:
        return rule.stripe_customer_id
    organization = account.organization
    owner = (
        Membership.objects.filter(organization=organization, role__in=PAYMENT_ROLES)
        .values_list("user__email", flat=True)
        .first()
    )
    customer = gateway.customer_create(
        stripe_account, name=organization.name, email=owner or "", reference=str(account.pk)
    )
    AutoRecharge.objects.filter(pk=rule.pk, stripe_customer_id="").update(
        stripe_customer_id=customer
    )
    return customer


def checkout_topup_start(
    *,
    organization: Organization,
    amount_micros: int,
    save_card: bool,
    success_url: str,
    cancel_url: str,
    actor: Actor,
) -> Payment:
    """A Checkout session topping the prepaid account up; the customer goes to
    ``payment.checkout_url``. The balance moves when the signed webhook arrives."""
    existing = BillingAccount.objects.filter(organization=organization).first()
    mode = existing.mode if existing else new_account_fields(organization)["mode"]
    if mode != BillingAccount.Mode.PREPAID:
        raise ValidationError("Only a prepaid account is topped up; postpaid pays invoices.")
    stripe_account = seller_stripe_account(organization.parent)
    if stripe_account is None:
        raise ValidationError("Your provider does not take card payments yet.")
    account = existing or account_for(organization)
    amount_checked(amount_micros, account.currency)
    customer = _customer_for(account, stripe_account) if save_card else ""
    payment = payment_open(
        account=account,
        stripe_account=stripe_account,
        purpose=Payment.Purpose.TOPUP,
        amount_micros=amount_micros,
        currency=account.currency,
        save_card=save_card,
        created_by=user_or_none(actor),
    )
    return _checkout(
        payment,
        stripe_account,
        f"Top-up of {organization.name}",
        success_url,
        cancel_url,
        customer,
    )


def invoice_checkout_start(
    *, invoice: Invoice, success_url: str, cancel_url: str, actor: Actor
) -> Payment:
    """The invoice's payment link: a Checkout session for its total, to its issuer."""
    if invoice.status != Invoice.Status.ISSUED:
        raise ValidationError(f"Only an issued invoice is paid; this one is {invoice.status}.")
    stripe_account = seller_stripe_account(invoice.issuer)
    if stripe_account is None:
        raise ValidationError("The issuer of this invoice does not take card payments yet.")
    amount_checked(invoice.total_micros, invoice.currency)
    account = account_for(invoice.customer)
    payment = payment_open(
        account=account,
        stripe_account=stripe_account,
        purpose=Payment.Purpose.INVOICE,
        invoice=invoice,
        amount_micros=invoice.total_micros,
        currency=invoice.currency,
        created_by=user_or_none(actor),
    )
    return _checkout(
        payment, stripe_account, f"Invoice {invoice.number}", success_url, cancel_url, ""
    )


def _checkout(
    payment: Payment,
    stripe_account: StripeAccount,
    description: str,
    success_url: str,
    cancel_url: str,
    customer: str,
) -> Payment:
    try:
        session_id, url = gateway.checkout_session_create(
            stripe_account,
            payment_id=payment.pk,
            amount_micros=payment.amount_micros,
            currency=payment.currency,
            description=description,
            success_url=success_url,
            cancel_url=cancel_url,
            customer=customer,
            save_card=payment.save_card,
        )
    except gateway.StripeError as exc:
        log.warning("stripe checkout refused for payment %s: %s", payment.pk, exc)
        _failed(payment, f"Stripe refused the checkout: {exc.user_message or exc}")
        raise ValidationError("Card payments are unavailable right now; try again later.") from exc
    Payment.objects.filter(pk=payment.pk).update(stripe_id=session_id, checkout_url=url)
    payment.refresh_from_db()
    return payment


def payment_failure_record(*, payment: Payment, message: str) -> bool:
    """Mark a pending payment failed and tell the payers, once (a conditional UPDATE)."""
    claimed = Payment.objects.filter(pk=payment.pk, status=Payment.Status.PENDING).update(
        status=Payment.Status.FAILED, failure_message=message[:500], completed_at=timezone.now()
    )
    payment.refresh_from_db()
    if claimed != 1:
        return False
    if payment.purpose == Payment.Purpose.AUTO_RECHARGE:
        transaction.on_commit(lambda: _failure_mail(payment))
    return True


def payer_emails(organization_id: int) -> list[str]:
    return sorted(
        {
            email
            for email in Membership.objects.filter(
                organization_id=organization_id, role__in=PAYMENT_ROLES
            ).values_list("user__email", flat=True)
            if email
        }
    )


def _failure_mail(payment: Payment) -> None:
    organization = payment.account.organization
    recipients = payer_emails(organization.pk)
    if not recipients:
        return
    amount = f"{format_micros(payment.amount_micros)} {payment.currency}"
    send_mail(
        subject=f"[Tollgate] {organization.name}: auto-recharge of {amount} failed",
        message=(
            f"The automatic top-up of {amount} for {organization.name} was declined: "
            f"{payment.failure_message or 'no reason given'}.\n"
            "Auto-recharge waits until the balance is topped up another way. Top up with a "
            "card on the Payments page to go on without interruption.\n"
        ),
        from_email=None,
        recipient_list=recipients,
    )
