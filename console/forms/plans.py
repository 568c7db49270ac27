"""Plan forms: a plan with up to three rolling windows, and a tenant's subscription."""

from __future__ import annotations

from typing import Any

from django import forms

from billing.models import Plan, PlanWindow
from console.forms.billing import MoneyField
from portal.models import Organization

WINDOW_ROWS = 3
LENGTHS = [("", "No window"), *PlanWindow.Length.choices]


class PlanForm(forms.Form):
    name = forms.CharField(max_length=100)
    description = forms.CharField(max_length=500, required=False)
    monthly_fee = MoneyField(label="Monthly fee")
    included_credit = MoneyField(
        required=False, label="Included credit", help_text="Added to the balance each month."
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for n in range(1, WINDOW_ROWS + 1):
            self.fields[f"window_{n}_length"] = forms.ChoiceField(
                choices=LENGTHS, required=False, label=f"Window {n}: length"
            )
            self.fields[f"window_{n}_tokens"] = forms.IntegerField(
                required=False, min_value=1, label=f"Window {n}: token cap"
            )
            self.fields[f"window_{n}_spend"] = MoneyField(
                required=False, label=f"Window {n}: spend cap", help_text="Or a spend cap."
            )
            self.fields[f"window_{n}_models"] = forms.CharField(
                required=False,
                label=f"Window {n}: models",
                help_text="Model ids, comma-separated; empty: every model.",
            )

    def windows(self) -> list[dict[str, Any]]:
        """The windows typed, as ``billing.services.plan_create`` takes them."""
        data = self.cleaned_data
        windows = []
        for n in range(1, WINDOW_ROWS + 1):
            length = data.get(f"window_{n}_length")
            if not length:
                continue
            tokens, spend = data.get(f"window_{n}_tokens"), data.get(f"window_{n}_spend")
            if (tokens is None) == (spend is None):
                self.add_error(f"window_{n}_tokens", "Give a token cap or a spend cap.")
                continue
            models = [m.strip() for m in (data.get(f"window_{n}_models") or "").split(",")]
            windows.append(
                {
                    "length": length,
                    "kind": "tokens" if tokens is not None else "spend",
                    "cap": tokens if tokens is not None else spend,
                    "model_ids": [m for m in models if m],
                }
            )
        return windows


class SubscribeTenantForm(forms.Form):
    """A seller subscribes one of its tenants."""

    tenant = forms.ModelChoiceField(queryset=Organization.objects.none())
    plan = forms.ModelChoiceField(queryset=Plan.objects.none())

    def __init__(self, *args: Any, seller: Organization, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        tenant_field = self.fields["tenant"]
        plan_field = self.fields["plan"]
        assert isinstance(tenant_field, forms.ModelChoiceField)
        assert isinstance(plan_field, forms.ModelChoiceField)
        tenant_field.queryset = Organization.objects.filter(
            parent=seller, kind=Organization.Kind.TENANT
        ).order_by("name")
        plan_field.queryset = Plan.objects.filter(seller=seller, is_active=True)
