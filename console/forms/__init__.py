"""Dashboard forms: they parse and check input; services do the work. The money forms
live in ``console.forms.billing`` and are re-exported here."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import Any, cast

from django import forms
from django.utils import timezone

from billing.models import KeyQuota
from portal.models import CatalogModel, Membership, Organization, PersonalAccessToken
from portal.models.catalog import SURFACES
from portal.models.limits import DAILY_LIMIT_MAX, LIMIT_MAX
from portal.services.keys import KEY_LIMITS

DATETIME_INPUT: forms.DateTimeInput = forms.DateTimeInput(
    attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"
)


def _is_model_id(value: str) -> bool:
    # Clients type these ids; the services reject blanks and spaces too.
    return bool(value) and value == "".join(value.split())


def _future(value: Any) -> Any:
    if value is not None and value <= timezone.now():
        raise forms.ValidationError("Choose a moment in the future.")
    return value


def _limit_field(label: str, maximum: int) -> forms.IntegerField:
    return forms.IntegerField(
        required=False, min_value=1, max_value=maximum, label=label, help_text="Empty: no limit."
    )


class LimitsForm(forms.Form):
    """Rate, concurrency and daily token caps (``KEY_LIMITS``): a key's, or a tenant's as
    its seller sets them."""

    rpm_limit = _limit_field("Requests per minute", LIMIT_MAX)
    tpm_limit = _limit_field("Tokens per minute", LIMIT_MAX)
    concurrency_limit = _limit_field("Concurrent requests", LIMIT_MAX)
    daily_token_limit = _limit_field("Tokens per day (UTC)", DAILY_LIMIT_MAX)

    def limits(self) -> dict[str, int | None]:
        return {name: self.cleaned_data.get(name) for name in KEY_LIMITS}


class ApiKeyForm(LimitsForm):
    # The limits (declared on the base) after what names and scopes the key.
    field_order = ["name", "expires_at", "allowed_models", "allowed_surfaces"]

    name = forms.CharField(
        max_length=200, help_text="Say where the key is used, e.g. “billing-service prod”."
    )
    expires_at = forms.DateTimeField(
        required=False,
        widget=DATETIME_INPUT,
        label="Expires",
        help_text="Optional, in UTC. Leave empty for a key that does not expire.",
    )
    allowed_models = forms.MultipleChoiceField(
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="Tick none to allow every model.",
    )
    allowed_surfaces = forms.MultipleChoiceField(
        required=False,
        label="Allowed APIs",
        choices=[(s, s) for s in SURFACES],
        widget=forms.CheckboxSelectMultiple,
        help_text="Tick none to allow every API.",
    )

    def __init__(self, *args: Any, model_ids: Iterable[str] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cast(forms.ChoiceField, self.fields["allowed_models"]).choices = [(m, m) for m in model_ids]
        # Spend caps (billing.KeyQuota), in the tenant's currency.
        self.fields["spend_limit"] = MoneyField(
            required=False,
            label="Spend cap per period",
            help_text="At retail prices; requests are refused once it is spent. Empty: none.",
        )
        self.fields["spend_period"] = forms.ChoiceField(
            choices=KeyQuota.Period.choices,
            initial=KeyQuota.Period.MONTH,
            required=False,
            label="Period",
        )
        self.fields["spend_total_limit"] = MoneyField(
            required=False, label="Lifetime spend cap", help_text="Empty: none."
        )

    def clean_expires_at(self) -> Any:
        return _future(self.cleaned_data.get("expires_at"))

    def quota(self) -> dict[str, Any]:
        data = self.cleaned_data
        return {
            "period_limit_micros": data.get("spend_limit"),
            "period": data.get("spend_period") or KeyQuota.Period.MONTH,
            "total_limit_micros": data.get("spend_total_limit"),
        }


class InvitationForm(forms.Form):
    email = forms.EmailField(label="E-mail address")
    role = forms.ChoiceField()

    def __init__(self, *args: Any, roles: Iterable[str] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        labels = dict(Membership.Role.choices)
        cast(forms.ChoiceField, self.fields["role"]).choices = [(r, labels[r]) for r in roles]


class OrganizationForm(forms.Form):
    name = forms.CharField(max_length=200)
    slug = forms.SlugField(
        max_length=80,
        required=False,
        help_text="Used in URLs and the API. Leave empty to derive it from the name.",
    )
    owner_email = forms.EmailField(
        required=False,
        label="Owner's e-mail",
        help_text="Optional: we e-mail its first owner an invitation to sign up.",
    )

    def clean_slug(self) -> str:
        slug = self.cleaned_data.get("slug") or ""
        if slug and Organization.objects.filter(slug=slug).exists():
            raise forms.ValidationError("This slug is taken; choose another.")
        return slug


class OperatorOrganizationForm(OrganizationForm):
    kind = forms.ChoiceField(
        choices=[(Organization.Kind.RESELLER, "Reseller"), (Organization.Kind.TENANT, "Tenant")]
    )
    parent = forms.ModelChoiceField(
        queryset=Organization.objects.filter(
            kind__in=[Organization.Kind.PLATFORM, Organization.Kind.RESELLER]
        ).order_by("kind", "name"),
        help_text="Resellers sit under the platform; tenants under the platform or a reseller.",
    )


class CatalogModelForm(forms.Form):
    public_id = forms.CharField(max_length=200, label="Model id")
    owned_by = forms.CharField(max_length=100, initial="tollgate")
    description = forms.CharField(max_length=500, required=False)
    capabilities = forms.CharField(
        required=False, help_text="Comma-separated, e.g. chat, tools, vision."
    )
    context_window = forms.IntegerField(min_value=1, required=False)
    max_output_tokens = forms.IntegerField(min_value=1, required=False)

    def clean_public_id(self) -> str:
        value = self.cleaned_data["public_id"].strip()
        if not _is_model_id(value):
            raise forms.ValidationError("A model id cannot be blank or contain spaces.")
        return value

    def clean_capabilities(self) -> list[str]:
        raw = self.cleaned_data.get("capabilities") or ""
        return list(dict.fromkeys(p.strip() for p in raw.split(",") if p.strip()))

    @classmethod
    def for_model(cls, model: CatalogModel) -> CatalogModelForm:
        return cls(
            initial={
                "public_id": model.public_id,
                "owned_by": model.owned_by,
                "description": model.description,
                "capabilities": ", ".join(model.capabilities or []),
                "context_window": model.context_window,
                "max_output_tokens": model.max_output_tokens,
            }
        )


EXPIRY_CHOICES = [("30", "30 days"), ("90", "90 days"), ("365", "1 year"), ("", "Never")]


class AccessTokenForm(forms.Form):
    name = forms.CharField(max_length=200, help_text="What the token is for, e.g. “CI export”.")
    scope = forms.ChoiceField(
        choices=PersonalAccessToken.Scope.choices,
        initial=PersonalAccessToken.Scope.READ,
        widget=forms.RadioSelect,
        help_text="A read-only token cannot change anything.",
    )
    expires_in = forms.ChoiceField(choices=EXPIRY_CHOICES, initial="90", required=False)

    def expires_at(self) -> Any:
        days = self.cleaned_data.get("expires_in")
        return timezone.now() + timedelta(days=int(days)) if days else None


PERIOD_CHOICES = [("7", "Last 7 days"), ("30", "Last 30 days"), ("90", "Last 90 days")]


class UsageFilterForm(forms.Form):
    days = forms.ChoiceField(choices=PERIOD_CHOICES, initial="30", required=False, label="Period")
    key = forms.TypedChoiceField(coerce=int, required=False, empty_value=None, label="API key")
    model = forms.ChoiceField(required=False)
    surface = forms.ChoiceField(
        required=False,
        label="API",
        choices=[("", "All APIs"), *((s, s) for s in SURFACES)],
    )

    def __init__(
        self,
        *args: Any,
        keys: Iterable[tuple[int, str]] = (),
        models: Iterable[str] = (),
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        cast(forms.ChoiceField, self.fields["key"]).choices = [("", "All keys"), *keys]
        model_choices = [("", "All models"), *((m, m) for m in models)]
        cast(forms.ChoiceField, self.fields["model"]).choices = model_choices

    def period_days(self) -> int:
        data = self.cleaned_data if self.is_valid() else {}
        return int(data.get("days") or 30)


# Re-exported at the end: the money forms build on the helpers above.
from console.forms.billing import (  # noqa: E402
    AccountTermsForm,
    BudgetForm,
    MarkupForm,
    ModelPriceForm,
    MoneyField,
    MonthForm,
    PriceListForm,
    RedeemCodeForm,
    RedemptionCodeForm,
    TopUpForm,
    UsageLogFilterForm,
)
from console.forms.channels import ChannelForm  # noqa: E402

__all__ = [
    "AccessTokenForm",
    "AccountTermsForm",
    "ApiKeyForm",
    "BudgetForm",
    "CatalogModelForm",
    "ChannelForm",
    "InvitationForm",
    "MarkupForm",
    "ModelPriceForm",
    "MoneyField",
    "MonthForm",
    "OperatorOrganizationForm",
    "OrganizationForm",
    "PriceListForm",
    "RedeemCodeForm",
    "RedemptionCodeForm",
    "TopUpForm",
    "UsageFilterForm",
    "UsageLogFilterForm",
]
