"""What every dashboard page shares: rendering with navigation, and service errors on forms."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from django.core.paginator import Page, Paginator
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse

from portal.access import Access, Need, get_access, is_operator, request_scope
from portal.models import Organization

PAGE_SIZE = 50
# How many organisations the switcher lists before pointing to the full list.
SWITCHER_LIMIT = 12


@dataclass(frozen=True)
class NavLink:
    label: str
    url: str
    key: str


def _organization_links(access: Access) -> list[NavLink]:
    """The sections of one organisation this person's role opens."""
    org = access.organization
    slug = org.slug
    links = [NavLink("Overview", reverse("org", args=[slug]), "overview")]
    if org.is_tenant and access.can(Need.KEYS):
        links.append(NavLink("API keys", reverse("keys", args=[slug]), "keys"))
    if org.is_tenant and access.can(Need.USAGE):
        links.append(NavLink("Usage", reverse("usage", args=[slug]), "usage"))
    if org.is_tenant:
        links.append(NavLink("Plan", reverse("plan", args=[slug]), "plan"))
    if org.is_tenant and access.can(Need.KEYS):
        links.append(NavLink("Quick start", reverse("quickstart", args=[slug]), "quickstart"))
    if org.is_tenant:
        links.append(NavLink("Models", reverse("tenant_models", args=[slug]), "models"))
    reseller = org.kind == Organization.Kind.RESELLER
    if not org.is_tenant and access.can(Need.MANAGE):
        links.append(NavLink("Tenants", reverse("tenants", args=[slug]), "tenants"))
    if reseller and access.can(Need.MANAGE):
        links.append(NavLink("Price lists", reverse("price_lists", args=[slug]), "price_lists"))
        links.append(NavLink("Plans", reverse("plans", args=[slug]), "plans"))
        links.append(NavLink("Revenue", reverse("revenue", args=[slug]), "revenue"))
        links.append(NavLink("Codes", reverse("codes", args=[slug]), "codes"))
        links.append(NavLink("Stripe", reverse("seller_stripe", args=[slug]), "stripe"))
    if reseller and access.can(Need.BILLING):
        links.append(NavLink("Invoices", reverse("invoices_issued", args=[slug]), "invoices"))
    if access.can(Need.MEMBERS):
        links.append(NavLink("Members", reverse("members", args=[slug]), "members"))
    if access.can(Need.BILLING):
        links.append(NavLink("Billing", reverse("billing", args=[slug]), "billing"))
        if org.kind != Organization.Kind.PLATFORM:
            links.append(NavLink("Budget", reverse("budget", args=[slug]), "budget"))
        if org.kind != Organization.Kind.PLATFORM:
            links.append(NavLink("Payments", reverse("payments", args=[slug]), "payments"))
    if access.can(Need.SELL) and org.kind != Organization.Kind.PLATFORM:
        links.append(NavLink("Terms & top-up", reverse("terms", args=[slug]), "terms"))
    if access.can(Need.SELL) and org.is_tenant:
        links.append(NavLink("Limits & access", reverse("tenant_limits", args=[slug]), "limits"))
    if access.can(Need.OWNER) and org.kind != Organization.Kind.PLATFORM:
        links.append(NavLink("Single sign-on", reverse("sso_settings", args=[slug]), "sso"))
    if access.can(Need.AUDIT):
        links.append(NavLink("Audit log", reverse("org_audit", args=[slug]), "audit"))
    return links


def _operator_links() -> list[NavLink]:
    return [
        NavLink("Overview", reverse("operator"), "operator"),
        NavLink("Channels", reverse("channels"), "channels"),
        NavLink("Models", reverse("catalog"), "catalog"),
        NavLink("Organisations", reverse("operator_orgs"), "operator_orgs"),
        NavLink("Usage log", reverse("usage_log"), "usage_log"),
        NavLink("Price lists", reverse("operator_price_lists"), "price_lists"),
        NavLink("Codes", reverse("operator_codes"), "codes"),
        NavLink("Plans", reverse("operator_plans"), "plans"),
        NavLink("Invoices", reverse("operator_invoices"), "operator_invoices"),
        NavLink("Stripe", reverse("operator_stripe"), "stripe"),
        NavLink("Audit log", reverse("operator_audit"), "operator_audit"),
    ]


def navigation(request: HttpRequest, access: Access | None) -> dict[str, Any]:
    user = request.user
    if not user.is_authenticated:
        return {}
    scope = request_scope(request)
    switcher: QuerySet[Organization] = (
        scope.organizations().exclude(kind=Organization.Kind.PLATFORM).order_by("name")
    )
    return {
        "nav_operator": _operator_links() if is_operator(user) else [],
        "nav_org": _organization_links(access) if access else [],
        "nav_switcher": list(switcher[:SWITCHER_LIMIT]),
        "current_org": access.organization if access else None,
        "current_role": access.role.value if access else None,
    }


def render_page(
    request: HttpRequest,
    template: str,
    context: dict[str, Any] | None = None,
    *,
    access: Access | None = None,
    section: str = "",
    status: int = 200,
) -> HttpResponse:
    """Render a dashboard page inside the base layout with role-aware navigation."""
    full = {**navigation(request, access), "access": access, "section": section}
    full.update(context or {})
    return render(request, template, full, status=status)


def paginate(request: HttpRequest, rows: QuerySet[Any], per_page: int = PAGE_SIZE) -> Page:
    return Paginator(rows, per_page).get_page(request.GET.get("page"))


def add_service_errors(form: forms.BaseForm, exc: ValidationError) -> None:
    """Show a service's ValidationError on the form: on its field where one matches."""
    if hasattr(exc, "error_dict"):
        for field, errors in exc.message_dict.items():
            form.add_error(field if field in form.fields else None, errors)
    else:
        form.add_error(None, exc.messages)


@contextmanager
def form_errors(form: forms.BaseForm) -> Iterator[list[bool]]:
    """Run a service; on ValidationError put its messages on ``form`` and flag failure.

    Usage: ``with form_errors(form) as failed: services.x(...)`` then ``if failed: ...``.
    """
    failed: list[bool] = []
    try:
        yield failed
    except ValidationError as exc:
        add_service_errors(form, exc)
        failed.append(True)


def sold_access(request: HttpRequest, slug: str, *, tenant_only: bool = False) -> Access:
    """An organisation for its seller (the reseller's managers above it, operators), who
    sets its terms, limits and access; 404 for the platform, which nobody sells to, and
    with ``tenant_only`` for a reseller."""
    access = get_access(request.user, slug, need=Need.SELL)
    kind = access.organization.kind
    if kind == Organization.Kind.PLATFORM or (tenant_only and kind != Organization.Kind.TENANT):
        raise Http404("Nobody sells this organisation that.")
    return access
