"""An organisation's money pages: balance, codes to redeem, budget and invoices; a
seller's terms for a customer (price list, mode, credit, budget) and top-ups; invoices
issued, with PDF/CSV and issue / paid / void. Every change goes through
``billing.services``.
"""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import redirect
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from billing import services as billing
from billing.documents import invoice_csv, invoice_pdf
from billing.models import Invoice
from billing.money import format_micros
from billing.selectors import dashboard as reads
from billing.services.common import account_for
from console.forms import (
    AccountTermsForm,
    BudgetForm,
    RedeemCodeForm,
    TopUpForm,
)
from console.http import AuthenticatedHttpRequest
from console.views.base import form_errors, paginate, render_page, sold_access
from portal.access import (
    Access,
    Need,
    get_access,
    request_scope,
    require_operator,
    role_grants,
)
from portal.models import Organization

# --- The organisation's own account ---------------------------------------------------------


@login_required
def billing_page(request: AuthenticatedHttpRequest, slug: str) -> HttpResponse:
    """Balance, this month's spend, invoices received, recent credits; a code to redeem."""
    access = get_access(request.user, slug, need=Need.BILLING)
    return _billing_page(request, access, RedeemCodeForm())


def _billing_page(
    request: HttpRequest, access: Access, redeem_form: RedeemCodeForm, status: int = 200
) -> HttpResponse:
    organization = access.organization
    summary = reads.account_summary(organization)
    return render_page(
        request,
        "portal/billing.html",
        {
            "summary": summary,
            "invoices": reads.invoices_received(organization)[:24],
            "entries": reads.ledger_entries(summary.account),
            "redeem_form": redeem_form if organization.is_tenant else None,
            "can_sell": access.can(Need.SELL),
        },
        access=access,
        section="billing",
        status=status,
    )


@login_required
@require_POST
def redeem(request: AuthenticatedHttpRequest, slug: str) -> HttpResponse:
    access = get_access(request.user, slug, need=Need.BILLING)
    if not access.organization.is_tenant:
        raise Http404("Only tenants redeem codes.")
    form = RedeemCodeForm(request.POST)
    if form.is_valid():
        with form_errors(form) as failed:
            entry = billing.redemption_code_redeem(
                code=form.cleaned_data["code"],
                account=account_for(access.organization),
                actor=request.user,
            )
        if not failed:
            messages.success(
                request,
                f"Code redeemed: {_money(entry.amount_micros)} {entry.account.currency} "
                "added to the balance.",
            )
            return redirect("billing", slug=slug)
    return _billing_page(request, access, form, status=400)


def _money(micros: int | None) -> str:
    return "—" if micros is None else format_micros(micros)


@login_required
def budget(request: AuthenticatedHttpRequest, slug: str) -> HttpResponse:
    """The monthly budget and its alerts: anyone with billing rights sees them, owners
    and admins (and the seller) change them."""
    access = get_access(request.user, slug, need=Need.BILLING)
    organization = access.organization
    if organization.kind == Organization.Kind.PLATFORM:
        raise Http404("The platform has no budget.")
    summary = reads.account_summary(organization)
    account = summary.account
    can_edit = access.can(Need.MANAGE)
    if request.method == "POST" and not can_edit:
        raise PermissionDenied("Your role cannot change the budget.")
    form = BudgetForm.for_account(account, request.POST or None) if can_edit else None
    if request.method == "POST" and form is not None and form.is_valid():
        with form_errors(form) as failed:
            if account is None:
                billing.billing_account_create(
                    organization=organization, actor=request.user, **form.account_changes()
                )
            else:
                billing.billing_account_update(
                    account=account, actor=request.user, **form.account_changes()
                )
        if not failed:
            messages.success(request, "Budget and alerts saved.")
            return redirect("budget", slug=slug)
    return render_page(
        request,
        "portal/budget.html",
        {
            "summary": summary,
            "form": form,
            "alerts": reads.budget_alerts(account),
            # Who was e-mailed names members: billing people see how many, not who.
            "show_recipients": access.can(Need.MEMBERS),
        },
        access=access,
        section="budget",
        status=400 if form is not None and form.errors else 200,
    )


# --- What a seller sets for a customer ------------------------------------------------------


@login_required
def terms(request: AuthenticatedHttpRequest, slug: str) -> HttpResponse:
    """A customer's terms as its seller sets them, with its balance and a top-up form."""
    access = sold_access(request, slug)
    organization = access.organization
    summary = reads.account_summary(organization)
    form = _terms_form(organization, summary, request.POST or None)
    if request.method == "POST" and form.is_valid():
        fields = form.account_fields()
        with form_errors(form) as failed:
            if summary.account is None:
                billing.billing_account_create(
                    organization=organization, actor=request.user, **fields
                )
            else:
                billing.billing_account_update(
                    account=summary.account, actor=request.user, **fields
                )
        if not failed:
            messages.success(request, f"Terms of {organization.name} saved.")
            return redirect("terms", slug=slug)
    return _terms_page(request, access, summary, form, TopUpForm())


def _terms_form(
    organization: Organization, summary: reads.AccountSummary, data: Any = None
) -> AccountTermsForm:
    assert organization.parent is not None  # only the platform has no parent
    form = AccountTermsForm.for_account(summary.account, seller=organization.parent, data=data)
    if not organization.is_tenant:
        del form.fields["price_list"]  # resellers buy at wholesale
    return form


def _terms_page(
    request: HttpRequest,
    access: Access,
    summary: reads.AccountSummary,
    form: Any,
    topup_form: TopUpForm,
) -> HttpResponse:
    return render_page(
        request,
        "portal/terms.html",
        {
            "summary": summary,
            "form": form,
            "topup_form": topup_form,
            "entries": reads.ledger_entries(summary.account),
            "seller": access.organization.parent,
        },
        access=access,
        section="terms",
        status=400 if form.errors or topup_form.errors else 200,
    )


@login_required
@require_POST
def topup(request: AuthenticatedHttpRequest, slug: str) -> HttpResponse:
    """Credit a customer's balance with a payment received."""
    access = sold_access(request, slug)
    organization = access.organization
    form = TopUpForm(request.POST)
    if form.is_valid():
        with form_errors(form) as failed:
            entry = billing.account_topup(
                account=account_for(organization),
                amount_micros=form.cleaned_data["amount"],
                memo=form.cleaned_data["memo"],
                actor=request.user,
            )
        if not failed:
            messages.success(
                request,
                f"{_money(entry.amount_micros)} {entry.account.currency} added to the balance "
                f"of {organization.name}.",
            )
            return redirect("terms", slug=slug)
    summary = reads.account_summary(organization)
    return _terms_page(request, access, summary, _terms_form(organization, summary), form)


# --- Invoices ---------------------------------------------------------------------------------


def _status_filter(request: HttpRequest) -> str:
    status = request.GET.get("status", "")
    return status if status in Invoice.Status.values else ""


@login_required
def invoices_issued(request: AuthenticatedHttpRequest, slug: str) -> HttpResponse:
    """Invoices this reseller (or the platform) issued to its customers."""
    access = get_access(request.user, slug, need=Need.BILLING)
    issuer = access.organization
    if issuer.is_tenant:
        raise Http404("Tenants issue no invoices.")
    status = _status_filter(request)
    return render_page(
        request,
        "portal/invoices.html",
        {
            "page": paginate(request, reads.invoices_issued(issuer, status=status)),
            "status": status,
            "statuses": Invoice.Status.choices,
            "can_change": access.can(Need.MANAGE),
            "draft_now_url": reverse("invoices_draft_now", args=[issuer.slug]),
        },
        access=access,
        section="invoices",
    )


@login_required
@require_POST
def invoices_draft_now(request: AuthenticatedHttpRequest, slug: str) -> HttpResponseRedirect:
    """Create or refresh this month's drafts to the issuer's customers at once."""
    access = get_access(request.user, slug, need=Need.MANAGE)
    if access.organization.is_tenant:
        raise Http404("Tenants issue no invoices.")
    drafts = billing.invoice_drafts_refresh(issuer=access.organization, actor=request.user)
    messages.success(request, _drafted(drafts))
    return redirect("invoices_issued", slug=slug)


@login_required
@require_POST
def operator_invoices_draft_now(request: AuthenticatedHttpRequest) -> HttpResponseRedirect:
    require_operator(request.user)
    drafts = billing.invoice_drafts_refresh(issuer=None, actor=request.user)
    messages.success(request, _drafted(drafts))
    return redirect("operator_invoices")


def _drafted(drafts: list[Invoice]) -> str:
    if not drafts:
        return "No usage to invoice this month yet."
    return f"{len(drafts)} draft{'s' if len(drafts) != 1 else ''} for this month refreshed."


@login_required
def operator_invoices(request: AuthenticatedHttpRequest) -> HttpResponse:
    require_operator(request.user)
    status = _status_filter(request)
    return render_page(
        request,
        "portal/invoices.html",
        {
            "page": paginate(request, reads.invoices_all(status=status)),
            "status": status,
            "statuses": Invoice.Status.choices,
            "can_change": True,
            "platform_wide": True,
            "draft_now_url": reverse("operator_invoices_draft_now"),
        },
        section="operator_invoices",
    )


def _invoice_for(request: HttpRequest, invoice_id: int) -> tuple[Invoice, reads.InvoiceAccess]:
    invoice = Invoice.objects.select_related("issuer", "customer").filter(pk=invoice_id).first()
    if invoice is None:
        raise Http404("No such invoice.")
    standing = reads.invoice_access(request_scope(request), invoice)
    if standing is None:
        raise Http404("No such invoice.")
    if not (standing.as_issuer or standing.as_customer):
        raise PermissionDenied("Your role does not show invoices.")
    return invoice, standing


@login_required
def invoice_download(request: AuthenticatedHttpRequest, invoice_id: int, fmt: str) -> HttpResponse:
    """The invoice as PDF or CSV, for its customer's and its issuer's billing people."""
    if fmt not in ("pdf", "csv"):
        raise Http404("Invoices come as pdf or csv.")
    invoice, _ = _invoice_for(request, invoice_id)
    name = (invoice.number or f"draft-{invoice.pk}").replace("/", "-")
    if fmt == "pdf":
        response = HttpResponse(invoice_pdf(invoice), content_type="application/pdf")
    else:
        response = HttpResponse(invoice_csv(invoice), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="invoice-{name}.{fmt}"'
    return response


_INVOICE_ACTIONS = {"issue", "paid", "void"}


@login_required
@require_POST
def invoice_action(
    request: AuthenticatedHttpRequest, invoice_id: int, action: str
) -> HttpResponseRedirect:
    """Issue a draft, record a payment, or void: the issuer's owners and admins only."""
    invoice, standing = _invoice_for(request, invoice_id)
    if action not in _INVOICE_ACTIONS:
        raise Http404("No such action.")
    issuer_role = request_scope(request).role_for(invoice.issuer_id)
    if not standing.as_issuer or issuer_role is None:
        raise PermissionDenied("Only the issuer changes an invoice.")
    if not role_grants(issuer_role, Need.MANAGE):
        raise PermissionDenied("Your role cannot change invoices.")
    try:
        if action == "issue":
            done = billing.invoice_issue(invoice=invoice, actor=request.user)
            messages.success(request, f"Invoice {done.number} issued.")
        elif action == "paid":
            done = billing.invoice_mark_paid(invoice=invoice, actor=request.user)
            messages.success(request, f"Invoice {done.number} marked paid.")
        else:
            billing.invoice_void(
                invoice=invoice,
                actor=request.user,
                reason=request.POST.get("reason", "").strip() or "Voided from the dashboard",
            )
            messages.success(request, "Invoice voided.")
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    back = request.POST.get("next", "")
    if back and url_has_allowed_host_and_scheme(back, allowed_hosts=None):
        return HttpResponseRedirect(back)
    return HttpResponseRedirect(reverse("invoices_issued", args=[invoice.issuer.slug]))
