"""Plans: a seller defines them and subscribes its tenants; a tenant sees its plan, what
is left in each window, and subscribes or cancels. Every change goes through
``billing.services``."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import Http404, HttpResponse, HttpResponseRedirect
from django.shortcuts import redirect

from billing import services as billing
from billing.models import Plan, Subscription
from billing.selectors import plans as reads
from console.forms.plans import WINDOW_ROWS, PlanForm, SubscribeTenantForm
from console.http import AuthenticatedHttpRequest
from console.views.base import form_errors, render_page
from portal.access import Access, Need, get_access, require_operator
from portal.models import Organization


def _seller(request: AuthenticatedHttpRequest, slug: str) -> Access:
    access = get_access(request.user, slug, need=Need.MANAGE)
    kind = access.organization.kind
    if kind == Organization.Kind.TENANT:
        raise Http404("Tenants sell no plans.")
    if kind == Organization.Kind.PLATFORM:
        require_operator(request.user)
    return access


@login_required
def plans(request: AuthenticatedHttpRequest, slug: str) -> HttpResponse:
    """A seller's plans and its tenants' subscriptions."""
    access = _seller(request, slug)
    seller = access.organization
    action = request.POST.get("action") if request.method == "POST" else None
    form = PlanForm(request.POST if action == "create" else None)
    subscribe = SubscribeTenantForm(request.POST if action == "subscribe" else None, seller=seller)
    if action == "create" and form.is_valid():
        windows = form.windows()
        if not form.errors:
            with form_errors(form) as failed:
                plan = billing.plan_create(
                    seller=seller,
                    name=form.cleaned_data["name"],
                    description=form.cleaned_data["description"],
                    monthly_fee_micros=form.cleaned_data["monthly_fee"],
                    included_credit_micros=form.cleaned_data["included_credit"] or 0,
                    windows=windows,
                    actor=request.user,
                )
            if not failed:
                messages.success(request, f"Plan “{plan.name}” created.")
                return redirect("plans", slug=slug)
    elif action == "subscribe" and subscribe.is_valid():
        with form_errors(subscribe) as failed:
            billing.subscription_create(
                tenant=subscribe.cleaned_data["tenant"],
                plan=subscribe.cleaned_data["plan"],
                actor=request.user,
            )
        if not failed:
            messages.success(request, "Subscribed.")
            return redirect("plans", slug=slug)
    elif action in ("open", "close"):
        chosen = Plan.objects.filter(pk=_posted_id(request, "plan"), seller=seller).first()
        if chosen is None:
            raise Http404("No such plan.")
        billing.plan_update(plan=chosen, actor=request.user, is_active=action == "open")
        state = "opened" if action == "open" else "closed"
        messages.success(request, f"Plan “{chosen.name}” {state}.")
        return redirect("plans", slug=slug)
    elif action == "cancel":
        found = reads.subscriptions_sold_by(seller).filter(pk=_posted_id(request, "subscription"))
        subscription = found.first()
        if subscription is None:
            raise Http404("No such subscription.")
        _cancel(request, subscription)
        return redirect("plans", slug=slug)
    failed_form = bool(form.errors or subscribe.errors)
    return render_page(
        request,
        "portal/plans.html",
        {
            "form": form,
            "window_rows": range(1, WINDOW_ROWS + 1),
            "subscribe_form": subscribe,
            "plans": reads.plans_of(seller),
            "subscriptions": reads.subscriptions_sold_by(seller),
        },
        access=access,
        section="plans",
        status=400 if failed_form else 200,
    )


def _posted_id(request: AuthenticatedHttpRequest, name: str) -> int:
    """A posted row id; 0 (no row) when it is not a number."""
    value = request.POST.get(name, "")
    return int(value) if value.isdigit() and len(value) < 19 else 0


def _cancel(request: AuthenticatedHttpRequest, subscription: Subscription) -> None:
    try:
        billing.subscription_cancel(subscription=subscription, actor=request.user)
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    else:
        messages.success(request, f"Subscription to “{subscription.plan.name}” cancelled.")


@login_required
def plan(request: AuthenticatedHttpRequest, slug: str) -> HttpResponse:
    """A tenant's plan: what is left in each window; subscribe, switch or cancel."""
    access = get_access(request.user, slug, need=Need.VIEW)
    tenant = access.organization
    if not tenant.is_tenant:
        raise Http404("Only tenants subscribe to plans.")
    current = reads.active_subscription(tenant)
    if request.method == "POST":
        access.require(Need.BILLING)
        action = request.POST.get("action")
        if action == "subscribe":
            chosen = reads.plans_offered_to(tenant).filter(pk=_posted_id(request, "plan")).first()
            if chosen is None:
                raise Http404("No such plan.")
            try:
                billing.subscription_create(tenant=tenant, plan=chosen, actor=request.user)
            except ValidationError as exc:
                messages.error(request, " ".join(exc.messages))
            else:
                messages.success(request, f"Subscribed to “{chosen.name}”.")
        elif action == "cancel" and current is not None:
            _cancel(request, current)
        return redirect("plan", slug=slug)
    # On use: relay.plan_usage brings the relay's shared state (Redis clients, ~0.3 s)
    # into every process that loads the URLconf.
    from relay.plan_usage import windows_left
    from relay.snapshot import subscription_windows

    left = windows_left(subscription_windows(current)) if current else []
    return render_page(
        request,
        "portal/plan.html",
        {
            "subscription": current,
            "windows": left,
            "offered": reads.plans_offered_to(tenant),
            "can_subscribe": access.can(Need.BILLING),
        },
        access=access,
        section="plan",
    )


@login_required
def operator_plans(request: AuthenticatedHttpRequest) -> HttpResponseRedirect:
    """The platform's plans (for tenants directly under it) live on its own pages."""
    require_operator(request.user)
    platform = Organization.objects.filter(kind=Organization.Kind.PLATFORM).first()
    if platform is None:
        raise Http404("There is no platform organisation yet.")
    return redirect("plans", slug=platform.slug)
