"""Forms of the card payment pages: a seller's Stripe keys, a top-up, auto-recharge."""

from __future__ import annotations

from decimal import Decimal

from django import forms

from console.forms.billing import MoneyField


class StripeConnectForm(forms.Form):
    secret_key = forms.CharField(
        max_length=255,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
        help_text="Stripe dashboard → Developers → API keys: the secret key (sk_live_… or "
        "sk_test_…), or a restricted key (rk_…) allowed Checkout, PaymentIntents, Customers "
        "and Refunds.",
    )
    webhook_secret = forms.CharField(
        max_length=255,
        label="Webhook signing secret",
        required=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
        help_text="Of the webhook endpoint you add in Stripe for the URL shown below (whsec_…).",
    )


class CardTopUpForm(forms.Form):
    amount = MoneyField(min_value=Decimal("1"), help_text="In the account's currency.")
    save_card = forms.BooleanField(
        required=False,
        label="Save this card for auto-recharge",
        help_text="Stripe keeps the card; Tollgate keeps only Stripe's reference to it.",
    )


class AutoRechargeForm(forms.Form):
    enabled = forms.BooleanField(required=False, label="Recharge automatically")
    threshold = MoneyField(help_text="Recharge when the balance falls below this.")
    amount = MoneyField(min_value=Decimal("1"), help_text="Charged to the saved card each time.")
    max_per_day = forms.IntegerField(
        min_value=1, max_value=24, initial=1, label="At most, per day (UTC)"
    )
