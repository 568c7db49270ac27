"""What resellers (and the platform) sell with: price lists and prices, redemption codes,
and the revenue and margin report. Every change goes through ``billing.services``.
"""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import redirect
from django.utils.cache import add_never_cache_headers

from billing import selectors as billing_selectors
from billing import services as billing
from billing.models import PriceList, UsageEvent
from billing.periods import Period
from billing.selectors import dashboard as reads
from console.forms import (
    MarkupForm,
    ModelPriceForm,
    MonthForm,
    PriceListForm,
    RedemptionCodeForm,
)
from console.http import AuthenticatedHttpRequest
from console.views.base import form_errors, paginate, render_page
from console.views.charts import Chart, money_bars
from portal.access import (
    Access,
    Need,
    get_access,
    require_operator,
)
from portal.models import Organization

# --- Price lists ----------------------------------------------------------------------------


def _price_list_owner(request: HttpRequest, slug: str) -> Access:
    access = get_access(request.user, slug, need=Need.MANAGE)
    kind = access.organization.kind
    if kind == Organization.Kind.TENANT:
        raise Http404("Tenants own no price lists.")
    if kind == Organization.Kind.PLATFORM:
        require_operator(request.user)
    return access


@login_required
def price_lists(request: AuthenticatedHttpRequest, slug: str) -> HttpResponse:
    access = _price_list_owner(request, slug)
    owner = access.organization
    form = PriceListForm(request.POST or None)
    if owner.kind == Organization.Kind.PLATFORM:
        del form.fields["markup_percent"]  # wholesale lists hold explicit prices
    if request.method == "POST" and form.is_valid():
        with form_errors(form) as failed:
            price_list = billing.price_list_create(
                owner=owner,
                name=form.cleaned_data["name"],
                is_default=form.cleaned_data["is_default"],
                markup_percent=form.cleaned_data.get("markup_percent"),
                actor=request.user,
            )
        if not failed:
            messages.success(request, f"Price list “{price_list.name}” created.")
            return redirect("price_list", slug=slug, list_id=price_list.pk)
    return render_page(
        request,
        "portal/price_lists.html",
        {"form": form, "lists": reads.price_lists_of(owner)},
        access=access,
        section="price_lists",
        status=400 if form.errors else 200,
    )


@login_required
def price_list(request: AuthenticatedHttpRequest, slug: str, list_id: int) -> HttpResponse:
    """One list's prices; set a model's price (from now or a later date) or the markup."""
    access = _price_list_owner(request, slug)
    owner = access.organization
    found = PriceList.objects.select_related("owner").filter(pk=list_id, owner=owner).first()
    if found is None:
        raise Http404("No such price list.")
    action = request.POST.get("action") if request.method == "POST" else None
    price_form = ModelPriceForm(request.POST if action == "price" else None)
    markup_form = MarkupForm(
        request.POST if action == "markup" else None,
        initial={
            "markup_percent": None
            if found.markup_percent is None
            else format(found.markup_percent.normalize(), "f")
        },
    )
    if action == "price" and price_form.is_valid():
        data = price_form.cleaned_data
        with form_errors(price_form) as failed:
            billing.model_price_set(
                price_list=found, **price_form.price_fields(), actor=request.user
            )
        if not failed:
            messages.success(request, f"Price of {data['model'].public_id} set.")
            return redirect("price_list", slug=slug, list_id=found.pk)
    wholesale = owner.kind == Organization.Kind.PLATFORM and found.is_default
    if action == "catalog" and wholesale:
        require_operator(request.user)
        with form_errors(price_form) as failed:
            imported = billing.price_catalog_import(actor=request.user)
        if not failed:
            messages.success(request, catalog_message(imported))
            return redirect("price_list", slug=slug, list_id=found.pk)
    if action == "markup" and owner.kind != Organization.Kind.PLATFORM and markup_form.is_valid():
        with form_errors(markup_form) as failed:
            billing.price_list_set_markup(
                price_list=found,
                markup_percent=markup_form.cleaned_data["markup_percent"],
                actor=request.user,
            )
        if not failed:
            messages.success(request, "Markup saved.")
            return redirect("price_list", slug=slug, list_id=found.pk)
    rows = reads.price_rows(found)  # every dimension as charged, markups applied
    return render_page(
        request,
        "portal/price_list.html",
        {
            "price_list": found,
            "rows": rows,
            "price_form": price_form,
            "markup_form": markup_form if owner.kind != Organization.Kind.PLATFORM else None,
            "catalog_import": reads.catalog_summary() if wholesale else None,
        },
        access=access,
        section="price_lists",
        status=400 if price_form.errors or markup_form.errors else 200,
    )


# --- Revenue, redemption codes, the operator's shortcuts -----------------------------------


def _month(request: HttpRequest) -> tuple[MonthForm, Period]:
    form = MonthForm(request.GET or None)
    period = Period.current()
    if form.is_valid() and form.cleaned_data.get("month"):
        try:
            period = Period.parse(form.cleaned_data["month"])
        except ValueError:
            form.add_error("month", "Give a month as YYYY-MM.")
    return form, period


@login_required
def revenue(request: AuthenticatedHttpRequest, slug: str) -> HttpResponse:
    """A reseller's usage, revenue and margin by tenant (and by model) for one month."""
    access = get_access(request.user, slug, need=Need.MANAGE)
    reseller = access.organization
    if reseller.kind != Organization.Kind.RESELLER:
        raise Http404("Only resellers have a margin report.")
    form, period = _month(request)
    rows = billing_selectors.reseller_margin(reseller=reseller, period=period)
    by_tenant = reads.revenue_by_tenant(rows)
    return render_page(
        request,
        "portal/revenue.html",
        {
            "form": form,
            "period": period,
            "rows": rows,
            "by_tenant": by_tenant,
            "totals": {
                "requests": sum(t.requests for t in by_tenant),
                "retail": sum(t.retail_micros for t in by_tenant),
                "wholesale": sum(t.wholesale_micros for t in by_tenant),
                "margin": sum(t.margin_micros for t in by_tenant),
            },
            "previous": period.previous().label,
            "updated_at": reads.rollups_updated_at(),
            "chart": _revenue_chart(reseller, period),
        },
        access=access,
        section="revenue",
    )


def _revenue_chart(reseller: Organization, period: Period) -> Chart:
    """Revenue per day of the month, live from the usage events (the tables below wait
    for the rollups): the platform's wholesale share and the reseller's margin on top."""
    events = UsageEvent.objects.filter(reseller=reseller)
    daily = reads.revenue_by_day(events, period.start_at, period.end_at)
    currency = reads.issuer_currency(reseller)
    wholesale = {d.day: d.wholesale_micros for d in daily if d.currency == currency}
    retail = {d.day: d.retail_micros for d in daily if d.currency == currency}
    days = period.days()
    return money_bars(
        f"Revenue per day ({currency})",
        [day.strftime("%b %d") for day in days],
        [
            ("Wholesale cost", "series-a", [wholesale.get(day, 0) for day in days]),
            (
                "Margin",
                "series-b",
                [retail.get(day, 0) - wholesale.get(day, 0) for day in days],
            ),
        ],
        currency=currency,
    )


def _to_platform_page(request: HttpRequest, name: str) -> HttpResponseRedirect:
    require_operator(request.user)
    platform = Organization.objects.filter(kind=Organization.Kind.PLATFORM).first()
    if platform is None:
        raise Http404("There is no platform organisation yet.")
    return redirect(name, slug=platform.slug)


@login_required
def operator_price_lists(request: AuthenticatedHttpRequest) -> HttpResponseRedirect:
    """The platform's (wholesale) lists live on the platform organisation's pages."""
    return _to_platform_page(request, "price_lists")


@login_required
def operator_codes(request: AuthenticatedHttpRequest) -> HttpResponseRedirect:
    """The platform's redemption codes (any account in their currency may redeem)."""
    return _to_platform_page(request, "codes")


@login_required
def codes(request: AuthenticatedHttpRequest, slug: str) -> HttpResponse:
    """Redemption codes a reseller (or the platform) issues; the code is shown once."""
    access = _price_list_owner(request, slug)
    issuer = access.organization
    form = RedemptionCodeForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        with form_errors(form) as failed:
            code, text = billing.redemption_code_create(
                issuer=issuer,
                amount_micros=form.cleaned_data["amount"],
                currency=reads.issuer_currency(issuer),
                memo=form.cleaned_data["memo"],
                expires_at=form.cleaned_data["expires_at"],
                actor=request.user,
            )
        if not failed:
            response = render_page(
                request,
                "portal/code_created.html",
                {"code": code, "secret": text},
                access=access,
                section="codes",
            )
            add_never_cache_headers(response)
            return response
    return render_page(
        request,
        "portal/codes.html",
        {"form": form, "page": paginate(request, reads.codes_issued(issuer))},
        access=access,
        section="codes",
        status=400 if form.errors else 200,
    )


def catalog_message(imported: billing.CatalogImport) -> str:
    if not imported.changed:
        return "The price catalog is already imported: nothing changed."
    parts = [
        f"{len(imported.models_created)} models added",
        f"{len(imported.priced)} priced at the provider's list price",
    ]
    if imported.kept:
        parts.append(f"{len(imported.kept)} kept at your own price")
    if imported.scheduled:
        parts.append(f"{len(imported.scheduled)} with an announced later price scheduled")
    return "Price catalog imported: " + ", ".join(parts) + "."
