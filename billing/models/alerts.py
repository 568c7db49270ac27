"""Budget alerts: one row per account, month and threshold crossed, sent once."""

from __future__ import annotations

from django.db import models

from billing.webhooks import DELIVERY_FAILED, DELIVERY_OUTCOMES


class BudgetAlert(models.Model):
    account = models.ForeignKey(
        "billing.BillingAccount", on_delete=models.CASCADE, related_name="budget_alerts"
    )
    period_start = models.DateField()
    threshold_percent = models.PositiveIntegerField()
    spend_micros = models.BigIntegerField(help_text="Spend in the period when it fired.")
    budget_micros = models.BigIntegerField()
    currency = models.CharField(max_length=3)
    created_at = models.DateTimeField(auto_now_add=True)
    # Delivery is claimed by setting notified_at, so a retried task sends nothing twice.
    notified_at = models.DateTimeField(null=True, blank=True)
    emailed_to = models.JSONField(default=list, blank=True)
    webhook_status = models.PositiveSmallIntegerField(null=True, blank=True)
    webhook_error = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["account", "period_start", "threshold_percent"],
                name="one_alert_per_threshold_and_period",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.account.organization} {self.period_start:%Y-%m} {self.threshold_percent}%"

    @property
    def webhook_outcome(self) -> str:
        """What the tenant is shown of the webhook's delivery: the HTTP status or a coarse
        failure, never a connection error's text (older rows may hold one)."""
        if self.webhook_status is not None:
            return f"HTTP {self.webhook_status}"
        if self.webhook_error:
            return (
                self.webhook_error if self.webhook_error in DELIVERY_OUTCOMES else DELIVERY_FAILED
            )
        return ""
