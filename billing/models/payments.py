"""Card payments through Stripe: each seller's own Stripe account, the payments its
customers start, the webhook events handled (each once), and auto-recharge rules.

Money moves only when a signed webhook says so; these rows record what was asked of
Stripe and what Stripe confirmed.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models

from portal import crypto


class StripeAccount(models.Model):
    """A seller's Stripe account (the platform's or a reseller's): its customers pay it.

    The secret key and the webhook signing secret are encrypted at rest, like channel
    secrets; ``public_id`` names the account in its webhook URL."""

    seller = models.OneToOneField(
        "portal.Organization", on_delete=models.CASCADE, related_name="stripe_account"
    )
    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    secret_key_ciphertext = models.TextField(editable=False)
    webhook_secret_ciphertext = models.TextField(blank=True, editable=False)
    key_hint = models.CharField(max_length=32, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"Stripe account of {self.seller} ({self.key_hint})"

    @property
    def secret_key(self) -> str:
        return crypto.decrypt_secret(self.secret_key_ciphertext)

    @secret_key.setter
    def secret_key(self, plain: str) -> None:
        self.secret_key_ciphertext = crypto.encrypt_secret(plain)
        self.key_hint = f"{plain[:8]}…{plain[-4:]}"

    @property
    def webhook_secret(self) -> str:
        return crypto.decrypt_secret(self.webhook_secret_ciphertext)

    @webhook_secret.setter
    def webhook_secret(self, plain: str) -> None:
        self.webhook_secret_ciphertext = crypto.encrypt_secret(plain)

    @property
    def is_test_mode(self) -> bool:
        return "_test_" in self.key_hint


class Payment(models.Model):
    """One payment asked of Stripe: a Checkout top-up, an invoice paid through its link,
    or an off-session auto-recharge. Credited only by the webhook that confirms it."""

    class Purpose(models.TextChoices):
        TOPUP = "topup", "Top-up (Checkout)"
        INVOICE = "invoice", "Invoice (payment link)"
        AUTO_RECHARGE = "auto_recharge", "Auto-recharge"

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    account = models.ForeignKey(
        "billing.BillingAccount", on_delete=models.PROTECT, related_name="payments"
    )
    stripe_account = models.ForeignKey(
        StripeAccount, on_delete=models.PROTECT, related_name="payments"
    )
    purpose = models.CharField(max_length=16, choices=Purpose.choices)
    invoice = models.ForeignKey(
        "billing.Invoice", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    amount_micros = models.PositiveBigIntegerField()
    currency = models.CharField(max_length=3)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    # Checkout: the session (cs_…); auto-recharge: the PaymentIntent (pi_…).
    stripe_id = models.CharField(max_length=255, blank=True, db_index=True)
    payment_intent_id = models.CharField(max_length=255, blank=True, db_index=True)
    checkout_url = models.URLField(max_length=2000, blank=True)
    save_card = models.BooleanField(default=False)
    failure_message = models.CharField(max_length=500, blank=True)
    refunded_micros = models.BigIntegerField(default=0)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.purpose} {self.amount_micros} {self.currency} ({self.status})"


class StripeEvent(models.Model):
    """A webhook event handled: the unique event id makes every event count once, however
    often and in whatever order Stripe delivers it."""

    event_id = models.CharField(max_length=255, unique=True)
    stripe_account = models.ForeignKey(
        StripeAccount, on_delete=models.CASCADE, related_name="events"
    )
    type = models.CharField(max_length=100)
    payment = models.ForeignKey(
        Payment, null=True, blank=True, on_delete=models.SET_NULL, related_name="events"
    )
    outcome = models.CharField(max_length=200)
    received_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-received_at", "-id"]

    def __str__(self) -> str:
        return f"{self.type} {self.event_id}: {self.outcome}"


class AutoRecharge(models.Model):
    """Top the balance up by ``amount_micros`` with the saved card when it falls below
    ``threshold_micros``: once per crossing (``armed`` goes false when it fires and true
    again once the balance is back above), at most ``max_per_day`` times a UTC day."""

    account = models.OneToOneField(
        "billing.BillingAccount", on_delete=models.CASCADE, related_name="auto_recharge"
    )
    enabled = models.BooleanField(default=False)
    threshold_micros = models.PositiveBigIntegerField(default=0)
    amount_micros = models.PositiveBigIntegerField(default=0)
    max_per_day = models.PositiveSmallIntegerField(default=1)
    armed = models.BooleanField(default=True)
    stripe_customer_id = models.CharField(max_length=255, blank=True)
    payment_method_id = models.CharField(max_length=255, blank=True)
    card_label = models.CharField(max_length=64, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"auto-recharge of account {self.account_id}"

    @property
    def has_card(self) -> bool:
        return bool(self.stripe_customer_id and self.payment_method_id)
