"""Invoices: one per issuer, customer and billing period, with a line per model, price
dimension and unit price.

A tenant is invoiced at retail by its reseller (or by the platform when it sits directly
under it); a reseller is invoiced at wholesale by the platform. Drafts are regenerated
from the usage events until issued; from then on an invoice never changes, except its
status (paid or void).
"""

from __future__ import annotations

from django.db import models


class Invoice(models.Model):
    class Kind(models.TextChoices):
        TENANT = "tenant", "Tenant (retail)"
        RESELLER = "reseller", "Reseller (wholesale)"

    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        ISSUED = "issued", "Issued"
        PAID = "paid", "Paid"
        VOID = "void", "Void"

    issuer = models.ForeignKey(
        "portal.Organization", on_delete=models.PROTECT, related_name="issued_invoices"
    )
    customer = models.ForeignKey(
        "portal.Organization", on_delete=models.PROTECT, related_name="invoices"
    )
    kind = models.CharField(max_length=16, choices=Kind.choices)
    period_start = models.DateField()
    period_end = models.DateField(help_text="Exclusive.")
    currency = models.CharField(max_length=3)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.DRAFT)
    number = models.CharField(max_length=100, blank=True, editable=False)
    subtotal_micros = models.BigIntegerField(default=0)
    tax_rate_percent = models.DecimalField(max_digits=7, decimal_places=4, null=True, blank=True)
    tax_micros = models.BigIntegerField(default=0)
    total_micros = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    generated_at = models.DateTimeField(null=True, blank=True)
    issued_at = models.DateTimeField(null=True, blank=True)
    paid_at = models.DateTimeField(null=True, blank=True)
    voided_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-period_start", "customer__name"]
        constraints = [
            models.UniqueConstraint(
                fields=["issuer", "customer", "period_start"],
                condition=~models.Q(status="void"),
                name="one_live_invoice_per_period",
            ),
            models.UniqueConstraint(
                fields=["issuer", "number"],
                condition=~models.Q(number=""),
                name="unique_invoice_number",
            ),
        ]

    def __str__(self) -> str:
        return self.number or f"Draft {self.customer} {self.period_start:%Y-%m}"

    @property
    def is_draft(self) -> bool:
        return self.status == self.Status.DRAFT

    @property
    def is_issuable(self) -> bool:
        """A draft whose period is over (UTC), which is when ``invoice_issue`` accepts it."""
        from django.utils import timezone

        return self.is_draft and self.period_end <= timezone.now().date()


class InvoiceLine(models.Model):
    """One model's charges in one price dimension at one unit price (and service tier and
    context tier); the amount is the sum of its events' charges in that dimension.

    ``dimension`` is one of ``billing.pricing.DIMENSIONS``; ``unit`` says what
    ``unit_price_micros`` is per: a million tokens (``mtok``), an image, a web search, or
    a request.
    Lines from before dimensions existed have dimension ``usage`` and keep their old
    prices and counts in ``detail``. Besides usage of the period: usage carried from an
    earlier period whose invoice was already issued when it was recorded (dated by
    ``usage_date``), and a plan's fee and included credit (no model or dimension).
    """

    class Kind(models.TextChoices):
        USAGE = "usage", "Usage"
        CARRIED = "carried", "Usage of an earlier period"
        PLAN_FEE = "plan_fee", "Plan fee"
        PLAN_CREDIT = "plan_credit", "Plan's included credit"

    invoice = models.ForeignKey(Invoice, on_delete=models.CASCADE, related_name="lines")
    position = models.PositiveIntegerField()
    model = models.CharField(max_length=200)
    dimension = models.CharField(max_length=32, blank=True)
    unit = models.CharField(max_length=16, blank=True)
    unit_price_micros = models.PositiveBigIntegerField(default=0)
    quantity = models.PositiveBigIntegerField(default=0)
    requests = models.PositiveBigIntegerField(
        default=0, help_text="Requests that were charged in this line."
    )
    service_tier = models.CharField(max_length=16, blank=True)
    long_context = models.BooleanField(default=False)
    detail = models.JSONField(default=dict, blank=True)
    amount_micros = models.BigIntegerField()
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.USAGE)
    description = models.CharField(max_length=200, blank=True)
    usage_date = models.DateField(
        null=True, blank=True, help_text="Carried usage: the day (UTC) it was used."
    )

    class Meta:
        ordering = ["invoice", "position"]
        constraints = [
            models.UniqueConstraint(fields=["invoice", "position"], name="unique_line_position"),
        ]

    def __str__(self) -> str:
        return f"{self.label}: {self.quantity} {self.unit}"

    @property
    def label(self) -> str:
        """What the line is for, as documents print it."""
        if self.kind == self.Kind.USAGE:
            return self.model
        return f"{self.model} ({self.description})" if self.model else self.description


class InvoiceSequence(models.Model):
    """The last invoice number an issuer used in a year; locked while a number is taken."""

    issuer = models.ForeignKey(
        "portal.Organization", on_delete=models.PROTECT, related_name="invoice_sequences"
    )
    year = models.PositiveSmallIntegerField()
    last_number = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["issuer", "year"], name="one_sequence_per_year"),
        ]

    def __str__(self) -> str:
        return f"{self.issuer} {self.year}: {self.last_number}"
