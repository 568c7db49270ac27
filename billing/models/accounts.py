"""Billing accounts: how an organisation pays, what it may spend, and who hears about it."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import models

from billing.models.prices import default_currency

DEFAULT_ALERT_THRESHOLDS = (50, 80, 100)


def default_alert_thresholds() -> list[int]:
    return list(DEFAULT_ALERT_THRESHOLDS)


def validate_thresholds(value: object) -> None:
    if not isinstance(value, list) or not all(
        isinstance(item, int) and not isinstance(item, bool) and 0 < item <= 1000 for item in value
    ):
        raise ValidationError("Give a list of whole percentages between 1 and 1000.")


class BillingAccount(models.Model):
    """One per organisation that is billed: a tenant (by its reseller or the platform), or
    a reseller (by the platform, at wholesale)."""

    class Mode(models.TextChoices):
        PREPAID = "prepaid", "Prepaid (spends a balance)"
        POSTPAID = "postpaid", "Postpaid (invoiced)"

    organization = models.OneToOneField(
        "portal.Organization", on_delete=models.PROTECT, related_name="billing_account"
    )
    # Prepaid with nothing to spend until topped up: a customer is never served on credit
    # its seller did not grant (TenantDefaults, or terms set on the account).
    mode = models.CharField(max_length=16, choices=Mode.choices, default=Mode.PREPAID)
    currency = models.CharField(max_length=3, default=default_currency)
    credit_limit_micros = models.PositiveBigIntegerField(
        null=True,
        blank=True,
        help_text="Postpaid: the most it may owe (unpaid and not yet invoiced); blank means "
        "no limit.",
    )
    price_list = models.ForeignKey(
        "billing.PriceList",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="accounts",
        help_text="Tenants: the list that prices them; blank uses their parent's default "
        "list (the wholesale list for tenants directly under the platform).",
    )
    # The seller's budget (terms): only the seller and operators change it.
    monthly_budget_micros = models.PositiveBigIntegerField(null=True, blank=True)
    budget_hard_stop = models.BooleanField(
        default=False, help_text="Refuse requests once the monthly budget is spent."
    )
    # The organisation's own budget beside the seller's: its owners and admins set it; it
    # can only be tighter, as the lower of the two applies.
    own_budget_micros = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="The customer's own monthly budget."
    )
    own_budget_hard_stop = models.BooleanField(
        default=False, help_text="Refuse requests once the customer's own budget is spent."
    )
    alert_thresholds = models.JSONField(
        default=default_alert_thresholds,
        blank=True,
        validators=[validate_thresholds],
        help_text="Percentages of the monthly budget that send an alert, e.g. [50, 80, 100].",
    )
    alert_emails = models.JSONField(
        default=list,
        blank=True,
        help_text="Addresses for budget alerts; empty: the organisation's owners, admins "
        "and billing members.",
    )
    alert_webhook_url = models.URLField(blank=True, max_length=500)
    tax_rate_percent = models.DecimalField(
        max_digits=7, decimal_places=4, null=True, blank=True, help_text="e.g. 20 for 20 %."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["organization__name"]

    def __str__(self) -> str:
        return f"{self.organization} ({self.mode}, {self.currency})"

    @property
    def is_prepaid(self) -> bool:
        return self.mode == self.Mode.PREPAID

    @property
    def budget_micros(self) -> int | None:
        """The monthly budget that applies: the lower of the seller's and the customer's
        own (alerts are measured against it), or None without either."""
        budgets = [b for b in (self.monthly_budget_micros, self.own_budget_micros) if b is not None]
        return min(budgets) if budgets else None

    @property
    def hard_budget_micros(self) -> int | None:
        """The lowest budget that refuses requests once spent, or None."""
        budgets = [
            budget
            for budget, hard in (
                (self.monthly_budget_micros, self.budget_hard_stop),
                (self.own_budget_micros, self.own_budget_hard_stop),
            )
            if hard and budget is not None
        ]
        return min(budgets) if budgets else None

    def clean(self) -> None:
        self.currency = (self.currency or "").upper()
        price_list = self.price_list if self.price_list_id else None
        if price_list is not None and price_list.currency != self.currency:
            raise ValidationError(
                {"price_list": "The price list's currency differs from the account's."}
            )


class TenantDefaults(models.Model):
    """The terms a seller (a reseller, or the platform for its direct tenants) gives a new
    tenant until it sets the tenant's own. Without a row: prepaid, nothing to spend."""

    seller = models.OneToOneField(
        "portal.Organization", on_delete=models.CASCADE, related_name="tenant_defaults"
    )
    mode = models.CharField(
        max_length=16, choices=BillingAccount.Mode.choices, default=BillingAccount.Mode.PREPAID
    )
    credit_limit_micros = models.PositiveBigIntegerField(
        null=True,
        blank=True,
        help_text="Postpaid: the most a new tenant may owe; blank means no limit.",
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "tenant defaults"

    def __str__(self) -> str:
        return f"Defaults of {self.seller}: {self.mode}"

    def account_fields(self) -> dict[str, object]:
        """The fields a new tenant's BillingAccount starts with."""
        if self.mode == BillingAccount.Mode.PREPAID:
            return {"mode": self.mode}
        return {"mode": self.mode, "credit_limit_micros": self.credit_limit_micros}


class KeyQuota(models.Model):
    """A spending cap on one API key: in total, and per UTC day or month (retail cost)."""

    class Period(models.TextChoices):
        DAY = "day", "Per day (UTC)"
        MONTH = "month", "Per month (UTC)"

    api_key = models.OneToOneField(
        "portal.ApiKey", on_delete=models.CASCADE, related_name="spend_quota"
    )
    total_limit_micros = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="Lifetime spend allowed; blank means no limit."
    )
    period = models.CharField(max_length=8, choices=Period.choices, default=Period.MONTH)
    period_limit_micros = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="Spend allowed per period; blank means no limit."
    )
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"quota of key {self.api_key_id}"
