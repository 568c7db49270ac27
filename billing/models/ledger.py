"""The ledger: every change to an account's balance, each naming its cause.

A balance is the sum of its entries; nothing else stores one. Entries are appended,
never edited: a mistake is corrected by an adjustment, and a voided invoice by an entry
that reverses it.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models


class LedgerEntry(models.Model):
    class Kind(models.TextChoices):
        TOPUP = "topup", "Top-up"
        USAGE = "usage", "Usage charge"
        ADJUSTMENT = "adjustment", "Adjustment"
        REFUND = "refund", "Refund"
        INVOICE = "invoice", "Invoice (charges beyond usage, e.g. tax)"
        PAYMENT = "payment", "Payment"
        PLAN_FEE = "plan_fee", "Plan fee"
        PLAN_CREDIT = "plan_credit", "Plan's included credit"
        # Money a card payment gave back to the customer (Stripe refund): a debit.
        CARD_REFUND = "card_refund", "Card refund"
        # Money a card dispute took back (negative) or, when the seller won it, gave back.
        CARD_DISPUTE = "card_dispute", "Card dispute"

    account = models.ForeignKey(
        "billing.BillingAccount", on_delete=models.PROTECT, related_name="ledger_entries"
    )
    kind = models.CharField(max_length=16, choices=Kind.choices)
    amount_micros = models.BigIntegerField(help_text="Positive credits, negative debits.")
    # What caused the entry: a usage event's request id, "invoice:<id>", "code:<id>", ...
    reference = models.CharField(max_length=100, blank=True)
    memo = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(db_index=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "ledger entries"
        constraints = [
            # The same cause never moves the same balance twice (usage posting reruns).
            models.UniqueConstraint(
                fields=["account", "kind", "reference"],
                condition=~models.Q(reference=""),
                name="one_entry_per_cause",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.amount_micros} ({self.reference or self.memo})"


class RedemptionCode(models.Model):
    """A prepaid credit code: shown once, stored as an HMAC digest, redeemable once."""

    issuer = models.ForeignKey(
        "portal.Organization",
        on_delete=models.PROTECT,
        related_name="issued_redemption_codes",
        help_text="The platform (any account may redeem) or a reseller (its tenants may).",
    )
    prefix = models.CharField(max_length=16, editable=False)
    digest = models.CharField(max_length=64, unique=True, editable=False)
    amount_micros = models.PositiveBigIntegerField()
    currency = models.CharField(max_length=3)
    memo = models.CharField(max_length=200, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    redeemed_at = models.DateTimeField(null=True, blank=True)
    redeemed_account = models.ForeignKey(
        "billing.BillingAccount",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="redeemed_codes",
    )
    redeemed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.prefix}… {self.amount_micros} {self.currency}"
