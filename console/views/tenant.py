"""A tenant's pages: API keys, usage with charts, and the quick start."""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ObjectDoesNotExist
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import redirect
from django.utils.cache import add_never_cache_headers
from django.views.decorators.http import require_POST

from billing import pricing
from billing import services as billing
from billing.models import KeyQuota, UsageEvent
from billing.periods import Period
from billing.pricing import KeySpendingLimit
from billing.selectors import dashboard as billing_selectors
from billing.selectors import usage as usage_reads
from console.forms import ApiKeyForm, UsageFilterForm
from console.http import AuthenticatedHttpRequest
from console.views.base import form_errors, paginate, render_page
from console.views.charts import money_bars, stacked_bars
from portal import selectors, services
from portal.access import Access, Need, get_access, get_object_for_user
from portal.models import ApiKey


def tenant_access(request: HttpRequest, slug: str, need: Need) -> Access:
    access = get_access(request.user, slug, need=need)
    if not access.organization.is_tenant:
        raise Http404("Only tenants have this page.")
    return access


def _model_ids(*, include_inactive: bool = False) -> list[str]:
    models = selectors.catalog_with_availability(include_inactive=include_inactive)
    return list(models.values_list("public_id", flat=True))


@dataclass(frozen=True)
class KeySpend:
    """A key's spend cap for the key list: what is left of each limit it has."""

    quota: KeyQuota
    left: KeySpendingLimit

    @property
    def period_spent_micros(self) -> int | None:
        limit, left = self.quota.period_limit_micros, self.left.period_remaining_micros
        return None if limit is None or left is None else min(limit - left, limit)

    @property
    def period_left_micros(self) -> int | None:
        left = self.left.period_remaining_micros
        return None if left is None else max(left, 0)

    @property
    def total_left_micros(self) -> int | None:
        left = self.left.total_remaining_micros
        return None if left is None else max(left, 0)


def _key_spend(api_key: ApiKey) -> KeySpend | None:
    """The key's cap and what is left of it: queries only for keys that have one."""
    try:
        quota = api_key.spend_quota
    except ObjectDoesNotExist:
        return None
    left = pricing.key_spending_limit(api_key.pk)
    return None if left is None else KeySpend(quota, left)


@login_required
def models(request: AuthenticatedHttpRequest, slug: str) -> HttpResponse:
    """The catalog with the tenant's own price of each model (through its reseller's
    list), as the relay would charge it now."""
    access = tenant_access(request, slug, Need.VIEW)
    prices = pricing.tenant_price_table(access.organization.pk)
    catalog = list(selectors.catalog_with_availability())
    for model in catalog:
        pair = prices.get(model.public_id)
        model.your_price = pair.retail if pair is not None else None  # type: ignore[attr-defined]
    return render_page(
        request,
        "portal/models.html",
        {"models": catalog, "show_prices": True},
        access=access,
        section="models",
    )


@login_required
def keys(request: AuthenticatedHttpRequest, slug: str) -> HttpResponse:
    """List the tenant's keys and issue new ones; the secret is shown once, on this reply."""
    access = tenant_access(request, slug, Need.KEYS)
    form = ApiKeyForm(request.POST or None, model_ids=_model_ids())
    if request.method == "POST" and form.is_valid():
        with form_errors(form) as failed:
            api_key, secret = billing.api_key_issue(
                tenant=access.organization,
                name=form.cleaned_data["name"],
                expires_at=form.cleaned_data["expires_at"],
                allowed_models=form.cleaned_data["allowed_models"],
                allowed_surfaces=form.cleaned_data["allowed_surfaces"],
                limits=form.limits(),
                **form.quota(),
                actor=request.user,
            )
        if not failed:
            response = render_page(
                request,
                "portal/key_created.html",
                {
                    "api_key": api_key,
                    "secret": secret,
                    "base_url": _base_url(),
                },
                access=access,
                section="keys",
            )
            add_never_cache_headers(response)
            return response
    page = paginate(request, selectors.api_keys_for(access).select_related("spend_quota"))
    for api_key in page.object_list:
        api_key.spend = _key_spend(api_key)
    return render_page(
        request,
        "portal/keys.html",
        {
            "form": form,
            "page": page,
            "summary": billing_selectors.account_summary(access.organization),
            "org_limits": access.organization.enforced_limits(),
        },
        access=access,
        section="keys",
        status=400 if form.errors else 200,
    )


@login_required
@require_POST
def key_revoke(request: AuthenticatedHttpRequest, slug: str, key_id: int) -> HttpResponseRedirect:
    api_key, _ = get_object_for_user(
        request.user,
        ApiKey.objects.filter(tenant__slug=slug),
        organization_field="tenant",
        owner_field="created_by",
        need=Need.KEYS,
        pk=key_id,
    )
    services.api_key_revoke(api_key=api_key, actor=request.user)
    messages.success(request, f"Key “{api_key.name}” revoked. Requests using it now fail.")
    return redirect("keys", slug=slug)


def filtered_usage(
    request: HttpRequest, access: Access
) -> tuple[UsageFilterForm, QuerySet[UsageEvent], Period]:
    """The usage filter form, the events it selects (before the period) and the period:
    the same for the usage page and its CSV export."""
    visible_keys = selectors.api_keys_for(access)
    form = UsageFilterForm(
        request.GET or None,
        keys=[(k.pk, f"{k.name} ({k.prefix}…)") for k in visible_keys],
        # Withdrawn models too: their past requests are still worth filtering on.
        models=_model_ids(include_inactive=True),
    )
    events = usage_reads.usage_events_for(access)
    if form.is_valid():
        if form.cleaned_data.get("key"):
            events = events.filter(api_key_id=form.cleaned_data["key"])
        if form.cleaned_data.get("model"):
            events = events.filter(model=form.cleaned_data["model"])
        if form.cleaned_data.get("surface"):
            events = events.filter(surface=form.cleaned_data["surface"])
    return form, events, Period.last_days(form.period_days())


@login_required
def usage(request: AuthenticatedHttpRequest, slug: str) -> HttpResponse:
    """Requests and tokens by day and by model, and the latest requests."""
    access = tenant_access(request, slug, Need.USAGE)
    form, events, period = filtered_usage(request, access)
    daily = usage_reads.usage_by_day(events, period)
    labels = [d.day.strftime("%b %d") for d in daily]
    tokens_chart = stacked_bars(
        "Tokens per day",
        labels,
        [
            ("Prompt", "series-a", [d.prompt_tokens for d in daily]),
            ("Completion", "series-b", [d.completion_tokens for d in daily]),
        ],
        unit="tokens",
    )
    requests_chart = stacked_bars(
        "Requests per day",
        labels,
        [
            ("Succeeded", "series-a", [d.requests - d.errors for d in daily]),
            ("Failed", "series-err", [d.errors for d in daily]),
        ],
        unit="requests",
    )
    account = billing_selectors.account_of(access.organization)
    totals = usage_reads.usage_totals(usage_reads.in_period(events, period))
    currency = account.currency if account is not None else ""
    if not currency and totals["spend_micros"]:
        # No account opened yet: the currency its requests were priced in (LIMIT 1, no
        # ordering, so the first priced row ends the scan).
        priced = usage_reads.in_period(events, period).exclude(currency="").order_by()
        currency = next(iter(priced.values_list("currency", flat=True)[:1]), "")
    spend_chart = money_bars(
        "Spend per day" + (f" ({currency})" if currency else ""),
        labels,
        [("Spend", "series-b", [d.spend_micros for d in daily])],
        currency=currency,
    )
    return render_page(
        request,
        "portal/usage.html",
        {
            "form": form,
            "period": period,
            "daily": daily,
            "totals": totals,
            "by_model": usage_reads.usage_by_model(events, period),
            "recent": usage_reads.recent_requests(usage_reads.in_period(events, period)),
            "tokens_chart": tokens_chart,
            "requests_chart": requests_chart,
            "spend_chart": spend_chart,
            "currency": currency,
            "has_keys": selectors.api_keys_for(access).exists(),
        },
        access=access,
        section="usage",
    )


def _base_url() -> str:
    return settings.TOLLGATE_PUBLIC_URL.rstrip("/") + "/v1"


@login_required
def quickstart(request: AuthenticatedHttpRequest, slug: str) -> HttpResponse:
    """The base URL and copy-paste snippets for Python, Node and curl."""
    access = tenant_access(request, slug, Need.KEYS)
    available = [
        m.public_id
        for m in selectors.catalog_with_availability()
        if getattr(m, "served", False) and getattr(m, "priced", False)
    ]
    return render_page(
        request,
        "portal/quickstart.html",
        {
            "base_url": _base_url(),
            "model": available[0] if available else "MODEL-ID",
            "available_models": available,
        },
        access=access,
        section="quickstart",
    )
