"""Card payments: Stripe's webhook, a seller's Stripe connection, and a customer's
payments page (Checkout top-up, auto-recharge, invoice payment links).

Returning from Checkout credits nothing: only the signed webhook moves money.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseRedirect,
    JsonResponse,
)
from django.shortcuts import get_object_or_404, redirect
from django.urls import reverse
from django.utils.cache import add_never_cache_headers
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from billing import stripe_gateway
from billing.models import AutoRecharge, BillingAccount, Invoice, Payment, StripeAccount
from billing.services import auto_recharge as recharge_services
from billing.services import payments as pay
from billing.services.common import new_account_fields
from billing.services.stripe_events import stripe_event_handle
from console.forms.billing import micros_to_units
from console.forms.payments import AutoRechargeForm, CardTopUpForm, StripeConnectForm
from console.http import AuthenticatedHttpRequest
from console.views.base import form_errors, render_page
from console.views.selling import _price_list_owner, _to_platform_page
from portal.access import Access, Need, get_access


class SeeOther(HttpResponseRedirect):
    status_code = 303


# --- Stripe's webhook -----------------------------------------------------------------------


@csrf_exempt
@require_POST
def stripe_webhook(request: HttpRequest, account_id: uuid.UUID) -> HttpResponse:
    """Verify the signature with the seller's secret, then apply the event once. A body
    that is not signed by this seller's Stripe account is refused (400), changing nothing."""
    account = StripeAccount.objects.filter(public_id=account_id).first()
    if account is None:
        raise Http404("No such Stripe account.")
    if not account.webhook_secret_ciphertext:
        return JsonResponse({"error": "This account is disconnected."}, status=400)
    try:
        event = stripe_gateway.verified_event(
            account, request.body, request.headers.get("Stripe-Signature")
        )
    except (stripe_gateway.SignatureVerificationError, ValueError):
        return JsonResponse({"error": "Invalid signature or payload."}, status=400)
    outcome = stripe_event_handle(stripe_account=account, event=event)
    return JsonResponse({"received": True, "outcome": outcome})


def webhook_url(account: StripeAccount) -> str:
    path = reverse("stripe_webhook", args=[account.public_id])
    return settings.TOLLGATE_PUBLIC_URL.rstrip("/") + path


# --- A seller connects its Stripe account ---------------------------------------------------


@login_required
def operator_stripe(request: AuthenticatedHttpRequest) -> HttpResponseRedirect:
    return _to_platform_page(request, "seller_stripe")


@login_required
def seller_stripe(request: AuthenticatedHttpRequest, slug: str) -> HttpResponse:
    """The platform's or a reseller's Stripe keys and its webhook URL."""
    access = _price_list_owner(request, slug)
    seller = access.organization
    account = StripeAccount.objects.filter(seller=seller).first()
    form = StripeConnectForm(request.POST if request.POST.get("action") == "connect" else None)
    if request.method == "POST" and request.POST.get("action") == "disconnect" and account:
        pay.stripe_account_disconnect(account=account, actor=request.user)
        messages.success(request, "Stripe disconnected: card payments are off.")
        return redirect("seller_stripe", slug=slug)
    if request.method == "POST" and form.is_valid():
        with form_errors(form) as failed:
            account = pay.stripe_account_connect(
                seller=seller,
                secret_key=form.cleaned_data["secret_key"],
                webhook_secret=form.cleaned_data["webhook_secret"],
                actor=request.user,
            )
        if not failed:
            messages.success(request, "Stripe connected. Your customers can pay by card.")
            return redirect("seller_stripe", slug=slug)
    connected = account is not None and bool(account.secret_key_ciphertext)
    response = render_page(
        request,
        "portal/payments_seller.html",
        {
            "form": form,
            "account": account if connected else None,
            "webhook_url": webhook_url(account) if connected and account else "",
            "events": account.events.all()[:20] if connected and account else [],
            "payments": (
                Payment.objects.filter(stripe_account=account).select_related(
                    "account__organization", "invoice"
                )[:50]
                if connected and account
                else []
            ),
        },
        access=access,
        section="stripe",
        status=400 if form.errors else 200,
    )
    add_never_cache_headers(response)
    return response


# --- A customer pays ------------------------------------------------------------------------


def _customer_access(request: HttpRequest, slug: str) -> Access:
    access = get_access(request.user, slug, need=Need.BILLING)
    if access.organization.parent_id is None:
        raise Http404("The platform pays no one.")
    return access


def _back(request: HttpRequest, slug: str, outcome: str) -> str:
    return request.build_absolute_uri(reverse("payments", args=[slug])) + f"?checkout={outcome}"


@login_required
def payments(request: AuthenticatedHttpRequest, slug: str) -> HttpResponse:
    """Top up by card, set auto-recharge, pay issued invoices; the payments made."""
    access = _customer_access(request, slug)
    organization = access.organization
    account = BillingAccount.objects.filter(organization=organization).first()
    mode = account.mode if account else new_account_fields(organization)["mode"]
    prepaid = mode == BillingAccount.Mode.PREPAID
    rule = AutoRecharge.objects.filter(account=account).first() if account else None
    action = request.POST.get("action") if request.method == "POST" else None
    topup = CardTopUpForm(request.POST if action == "topup" else None)
    recharge = AutoRechargeForm(
        request.POST if action == "auto_recharge" else None, initial=_rule_initial(rule)
    )
    if action == "topup" and topup.is_valid():
        with form_errors(topup) as failed:
            payment = pay.checkout_topup_start(
                organization=organization,
                amount_micros=topup.cleaned_data["amount"],
                save_card=topup.cleaned_data["save_card"],
                success_url=_back(request, slug, "done"),
                cancel_url=_back(request, slug, "cancelled"),
                actor=request.user,
            )
        if not failed:
            return SeeOther(payment.checkout_url)
    if action == "auto_recharge" and account is None and recharge.is_valid():
        recharge.add_error(None, "Save a card first: top up once with “save this card” ticked.")
    if action == "auto_recharge" and account is not None and recharge.is_valid():
        with form_errors(recharge) as failed:
            recharge_services.auto_recharge_set(
                account=account,
                enabled=recharge.cleaned_data["enabled"],
                threshold_micros=recharge.cleaned_data["threshold"],
                amount_micros=recharge.cleaned_data["amount"],
                max_per_day=recharge.cleaned_data["max_per_day"],
                actor=request.user,
            )
        if not failed:
            messages.success(request, "Auto-recharge saved.")
            return redirect("payments", slug=slug)
    returned = request.GET.get("checkout")
    if returned == "done":
        messages.info(
            request,
            "Thank you. Stripe is confirming the payment; the balance changes once it has "
            "(usually within a minute).",
        )
    elif returned == "cancelled":
        messages.info(request, "Payment cancelled: nothing was charged.")
    seller_account = pay.seller_stripe_account(organization.parent)
    return render_page(
        request,
        "portal/payments.html",
        {
            "account": account,
            "accepts_cards": seller_account is not None,
            "topup": topup if prepaid else None,
            "rule": rule,
            "recharge": recharge if prepaid and rule and rule.has_card else None,
            "payable": Invoice.objects.filter(
                customer=organization, status=Invoice.Status.ISSUED
            ).order_by("-period_start"),
            "history": Payment.objects.filter(account__organization=organization).select_related(
                "invoice"
            )[:50],
        },
        access=access,
        section="payments",
        status=400 if topup.errors or recharge.errors else 200,
    )


def _rule_initial(rule: AutoRecharge | None) -> dict[str, object]:
    if rule is None or not rule.amount_micros:
        return {"max_per_day": 1}
    return {
        "enabled": rule.enabled,
        "threshold": micros_to_units(rule.threshold_micros),
        "amount": micros_to_units(rule.amount_micros),
        "max_per_day": rule.max_per_day,
    }


@login_required
@require_POST
def invoice_pay(request: AuthenticatedHttpRequest, slug: str, invoice_id: int) -> HttpResponse:
    """An invoice's payment link: a Checkout page for its total, paid to its issuer."""
    access = _customer_access(request, slug)
    invoice = get_object_or_404(Invoice, pk=invoice_id, customer=access.organization)
    try:
        payment = pay.invoice_checkout_start(
            invoice=invoice,
            success_url=_back(request, slug, "done"),
            cancel_url=_back(request, slug, "cancelled"),
            actor=request.user,
        )
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
        return redirect("payments", slug=slug)
    return SeeOther(payment.checkout_url)
