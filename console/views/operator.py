"""The operator's console: overview, channels, the model catalog, organisations, audit log.

Every view here starts with ``require_operator``: a 403 for anyone who is not staff.
"""

from __future__ import annotations

from datetime import timedelta

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, redirect
from django.utils import timezone
from django.views.decorators.http import require_POST

from billing.periods import Period
from billing.selectors import dashboard as billing_selectors
from billing.selectors import usage as usage_reads
from console.forms import (
    CatalogModelForm,
    ChannelForm,
    OperatorOrganizationForm,
    UsageLogFilterForm,
)
from console.http import AuthenticatedHttpRequest
from console.views.base import form_errors, paginate, render_page
from console.views.charts import money_bars, stacked_bars
from console.views.invitations import accept_link
from portal import selectors, services
from portal.access import request_scope, require_operator
from portal.models import Channel

# relay.health and relay.discovery are imported by the views that use them, not here: with
# the relay's shared state (Redis), HTTP client and provider adapters under them they would
# add ~0.5 s to every process that loads the URLconf (every management command's checks).

# How far back the channel pages count requests, errors and failovers.
TRAFFIC_WINDOW = timedelta(hours=24)
# Fields of ChannelForm that channel_edit takes as settings (beside the secret and models).
_CHANNEL_FIELDS = (
    "name",
    "provider_type",
    "base_url",
    "priority",
    "weight",
    "provider_settings",
    "native_surfaces",
)


@login_required
def overview(request: AuthenticatedHttpRequest) -> HttpResponse:
    """Platform-wide traffic over the last 30 days, channel and catalog health."""
    require_operator(request.user)
    period = Period.last_days(30)
    events = usage_reads.usage_events_scoped(request_scope(request))
    daily = usage_reads.usage_by_day(events, period)
    labels = [d.day.strftime("%b %d") for d in daily]
    totals = usage_reads.usage_totals(usage_reads.in_period(events, period))
    requests = totals["requests"] or 0
    catalog = list(selectors.catalog_with_availability())
    revenue = billing_selectors.revenue_by_day(events, period.start_at, period.end_at)
    currencies = sorted({r.currency for r in revenue})
    revenue_totals = [
        {
            "currency": currency,
            "wholesale": sum(r.wholesale_micros for r in revenue if r.currency == currency),
            "retail": sum(r.retail_micros for r in revenue if r.currency == currency),
        }
        for currency in currencies
    ]
    # The chart shows the main currency (one, in any usual installation).
    main = currencies[0] if currencies else ""
    per_day = {r.day: r.wholesale_micros for r in revenue if r.currency == main}
    return render_page(
        request,
        "portal/operator/overview.html",
        {
            "period": period,
            "totals": totals,
            "error_rate": (totals["errors"] / requests * 100) if requests else None,
            "requests_chart": stacked_bars(
                "Requests per day",
                labels,
                [
                    ("Succeeded", "series-a", [d.requests - d.errors for d in daily]),
                    ("Failed", "series-err", [d.errors for d in daily]),
                ],
                unit="requests",
            ),
            "tokens_chart": stacked_bars(
                "Tokens per day",
                labels,
                [
                    ("Prompt", "series-a", [d.prompt_tokens for d in daily]),
                    ("Completion", "series-b", [d.completion_tokens for d in daily]),
                ],
                unit="tokens",
            ),
            "daily": daily,
            "revenue_totals": revenue_totals,
            "revenue_chart": money_bars(
                f"Platform revenue per day ({main or 'no priced usage'})",
                labels,
                [("Revenue", "series-a", [per_day.get(d.day, 0) for d in daily])],
                currency=main,
            ),
            "channels": _channels_with_health(),
            "available_count": sum(
                1 for m in catalog if getattr(m, "served", False) and getattr(m, "priced", False)
            ),
            "catalog_count": len(catalog),
        },
        section="operator",
    )


def _channels_with_health() -> list[Channel]:
    """Channels with their breaker (shared relay state) and last day's traffic (usage
    events): error rate and how often the relay failed over from them."""
    from relay import health  # on use: see the note at the top

    channels = list(selectors.channels_overview())
    breakers = health.breaker_states()
    traffic = usage_reads.channel_traffic(timezone.now() - TRAFFIC_WINDOW)
    for channel in channels:
        channel.breaker = (  # type: ignore[attr-defined]
            "unknown" if breakers is None else breakers.get(channel.pk, "closed")
        )
        channel.traffic = traffic.get(channel.pk, usage_reads.ChannelTraffic())  # type: ignore[attr-defined]
    return channels


@login_required
def channels(request: AuthenticatedHttpRequest) -> HttpResponse:
    require_operator(request.user)
    return render_page(
        request,
        "portal/operator/channels.html",
        {"channels": _channels_with_health()},
        section="channels",
    )


@login_required
def channel_create(request: AuthenticatedHttpRequest) -> HttpResponse:
    require_operator(request.user)
    form = ChannelForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        with form_errors(form) as failed:
            channel = services.channel_create(
                secret=data["new_secret"],
                models=data["models"],
                actor=request.user,
                **{field: data[field] for field in _CHANNEL_FIELDS},
            )
        if not failed:
            messages.success(request, f"Channel “{channel.name}” created and enabled.")
            return redirect("channels")
    return render_page(
        request,
        "portal/operator/channel_form.html",
        {"form": form, "channel": None},
        section="channels",
        status=400 if form.errors else 200,
    )


@login_required
def channel_edit(request: AuthenticatedHttpRequest, channel_id: int) -> HttpResponse:
    require_operator(request.user)
    channel = get_object_or_404(selectors.channels_overview(), pk=channel_id)
    initial = ChannelForm.initial_for(channel)
    form = ChannelForm(request.POST or None, initial=initial, editing=True)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        with form_errors(form) as failed:
            services.channel_edit(
                channel=channel,
                actor=request.user,
                secret=data["new_secret"],  # None keeps the stored secret
                models=data["models"],
                **{field: data[field] for field in _CHANNEL_FIELDS},
            )
        if not failed:
            messages.success(request, f"Channel “{channel.name}” saved.")
            return redirect("channels")
    return render_page(
        request,
        "portal/operator/channel_form.html",
        {"form": form, "channel": channel},
        section="channels",
        status=400 if form.errors else 200,
    )


@login_required
@require_POST
def channel_status(request: AuthenticatedHttpRequest, channel_id: int) -> HttpResponseRedirect:
    """Enable or disable a channel (``action`` = enable / disable)."""
    require_operator(request.user)
    channel = get_object_or_404(Channel, pk=channel_id)
    enabled = request.POST.get("action") == "enable"
    services.channel_set_status(
        channel=channel,
        enabled=enabled,
        reason="" if enabled else request.POST.get("reason", "Disabled by an operator"),
        actor=request.user,
    )
    state = "enabled" if enabled else "disabled"
    messages.success(request, f"Channel “{channel.name}” {state}.")
    return redirect("channels")


@login_required
@require_POST
def channel_test(request: AuthenticatedHttpRequest, channel_id: int) -> HttpResponseRedirect:
    """Send the channel one tiny request now and report the result and latency."""
    require_operator(request.user)
    from relay import health  # on use: see the note at the top

    channel = get_object_or_404(Channel, pk=channel_id)
    result = health.channel_check(channel)
    if result.ok:
        messages.success(request, f"“{channel.name}” answered in {result.latency_ms} ms.")
    else:
        messages.error(
            request, f"“{channel.name}” failed after {result.latency_ms} ms: {result.error}"
        )
    return redirect("channels")


@login_required
@require_POST
def channel_discover(request: AuthenticatedHttpRequest, channel_id: int) -> HttpResponse:
    """Ask the provider which models it lists, and offer those the channel does not serve
    yet in the edit form's "Add models" box (nothing is saved until the operator saves)."""
    require_operator(request.user)
    from relay import discovery  # on use: see the note at the top

    channel = get_object_or_404(selectors.channels_overview(), pk=channel_id)
    found = discovery.channel_models_discover(channel)
    initial = ChannelForm.initial_for(channel)
    if not found.ok:
        messages.error(request, f"Discovery failed: {found.error}")
    else:
        served = {link.upstream_model() for link in channel.served.all()}
        new = [name for name in found.models if name not in served]
        initial["models"] = "\n".join(new)
        messages.success(
            request,
            f"The provider lists {len(found.models)} models; {len(new)} not served yet are "
            "in “Add models”. Remove those you do not sell, then save.",
        )
    return render_page(
        request,
        "portal/operator/channel_form.html",
        {"form": ChannelForm(initial=initial, editing=True), "channel": channel},
        section="channels",
    )


@login_required
def catalog(request: AuthenticatedHttpRequest) -> HttpResponse:
    """Every catalog model with its availability, and a form to add or update one."""
    require_operator(request.user)
    edit_id = request.GET.get("edit")
    form = CatalogModelForm(request.POST or None)
    if request.method == "GET" and edit_id:
        model = get_object_or_404(
            selectors.catalog_with_availability(include_inactive=True), public_id=edit_id
        )
        form = CatalogModelForm.for_model(model)
    if request.method == "POST" and form.is_valid():
        with form_errors(form) as failed:
            model = services.catalog_model_upsert(actor=request.user, **form.cleaned_data)
        if not failed:
            messages.success(request, f"Model “{model.public_id}” saved.")
            return redirect("catalog")
    return render_page(
        request,
        "portal/operator/catalog.html",
        {
            "form": form,
            "models": selectors.catalog_with_availability(include_inactive=True),
        },
        section="catalog",
        status=400 if form.errors else 200,
    )


@login_required
def organizations(request: AuthenticatedHttpRequest) -> HttpResponse:
    require_operator(request.user)
    form = OperatorOrganizationForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        with form_errors(form) as failed:
            organization, invitation = services.organization_create_with_owner(
                name=data["name"],
                slug=data["slug"] or None,
                kind=data["kind"],
                parent=data["parent"],
                owner_email=data["owner_email"],
                actor=request.user,
                link=accept_link,
            )
        if not failed:
            then = (
                f"; invitation sent to {invitation.email}."
                if invitation
                else ". Invite its first owner below."
            )
            messages.success(request, f"“{organization.name}” created{then}")
            return redirect("members", slug=organization.slug)
    rows = selectors.organizations_visible(request_scope(request))
    return render_page(
        request,
        "portal/operator/organizations.html",
        {"form": form, "page": paginate(request, rows)},
        section="operator_orgs",
        status=400 if form.errors else 200,
    )


@login_required
def usage_log(request: AuthenticatedHttpRequest) -> HttpResponse:
    """Every request on the platform, newest first, narrowed by the filters."""
    require_operator(request.user)
    form = UsageLogFilterForm(request.GET or None)
    filters = form.cleaned_data if form.is_valid() else {}
    return render_page(
        request,
        "portal/operator/usage_log.html",
        {"form": form, "page": paginate(request, billing_selectors.usage_log(filters))},
        section="usage_log",
        status=400 if form.errors else 200,
    )


@login_required
def audit(request: AuthenticatedHttpRequest) -> HttpResponse:
    require_operator(request.user)
    entries = selectors.audit_entries_scoped(request_scope(request)).order_by("-created_at", "-id")
    return render_page(
        request,
        "portal/audit.html",
        {"page": paginate(request, entries), "platform_wide": True},
        section="operator_audit",
    )


def public_models(request: HttpRequest) -> HttpResponse:
    """Open to everyone: the catalog and whether each model can be used right now."""
    return render_page(
        request,
        "portal/models.html",
        {"models": selectors.catalog_with_availability()},
        section="models",
    )
