"""Money forms of the dashboard: amounts are typed in currency units and cleaned to
integer micro-units; the billing services do the rest."""

from __future__ import annotations

from decimal import Decimal
from typing import Any, cast

from django import forms

from billing.models import BillingAccount, PriceList
from billing.money import MICROS, to_micros
from console.forms import DATETIME_INPUT, _future
from portal.models import CatalogModel, Channel, Organization
from portal.models.catalog import SURFACES

# --- Billing ------------------------------------------------------------------------------


class MoneyField(forms.DecimalField):
    """An amount typed in currency units ("12.50"), cleaned to integer micro-units."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("min_value", 0)
        kwargs.setdefault("max_digits", 15)
        kwargs.setdefault("decimal_places", 6)
        super().__init__(**kwargs)

    def clean(self, value: Any) -> int | None:
        amount = super().clean(value)
        return None if amount is None else to_micros(amount)


def micros_to_units(micros: int | None) -> str | None:
    """Micro-units back to currency units, for a form's initial value: ``"100"``, not
    ``"1E+2"``."""
    return None if micros is None else format((Decimal(micros) / MICROS).normalize(), "f")


class RedeemCodeForm(forms.Form):
    code = forms.CharField(
        max_length=64,
        label="Redemption code",
        help_text="As printed, e.g. TG-ABCD-EFGH-…; case does not matter, and spaces may "
        "stand for the dashes.",
    )


def _comma_list(text: str) -> list[str]:
    return [part.strip() for part in text.replace("\n", ",").split(",") if part.strip()]


class BudgetForm(forms.Form):
    """The organisation's own budget and alerts. The seller's budget and hard stop are
    terms (AccountTermsForm): shown on the page, never changed here."""

    own_budget = MoneyField(
        required=False,
        label="Your monthly budget",
        help_text="Spend per calendar month (UTC), at most your seller's budget. Leave empty "
        "for none.",
    )
    own_budget_hard_stop = forms.BooleanField(
        required=False,
        label="Stop requests once your budget is spent",
        help_text="Otherwise alerts are sent and requests go on.",
    )
    alert_thresholds = forms.CharField(
        required=False,
        initial="50, 80, 100",
        help_text="Percentages of the budget that send an alert, comma-separated.",
    )
    alert_emails = forms.CharField(
        required=False,
        label="Alert e-mails",
        help_text="Comma-separated. Empty: the owners, admins and billing members.",
    )
    alert_webhook_url = forms.URLField(
        required=False, max_length=500, label="Alert webhook URL", assume_scheme="https"
    )

    def clean_alert_thresholds(self) -> list[int]:
        values = _comma_list(self.cleaned_data.get("alert_thresholds") or "")
        try:
            thresholds = sorted({int(v.rstrip("%")) for v in values})
        except ValueError:
            raise forms.ValidationError("Give whole percentages, e.g. 50, 80, 100.") from None
        if any(not 0 < t <= 1000 for t in thresholds):
            raise forms.ValidationError("Each percentage is between 1 and 1000.")
        return thresholds

    def clean_alert_emails(self) -> list[str]:
        addresses = _comma_list(self.cleaned_data.get("alert_emails") or "")
        validator = forms.EmailField()
        for address in addresses:
            validator.clean(address)
        return addresses

    def __init__(self, *args: Any, seller_budget_micros: int | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.seller_budget_micros = seller_budget_micros

    def clean_own_budget(self) -> int | None:
        value = self.cleaned_data.get("own_budget")
        ceiling = self.seller_budget_micros
        if value is not None and ceiling is not None and value > ceiling:
            raise forms.ValidationError(
                f"Your seller's budget is {micros_to_units(ceiling)}: yours can only be lower."
            )
        return value

    @classmethod
    def for_account(cls, account: Any, data: Any = None) -> BudgetForm:
        initial = {}
        if account is not None:
            initial = {
                "own_budget": micros_to_units(account.own_budget_micros),
                "own_budget_hard_stop": account.own_budget_hard_stop,
                "alert_thresholds": ", ".join(str(t) for t in account.alert_thresholds or []),
                "alert_emails": ", ".join(account.alert_emails or []),
                "alert_webhook_url": account.alert_webhook_url,
            }
        seller_budget = account.monthly_budget_micros if account is not None else None
        return cls(data, initial=initial, seller_budget_micros=seller_budget)

    def account_changes(self) -> dict[str, Any]:
        data = self.cleaned_data
        return {
            "own_budget_micros": data["own_budget"],
            "own_budget_hard_stop": data["own_budget_hard_stop"],
            "alert_thresholds": data["alert_thresholds"],
            "alert_emails": data["alert_emails"],
            "alert_webhook_url": data["alert_webhook_url"],
        }


class AccountTermsForm(forms.Form):
    """What a reseller (or the operator) sells a tenant on."""

    price_list = forms.ModelChoiceField(
        queryset=PriceList.objects.none(),
        required=False,
        empty_label="The seller's default list",
        help_text="Which prices the tenant pays.",
    )
    mode = forms.ChoiceField(
        choices=BillingAccount.Mode.choices,
        label="Billing mode",
        help_text="Prepaid spends a balance topped up in advance; postpaid is invoiced.",
    )
    credit_limit = MoneyField(
        required=False,
        help_text="Postpaid: the most the tenant may owe. Leave empty for no limit.",
    )
    monthly_budget = MoneyField(required=False, help_text="Leave empty for none.")
    budget_hard_stop = forms.BooleanField(
        required=False, label="Stop requests once the budget is spent"
    )

    def __init__(self, *args: Any, seller: Organization, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        price_list = cast(forms.ModelChoiceField, self.fields["price_list"])
        price_list.queryset = PriceList.objects.filter(owner=seller).order_by("name")

    @classmethod
    def for_account(cls, account: Any, *, seller: Organization, data: Any = None) -> Any:
        initial: dict[str, Any] = {"mode": BillingAccount.Mode.PREPAID}
        if account is not None:
            initial = {
                "price_list": account.price_list_id,
                "mode": account.mode,
                "credit_limit": micros_to_units(account.credit_limit_micros),
                "monthly_budget": micros_to_units(account.monthly_budget_micros),
                "budget_hard_stop": account.budget_hard_stop,
            }
        return cls(data, initial=initial, seller=seller)

    def account_fields(self) -> dict[str, Any]:
        data = self.cleaned_data
        fields = {
            "mode": data["mode"],
            "credit_limit_micros": data["credit_limit"],
            "monthly_budget_micros": data["monthly_budget"],
            "budget_hard_stop": data["budget_hard_stop"],
        }
        if "price_list" in self.fields:  # absent for resellers, who buy at wholesale
            fields["price_list"] = data["price_list"]
        return fields


class TopUpForm(forms.Form):
    amount = MoneyField(min_value=Decimal("0.000001"), help_text="In the account's currency.")
    memo = forms.CharField(
        max_length=500, required=False, help_text="e.g. the payment's bank reference."
    )


class PriceListForm(forms.Form):
    name = forms.CharField(max_length=200)
    markup_percent = forms.DecimalField(
        required=False,
        max_digits=9,
        decimal_places=4,
        min_value=Decimal("-100"),
        label="Markup over wholesale (%)",
        help_text="Models without an explicit price here cost wholesale plus this. Leave "
        "empty to sell only the models you price explicitly.",
    )
    is_default = forms.BooleanField(
        required=False,
        label="Default list",
        help_text="Prices every tenant that was given no list.",
    )


class MarkupForm(forms.Form):
    markup_percent = PriceListForm.base_fields["markup_percent"]


class ModelPriceForm(forms.Form):
    model = forms.ModelChoiceField(
        queryset=CatalogModel.objects.filter(is_active=True).order_by("public_id"),
        to_field_name="public_id",
    )
    input_per_mtok = MoneyField(label="Input per 1M tokens")
    cached_input_per_mtok = MoneyField(
        required=False,
        label="Cached input per 1M tokens",
        help_text="Leave empty to charge the input price.",
    )
    output_per_mtok = MoneyField(label="Output per 1M tokens")
    request_fee = MoneyField(required=False, label="Fee per request")
    cache_write_5m_per_mtok = MoneyField(
        required=False,
        label="Cache write (5 min) per 1M tokens",
        help_text="Empty: the input price.",
    )
    cache_write_1h_per_mtok = MoneyField(
        required=False,
        label="Cache write (1 hour) per 1M tokens",
        help_text="Empty: the input price.",
    )
    audio_input_per_mtok = MoneyField(
        required=False, label="Audio input per 1M tokens", help_text="Empty: the input price."
    )
    audio_output_per_mtok = MoneyField(
        required=False, label="Audio output per 1M tokens", help_text="Empty: the output price."
    )
    image_input_per_mtok = MoneyField(
        required=False, label="Image input per 1M tokens", help_text="Empty: the input price."
    )
    image_output_per_mtok = MoneyField(
        required=False, label="Image output per 1M tokens", help_text="Empty: the output price."
    )
    input_image_micros = MoneyField(required=False, label="Per input image")
    output_image_micros = MoneyField(required=False, label="Per generated image")
    web_search_micros = MoneyField(
        required=False,
        label="Per web search",
        help_text="Empty: the provider's web search tool is not offered for this model.",
    )
    long_context_above_tokens = forms.IntegerField(
        required=False,
        min_value=1,
        label="Long context above (prompt tokens)",
        help_text="Above this prompt size the long-context prices below apply.",
    )
    long_input = MoneyField(required=False, label="Long context: input per 1M tokens")
    long_cached_input = MoneyField(required=False, label="Long context: cached input per 1M tokens")
    long_output = MoneyField(required=False, label="Long context: output per 1M tokens")
    flex_percent = forms.IntegerField(
        required=False, min_value=0, label="Flex tier (% of the token prices)"
    )
    priority_percent = forms.IntegerField(
        required=False, min_value=0, label="Priority tier (% of the token prices)"
    )
    effective_from = forms.DateTimeField(
        required=False,
        widget=DATETIME_INPUT,
        help_text="In UTC. Leave empty for now; prices cannot start in the past.",
    )

    OPTIONAL = (
        "cache_write_5m_per_mtok",
        "cache_write_1h_per_mtok",
        "audio_input_per_mtok",
        "audio_output_per_mtok",
        "image_input_per_mtok",
        "image_output_per_mtok",
        "input_image_micros",
        "output_image_micros",
        "web_search_micros",
        "long_context_above_tokens",
        "flex_percent",
        "priority_percent",
    )
    LONG = {"long_input": "input", "long_cached_input": "cached_input", "long_output": "output"}

    def price_fields(self) -> dict[str, Any]:
        """The cleaned form as ``billing.model_price_set``'s arguments."""
        data = self.cleaned_data
        long = {name: data[field] for field, name in self.LONG.items() if data[field] is not None}
        return {
            "model": data["model"],
            "input_per_mtok": data["input_per_mtok"],
            "cached_input_per_mtok": data["cached_input_per_mtok"],
            "output_per_mtok": data["output_per_mtok"],
            "request_fee_micros": data["request_fee"] or 0,
            "effective_from": data["effective_from"],
            "long_context_prices": long or None,
            **{name: data[name] for name in self.OPTIONAL},
        }


class MonthForm(forms.Form):
    month = forms.RegexField(
        regex=r"^\d{4}-\d{2}$", required=False, help_text="YYYY-MM", label="Month"
    )


STATUS_FILTERS = [("", "Any status"), ("ok", "Succeeded"), ("error", "Failed")]


class UsageLogFilterForm(forms.Form):
    """The operator's usage log: every filter optional."""

    tenant = forms.ModelChoiceField(
        queryset=Organization.objects.filter(kind=Organization.Kind.TENANT).order_by("name"),
        required=False,
        to_field_name="slug",
        empty_label="All tenants",
    )
    key = forms.CharField(
        required=False, label="Key prefix", help_text="The first characters, e.g. sk-tg-ab12."
    )
    model = forms.CharField(required=False)
    surface = forms.ChoiceField(
        required=False,
        label="API",
        choices=[("", "All APIs"), *((s, s) for s in SURFACES)],
    )
    channel = forms.ModelChoiceField(
        queryset=Channel.objects.order_by("name"), required=False, empty_label="All channels"
    )
    status = forms.CharField(
        required=False, help_text="“ok”, “error”, or a status code such as 429."
    )
    start = forms.DateTimeField(required=False, widget=DATETIME_INPUT, label="From (UTC)")
    end = forms.DateTimeField(required=False, widget=DATETIME_INPUT, label="Until (UTC)")

    def clean_status(self) -> str:
        value = (self.cleaned_data.get("status") or "").strip().lower()
        if value and value not in ("ok", "error") and not (value.isdigit() and len(value) == 3):
            raise forms.ValidationError("Give ok, error or a three-digit status code.")
        return value

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("start") and data.get("end") and data["end"] <= data["start"]:
            self.add_error("end", "The end comes after the start.")
        return data


class RedemptionCodeForm(forms.Form):
    amount = MoneyField(min_value=Decimal("0.000001"), help_text="Credit the code gives.")
    memo = forms.CharField(max_length=200, required=False, help_text="e.g. the campaign.")
    expires_at = forms.DateTimeField(
        required=False, widget=DATETIME_INPUT, label="Expires", help_text="Optional, in UTC."
    )

    def clean_expires_at(self) -> Any:
        return _future(self.cleaned_data.get("expires_at"))
