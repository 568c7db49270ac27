"""Plans a seller sells: a monthly fee, included credit, and rolling usage windows.

A seller (the platform, or a reseller) defines plans; its tenants subscribe to one at a
time. Each calendar month (UTC) of a subscription is one ``PlanCharge``: the fee posted
to the tenant's ledger and the included credit granted, once, and the fee invoiced on
exactly one invoice. The windows (``PlanWindow``) cap the tokens or the spend of the last
5 hours, day or week; the relay enforces them (``relay.limits``).
"""

from __future__ import annotations

from django.conf import settings
from django.db import models

from billing.models.prices import default_currency


class Plan(models.Model):
    seller = models.ForeignKey(
        "portal.Organization",
        on_delete=models.PROTECT,
        related_name="plans",
        help_text="The platform or a reseller; its own tenants may subscribe.",
    )
    name = models.CharField(max_length=100)
    description = models.CharField(max_length=500, blank=True)
    currency = models.CharField(max_length=3, default=default_currency)
    monthly_fee_micros = models.PositiveBigIntegerField(default=0)
    included_credit_micros = models.PositiveBigIntegerField(
        default=0, help_text="Granted to the subscriber's balance each month."
    )
    is_active = models.BooleanField(
        default=True, help_text="Inactive plans take no new subscribers; current ones stay."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["seller_id", "name"]
        constraints = [
            models.UniqueConstraint(fields=["seller", "name"], name="unique_plan_name"),
        ]

    def __str__(self) -> str:
        return self.name


class PlanWindow(models.Model):
    """A rolling window: at most ``cap`` tokens (or micro-units of retail spend) in any
    span of its length, counting the models of ``model_ids`` (empty: every model)."""

    class Length(models.TextChoices):
        FIVE_HOURS = "5h", "5 hours"
        DAY = "1d", "1 day"
        WEEK = "7d", "7 days"

    class Kind(models.TextChoices):
        TOKENS = "tokens", "Tokens"
        SPEND = "spend", "Spend (micro-units)"

    SECONDS = {"5h": 5 * 3600, "1d": 86400, "7d": 7 * 86400}

    plan = models.ForeignKey(Plan, on_delete=models.CASCADE, related_name="windows")
    length = models.CharField(max_length=4, choices=Length.choices)
    kind = models.CharField(max_length=8, choices=Kind.choices, default=Kind.TOKENS)
    cap = models.PositiveBigIntegerField()
    model_ids = models.JSONField(
        default=list, blank=True, help_text="Public model ids it counts; empty: every model."
    )

    class Meta:
        ordering = ["plan_id", "id"]

    def __str__(self) -> str:
        return f"{self.cap} {self.kind} / {self.length}"

    @property
    def seconds(self) -> int:
        return self.SECONDS[self.length]


class Subscription(models.Model):
    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        CANCELLED = "cancelled", "Cancelled"

    tenant = models.ForeignKey(
        "portal.Organization", on_delete=models.PROTECT, related_name="subscriptions"
    )
    plan = models.ForeignKey(Plan, on_delete=models.PROTECT, related_name="subscriptions")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    started_at = models.DateTimeField()
    cancelled_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["-started_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["tenant"],
                condition=models.Q(status="active"),
                name="one_active_subscription",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.tenant} on {self.plan}"


class PlanCharge(models.Model):
    """One month of a subscription: its fee and credit, posted once, invoiced once."""

    subscription = models.ForeignKey(Subscription, on_delete=models.PROTECT, related_name="charges")
    period_start = models.DateField()
    period_end = models.DateField(help_text="Exclusive.")
    fee_micros = models.PositiveBigIntegerField()
    credit_micros = models.PositiveBigIntegerField()
    currency = models.CharField(max_length=3)
    created_at = models.DateTimeField()
    # The invoice that lists it, set when that invoice is issued (see billing.services.invoices).
    invoice = models.ForeignKey(
        "billing.Invoice", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["-period_start"]
        constraints = [
            models.UniqueConstraint(
                fields=["subscription", "period_start"], name="one_charge_per_month"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.subscription} {self.period_start:%Y-%m}"

    @property
    def reference(self) -> str:
        """The ledger reference of its fee and credit entries."""
        return f"plan:{self.subscription_id}:{self.period_start:%Y-%m}"
